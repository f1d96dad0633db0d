"""The one way kdfast builds a model from a spec and rebuilds a trained model from its checkpoint.

A spec is a torchvision model name, a timm model name (when timm is installed), `path/to/file.py:callable` or
`package.module:callable`. Distillation configs, scripts/dissect.py, scripts/evaluate.py and kdfast.study all
come here, so a model is named the same way everywhere and a checkpoint written by the distill trainer (its
`config` holds the student's spec, kwargs and num_classes and the data's image size and normalisation) is
enough to rebuild its model: `load_checkpoint_model(path)`.
"""
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import pickle
import re
from pathlib import Path

import torch
from torch import nn


def split_file_spec(spec):
    """('path/to/file.py', 'callable') for a `file.py:callable` spec, else None."""
    path, sep, name = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return Path(path), name
    return None


def _torchvision_names():
    import torchvision

    return torchvision.models.list_models()


def _timm_has(name):
    if importlib.util.find_spec("timm") is None:
        return False
    import timm

    return name in timm.list_models()


def _import_callable(spec, where):
    file_spec = split_file_spec(spec)
    if file_spec is not None:
        path, name = file_spec
        if not path.is_file():
            raise FileNotFoundError(f"{where}: model file {path} does not exist (from model spec '{spec}')")
        module_spec = importlib.util.spec_from_file_location(f"kdfast_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        origin = str(path)
    else:
        module_name, _, name = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"{where}: cannot import module '{module_name}' of model spec '{spec}' ({exc})") from exc
        origin = module_name
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{where}: {origin} has no callable '{name}'; callables defined there: "
                         f"{', '.join(found) or 'none'}")
    return factory


def _accepts(factory, argument):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in params)


def _build(spec, num_classes, kwargs, pretrained, where):
    if ":" in spec:
        if pretrained is not None:
            raise ValueError(f"{where}: pretrained weights need a torchvision or timm name, not '{spec}'")
        factory = _import_callable(spec, where)
        if num_classes is not None and _accepts(factory, "num_classes"):
            kwargs.setdefault("num_classes", num_classes)
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{where}: {spec.rpartition(':')[2]}() returned {type(model).__name__}, expected a "
                            "torch.nn.Module")
        return model
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if spec in _torchvision_names():
        import torchvision

        return torchvision.models.get_model(spec, weights=pretrained, **kwargs)
    if _timm_has(spec):
        import timm

        return timm.create_model(spec, pretrained=pretrained is not None, **kwargs)
    close = difflib.get_close_matches(spec, _torchvision_names(), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    timm_note = "" if importlib.util.find_spec("timm") else " (timm is not installed, so timm names are unavailable)"
    raise ValueError(f"{where}: unknown model '{spec}': not a torchvision model name, nor a timm model name"
                     f"{timm_note}, nor 'path/to/file.py:callable' / 'package.module:callable'.{hint}")


def build_model(spec, num_classes=None, kwargs=None, seed=None, where="--model", pretrained=None):
    """A new nn.Module for `spec` (see the module docstring).

    num_classes (when not None) goes to torchvision/timm builders and to callables whose signature accepts it;
    kwargs are the builder's other arguments. With a seed, the weights are drawn under
    torch.random.fork_rng + manual_seed(seed): the same seed gives the same weights in any process, and the
    caller's random state is left as it was. `pretrained` ('DEFAULT' or a torchvision weights name) loads the
    library's own weights. Errors start with `where` (the flag or config key the spec came from)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{where}: expected a model spec (a model name or file.py:callable), got {spec!r}")
    kwargs = dict(kwargs or {})
    shown = dict(kwargs)
    try:
        if seed is None:
            return _build(spec, num_classes, kwargs, pretrained, where)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _build(spec, num_classes, kwargs, pretrained, where)
    except (FileNotFoundError, TypeError) as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: building '{spec}' with num_classes={num_classes} and kwargs {shown} failed: "
                         f"{exc}") from exc


# ---------------------------------------------------------------------------------------------------------
# Weights and checkpoints


def read_checkpoint(path, trust=False):
    """The object torch.save wrote to `path`, loaded on the CPU; weights_only unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # torch.save: zip, or legacy pickle
        raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust:
            raise ValueError(f"{path}: cannot unpickle the checkpoint ({exc})") from exc
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"an object of type {refused.group(1)}" if refused else "objects other than tensors and plain containers"
        raise ValueError(
            f"{path}: the checkpoint holds {what}, which safe loading (weights_only=True) refuses. If you "
            "trust the file, pass --trust-weights to load it with weights_only=False."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def state_dict_of(checkpoint, path):
    """The state dict inside a checkpoint: the object itself, or its 'model' / 'state_dict' entry."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    non_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ValueError(
            f"{path}: not a state dict (entries {non_tensors[:8]} are not tensors); expected a state dict or a "
            "checkpoint holding one under 'model' or 'state_dict'"
        )
    if checkpoint and all(k.startswith("module.") for k in checkpoint):  # saved from a DDP-wrapped model
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def _listing(keys, limit=20):
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state(model, state, path):
    """Loads `state` into `model` strictly, with an error listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the model: missing keys [{_listing(missing)}], unexpected keys "
            f"[{_listing(unexpected)}]"
        )
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path} does not fit the model: shape mismatches: {'; '.join(wrong[:10])}")
    model.load_state_dict(state)
    return model


