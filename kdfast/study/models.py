"""The study's models, all through kdfast.models.registry: a student skeleton from a distill config (for checks
before training), a checkpoint's student and its teacher for measuring, and the input normalisation a
checkpoint's training used."""
import functools
from pathlib import Path

from kdfast.distill.config import ModelConfig
from kdfast.distill.models import build_model as build_configured
from kdfast.evaluate.models import Normalized
from kdfast.models import registry

SKELETON_CLASSES = 10  # layer names do not depend on the number of classes


def skeleton(spec, kwargs=None, num_classes=None, where="student.spec"):
    """A randomly initialised model of `spec` (no weights): its module names are what layers are checked against."""
    return registry.build_model(spec, num_classes or SKELETON_CLASSES, dict(kwargs or {}), where=where)


@functools.lru_cache(maxsize=64)
def _load(path, stamp, model, kwargs_items):
    module, info = registry.load_checkpoint_model(path, spec=model, kwargs=dict(kwargs_items or ()),
                                                  where="checkpoint")
    return module, info


def checkpoint_student(path, model=None, kwargs=None):
    """(the checkpoint's student with its weights, loaded strictly, in eval mode; CheckpointInfo or None).
    `model` is the study's expected architecture: a checkpoint of another one is a ValueError naming both.
    Loaded once per process and file version (path, size, mtime)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    stat = path.stat()
    items = tuple(sorted((kwargs or {}).items())) if kwargs else None
    module, info = _load(str(path), (stat.st_size, stat.st_mtime_ns), model, items)
    return module, info


def config_of(info):
    return info.config if info is not None else {}


def normalisation(info):
    """(mean, std) on the 0..1 scale the model was trained with; (0, 1) when it took unnormalised images."""
    if info is not None and info.input_encoding != "rgb":
        raise ValueError(f"the model was trained on '{info.input_encoding}'-encoded inputs; the study measures only "
                         "rgb models")
    if info is None or info.mean is None:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(info.mean), tuple(info.std)


def normalised(module, info):
    """`module` taking [0, 1] images, normalised as its training did."""
    return Normalized(module, *normalisation(info))


def checkpoint_teacher(info, num_classes):
    """The teacher a run was trained with (its config's teacher section, weights included), taking [0, 1]
    images, or None when the config names no teacher."""
    teacher = config_of(info).get("teacher") or {}
    if not teacher.get("spec"):
        return None
    section = ModelConfig(spec=teacher["spec"], weights=teacher.get("weights"), kwargs=teacher.get("kwargs") or {},
                          num_classes=teacher.get("num_classes"))
    return normalised(build_configured(section, num_classes, "teacher").eval(), info)
