"""The command line of scripts/study.py."""
import argparse
import sys
import time
from pathlib import Path

# The study's modules (torch) are imported after the arguments are parsed, so that --help comes at once.
DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "configs" / "study" / "embedded_default.yaml"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run a study: train the runs that are missing, measure every checkpoint, write results.csv, "
                    "tables, figures and report.html (docs/study.md). Without --config: the embedded default.")
    parser.add_argument("--config", default=str(DEFAULT_STUDY), help="study YAML (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: the study's output_dir, runs/study/<name>)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained and measured in parallel, one thread each (default: the study's jobs, 1)")
    parser.add_argument("--shard", help="i/n: execute only every n-th run from the i-th (0-based), e.g. 0/4")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="combine the results of shard output folders into this study's folder, then aggregate")
    parser.add_argument("--check", action="store_true", help="only validate the study and list its runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="study overrides, e.g. seeds=[0] 'overrides=[epochs=5]' measures.dissect.layers=[layer3]")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from kdfast.study.pipeline import merge, run_study, validate
    from kdfast.study.plan import parse_shard
    from kdfast.study.schema import StudyError, load_study

    started = time.monotonic()
    try:
        overrides = list(args.overrides) + ([f"output_dir={args.out}"] if args.out else [])
        study = load_study(args.config, overrides)
        if args.jobs is not None and args.jobs < 1:
            raise StudyError(f"--jobs: expected at least 1, got {args.jobs}")
        shard = parse_shard(args.shard) if args.shard else None
        if args.check:
            runs, _ = validate(study)
            for run in runs:
                print(f"{run.id}\t{run.group}\t{run.role}\t{run.checkpoint}")
            return 0
        if args.merge:
            outcome = merge(study, args.merge)
        else:
            outcome = run_study(study, jobs=args.jobs or study.jobs, shard=shard, progress=not args.quiet)
    except StudyError as exc:
        print(f"study error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{outcome.text}\n")
    failed = sorted(r for r, s in outcome.status.items() if s != "ok")
    if failed:
        print(f"failed runs (recorded, shown as gaps; rerun to retry): {', '.join(failed)}")
    print(f"study {study.name}: {outcome.folder}/report.html, results.csv, tables/ "
          f"({time.monotonic() - started:.0f} s)")
    return 1 if failed else 0
