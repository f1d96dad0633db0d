"""Write a synthetic SST (PTB tree files train.txt, dev.txt, test.txt) built from a small sentiment lexicon with
negation, intensifiers and contrast ("but"); see kdfast/nlp/synthetic_sst.py for how labels compose: `python
scripts/make_synthetic_sst.py --help` (the command line lives in kdfast.cli.make_synthetic_sst).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.make_synthetic_sst import main  # noqa: E402

if __name__ == "__main__":
    main()
