"""The configuration of one distillation run: a YAML file checked against a typed schema with defaults.

* Every key is checked: an unknown key, or a value of the wrong type, raises `ConfigError` naming the key's
  dotted path (`optim.lr: expected a number, got 'fast' (str)`).
* `base: other.yaml` (relative to the including file) inherits another config; sections merge key by key,
  free-form mappings (`method.options`, `*.kwargs`) and lists are replaced whole.
* `key.path=value` overrides (from the command line) set one dotted key; the value is read as YAML, so
  `optim.lr=0.05`, `schedule.milestones=[1,2]`, `teacher.spec=null` and `method.options.alpha=0.9` all work.
* Floats may be written `1e-4`: PyYAML reads exponent notation without a dot as a string, so float keys also
  accept strings that parse as a number.
"""
import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key path it concerns."""


def _choices(*values, default):
    return field(default=default, metadata={"choices": values})


@dataclass
class GenerateConfig:
    """The generated datasets (data.type: hierarchical, see kdfast.data.hierarchical; data.type: world, see
    kdfast.data.synthetic_world): superclasses x subclasses classes, images per class and split, size, seed."""

    superclasses: int = 3
    subclasses: int = 4
    train_per_class: int = 100
    val_per_class: int = 25
    size: int = 32
    seed: int = 0


@dataclass
class DataConfig:
    # memory: (image, target) datasets held in memory, passed in code: train(config, datasets=...).
    type: str = _choices("imagefolder", "hierarchical", "world", "waterbirds", "voc", "memory", default="imagefolder")
    # imagefolder: the folder holding <train_split>/ and <val_split>/ class folders.
    # waterbirds, voc: the official layouts with boxes (kdfast.distill.task_data); data.synthetic generates one.
    # hierarchical, world: where to generate it; null = $KDFAST_CACHE (default ~/.cache/kdfast).
    root: typing.Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224
    resize_size: typing.Optional[int] = None  # evaluation: resize the short side to this, then centre-crop
    crop_scale: typing.List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop's scale
    augment: bool = True  # random resized crop + horizontal flip for training
    normalize: bool = True
    mean: typing.List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: typing.List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # bcos: the models take [r, g, b, 1-r, 1-g, 1-b] of unnormalised images (kdfast.models.bcos.encode_input).
    input_encoding: str = _choices("rgb", "bcos", default="rgb")
    few_shot: typing.Optional[int] = None  # train on N images per class (a seeded subset)
    few_shot_seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # waterbirds / voc: parameters of kdfast.data.waterbirds.generate_waterbirds_style / kdfast.data.voc.
    # generate_voc_style, which writes the set into root (null: the cache) on first use; null = use root as is.
    synthetic: typing.Optional[dict] = None
    # Data-free distillation: train on the (unlabelled) images under this folder instead of root's train split.
    distill_images: typing.Optional[str] = None
    # Generates the data-free images' set first: {type: waterbirds|voc, root: ..., <generator parameters>}
    # (as data.synthetic), e.g. the VOC-style set whose JPEGImages folder data.distill_images names.
    distill_synthetic: typing.Optional[dict] = None


@dataclass
class ModelConfig:
    # torchvision or timm model name, `path/to/file.py:callable` or `package.module:callable`; null = none.
    spec: typing.Optional[str] = None
    # null (random init), a state dict / checkpoint file, or `pretrained` / `pretrained:<torchvision weights>`.
    weights: typing.Optional[str] = None
    kwargs: dict = field(default_factory=dict)  # extra arguments of the model builder
    num_classes: typing.Optional[int] = None  # null = the dataset's number of classes


@dataclass
class MethodConfig:
    name: str = "scratch"  # a name known to kdfast.distill.build_method
    options: dict = field(default_factory=dict)  # keyword arguments of build_method


@dataclass
class OptimConfig:
    name: str = _choices("sgd", "adam", "adamw", default="sgd")
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: typing.List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw only
    weight_decay: float = 1e-4
    # norm: clip the global gradient norm to grad_clip_value (default 1.0); agc: adaptive gradient clipping
    # (Brock et al. 2021), unit-wise |g| <= grad_clip_value * max(|w|, 1e-3) (default 0.01).
    grad_clip: str = _choices("none", "norm", "agc", default="none")
    grad_clip_value: typing.Optional[float] = None


@dataclass
class ScheduleConfig:
    # step: lr * gamma^(number of milestones passed); cosine: cosine decay to min_lr after the warm-up.
    name: str = _choices("step", "cosine", "constant", default="step")
    milestones: typing.List[int] = field(default_factory=lambda: [30, 60, 90])  # epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from warmup_start_factor * lr, updated every step
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0


@dataclass
class LogConfig:
    csv: bool = True  # <output_dir>/metrics.csv
    tensorboard: bool = False  # <output_dir>/tensorboard (needs the tensorboard package)
    progress: bool = True  # tqdm bars
    epoch_lines: bool = True  # one summary line per epoch on stdout


@dataclass
class Config:
    name: typing.Optional[str] = None  # defaults to the config file's name
    seed: int = 0
    output_dir: typing.Optional[str] = None  # null = runs/<name>
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    epochs: int = 100
    batch_size: int = 256  # global: split evenly across torchrun processes
    eval_batch_size: typing.Optional[int] = None  # null = batch_size
    workers: int = 4  # DataLoader processes per training process
    amp: bool = False
    amp_dtype: str = _choices("auto", "float16", "bfloat16", default="auto")  # auto: fp16 on CUDA, bf16 on CPU
    # Precompute the teacher's logits and explanations once (kdfast.explain.frozen) and augment them together
    # with the images, instead of running the teacher every step.
    frozen_explanations: bool = False
    sync_batchnorm: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch
    find_unused_parameters: bool = False  # passed to DistributedDataParallel
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(spec="resnet18"))
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------
# Checking raw (YAML) data against the schema


def _type_name(value):
    return type(value).__name__


def _check_value(value, annotation, path):
    """`value` converted to `annotation`'s type, or ConfigError naming `path`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _check_value(value, inner, path)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {value!r} ({_type_name(value)})")
        return _build(annotation, value, path)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({_type_name(value)})")
        (inner,) = typing.get_args(annotation)
        return [_check_value(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r} ({_type_name(value)})")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{path}: keys must be strings, got {bad}")
        return copy.deepcopy(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r} ({_type_name(value)})")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r} ({_type_name(value)})")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r} ({_type_name(value)})")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r} ({_type_name(value)})")
        return value
    raise TypeError(f"schema type {annotation} of {path} is not supported")  # a bug in the schema itself


