"""Generate the Tjoa–Guan synthetic shapes dataset (10 classes, ternary ground-truth heatmaps).

    python scripts/make_synthetic_shapes.py                                    # data/synthetic_shapes: 6,400 / 1,600 at 512 px
    python scripts/make_synthetic_shapes.py --out data/shapes64 --size 64 --train 640 --test 160 --seed 1
"""
import argparse
import os

from kdfast.data.synthetic_shapes import DEFAULT_COUNTS, REFERENCE_SIZE, make_synthetic_shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic_shapes",
                        help="output folder (gets train/, test/ and meta.json; default data/synthetic_shapes)")
    parser.add_argument("--size", type=int, default=REFERENCE_SIZE, help="image side in pixels (default 512)")
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"], help="training images (default 6400)")
    parser.add_argument("--test", type=int, default=DEFAULT_COUNTS["test"], help="test images (default 1600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing images")
    args = parser.parse_args(argv)
    root = make_synthetic_shapes(args.out, {"train": args.train, "test": args.test}, size=args.size,
                                 seed=args.seed, workers=args.workers)
    print(f"wrote {args.train} train and {args.test} test images of {args.size}×{args.size} to {root}")


if __name__ == "__main__":
    main()
