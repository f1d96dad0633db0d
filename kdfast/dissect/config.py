"""What a dissection run is asked to do, checked up front, and the parts of it a checkpoint depends on.
Imports no torch, so that the command line answers --help and argument errors at once."""
import dataclasses
from decimal import Decimal, InvalidOperation

# Per-channel mean/std on the 0..1 scale, applied as (pixel/255 − mean)/std.
PREPROCESS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # NetDissect-Lite: RGB 0..255 minus its BGR mean [109.5388, 118.6897, 124.6901] read in RGB order,
    # divided by 255·0.224 = 57.12.
    "lite": ((124.6901 / 255, 118.6897 / 255, 109.5388 / 255), (0.224, 0.224, 0.224)),
}
DENOMINATORS = ("lite", "netdissect")
HALF_DTYPES = ("bfloat16", "float16")


def parse_values(text, name):
    """Floats from 'start:stop:step' (stop included) or a comma list, e.g. '0.001:0.010:0.001' or '0.01,0.05'.

    Ranges step in decimal arithmetic, so 0.001:0.010:0.001 gives exactly 0.001, 0.002, …, 0.01.
    """
    try:
        if ":" in text:
            parts = [Decimal(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError
            count = int((stop - start) / step) + 1
            values = [float(start + i * step) for i in range(count)]
        else:
            values = [float(Decimal(p)) for p in text.split(",") if p.strip()]
    except (InvalidOperation, ValueError):
        raise ValueError(
            f"{name} must be 'start:stop:step' with step > 0 and stop >= start, or a comma list of numbers; "
            f"got '{text}'"
        ) from None
    if not values:
        raise ValueError(f"{name} is empty: '{text}'")
    return tuple(values)


def format_value(value):
    """Shortest text that reads back as the same float: '0.005', used in sweep.csv and q<quantile> folders."""
    return repr(float(value))


def _flag(name):
    """The command-line flag of a config field: errors name what the user typed (batch_size -> --batch-size)."""
    return "--" + name.replace("_", "-")


def _check_fractions(values, name):
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"{_flag(name)} must lie in (0, 1], got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"{_flag(name)} repeat: {list(values)}")
    return tuple(sorted(values))


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    model: str = "resnet18"
    layers: tuple = ("layer4",)
    weights: str = None
    trust_weights: bool = False
    # Seeds the weights of a model built without --weights: the same seed draws the same model in every
    # process, so a resumed run, every torchrun rank and a re-run all dissect one model (part of the identity).
    seed: int = 0
    broden: str = None  # None: the synthetic world's Broden, kdfast.data.synthetic_world.world_broden()
    broden_cache: str = None  # where the packed Broden goes; None: <broden>/.kdfast_cache
    out: str = "runs/dissect"
    quantiles: tuple = (0.005,)
    iou_threshold: float = 0.05  # the one summary.json and report.html use
    iou_thresholds: tuple = None  # extra thresholds for sweep.csv (post-processing only)
    categories: tuple = None  # None: all of the dataset's categories
    mean: tuple = PREPROCESS["imagenet"][0]
    std: tuple = PREPROCESS["imagenet"][1]
    denominator: str = "lite"
    device: str = "cpu"
    batch_size: int = 32
    workers: int = 0
    activation_cache_gb: float = 2.0  # pass 2 reuses pass 1's activations when this rank's fit in this many GiB
    checkpoint_every: int = None  # batches; None: every checkpoint_seconds
    checkpoint_seconds: float = 60.0
    top_images: int = 5
    restart: bool = False
    progress: bool = True
    # Forward-pass settings (see docs/dissect_speed.md): they change the activations, hence the results, so
    # they are part of the checkpoint identity. The defaults reproduce plain float32 NCHW inference.
    channels_last: bool = False
    autocast: str = None  # None, "bfloat16" or "float16": autocast dtype of the forward pass
    fold_batchnorm: bool = False  # BatchNorm folded into the convolution before it (models.fold_batchnorm)
    activation_dtype: str = "float32"  # storage of activations between the passes; thresholds use stored values

    def __post_init__(self):
        if not self.layers:
            raise ValueError("at least one layer name is needed (--layers)")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "quantiles", _check_fractions(tuple(self.quantiles), "quantiles"))
        _check_fractions((self.iou_threshold,), "iou_threshold")
        sweep = self.iou_thresholds if self.iou_thresholds is not None else (self.iou_threshold,)
        object.__setattr__(self, "iou_thresholds", _check_fractions(tuple(sweep), "iou_thresholds"))
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        if self.denominator not in DENOMINATORS:
            raise ValueError(f"--denominator must be one of {DENOMINATORS}, got '{self.denominator}'")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got '{self.device}'")
        for name in ("batch_size", "top_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.activation_cache_gb < 0:
            raise ValueError(f"--activation-cache-gb must be >= 0, got {self.activation_cache_gb}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1 batch, got {self.checkpoint_every}")
        if self.checkpoint_seconds <= 0:
            raise ValueError(f"--checkpoint-seconds must be positive, got {self.checkpoint_seconds}")
        if self.autocast not in (None, *HALF_DTYPES):
            raise ValueError(f"--autocast must be one of {HALF_DTYPES} or None, got '{self.autocast}'")
        if self.activation_dtype not in ("float32", *HALF_DTYPES):
            raise ValueError(f"--activation-dtype must be 'float32' or one of {HALF_DTYPES}, got '{self.activation_dtype}'")

    @property
    def sweep(self):
        """More than one quantile: per-quantile results go to <layer>/q<quantile>/."""
        return len(self.quantiles) > 1

    def state_identity(self, model_identity, broden_fingerprint, images, world_size):
        """Everything the checkpointed state depends on. IoU thresholds and the report's settings are
        post-processing, so a resumed or finished run may change them."""
        return {
            "model": model_identity,
            "seed": None if self.weights else int(self.seed),
            "layers": list(self.layers),
            "broden": broden_fingerprint,
            "images": int(images),
            "categories": None if self.categories is None else list(self.categories),
            "quantiles": [format_value(q) for q in self.quantiles],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "denominator": self.denominator,
            "device": self.device.split(":")[0],
            "batch_size": self.batch_size,
            "world_size": int(world_size),
            "forward": self._forward_identity(),
        }

    def _forward_identity(self):
        forward = {"channels_last": self.channels_last, "autocast": self.autocast,
                   "activation_dtype": self.activation_dtype}
        if self.fold_batchnorm:  # only when set: checkpoints written before the option existed still resume
            forward["fold_batchnorm"] = True
        return forward
