"""Score BERT classifiers' word attributions on SST: accuracy, and AUROC / AUPRC of LayerIntegratedGradients
word attributions against the word sentiment labels (ICML 2023 §5.4, Tables 5 and 13).

    python scripts/evaluate_nlp.py                          # the models of runs/nlp (from scripts/distill_nlp.py)
    python scripts/evaluate_nlp.py --out runs/sst --n-steps 100 --device cuda
    python scripts/evaluate_nlp.py --models ckpt/a ckpt/b --data path/to/trees --out runs/eval

Writes <out>/scores.{json,csv} and prints the comparison table.
"""
import argparse
import json
import sys
from pathlib import Path

from kdfast.cli.distill_nlp import add_evaluation_args, evaluate_and_report  # torch-free; the rest is imported late


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/nlp", help="experiment folder: its models.json lists the models to score "
                                                     "(unless --models); scores are written here")
    p.add_argument("--models", nargs="+", help="checkpoint folders to score instead of <out>/models.json")
    p.add_argument("--data", help="SST folder (train/dev/test.txt); default: the one recorded in models.json")
    p.add_argument("--classes", type=int, choices=(5, 4, 2), help="default: the one recorded in models.json, else 4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as for tiny models)")
    add_evaluation_args(p)
    return p.parse_args(argv)


def describe(folder):
    """A manifest entry for a checkpoint folder: kd / scratch from its training record, else "model"."""
    from kdfast.nlp.models import TRAINING_INFO, load_checkpoint

    kind = "model"
    info = Path(folder) / TRAINING_INFO
    if info.is_file():
        kind = "kd" if json.loads(info.read_text())["distilled"] else "scratch"
    model, _ = load_checkpoint(folder)
    return {"name": Path(folder).name, "kind": kind, "layers": model.config.num_hidden_layers, "seed": None,
            "path": str(folder)}


def main(argv=None):
    args = parse_args(argv)
    from kdfast.nlp.pipeline import read_manifest, set_threads

    set_threads(args.threads)
    if args.models:
        if not args.data:
            sys.exit("--models needs --data (the SST folder to evaluate on)")
        models, data, classes = [describe(m) for m in args.models], args.data, args.classes or 4
    else:
        manifest = read_manifest(args.out)
        models, data, classes = manifest["models"], args.data or manifest["data"], args.classes or manifest["classes"]
    evaluate_and_report(models, data, classes, args, args.out)


