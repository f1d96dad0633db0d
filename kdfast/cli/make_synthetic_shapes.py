"""Generate the Tjoa–Guan synthetic shapes dataset (10 classes, ternary ground-truth heatmaps).

    python scripts/make_synthetic_shapes.py                                    # data/synthetic_shapes: 6,400 / 1,600 at 512 px
    python scripts/make_synthetic_shapes.py --out data/shapes64 --size 64 --train 640 --test 160 --seed 1
"""
import argparse
import os

# The generator (torch) is imported after parsing, so that --help comes at once; its defaults fill what is not given.


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic_shapes",
                        help="output folder (gets train/, test/ and meta.json; default data/synthetic_shapes)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 512)")
    parser.add_argument("--train", type=int, help="training images (default 6400)")
    parser.add_argument("--test", type=int, help="test images (default 1600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing images")
    args = parser.parse_args(argv)
    from kdfast.data.synthetic_shapes import DEFAULT_COUNTS, REFERENCE_SIZE, make_synthetic_shapes

    args.size = REFERENCE_SIZE if args.size is None else args.size
    args.train = DEFAULT_COUNTS["train"] if args.train is None else args.train
    args.test = DEFAULT_COUNTS["test"] if args.test is None else args.test
    root = make_synthetic_shapes(args.out, {"train": args.train, "test": args.test}, size=args.size,
                                 seed=args.seed, workers=args.workers)
    print(f"wrote {args.train} train and {args.test} test images of {args.size}×{args.size} to {root}")


