"""Compare models by interpretability measures beyond dissection; writes results.json, figures/*.png and report.html
to --out: `python scripts/evaluate.py --help` (the command line lives in kdfast.cli.evaluate).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.evaluate import main, run  # noqa: E402

if __name__ == "__main__":
    run()
