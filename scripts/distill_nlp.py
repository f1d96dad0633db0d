"""Train a BERT teacher and scratch / KD students on SST, then score their word attributions (ICML 2023 §5.4):
`python scripts/distill_nlp.py --help` (the command line lives in kdfast.cli.distill_nlp).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.distill_nlp import main  # noqa: E402

if __name__ == "__main__":
    main()
