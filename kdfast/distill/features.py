"""Reading intermediate outputs of named submodules with forward hooks, so distillation methods work on stock
models (torchvision ResNets: `layer1`..`layer4`, `avgpool`, `fc`) without rewriting their forward."""
import contextlib
import functools

from torch import nn


def unwrap(model):
    """The module that owns the parameters: (Distributed)DataParallel keep the real model under `.module`, and
    hook names are the real model's names (`layer4`, not `module.layer4`)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def find_submodule(model, name):
    """`model.get_submodule(name)` with an error that says which names exist."""
    base = unwrap(model)
    try:
        return base.get_submodule(name)
    except AttributeError:
        children = ", ".join(child for child, _ in base.named_children()) or "none"
        raise ValueError(
            f"{type(base).__name__} has no submodule named {name!r} (its top-level children: {children}); "
            "pass the dotted module name whose output the method should use"
        ) from None


def _store(outputs, name, module, inputs, output):
    outputs[name] = output


@contextlib.contextmanager
def capture_outputs(model, names):
    """Within the block, each forward of `model` stores the output of every named submodule in the yielded dict
    (name -> output of its latest call). The hooks are removed on exit, also when the forward raises.

        with capture_outputs(student, ["layer3", "layer4"]) as features:
            logits = student(images)
        features["layer4"]  # (B, 512, 7, 7) for a ResNet-18 at 224 px
    """
    outputs = {}
    handles = []
    try:
        for name in dict.fromkeys(names):  # a name listed twice (e.g. for two pairs) needs one hook
            module = find_submodule(model, name)
            handles.append(module.register_forward_hook(functools.partial(_store, outputs, name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def captured(outputs, name, model):
    """The stored output `name` as a tensor, or an error saying why it is missing."""
    if name not in outputs:
        raise RuntimeError(
            f"submodule {name!r} of {type(unwrap(model)).__name__} did not run during the forward pass, "
            "so its output could not be captured; choose a module on the forward path"
        )
    value = outputs[name]
    if not hasattr(value, "dim"):
        raise TypeError(f"submodule {name!r} returned {type(value).__name__}, expected a tensor")
    return value
