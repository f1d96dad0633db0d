"""The e2KD paper's data settings for the trainer (kdfast.distill.trainer.build_datasets hands over to
`task_datasets` for them):

* data.type waterbirds / voc: the Waterbirds and PASCAL VOC layouts (kdfast.data.waterbirds, kdfast.data.voc),
  items with "boxes" (and Waterbirds "groups"); `data.synthetic` (a mapping of the generator's parameters)
  generates a Waterbirds-style / VOC-style set into data.root (null: the cache) on first use. Training images
  are resized to data.image_size and flipped (data.augment), never cropped, so boxes stay whole.
* data.distill_images: a folder whose images (any layout, found recursively) replace the training set with
  unlabelled images ("data-free" distillation, the paper's Table 5: a teacher trained on dataset A distilled
  with images of dataset B); validation stays on data.root's val split. Needs a label-free method
  (kd with alpha 1, e2kd_* with ce_weight 0). data.distill_synthetic generates dataset B first.
"""
import copy
import dataclasses
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from kdfast.data.boxes import BoxedTransform
from kdfast.data.imagefolder import train_transform
from kdfast.distill.config import ConfigError
from kdfast.distributed import rank0_first

BOXED_TYPES = ("waterbirds", "voc")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _generator(kind):
    if kind == "waterbirds":
        from kdfast.data.waterbirds import generate_waterbirds_style

        return generate_waterbirds_style
    from kdfast.data.voc import generate_voc_style

    return generate_voc_style


def dataset_class(kind):
    if kind == "waterbirds":
        from kdfast.data.waterbirds import WaterbirdsDataset

        return WaterbirdsDataset
    from kdfast.data.voc import VOCMultiLabel

    return VOCMultiLabel


def generate(kind, params, processes, where):
    """Runs the `kind` generator with `params` (rank 0 first, the others then find its output); returns the
    set's root. Bad parameters are ConfigErrors naming `where`."""
    generator = _generator(kind)
    try:
        return rank0_first(processes, lambda: generator(**params))
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc} (the parameters of {generator.__name__})") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def boxed_root(data, processes):
    """data.root, generated first (by rank 0) when data.synthetic is set."""
    if data.synthetic is None:
        if data.root is None:
            raise ConfigError(f"data.root: required for data.type {data.type} without data.synthetic")
        return Path(data.root)
    return generate(data.type, dict(data.synthetic, root=data.root), processes, "data.synthetic")


def boxed_datasets(config, processes):
    data = config.data
    if data.few_shot is not None:
        raise ConfigError(f"data.few_shot: not supported for data.type {data.type}")
    if config.frozen_explanations:
        raise ConfigError(f"frozen_explanations: not supported for data.type {data.type} (boxes would not follow "
                          "the stored maps' augmentation)")
    root = boxed_root(data, processes)
    common = dict(normalize=data.normalize, mean=data.mean, std=data.std, bcos=data.input_encoding == "bcos")
    cls = dataset_class(data.type)
    try:
        train = cls(root, data.train_split, BoxedTransform(data.image_size, flip=data.augment, **common))
        val = cls(root, data.val_split, BoxedTransform(data.image_size, flip=False, **common))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data: {exc}") from exc
    return train, val, list(val.classes)


class UnlabelledImages(Dataset):
    """Every image file under `folder` (sorted paths), with target −1 (no label)."""

    def __init__(self, folder, transform):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.targets = [-1] * len(self.paths)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), -1


def distill_image_set(config):
    from kdfast.distill import build_method
    from kdfast.distill.mixup import uses_labels

    data = config.data
    reason = uses_labels(build_method(config.method.name, **config.method.options))
    if reason is not None:
        raise ConfigError(f"method: data-free distillation (data.distill_images) has no labels: {reason}")
    transform = train_transform(data.image_size, data.crop_scale, data.augment, normalize=data.normalize,
                                mean=data.mean, std=data.std)
    if data.input_encoding == "bcos":
        from kdfast.distill.trainer import BcosEncoding

        transform.transforms.append(BcosEncoding())
    try:
        return UnlabelledImages(data.distill_images, transform)
    except FileNotFoundError as exc:
        raise ConfigError(f"data.distill_images: {exc}") from exc


def task_datasets(config, processes, progress, build_datasets):
    """(training items, validation items, class names) for the settings above; `build_datasets` is the
    trainer's own builder, used for the validation side of data-free runs on other data types."""
    data = config.data
    if data.distill_images is not None:
        if config.frozen_explanations:
            raise ConfigError("frozen_explanations: not supported with data.distill_images")
        if data.distill_synthetic is not None:
            params = {key: value for key, value in data.distill_synthetic.items() if key != "type"}
            generate(data.distill_synthetic["type"], params, processes, "data.distill_synthetic")
        plain = copy.deepcopy(config)
        plain.data = dataclasses.replace(plain.data, distill_images=None)
        _, val, classes = build_datasets(plain, processes, progress)
        return distill_image_set(config), val, classes
    return boxed_datasets(config, processes)
