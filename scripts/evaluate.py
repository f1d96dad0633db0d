"""Compare models by interpretability measures beyond dissection; writes results.json, figures/*.png and
report.html to --out.

    python scripts/evaluate.py                                   # the embedded default, see below
    python scripts/evaluate.py --models runs/scratch/best.pt runs/kd/best.pt --teacher runs/teacher/best.pt \\
        --data data/shapes --metrics agreement,entropy,fiveband,diffroar,lossgrad,epg,shift
    python scripts/evaluate.py --models a.pth b.pth --arch resnet18 --imagefolder ~/data/imagenet \\
        --categories kdfast/data/imagenet_categories.csv --normalize imagenet --metrics entropy,lossgrad,shift

Metrics: agreement (top-1, vs --teacher), entropy (entire / within the true class's category), fiveband
(five-band scores + binary splits, synthetic shapes only), diffroar, lossgrad (figure), epg (EPG and IoU against
boxes), shift (shift-equivariance curve). Without --metrics every metric the data supports runs.

With no --models: evaluates the students of `python scripts/distill.py`'s embedded default (runs/distill/<run>/
best.pt, teacher runs/distill/teacher/best.pt) on their validation data; when that folder does not exist, trains a
small teacher, a scratch and a KD student on generated 48-px shapes (cached under --out) and compares those.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.evaluate import main, run  # noqa: E402

if __name__ == "__main__":
    run()
