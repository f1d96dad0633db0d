"""Generate the Tjoa–Guan synthetic shapes dataset (10 classes, ternary ground-truth heatmaps): `python
scripts/make_synthetic_shapes.py --help` (the command line lives in kdfast.cli.make_synthetic_shapes).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.make_synthetic_shapes import main  # noqa: E402

if __name__ == "__main__":
    main()
