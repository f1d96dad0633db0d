"""The model under dissection: building it from a spec, loading its weights, normalising its input and
recording the activations of chosen layers with forward hooks."""
import difflib
import hashlib
import importlib.util
import pickle
import re
from pathlib import Path

import torch
from torch import nn

# Per-channel mean/std on the 0..1 scale, applied as (pixel/255 − mean)/std.
PREPROCESS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # NetDissect-Lite: RGB 0..255 minus its BGR mean [109.5388, 118.6897, 124.6901] read in RGB order,
    # divided by 255·0.224 = 57.12.
    "lite": ((124.6901 / 255, 118.6897 / 255, 109.5388 / 255), (0.224, 0.224, 0.224)),
}


def file_digest(path):
    """sha256 of a file's bytes: identifies a model file or checkpoint in a run's fingerprint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_file_spec(spec):
    """('path/to/file.py', 'callable') for a `file.py:callable` spec, else None."""
    path, sep, name = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return Path(path), name
    return None


def _from_file(path, name):
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (from model spec '{path}:{name}')")
    module_spec = importlib.util.spec_from_file_location(f"kdfast_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{path} has no callable '{name}'; callables defined there: {', '.join(found) or 'none'}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{path}:{name}() returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _from_timm(name):
    try:
        import timm
    except ImportError:
        return None
    if name not in timm.list_models():
        return None
    return timm.create_model(name, pretrained=False)


def build_model(spec):
    """nn.Module for a torchvision model name (random init), a timm model name (when timm is installed) or
    `path/to/file.py:callable` (a function of no arguments returning the model)."""
    file_spec = split_file_spec(spec)
    if file_spec is not None:
        return _from_file(*file_spec)
    torchvision_names = _torchvision_names()
    if spec in torchvision_names:
        import torchvision

        return torchvision.models.get_model(spec, weights=None)
    model = _from_timm(spec)
    if model is not None:
        return model
    close = difflib.get_close_matches(spec, torchvision_names, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    timm_note = "" if importlib.util.find_spec("timm") else " (timm is not installed, so timm names are unavailable)"
    raise ValueError(
        f"unknown model '{spec}': not a torchvision model name, nor a timm model name{timm_note}, nor "
        f"'path/to/file.py:callable'.{hint}"
    )


def _torchvision_names():
    import torchvision

    return torchvision.models.list_models()


def _state_dict_of(checkpoint, path):
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


def load_weights(model, path, trust=False):
    """Loads a state dict (or a torchdistill-style checkpoint holding one) into `model`, strictly.

    `trust=True` unpickles arbitrary objects (weights_only=False), which torchdistill checkpoints holding
    argparse namespaces need; only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # torch.save: zip, or legacy pickle
        raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
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
    state = _state_dict_of(checkpoint, path)
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


class Normalizer:
    """uint8 (B, 3, H, W) images → normalised float32 on the model's device (the conversion runs there)."""

    def __init__(self, mean, std, device):
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if mean.shape != (3,) or std.shape != (3,):
            raise ValueError(f"mean and std need 3 values (R, G, B), got {mean.tolist()} and {std.tolist()}")
        if not bool((std > 0).all()):
            raise ValueError(f"std values must be positive, got {std.tolist()}")
        self.mean = mean.view(1, 3, 1, 1).to(device)
        self.std = std.view(1, 3, 1, 1).to(device)
        self.device = device

    def __call__(self, images):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True).float().div_(255)
        return images.sub_(self.mean).div_(self.std)


class _AllRecorded(Exception):
    """Raised from the last hook to skip the rest of the forward pass, whose output nobody needs."""


class LayerRecorder:
    """Forward hooks that keep the (B, U, h, w) output of each named layer for one forward pass.

    Outputs are copied, because later in-place operations (e.g. ResNet's `out += identity`) would change
    them, and the forward stops as soon as every layer has been recorded.
    """

    def __init__(self, model, layers):
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            available = [name for name in modules if name]
            raise ValueError(
                f"unknown layer name(s) {unknown}; the model's modules are: {', '.join(available)}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer names repeat: {list(layers)}")
        self.model = model
        self.layers = list(layers)
        self._outputs = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name):
        def keep(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(
                    f"layer '{name}' outputs {shape}; dissection needs a (B, units, h, w) convolutional feature map"
                )
            if not output.dtype.is_floating_point:
                raise ValueError(f"layer '{name}' outputs {output.dtype}; expected a floating-point feature map")
            if name in self._outputs:
                raise ValueError(
                    f"layer '{name}' ran more than once in one forward pass (a shared module); dissect a module "
                    "that runs once"
                )
            self._outputs[name] = output.detach().to(torch.float32, copy=True)
            if len(self._outputs) == len(self.layers):
                raise _AllRecorded

        return keep

    def __call__(self, inputs):
        """{layer: float32 (B, U, h, w)} for one batch of model inputs."""
        self._outputs = {}
        try:
            self.model(inputs)
        except _AllRecorded:
            pass
        missing = [name for name in self.layers if name not in self._outputs]
        if missing:
            raise RuntimeError(f"layer(s) {missing} did not run in the model's forward pass")
        outputs, self._outputs = self._outputs, {}
        return outputs

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
