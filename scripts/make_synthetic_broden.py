"""Write a synthetic Broden (broden1_224 on-disk format, known concepts in all six categories).

python scripts/make_synthetic_broden.py                     # data/synthetic_broden, 64 images of 224 px
python scripts/make_synthetic_broden.py --out /tmp/broden_syn --images 64 --size 224 --seed 0
python scripts/make_synthetic_broden.py --world --out /tmp/world_broden --images 300 --size 48

--world draws the synthetic world's scenes (kdfast.data.synthetic_world: the Broden matching the embedded
default's training images, docs/world.md); without it, the simple shapes of kdfast.data.synthetic_broden.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.make_synthetic_broden import main  # noqa: E402

if __name__ == "__main__":
    main()
