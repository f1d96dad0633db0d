"""Generate the Tjoa–Guan synthetic shapes dataset (10 classes, ternary ground-truth heatmaps).

    python scripts/make_synthetic_shapes.py                                    # data/synthetic_shapes: 6,400 / 1,600 at 512 px
    python scripts/make_synthetic_shapes.py --out data/shapes64 --size 64 --train 640 --test 160 --seed 1
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.make_synthetic_shapes import main  # noqa: E402

if __name__ == "__main__":
    main()
