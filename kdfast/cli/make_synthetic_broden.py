"""Write a synthetic Broden (broden1_224 on-disk format, known concepts in all six categories).

python scripts/make_synthetic_broden.py                     # data/synthetic_broden, 64 images of 224 px
python scripts/make_synthetic_broden.py --out /tmp/broden_syn --images 64 --size 224 --seed 0
python scripts/make_synthetic_broden.py --world --out /tmp/world_broden --images 300 --size 48

--world draws the synthetic world's scenes (kdfast.data.synthetic_world: the Broden matching the embedded
default's training images, docs/world.md); without it, the simple shapes of kdfast.data.synthetic_broden.
"""

import argparse

# The writers (numpy, PIL, torch via kdfast.data) are imported after parsing, so that --help comes at once.


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="new or empty folder to write the dataset into (default: data/synthetic_broden, "
                                      "with --world data/synthetic_world_broden)")
    parser.add_argument("--images", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels; segmentations are size/2")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--world", action="store_true", help="the synthetic world's scenes instead of shapes")
    args = parser.parse_args(argv)
    from kdfast.data.synthetic_broden import synthetic_broden
    from kdfast.data.synthetic_world import write_world_broden

    write = write_world_broden if args.world else synthetic_broden
    folder = args.out or ("data/synthetic_world_broden" if args.world else "data/synthetic_broden")
    out = write(folder, images=args.images, size=args.size, seed=args.seed, progress=not args.quiet)
    print(out)


