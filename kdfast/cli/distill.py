"""Train a student by distillation from a YAML config.

    python scripts/distill.py --config configs/kd.yaml [--resume] [key.path=value ...]
    torchrun --nproc_per_node 4 scripts/distill.py --config configs/kd.yaml
    python scripts/distill.py [--out DIR] [key.path=value ...]   # the embedded default

With no --config it runs the embedded default (configs/embedded_default/): it generates the synthetic world's
images (kdfast.data.synthetic_world, docs/world.md), trains a teacher, then scratch / LS / KD / e2KD (GradCAM) students, writes each run to <out>/<run>/
(checkpoints <out>/<run>/best.pt) and prints a table of their accuracy and agreement with the teacher. Finished
runs are reused when it is started again.
"""
import argparse
import csv
import json
import os
import sys
from pathlib import Path

# torch and the trainer are imported where they are needed, so that --help and argument errors come at once.
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "configs" / "embedded_default"
# The teacher first: every student run loads its best checkpoint.
EMBEDDED_RUNS = ("teacher", "scratch", "ls", "kd", "e2kd_gradcam")


def _run_list(text):
    runs = [r for r in text.split(",") if r]
    unknown = [r for r in runs if r not in EMBEDDED_RUNS]
    if unknown or not runs:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(EMBEDDED_RUNS)}; got '{text}'")
    return runs


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); without it, the embedded default runs")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last.pt")
    parser.add_argument("--out", default="runs/distill", help="embedded default only: folder of its runs")
    parser.add_argument("--runs", type=_run_list, default=list(EMBEDDED_RUNS),
                        help=f"embedded default only: comma list of its runs to train (default: "
                             f"{','.join(EMBEDDED_RUNS)})")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: 1 for the embedded default, whose tiny models run fastest "
                             "on one thread and oversubscribe a busy machine with more; torch's own default with "
                             "--config)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides, e.g. optim.lr=0.05 method.options.temperature=2")
    return parser.parse_args(argv)


def embedded_configs(out, overrides):
    """[(run name, Config)] of the embedded default, written under `out`."""
    from kdfast.distill.config import load_config
    from kdfast.distill.trainer import CHECKPOINT_BEST

    out = Path(out)
    configs = []
    for run in EMBEDDED_RUNS:
        placed = [f"output_dir={out / run}"]
        if run != "teacher":
            placed.append(f"teacher.weights={out / 'teacher' / CHECKPOINT_BEST}")
        configs.append((run, load_config(EMBEDDED_DIR / f"{run}.yaml", list(overrides) + placed)))
    return configs


def print_table(rows, file=None):
    # sys.stdout is looked up at call time: a default bound at import would keep a stream that may be closed
    # by then (pytest's capture, a redirected stdout).
    file = sys.stdout if file is None else file
    header = ("run", "method", "best epoch", "val acc", "agreement")
    lines = [header] + [
        (r["name"], r["method"], str(r["best_epoch"]), f"{100 * r['best_val_acc']:.1f}%",
         "-" if r["best_val_agreement"] is None else f"{100 * r['best_val_agreement']:.1f}%")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)), file=file)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=file)


def run_embedded(out, runs, overrides):
    from kdfast.distill.trainer import CHECKPOINT_BEST, CHECKPOINT_LAST, train

    summaries = []
    for run, config in embedded_configs(out, overrides):
        if run not in runs:
            continue
        resume = (Path(config.output_dir) / CHECKPOINT_LAST).is_file()
        summaries.append(train(config, resume=resume))
    if not summaries:
        return
    with open(Path(out) / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    print(f"\nembedded default: runs in {out}/<run>/ (students' checkpoints: {out}/<run>/{CHECKPOINT_BEST})")
    print("agreement = top-1 agreement with the teacher on the validation set, at the best epoch\n")
    print_table(summaries)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = args.threads if args.threads is not None else (1 if args.config is None else None)
    if threads is not None and threads < 1:
        print(f"--threads: expected at least 1, got {threads}", file=sys.stderr)
        return 2
    from kdfast.threads import torch_threads

    with torch_threads(threads):
        return _run(args)


def _run(args):
    from kdfast.distill.config import ConfigError, config_yaml, load_config
    from kdfast.distill.trainer import train

    try:
        if args.config is None:
            if args.print_config:
                for run, config in embedded_configs(args.out, args.overrides):
                    print(f"# --- {run}\n{config_yaml(config)}")
                return 0
            run_embedded(args.out, args.runs, args.overrides)
            return 0
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_yaml(config), end="")
            return 0
        summary = train(config, resume=args.resume)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=1))
    return 0


