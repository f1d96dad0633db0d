"""Frozen explanations (e2KD, ECCV 2024 §3.3): the teacher's logits and explanations are computed once and
stored on disk; at training time one geometric augmentation (random resized crop + horizontal flip) is
applied to an image and its stored explanation together, so the teacher never runs during training.

Store layout (a directory): `logits.npy` (N, K) float32, `explanations.npy` (N, *shape), `done.npy` (N,) bool
(rows written so far: an interrupted precompute resumes where it stopped) and `meta.json`.

The crop is done by bilinear resampling in normalised image coordinates (half-pixel centres, edges
replicated), so the same box and flip give aligned outputs whatever the two resolutions are: a 7×7 GradCAM
map and a 224×224 image, or a 6×224×224 B-cos W(x) at the image's resolution.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import RandomResizedCrop
from tqdm import tqdm

_META = "meta.json"
_LOGITS = "logits.npy"
_EXPLANATIONS = "explanations.npy"
_DONE = "done.npy"
_STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


def _image_of(sample, index):
    image = sample[0] if isinstance(sample, (tuple, list)) else sample
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3:
        raise TypeError(
            f"dataset[{index}] must give a float (C, H, W) image tensor first (use a deterministic transform ending "
            f"in ToTensor/Normalize), got {type(image).__name__} {getattr(image, 'shape', '')}"
        )
    return image


def _probe(dataset):
    """A fingerprint of the dataset's first image: frozen explanations are only valid for the exact images
    (same files, same deterministic transform) they were computed on."""
    image = _image_of(dataset[0], 0)
    return {"shape": list(image.shape), "sum": float(image.double().sum()), "abs_sum": float(image.double().abs().sum())}


def _same_probe(a, b):
    return a["shape"] == b["shape"] and all(math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-6) for k in ("sum", "abs_sum"))


class ExplanationStore:
    """Read access to a precomputed store: store[i] -> (logits (K,), explanation (*shape)) float32 tensors.
    The arrays are memory-mapped lazily in each process, so the store can be sent to DataLoader workers."""

    def __init__(self, root):
        self.root = Path(root)
        meta_path = self.root / _META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {self.root} is not a frozen-explanation store")
        self.meta = json.loads(meta_path.read_text())
        self._arrays = None

    @property
    def num_samples(self):
        return int(self.meta["num_samples"])

    @property
    def num_classes(self):
        return int(self.meta["num_classes"])

    @property
    def explanation_shape(self):
        return tuple(self.meta["explanation_shape"])

    def __len__(self):
        return self.num_samples

    def missing(self):
        """Indices whose rows have not been written yet."""
        done = np.load(self.root / _DONE, mmap_mode="r")
        return np.flatnonzero(~done)

    def check_complete(self):
        missing = self.missing()
        if len(missing):
            raise ValueError(
                f"frozen-explanation store {self.root} is incomplete: {len(missing)} of {self.num_samples} rows "
                f"missing (first: {missing[0]}); rerun precompute_explanations to resume it"
            )
        return self

    def _open(self):
        if self._arrays is None:
            self._arrays = (
                np.load(self.root / _LOGITS, mmap_mode="r"),
                np.load(self.root / _EXPLANATIONS, mmap_mode="r"),
            )
        return self._arrays

    def __getstate__(self):
        return {"root": self.root, "meta": self.meta, "_arrays": None}

    def __getitem__(self, index):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a store of {self.num_samples} samples")
        logits, explanations = self._open()
        return (
            torch.from_numpy(np.array(logits[index], dtype=np.float32)),
            torch.from_numpy(np.array(explanations[index], dtype=np.float32)),
        )


def _create_or_resume(root, dataset, dtype):
    root = Path(root)
    probe = _probe(dataset)
    if (root / _META).is_file():
        meta = json.loads((root / _META).read_text())
        if meta["num_samples"] != len(dataset) or not _same_probe(meta["probe"], probe):
            raise ValueError(
                f"{root / _META} was made for {meta['num_samples']} samples with first image {meta['probe']}, but the "
                f"dataset has {len(dataset)} samples with first image {probe}; use a new directory for a new dataset"
            )
        if meta["storage_dtype"] != dtype:
            raise ValueError(f"{root / _META} stores {meta['storage_dtype']} explanations, but dtype={dtype!r} was asked")
        return meta
    return {"num_samples": len(dataset), "probe": probe, "storage_dtype": dtype}


def _allocate(root, meta, logits, maps):
    root.mkdir(parents=True, exist_ok=True)
    n = meta["num_samples"]
    meta.update(num_classes=int(logits.shape[1]), explanation_shape=list(maps.shape[1:]))
    np.lib.format.open_memmap(root / _LOGITS, mode="w+", dtype=np.float32, shape=(n, logits.shape[1])).flush()
    np.lib.format.open_memmap(
        root / _EXPLANATIONS, mode="w+", dtype=_STORAGE_DTYPES[meta["storage_dtype"]], shape=(n, *maps.shape[1:])
    ).flush()
    np.lib.format.open_memmap(root / _DONE, mode="w+", dtype=np.bool_, shape=(n,)).flush()
    # meta.json last: its presence marks a store whose arrays exist.
    (root / _META).write_text(json.dumps(meta, indent=2))


def precompute_explanations(teacher, dataset, root, explain, batch_size=64, num_workers=0, device="cpu", dtype="float32"):
    """Runs `explain(teacher, images) -> (logits (B, K), explanations (B, ...))` (e.g. an e2KD method's
    `explain_teacher`) over `dataset` (samples (image, target, ...) with a deterministic transform) in eval
    mode and stores row i for dataset[i]. Resumable: rows already written are skipped. `dtype` is the
    explanations' storage type ("float32" or "float16"; a value float16 cannot hold is an error).
    Returns the complete ExplanationStore."""
    if dtype not in _STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_STORAGE_DTYPES)}, got {dtype!r}")
    if len(dataset) == 0:
        raise ValueError("cannot precompute explanations for an empty dataset")
    root = Path(root)
    meta = _create_or_resume(root, dataset, dtype)
    todo = ExplanationStore(root).missing() if (root / _META).is_file() else np.arange(len(dataset))
    if len(todo) == 0:
        return ExplanationStore(root)
    loader = DataLoader(Subset(dataset, todo.tolist()), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = teacher.training
    teacher.eval()
    arrays = None
    start = 0
    try:
        for batch in tqdm(loader, desc=f"frozen explanations -> {root}", unit="batch"):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            rows = todo[start : start + images.shape[0]]
            start += images.shape[0]
            logits, maps = explain(teacher, images.to(device))
            logits, maps = logits.detach().float().cpu(), maps.detach().float().cpu()
            if "num_classes" not in meta:  # a new store: its shapes are known from the first batch
                _allocate(root, meta, logits, maps)
            if logits.shape != (len(rows), meta["num_classes"]) or list(maps.shape[1:]) != meta["explanation_shape"]:
                raise ValueError(
                    f"explain returned logits {tuple(logits.shape)} and explanations {tuple(maps.shape)} for "
                    f"{len(rows)} images, but {root / _META} expects ({len(rows)}, {meta['num_classes']}) and "
                    f"({len(rows)}, *{meta['explanation_shape']})"
                )
            with np.errstate(over="ignore"):  # checked just below
                stored = maps.numpy().astype(_STORAGE_DTYPES[dtype])
            if not np.isfinite(stored).all() or not torch.isfinite(logits).all():
                raise ValueError(
                    f"non-finite teacher logits or explanations for dataset rows {rows[0]}..{rows[-1]}"
                    + (" (values beyond float16's range: use dtype='float32')" if dtype == "float16" else "")
                )
            if arrays is None:
                arrays = tuple(np.load(root / name, mmap_mode="r+") for name in (_LOGITS, _EXPLANATIONS, _DONE))
            arrays[0][rows] = logits.numpy()
            arrays[1][rows] = stored
            arrays[0].flush()
            arrays[1].flush()
            arrays[2][rows] = True  # only after the data is on disk
            arrays[2].flush()
    finally:
        teacher.train(was_training)
    return ExplanationStore(root).check_complete()


def crop_resize(tensor, box, size, flip=False):
    """Bilinear resample of `tensor` (C, H, W) over `box` = (top, left, bottom, right) in normalised [0, 1]
    image coordinates to `size` (h, w), mirrored left-right when `flip`. Sample points are output pixel
    centres mapped into the box; values beyond the outermost pixel centres repeat the edge."""
    top, left, bottom, right = (float(v) for v in box)
    h, w = size
    if (top, left, bottom, right) == (0.0, 0.0, 1.0, 1.0) and (h, w) == tuple(tensor.shape[-2:]) and not flip:
        return tensor  # the identity, exactly (the resampling would round the sample points)
    device, dtype = tensor.device, tensor.dtype
    ys = top + (torch.arange(h, device=device, dtype=torch.float64) + 0.5) / h * (bottom - top)
    xs = left + (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w * (right - left)
    if flip:
        xs = xs.flip(0)
    grid = torch.stack(torch.meshgrid(2 * xs - 1, 2 * ys - 1, indexing="xy"), dim=-1).to(dtype)
    return F.grid_sample(tensor[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]


def sample_box(height, width, scale, ratio):
    """A RandomResizedCrop box (torchvision's sampling, global torch RNG) as normalised (top, left, bottom, right)."""
    top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
    return top / height, left / width, (top + h) / height, (left + w) / width


class FrozenExplanationDataset(Dataset):
    """Pairs a dataset with its ExplanationStore. Item i is the method-contract dict
    {"images", "targets", "indices", "teacher_logits", "teacher_explanations"} (the default collate makes a
    batch of it), with one random resized crop (scale, ratio as torchvision's RandomResizedCrop) and a
    horizontal flip (probability flip_p) applied to image and explanation together when `augment`.

    size: output image (h, w), default the input image's; explanation_size: output explanation (h, w),
    default the stored one. `dataset` must give the same deterministic images the store was computed on."""

    def __init__(self, dataset, store, size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                 explanation_size=None, augment=True):
        self.dataset = dataset
        self.store = store if isinstance(store, ExplanationStore) else ExplanationStore(store)
        self.store.check_complete()
        if len(dataset) != self.store.num_samples:
            raise ValueError(f"dataset has {len(dataset)} samples but the store {self.store.root} has {self.store.num_samples}")
        probe = _probe(dataset)
        if not _same_probe(probe, self.store.meta["probe"]):
            raise ValueError(
                f"dataset[0] differs from the image the store {self.store.root} was computed on "
                f"({probe} vs {self.store.meta['probe']}); use the deterministic transform of the precompute"
            )
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if len(self.store.explanation_shape) not in (2, 3):
            raise ValueError(f"stored explanations must be (h, w) or (C, h, w) maps, got {self.store.explanation_shape}")
        self.size = None if size is None else _pair(size, "size")
        self.explanation_size = None if explanation_size is None else _pair(explanation_size, "explanation_size")
        self.scale, self.ratio, self.flip_p, self.augment = tuple(scale), tuple(ratio), float(flip_p), augment

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        image = _image_of(sample, index)
        target = sample[1] if isinstance(sample, (tuple, list)) and len(sample) > 1 else -1
        logits, explanation = self.store[index]
        planar = explanation.dim() == 2
        explanation = explanation[None] if planar else explanation
        H, W = image.shape[-2:]
        if self.augment:
            box = sample_box(H, W, self.scale, self.ratio)
            flip = bool(torch.rand(()) < self.flip_p)
        else:
            box, flip = (0.0, 0.0, 1.0, 1.0), False
        image = crop_resize(image, box, self.size or (H, W), flip)
        explanation = crop_resize(explanation, box, self.explanation_size or tuple(explanation.shape[-2:]), flip)
        return {
            "images": image,
            "targets": torch.as_tensor(target),
            "indices": torch.tensor(index, dtype=torch.int64),
            "teacher_logits": logits,
            "teacher_explanations": explanation[0] if planar else explanation,
        }


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be an int or (height, width) >= 1, got {value!r}")
    return tuple(int(v) for v in pair)
