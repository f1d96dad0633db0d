"""The study's one door to models: a student skeleton from a distill config (for checks before training), a
checkpoint's student and teacher for measuring, and a file spec scripts/dissect.py can build a checkpoint's
student from."""
from pathlib import Path

import torch

from kdfast.distill.config import ConfigError, ModelConfig
from kdfast.distill.models import build_model
from kdfast.evaluate.models import Normalized
from kdfast.evaluate.sources import normalization

SKELETON_CLASSES = 10  # layer names do not depend on the number of classes


def skeleton(spec, kwargs=None, num_classes=None, where="student"):
    """A randomly initialised model of `spec` (no weights): its module names are what layers are checked against."""
    return build_model(ModelConfig(spec=spec, kwargs=dict(kwargs or {}), num_classes=num_classes),
                       SKELETON_CLASSES, where)


def read_checkpoint(path):
    """The checkpoint's dict (weights_only loading); ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean "not a loadable checkpoint"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


def student_section(checkpoint, path, model=None, kwargs=None):
    """(spec, kwargs, num_classes) of the checkpoint's student; `model` (the study's expectation) must agree with
    the checkpoint's own config when both exist."""
    config = checkpoint.get("config") or {}
    student = config.get("student") or {}
    own = student.get("spec")
    if model is not None and own is not None and own != model:
        raise ValueError(f"{path}: the checkpoint holds a '{own}' student, but the study expects '{model}'")
    spec = own or model
    if spec is None:
        raise ValueError(f"{path}: the checkpoint carries no config naming its architecture; give the run a "
                         "'model:' (e.g. resnet18)")
    classes = student.get("num_classes") or (len(checkpoint["classes"]) if checkpoint.get("classes") else None)
    return spec, (student.get("kwargs") if own else kwargs) or {}, classes


def checkpoint_student(path, model=None, kwargs=None):
    """(nn.Module with the checkpoint's weights, loaded strictly, in eval mode; the checkpoint's config or {})."""
    from kdfast.dissect.models import load_weights

    checkpoint = read_checkpoint(path)
    spec, kwargs, classes = student_section(checkpoint, path, model, kwargs)
    try:
        module = build_model(ModelConfig(spec=spec, kwargs=kwargs, num_classes=classes), classes or 1000, str(path))
        load_weights(module, path)
    except (ConfigError, ValueError) as exc:
        raise ValueError(f"{path}: does not load into a '{spec}' model: {exc}") from exc
    return module.eval(), checkpoint.get("config") or {}


def normalised(module, config):
    """`module` taking [0, 1] images, normalised as its training config says."""
    norm = normalization("auto", config)
    return Normalized(module, *norm) if norm else module


def checkpoint_teacher(config, num_classes):
    """The teacher a run was trained with (its config's teacher section, weights included), or None."""
    teacher = (config or {}).get("teacher") or {}
    if not teacher.get("spec"):
        return None
    section = ModelConfig(spec=teacher["spec"], weights=teacher.get("weights"), kwargs=teacher.get("kwargs") or {},
                          num_classes=teacher.get("num_classes"))
    return normalised(build_model(section, num_classes, "teacher").eval(), config)


def input_normalisation(config):
    """(mean, std) on the 0..1 scale the model's training used: what dissection must feed it."""
    norm = normalization("auto", config)
    return norm if norm else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


DISSECT_SHIM = '''"""Written by kdfast.study: rebuilds the student of one checkpoint for kdfast.dissect (weights loaded there)."""
from kdfast.study.models import checkpoint_architecture


def build():
    return checkpoint_architecture({path!r})
'''


def checkpoint_architecture(path):
    """The checkpoint's student architecture, randomly initialised (dissect loads the weights itself)."""
    checkpoint = read_checkpoint(path)
    spec, kwargs, classes = student_section(checkpoint, path)
    return build_model(ModelConfig(spec=spec, kwargs=kwargs, num_classes=classes), classes or 1000, str(path))


def dissect_model_spec(checkpoint, folder):
    """A `file.py:build` spec for kdfast.dissect that builds `checkpoint`'s student (written into `folder`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "model.py"
    text = DISSECT_SHIM.format(path=str(Path(checkpoint).resolve()))
    if not shim.is_file() or shim.read_text() != text:
        shim.write_text(text)
    return f"{shim}:build"
