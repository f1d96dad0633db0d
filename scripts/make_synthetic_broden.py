"""Write a synthetic Broden (broden1_224 on-disk format, known concepts in all six categories).

python scripts/make_synthetic_broden.py --out /tmp/broden_syn --images 64 --size 224 --seed 0
"""

import argparse

from kdfast.data.synthetic_broden import synthetic_broden


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new or empty folder to write the dataset into")
    parser.add_argument("--images", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels; segmentations are size/2")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = synthetic_broden(args.out, images=args.images, size=args.size, seed=args.seed, progress=not args.quiet)
    print(out)


if __name__ == "__main__":
    main()
