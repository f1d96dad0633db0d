"""Distillation objectives and the registry the trainer builds them from.

    method = build_method("kd", alpha=0.5, temperature=4.0)
    out = method(student, teacher, batch)  # StepOutput: out.terms, out.loss, out.student_logits, ...
"""
import importlib
import inspect

from torch import nn

from kdfast.distill.features import capture_outputs
from kdfast.distill.losses import (
    attention_map,
    attention_transfer_loss,
    error_level_selection,
    factor_transfer_loss,
    kd_loss,
    label_smoothing_loss,
    multilabel_kd_loss,
    nce_contrast_loss,
    rotation_similarities,
    soft_target_kl,
    supervised_loss,
)
from kdfast.distill.method import DistillationMethod, StepOutput
from kdfast.distill.methods import (
    CRD,
    KD,
    SSKD,
    AttentionTransfer,
    ContrastMemory,
    FactorTransfer,
    LabelSmoothing,
    MultiLabelKD,
    Paraphraser,
    Scratch,
)

_METHODS = {
    "scratch": Scratch,
    "ls": LabelSmoothing,
    "kd": KD,
    "at": AttentionTransfer,
    "ft": FactorTransfer,
    "crd": CRD,
    "sskd": SSKD,
    "multilabel_kd": MultiLabelKD,
}
# name → (module, class); imported only when asked for, as they pull in the explanation machinery or wrap
# other methods.
_LAZY_METHODS = {
    "e2kd_gradcam": ("kdfast.distill.e2kd", "E2KDGradCAM"),
    "e2kd_bcos": ("kdfast.distill.e2kd", "E2KDBcos"),
    "guided": ("kdfast.distill.guidance", "Guided"),
    "mixup": ("kdfast.distill.mixup", "Mixup"),
    "multilabel_e2kd": ("kdfast.distill.multilabel_e2kd", "MultiLabelE2KD"),
    "catkd": ("kdfast.distill.prior_work", "CATKD"),
    "reviewkd": ("kdfast.distill.prior_work", "ReviewKD"),
}
METHOD_NAMES = tuple(_METHODS) + tuple(_LAZY_METHODS)


def method_class(name):
    """The DistillationMethod subclass registered under `name`."""
    if name in _METHODS:
        return _METHODS[name]
    if name in _LAZY_METHODS:
        module_name, class_name = _LAZY_METHODS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"method {name!r} is defined in {module_name}, which failed to import: {exc}") from exc
        return getattr(module, class_name)
    raise ValueError(f"unknown distillation method {name!r}; known methods: {', '.join(METHOD_NAMES)}")


def _check_options(name, cls, options):
    """Option names against the constructor's keywords: unknown or missing ones are named in the error."""
    # A method without its own __init__ inherits nn.Module's (*args, **kwargs) and takes no options.
    parameters = {} if cls.__init__ is nn.Module.__init__ else dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self", None)
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return  # the class validates its own keywords
    accepted = [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for option in options:
        if option not in accepted:
            raise ValueError(
                f"unknown option {option!r} for method {name!r}; its options are: {', '.join(accepted) or 'none'}"
            )
    missing = [n for n in accepted if parameters[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ValueError(f"method {name!r} needs option(s) {', '.join(map(repr, missing))}")


def build_method(name, **options):
    """The objective `name` (one of METHOD_NAMES) with `options` as constructor keywords; defaults are the
    papers' hyper-parameters. Unknown or missing option names raise ValueError naming them."""
    cls = method_class(name)
    _check_options(name, cls, options)
    return cls(**options)


__all__ = [
    "AttentionTransfer",
    "CRD",
    "ContrastMemory",
    "DistillationMethod",
    "FactorTransfer",
    "KD",
    "LabelSmoothing",
    "METHOD_NAMES",
    "MultiLabelKD",
    "Paraphraser",
    "SSKD",
    "Scratch",
    "StepOutput",
    "attention_map",
    "attention_transfer_loss",
    "build_method",
    "capture_outputs",
    "error_level_selection",
    "factor_transfer_loss",
    "kd_loss",
    "label_smoothing_loss",
    "method_class",
    "multilabel_kd_loss",
    "nce_contrast_loss",
    "rotation_similarities",
    "soft_target_kl",
    "supervised_loss",
]
