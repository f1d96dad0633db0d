"""Train a student by distillation from a YAML config.

    python scripts/distill.py --config configs/kd.yaml [--resume] [key.path=value ...]
    torchrun --nproc_per_node 4 scripts/distill.py --config configs/kd.yaml
    python scripts/distill.py [--out DIR] [key.path=value ...]   # the embedded default

With no --config it runs the embedded default (configs/embedded_default/): it generates the synthetic world's
images (kdfast.data.synthetic_world, docs/world.md), trains a teacher, then scratch / LS / KD / e2KD (GradCAM) students, writes each run to <out>/<run>/
(checkpoints <out>/<run>/best.pt) and prints a table of their accuracy and agreement with the teacher. Finished
runs are reused when it is started again.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.distill import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
