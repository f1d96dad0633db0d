"""Where the models and data of an evaluation come from: files named on the command line, the embedded
distillation default's runs, or — when neither exists — small models trained here on generated shapes."""
import shutil
from pathlib import Path

from kdfast.data.synthetic_shapes import make_synthetic_shapes
from kdfast.evaluate.data import image_folder_data, synthetic_shapes_data
from kdfast.evaluate.fallback import fallback_paths, train_fallback_models
from kdfast.evaluate.models import Normalized, load_classifier

# `python scripts/distill.py` (no arguments) writes <DISTILL_DEFAULT_DIR>/<run>/best.pt, its teacher under "teacher".
DISTILL_DEFAULT_DIR = Path("runs/distill")
TEACHER_RUN = "teacher"
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The fallback: 48-pixel shapes, enough images for tiny ResNets to learn them in a few CPU minutes.
FALLBACK_DATA = {"size": 48, "counts": {"train": 960, "test": 240}, "seed": 0}


def model_names(paths, names=None):
    """Display names: given ones, else the file stem — or its folder for trainer files (best.pt, last.pt)."""
    if names is not None:
        if len(names) != len(paths):
            raise ValueError(f"--names gives {len(names)} names for {len(paths)} models")
    else:
        names = [Path(p).parent.name if Path(p).stem in ("best", "last") else Path(p).stem for p in paths]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"model names {repeated} repeat; name the models with --names")
    return list(names)


def normalization(choice, config):
    """(mean, std) applied inside the model, or None. 'auto' takes the training config's when it has one."""
    if choice == "none":
        return None
    if choice == "imagenet":
        return IMAGENET_NORMALIZATION
    if choice != "auto":
        raise ValueError(f"--normalize must be auto, none or imagenet, got '{choice}'")
    data = (config or {}).get("data") or {}
    if data.get("input_encoding", "rgb") != "rgb":
        raise ValueError(f"the model was trained on '{data['input_encoding']}'-encoded inputs; evaluating B-cos "
                         "input encodings is not supported")
    return (tuple(data["mean"]), tuple(data["std"])) if data.get("normalize") else None


def load_models(paths, num_classes, arch=None, names=None, normalize="auto", device="cpu"):
    """({name: model on device, normalising its [0, 1] input}, {name: path}, config of the first checkpoint)."""
    models, first_config = {}, None
    for name, path in zip(model_names(paths, names), paths):
        model, config = load_classifier(path, num_classes, arch)
        first_config = first_config or config
        norm = normalization(normalize, config)
        models[name] = (Normalized(model, *norm) if norm else model).to(device).eval()
    return models, {n: str(p) for n, p in zip(model_names(paths, names), paths)}, first_config


def distill_runs(folder=DISTILL_DEFAULT_DIR):
    """({run: best.pt} of the students, the teacher's best.pt or None) found in a distillation output folder."""
    found = {p.parent.name: p for p in sorted(Path(folder).glob("*/best.pt"))}
    teacher = found.pop(TEACHER_RUN, None)
    return found, teacher


def data_of_run(config, image_size=None, test_limit=None, train_limit=None, seed=0):
    """The validation (test) and training images a distillation config trained on."""
    data = config["data"]
    root = data.get("root")
    if data["type"] in ("hierarchical", "world"):  # generated datasets: built (or found cached) as in training
        from kdfast.data.hierarchical import hierarchical_dataset
        from kdfast.data.synthetic_world import world_dataset

        make = {"hierarchical": hierarchical_dataset, "world": world_dataset}[data["type"]]
        root = make(root=root, progress=False, **data["generate"])
    if root is None:
        raise ValueError("the checkpoint's config names no data.root; pass --data or --imagefolder")
    return image_folder_data(root, image_size or data["image_size"], data["val_split"], data["train_split"],
                             test_limit=test_limit, train_limit=train_limit, seed=seed)


def fallback_setup(out_dir, device="cpu", test_limit=None, train_limit=None, seed=0):
    """Generated 48-px shapes (cached in out_dir) and teacher/scratch/KD models trained on them; returns
    (data, {name: model}, {name: path}, teacher)."""
    out_dir = Path(out_dir)
    root = out_dir / "synthetic_shapes"
    if not (root / "meta.json").is_file():
        make_synthetic_shapes(root, FALLBACK_DATA["counts"], size=FALLBACK_DATA["size"], seed=FALLBACK_DATA["seed"])
    data = synthetic_shapes_data(root, test_limit=test_limit, train_limit=train_limit, seed=seed)
    paths = fallback_paths(out_dir / "models")
    if not all(p.is_file() for p in paths.values()):
        if (out_dir / "models").exists():  # an interrupted earlier training: its runs cannot be resumed halfway
            shutil.rmtree(out_dir / "models")
        paths = train_fallback_models(data, out_dir / "models", seed=seed)
    models = {name: load_classifier(paths[name], data.num_classes)[0].to(device) for name in paths}
    teacher = models.pop("teacher")
    return data, models, {n: str(paths[n]) for n in models}, teacher