def load_weights(model, path, trust=False):
    """Loads a state dict (or a checkpoint holding one under 'model'/'state_dict', e.g. the trainer's or
    torchdistill's) into `model`, strictly.

    `trust=True` unpickles arbitrary objects (weights_only=False), which torchdistill checkpoints holding
    argparse namespaces need; only for files you trust.
    """
    return load_state(model, state_dict_of(read_checkpoint(path, trust), path), path)


@dataclasses.dataclass
class CheckpointInfo:
    """What a trainer checkpoint says about its model; mean/std are on the 0..1 scale, None when the model was
    trained on unnormalised inputs or the checkpoint does not say."""

    spec: str
    kwargs: dict
    num_classes: int
    classes: list
    image_size: int
    mean: list
    std: list
    input_encoding: str
    config: dict


def _info(checkpoint, path):
    """CheckpointInfo of a loaded checkpoint, or None when it carries no trainer config."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("student"), dict):
        return None
    student, data = config["student"], config.get("data") or {}
    if not student.get("spec"):
        raise ValueError(f"{path}: its config names no student.spec; it cannot say which model it holds")
    classes = checkpoint.get("classes")
    num_classes = student.get("num_classes") or (len(classes) if classes else None)
    normalize = data.get("normalize", False)
    return CheckpointInfo(
        spec=student["spec"], kwargs=dict(student.get("kwargs") or {}), num_classes=num_classes,
        classes=list(classes) if classes else None, image_size=data.get("image_size"),
        mean=list(data["mean"]) if normalize and "mean" in data else None,
        std=list(data["std"]) if normalize and "std" in data else None,
        input_encoding=data.get("input_encoding", "rgb"), config=config)


def checkpoint_info(path, trust=False):
    """CheckpointInfo of a trainer checkpoint, or None for a plain state dict (no model is built)."""
    return _info(read_checkpoint(path, trust), path)


def load_checkpoint_model(path, spec=None, kwargs=None, num_classes=None, trust=False, where="--weights"):
    """(model with the checkpoint's weights, in eval mode; CheckpointInfo or None).

    A trainer checkpoint rebuilds its own model; `spec` (e.g. an explicit --model) is then only checked: a
    checkpoint of another architecture is a ValueError naming both. A plain state dict needs `spec` (and the
    `kwargs`/`num_classes` it was built with)."""
    checkpoint = read_checkpoint(path, trust)
    info = _info(checkpoint, path)
    if info is not None:
        if spec is not None and spec != info.spec:
            raise ValueError(f"{where}: {path} holds a '{info.spec}' model (kwargs {info.kwargs}), not the "
                             f"'{spec}' that was asked for; drop the model argument to use the checkpoint's own")
        spec, kwargs, num_classes = info.spec, info.kwargs, info.num_classes
    elif spec is None:
        raise ValueError(f"{where}: {path} is a plain state dict with no config naming its architecture; name the "
                         "model (e.g. --model resnet18 or file.py:callable)")
    model = build_model(spec, num_classes, kwargs, where=f"{where} {path}")
    load_state(model, state_dict_of(checkpoint, path), path)
    return model.eval(), info
