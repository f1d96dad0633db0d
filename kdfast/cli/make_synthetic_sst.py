"""Write a synthetic SST (PTB tree files train.txt, dev.txt, test.txt) built from a small sentiment lexicon with
negation, intensifiers and contrast ("but"); see kdfast/nlp/synthetic_sst.py for how labels compose.

    python scripts/make_synthetic_sst.py --out data/synthetic_sst --sizes 2000 400 400 --seed 0
"""
import argparse

from kdfast.nlp.synthetic_sst import make_synthetic_sst  # torch-free


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic_sst", help="folder to write the three files into")
    p.add_argument("--sizes", type=int, nargs=3, default=(2000, 400, 400), metavar=("TRAIN", "DEV", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-noise", type=float, default=0.1,
                   help="fraction of sentence labels moved to the adjacent intensity (very/plain)")
    args = p.parse_args(argv)
    for split, path in make_synthetic_sst(args.out, args.sizes, args.seed, args.label_noise).items():
        print(f"{split}: {path}")


