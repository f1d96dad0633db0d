"""Run a study: many distillation runs and the measures on each, aggregated into tables, figures and a report:
`python scripts/study.py --help` (the command line lives in kdfast.study.cli).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
