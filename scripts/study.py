"""Run a study: many distillation runs and the measures on each, aggregated into tables, figures and a report.

    python scripts/study.py                                        # the embedded default (docs/study.md)
    python scripts/study.py --config configs/study/icml_table1.yaml overrides=[data.root=/data/imagenet]
    python scripts/study.py --config configs/study/icml_table1.yaml --shard 0/4    # one machine of four
    python scripts/study.py --config configs/study/icml_table1.yaml --merge shard0/ shard1/ shard2/ shard3/
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
