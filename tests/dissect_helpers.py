"""Shared by the dissection tests: paths, the planted model's command line and output comparison."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "dissect.py"
PLANTED_FILE = Path(__file__).resolve().parent / "planted_model.py"
# The planted model sees pixel/255; small images and batches keep every run around a second.
SYNTHETIC = {"images": 40, "size": 64, "seed": 3}
QUANTILE = 0.05  # the dissection quantile of the planted-model runs


def planted_args(broden, out, factory="planted", *extra):
    return [
        "--model", f"{PLANTED_FILE}:{factory}", "--layers", "features", "--broden", str(broden), "--out", str(out),
        "--mean", "0", "0", "0", "--std", "1", "1", "1", "--batch-size", "8", "--quiet", *extra,
    ]


def output_files(out):
    """{relative path: bytes} of every result file (checkpoints excluded)."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".checkpoints" not in p.parts}
