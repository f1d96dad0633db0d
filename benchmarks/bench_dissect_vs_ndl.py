"""End-to-end CPU dissection, kdfast against NetDissect-Lite on the same job, back to back:

    python benchmarks/bench_dissect_vs_ndl.py --ndl PATH/TO/NetDissect-Lite [--images 800]

The job: a synthetic Broden of --images 224-px images (kdfast.data.synthetic_broden, the real on-disk layout
NDL reads), a torchvision ResNet-18 with seeded weights (the same state dict for both), `layer4`, quantile
0.005, each tool's HTML report. NDL runs as released through benchmarks/ndl_runner.py (which only replaces
what today's SciPy/NumPy/Python removed); without --ndl only the kdfast rows are measured. Each tool runs in
its own process; wall time and the CPU time of the process and its children are recorded, with the load
average (the machine may be shared). kdfast's one-time packing of the Broden (reused by every later run on the
same Broden) is timed separately and also added into a `+pack` figure.

Writes benchmarks/results/bench_dissect_vs_ndl_cpu.json and .md.
"""
import argparse
import csv
import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, write_results  # noqa: E402

# kdfast variants: name → extra command-line arguments. "exact" keeps the default float32 NCHW forward, whose
# tally.csv is byte-identical to earlier kdfast versions; "fast" is --fast (channels_last, BatchNorm folded,
# bfloat16 autocast where the CPU has AVX512_BF16/AMX), whose results differ: each fast row says how much
# (units whose label is exact's, largest |IoU - exact's IoU|).
VARIANTS = {
    "exact": [],
    "fast": ["--fast"],
}


def agreement(tally_csv, exact_csv):
    """(units labelled as in exact_csv, units, largest |IoU difference| of a unit's best label) of two tally.csv."""
    def read(path):
        with open(path, newline="") as f:
            return {row["unit"]: (row["label"], float(row["score"])) for row in csv.DictReader(f)}

    ours, exact = read(tally_csv), read(exact_csv)
    same = sum(ours[u][0] == exact[u][0] for u in exact)
    return same, len(exact), max(abs(ours[u][1] - exact[u][1]) for u in exact)


def timed(command, log):
    """(wall seconds, CPU seconds of the command and its children) of a subprocess; its output goes to log."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed with exit code {done.returncode}; see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ndl", help="a NetDissect-Lite checkout (github.com/CSAILVision/NetDissect-Lite)")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--work", default="/tmp/kdfast_bench_vs_ndl", help="Broden, weights and outputs go here")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (NDL, kdfast variants), back to back")
    parser.add_argument("--out", default=REPO / "benchmarks" / "results" / "bench_dissect_vs_ndl_cpu.json")
    args = parser.parse_args(argv)

    from kdfast.data.synthetic_broden import synthetic_broden

    work = Path(args.work)
    broden = work / f"broden{args.images}"
    if not (broden / "index.csv").is_file():  # index.csv is written last: without it, a write was interrupted
        subprocess.run(["rm", "-rf", str(broden)], check=True)
        synthetic_broden(broden, images=args.images, size=224, seed=0, progress=False)
    weights = work / "resnet18_seed0.pth"
    if not weights.is_file():
        import torchvision

        with torch.random.fork_rng():
            torch.manual_seed(0)
            torch.save(torchvision.models.resnet18().state_dict(), weights)
    python = sys.executable
    dissect = [python, str(REPO / "scripts" / "dissect.py"), "--model", "resnet18", "--weights", str(weights),
               "--layers", "layer4", "--broden", str(broden), "--broden-cache", str(work / f"cache{args.images}"),
               "--quantile", "0.005", "--quiet"]
    rows = []
    pack_wall, pack_cpu = timed(dissect + ["--out", str(work / "pack"), "--pack-only"], work / "pack.log")
    rows.append({"tool": "kdfast packing (once per Broden)", "images": args.images, "wall_s": pack_wall,
                 "cpu_s": pack_cpu, "load_avg": os.getloadavg()[0]})
    for round_ in range(args.repeats):
        if args.ndl:
            out = work / f"ndl_{round_}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            load = os.getloadavg()[0]
            wall, cpu = timed([python, str(REPO / "benchmarks" / "ndl_runner.py"), args.ndl, str(broden),
                               str(weights), str(out)], work / f"ndl_{round_}.log")
            rows.append({"tool": "NetDissect-Lite", "round": round_, "images": args.images, "wall_s": wall,
                         "cpu_s": cpu, "load_avg": load})
        for name in args.variants:
            out = work / f"kdfast_{name}_{round_}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            load = os.getloadavg()[0]
            wall, cpu = timed(dissect + VARIANTS[name] + ["--out", str(out)], work / f"kdfast_{name}_{round_}.log")
            rows.append({"tool": f"kdfast {name}", "round": round_, "images": args.images, "wall_s": wall,
                         "cpu_s": cpu, "wall_plus_pack_s": wall + pack_wall, "load_avg": load,
                         "tally_sha256": sha256(out / "layer4" / "tally.csv")[:16]})
            exact_csv = work / f"kdfast_exact_{round_}" / "layer4" / "tally.csv"
            if name != "exact" and exact_csv.is_file():
                same, units, iou_diff = agreement(out / "layer4" / "tally.csv", exact_csv)
                rows[-1].update(labels_as_exact=f"{same}/{units}", max_iou_diff=iou_diff)
    ndl = [r for r in rows if r["tool"] == "NetDissect-Lite"]
    for row in rows:
        if ndl and row["tool"].startswith("kdfast ") and "round" in row:
            reference = next(r for r in ndl if r["round"] == row["round"])
            row["speedup_wall"] = reference["wall_s"] / row["wall_s"]
            row["speedup_cpu"] = reference["cpu_s"] / row["cpu_s"]
    env = environment("cpu")
    env["load_avg_end"] = os.getloadavg()[0]
    env["ndl"] = "NetDissect-Lite as released via benchmarks/ndl_runner.py" if args.ndl else "not run"
    print(write_results(rows, env, args.out, "Dissection end to end on a CPU: kdfast vs NetDissect-Lite"))


if __name__ == "__main__":
    main()
