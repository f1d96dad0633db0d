"""Studies: the papers' comparisons as one reproducible flow (runs × measures → tidy CSV, tables, figures,
report). See docs/study.md."""
from kdfast.study.measures import MEASURES, Measure, MeasureContext, register_measure
from kdfast.study.pipeline import Outcome, aggregate_outputs, merge, run_study, validate
from kdfast.study.schema import StudyConfig, StudyError, from_dict, load_study

__all__ = ["MEASURES", "Measure", "MeasureContext", "Outcome", "StudyConfig", "StudyError", "aggregate_outputs",
           "from_dict", "load_study", "merge", "register_measure", "run_study", "validate"]
