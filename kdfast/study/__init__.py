"""Studies: the papers' comparisons as one reproducible flow (runs × measures → tidy CSV, tables, figures,
report). See docs/study.md."""
import importlib

# Loaded on first use (PEP 562), so that `scripts/study.py --help` does not wait for torch.
_HOMES = {
    "MEASURES": "measures", "Measure": "measures", "MeasureContext": "measures", "register_measure": "measures",
    "Outcome": "pipeline", "aggregate_outputs": "pipeline", "merge": "pipeline", "run_study": "pipeline",
    "validate": "pipeline",
    "StudyConfig": "schema", "StudyError": "schema", "from_dict": "schema", "load_study": "schema",
}


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"kdfast.study.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'kdfast.study' has no attribute '{name}'")


__all__ = ["MEASURES", "Measure", "MeasureContext", "Outcome", "StudyConfig", "StudyError", "aggregate_outputs",
           "from_dict", "load_study", "merge", "register_measure", "run_study", "validate"]
