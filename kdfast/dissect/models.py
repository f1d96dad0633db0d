"""The model under dissection: normalising its input and recording the activations of chosen layers with forward
hooks (models are built and their weights loaded by kdfast.models.registry)."""
import torch

# The builders and the weights loader live in the one model registry; imported here for the dissection's callers.
from kdfast.models.registry import build_model, load_weights, split_file_spec  # noqa: F401
from kdfast.provenance import file_digest  # noqa: F401  (identifies a model file or checkpoint in a fingerprint)
from kdfast.dissect.config import PREPROCESS  # noqa: F401  (the input normalisation presets)



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


def fold_batchnorm(model, keep=()):
    """Folds every eval-mode BatchNorm2d whose only input is a Conv2d's output (used by nothing else) into that
    convolution's weight and bias, and replaces the BatchNorm by an Identity; returns the folded (conv, bn)
    module names. Module names stay as they were, so forward hooks on any module still fire; a convolution
    named in `keep` (a layer under dissection) is left as it is, since folding would change its output.

    The folded network computes the same function with one pass over each activation fewer, in a different
    floating-point rounding (the scale is applied to the weights, not to the output): results change in the
    last bits, so this is an option of the forward settings (docs/dissect_speed.md). The pairs come from a
    torch.fx trace of the model (fold before adding forward hooks: the trace runs them on proxies); a model fx
    cannot trace is refused with fx's reason."""
    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm's running statistics are folded)")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...) for untraceable Python
        raise ValueError(f"--fold-batchnorm: torch.fx cannot trace the model ({type(exc).__name__}: {exc}); "
                         "drop --fold-batchnorm, or use --channels-last --autocast bfloat16 instead of --fast") from exc
    modules = dict(model.named_modules())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, torch.nn.BatchNorm2d) or bn.running_mean is None or len(node.args) != 1:
            continue
        source = node.args[0]
        conv = modules.get(source.target) if getattr(source, "op", None) == "call_module" else None
        if (not isinstance(conv, torch.nn.Conv2d) or len(source.users) != 1 or source.target in keep
                or calls[source.target] != 1 or calls[node.target] != 1):
            continue
        for name, module in ((source.target, fuse_conv_bn_eval(conv, bn)), (node.target, torch.nn.Identity())):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
        folded.append((source.target, node.target))
    return folded


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
            if output.shape[2] * output.shape[3] == 1:
                # A pooled layer (e.g. ResNet's avgpool): one value per image, which an upsampled mask turns
                # into "the whole image or nothing"; every unit would tally as the same concept.
                raise ValueError(
                    f"--layers {name}: the layer outputs 1x1 maps {tuple(output.shape)}; dissection needs spatial "
                    "feature maps (pick a layer before the global pooling, e.g. layer4 of a ResNet)"
                )
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
