"""Score BERT classifiers' word attributions on SST: accuracy, and AUROC / AUPRC of LayerIntegratedGradients word
attributions against the word sentiment labels (ICML 2023 §5.4, Tables 5 and 13): `python scripts/evaluate_nlp.py
--help` (the command line lives in kdfast.cli.evaluate_nlp).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.evaluate_nlp import main  # noqa: E402

if __name__ == "__main__":
    main()
