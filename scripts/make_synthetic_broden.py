"""Write a synthetic Broden (broden1_224 on-disk format, known concepts in all six categories): `python
scripts/make_synthetic_broden.py --help` (the command line lives in kdfast.cli.make_synthetic_broden).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.make_synthetic_broden import main  # noqa: E402

if __name__ == "__main__":
    main()