def _build(cls, raw, prefix):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        where = f"in '{prefix}'" if prefix else "at the top level"
        raise ConfigError(
            f"{_join(prefix, unknown[0])}: unknown key {where}; known keys: {', '.join(fields)}"
        )
    values = {}
    for name, value in raw.items():
        path = _join(prefix, name)
        values[name] = _check_value(value, hints[name], path)
        choices = fields[name].metadata.get("choices")
        if choices and values[name] not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(choices)}, got {value!r}")
    return cls(**values)


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else str(name)


def _positive(path, value, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{path}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(config):
    """Checks that span keys or ranges; the schema already checked names and types."""
    for path in ("epochs", "batch_size", "eval_batch_size", "data.image_size", "data.resize_size",
                 "data.few_shot", "optim.lr", "teacher.num_classes", "student.num_classes",
                 "data.generate.superclasses", "data.generate.subclasses", "data.generate.train_per_class",
                 "data.generate.val_per_class", "data.generate.size", "optim.grad_clip_value"):
        _positive(path, _get(config, path))
    for path in ("workers", "optim.weight_decay", "optim.momentum", "schedule.warmup_epochs", "schedule.min_lr"):
        _positive(path, _get(config, path), allow_zero=True)
    if config.student.spec is None:
        raise ConfigError("student.spec: the student model is required (a model name or file.py:callable)")
    data = config.data
    if data.type == "imagefolder" and data.root is None:
        raise ConfigError("data.root: required for data.type imagefolder (a folder with train/ and val/)")
    if data.type in ("waterbirds", "voc") and data.root is None and data.synthetic is None:
        raise ConfigError(f"data.root: required for data.type {data.type} (or set data.synthetic to generate one)")
    if data.synthetic is not None and data.type not in ("waterbirds", "voc"):
        raise ConfigError(f"data.synthetic: only for data.type waterbirds or voc, not {data.type}")
    if data.distill_synthetic is not None:
        if data.distill_images is None:
            raise ConfigError("data.distill_synthetic: needs data.distill_images (the folder of the generated "
                              "set whose images replace the training set)")
        if data.distill_synthetic.get("type") not in ("waterbirds", "voc"):
            raise ConfigError("data.distill_synthetic.type: expected waterbirds or voc (the generator), got "
                              f"{data.distill_synthetic.get('type')!r}")
    if len(data.crop_scale) != 2 or not 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale: expected [low, high] with 0 < low <= high <= 1, got {data.crop_scale}")
    for key in ("mean", "std"):
        if len(getattr(data, key)) != 3:
            raise ConfigError(f"data.{key}: expected 3 values (R, G, B), got {getattr(data, key)}")
    if any(s <= 0 for s in data.std):
        raise ConfigError(f"data.std: values must be positive, got {data.std}")
    if data.input_encoding == "bcos" and data.normalize:
        raise ConfigError("data.normalize: must be false with data.input_encoding bcos (B-cos models take "
                          "unnormalised [0, 1] images)")
    if data.generate.subclasses < 2:
        raise ConfigError(f"data.generate.subclasses: at least 2 are needed for a hierarchy, got "
                          f"{data.generate.subclasses}")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {config.optim.betas}")
    schedule = config.schedule
    if schedule.milestones != sorted(set(schedule.milestones)):
        raise ConfigError(f"schedule.milestones: expected strictly increasing epochs, got {schedule.milestones}")
    if not 0 < schedule.warmup_start_factor <= 1:
        raise ConfigError(f"schedule.warmup_start_factor: expected a value in (0, 1], got "
                          f"{schedule.warmup_start_factor}")
    if schedule.min_lr > config.optim.lr:
        raise ConfigError(f"schedule.min_lr: {schedule.min_lr} exceeds optim.lr {config.optim.lr}")
    if config.device != "auto" and config.device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got '{config.device}'")
    if config.frozen_explanations and config.teacher.spec is None:
        raise ConfigError("frozen_explanations: needs a teacher (teacher.spec) to precompute explanations from")
    return config


def _get(config, path):
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


# ---------------------------------------------------------------------------------------------------------
# Files, inheritance and overrides


def load_yaml_file(path, what="config file", error=ConfigError):
    """The parsed YAML of a file (None when empty); `error` (naming it '<what> <path>') when the file is missing
    or not valid YAML. Shared by distill configs and study files (kdfast.study.schema)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc


def set_key(raw, key, value, error=ConfigError):
    """Sets the dotted `key` in the mapping `raw` in place, creating sections as needed; `error` when a section
    on the way holds a value. Shared by the override handling of distill configs and study files."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise error(f"{key}: '{'.'.join(parts[:depth + 1])}' is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def _read_yaml(path):
    raw = load_yaml_file(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level, got {_type_name(raw)}")
    return raw


def load_raw(path, _seen=()):
    """The file's mapping with its `base:` chain merged in (base first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"base: {path} includes itself (chain: {' -> '.join(map(str, _seen + (path,)))})")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"base: expected a file name in {path}, got {base!r}")
    return merge(load_raw(path.parent / base, _seen + (path,)), raw)


def merge(base, override, cls=Config):
    """`override` on top of `base`: schema sections merge key by key; other values are replaced whole."""
    merged = copy.deepcopy(base)
    hints = typing.get_type_hints(cls)
    for key, value in override.items():
        section = hints.get(key)
        if (section is not None and dataclasses.is_dataclass(section) and isinstance(value, dict)
                and isinstance(merged.get(key), dict)):
            merged[key] = merge(merged[key], value, section)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text):
    """('a.b.c', value) from 'a.b.c=value', the value read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.path=value, e.g. optim.lr=0.05")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: the override value '{value}' is not valid YAML ({exc})") from exc
    return key, parsed


def _check_override_path(key):
    """The dotted key must follow the schema's sections (free-form mappings take any sub-keys)."""
    cls = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = typing.get_type_hints(cls)
        if part not in fields:
            prefix = ".".join(parts[:depth])
            where = f"in '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"{'.'.join(parts[:depth + 1])}: unknown key {where}; known keys: {', '.join(fields)}")
        hint = fields[part]
        if hint is dict:
            return
        if not dataclasses.is_dataclass(hint):
            if depth < len(parts) - 1:
                raise ConfigError(f"{key}: '{'.'.join(parts[:depth + 1])}' is a value, not a section")
            return
        cls = hint


def apply_overrides(raw, overrides):
    """Sets each `key.path=value` in the raw mapping (creating sections as needed)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        _check_override_path(key)
        set_key(raw, key, value)
    return raw


def from_dict(raw):
    """A validated Config from a plain mapping (e.g. a checkpoint's 'config')."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of keys at the top level, got {_type_name(raw)}")
    config = validate(_build(Config, raw, ""))
    if config.output_dir is None:
        config.output_dir = str(Path("runs") / (config.name or "distill"))
    return config


def load_config(path=None, overrides=()):
    """Config from a YAML file (or the defaults when path is None) plus `key=value` overrides."""
    raw = load_raw(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    if path is not None and raw.get("name") is None:
        raw["name"] = Path(path).stem
    return from_dict(raw)


def config_yaml(config):
    """The fully resolved config (every default spelled out) as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def dump_config(config, path):
    Path(path).write_text(config_yaml(config))
