"""Model comparison by interpretability measures (the pipeline behind scripts/evaluate.py)."""
from kdfast.evaluate.pipeline import METRICS, EvalOptions, Evaluation

__all__ = ["METRICS", "EvalOptions", "Evaluation"]
