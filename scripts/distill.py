"""Train a student by distillation from a YAML config: `python scripts/distill.py --help` (the command line lives in
kdfast.cli.distill).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.distill import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
