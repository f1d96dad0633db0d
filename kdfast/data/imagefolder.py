"""ImageFolder datasets for distillation: transforms, seeded few-shot subsets, and training items whose random
augmentation depends only on (seed, epoch, index).

The last property makes a run reproducible no matter how the data is loaded: the same image gets the same
crop whether it is read by the main process or a worker, by one process or one of several torchrun ranks,
and in a resumed run exactly as in an uninterrupted one.
"""

import hashlib
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms


def train_transform(image_size, crop_scale=(0.08, 1.0), augment=True, normalize=True, mean=None, std=None):
    """RandomResizedCrop + horizontal flip (or a plain resize when augment=False), then a float tensor."""
    if augment:
        steps = [transforms.RandomResizedCrop(image_size, scale=tuple(crop_scale)), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    return transforms.Compose(steps + _to_tensor(normalize, mean, std))


def eval_transform(image_size, resize_size=None, normalize=True, mean=None, std=None):
    """Resize the short side to resize_size (default image_size / 0.875, i.e. 256 for 224), centre-crop."""
    resize_size = resize_size or round(image_size / 0.875)
    steps = [transforms.Resize(resize_size), transforms.CenterCrop(image_size)]
    return transforms.Compose(steps + _to_tensor(normalize, mean, std))


def _to_tensor(normalize, mean, std):
    steps = [transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(mean, std))
    return steps


def image_folder(root, split, transform=None):
    """torchvision ImageFolder over `root/split`, with an error naming the folder when it is missing."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected {root}/{split}/<class>/<image>)")
    try:
        return datasets.ImageFolder(folder, transform=transform)
    except FileNotFoundError as exc:  # ImageFolder: no class folders or no images
        raise FileNotFoundError(f"image folder {folder}: {exc}") from exc


def check_same_classes(train, val):
    """Train and val must list the same classes in the same order (class index = folder rank)."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(
            f"{train.root} and {val.root} hold different classes: only in train {only_train[:10]}, "
            f"only in val {only_val[:10]}"
        )


def few_shot_indices(targets, shots, seed):
    """`shots` indices per class, drawn without replacement by a generator seeded with `seed`; sorted.

    Raises naming the classes that have fewer than `shots` images."""
    targets = torch.as_tensor(targets)
    if shots < 1:
        raise ValueError(f"few-shot needs at least 1 image per class, got {shots}")
    generator = torch.Generator().manual_seed(seed)
    chosen, short = [], []
    for k in range(int(targets.max()) + 1 if len(targets) else 0):
        members = torch.nonzero(targets == k).flatten()
        if len(members) < shots:
            short.append(f"class {k} has {len(members)}")
            continue
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    if short:
        raise ValueError(f"few-shot {shots} images per class: {', '.join(short[:10])}")
    return sorted(torch.cat(chosen).tolist()) if chosen else []


def few_shot_subset(dataset, shots, seed):
    """A Subset of an ImageFolder with `shots` images per class (see few_shot_indices)."""
    indices = few_shot_indices(dataset.targets, shots, seed)
    subset = Subset(dataset, indices)
    subset.targets = [dataset.targets[i] for i in indices]
    subset.classes = dataset.classes
    return subset


def _item_seed(seed, epoch, index):
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class EpochSeededDataset(Dataset):
    """Training items {"images", "targets", "indices"} of a (image, target) dataset (or its own dict items,
    e.g. kdfast.explain.FrozenExplanationDataset's) whose random transforms draw from torch's generator
    reseeded per item with (seed, epoch, index); call set_epoch() before each epoch's DataLoader iterator is
    created. `indices` are positions in this dataset (what CRD's memory bank and the frozen-explanation store
    are indexed by)."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    @property
    def targets(self):
        """Every item's label (CRD's class-aware negative sampling reads them)."""
        return self.dataset.targets

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also seeds (lazily) every accelerator, far slower.
            torch.default_generator.manual_seed(_item_seed(self.seed, self.epoch, index))
            item = self.dataset[index]
        if isinstance(item, dict):
            return item
        image, target = item
        return {"images": image, "targets": target, "indices": index}


class IndexedDataset(Dataset):
    """Evaluation items {"images", "targets", "indices"} of a (image, target) dataset."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, target = self.dataset[index]
        return {"images": image, "targets": target, "indices": index}
