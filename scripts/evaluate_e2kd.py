"""Measures of the e2KD paper's Waterbirds and VOC settings (docs/e2kd_settings.md) for trained runs: Waterbirds
per-group accuracy / agreement (worst group, in / out of distribution), VOC F1, EPG and IoU: `python
scripts/evaluate_e2kd.py --help` (the command line lives in kdfast.cli.evaluate_e2kd).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.evaluate_e2kd import main  # noqa: E402

if __name__ == "__main__":
    main()
