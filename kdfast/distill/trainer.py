"""The distillation trainer: one loop for every DistillationMethod (kdfast.distill.method), with AMP, DDP under
torchrun, exact resume, checkpoints and per-epoch logs.

    from kdfast.distill.config import load_config
    from kdfast.distill.trainer import train
    summary = train(load_config("configs/kd.yaml", ["epochs=10"]))

Reproducibility: the data order comes from a DistributedSampler seeded with `seed` and the epoch, each
image's augmentation from (seed, epoch, index) (kdfast.data.imagefolder.EpochSeededDataset), and every
process's RNG states are checkpointed at the end of each epoch; so a resumed run repeats the uninterrupted one
exactly (on CPU; cuDNN kernels may add nondeterminism on GPU), and N processes with batch B/N each take the
same steps as one process with batch B (up to float summation order and per-process BatchNorm statistics;
`sync_batchnorm` makes those global on CUDA).
"""
import csv
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from kdfast.atomic import replacing
from kdfast.data.hierarchical import hierarchical_dataset
from kdfast.data.synthetic_world import world_dataset
from kdfast.data.imagefolder import (
    EpochSeededDataset,
    IndexedDataset,
    check_same_classes,
    eval_transform,
    few_shot_subset,
    image_folder,
    train_transform,
)
from kdfast.distill import build_method, method_class
from kdfast.distill.config import ConfigError, dump_config
from kdfast.distill.task_data import BOXED_TYPES, task_datasets
from kdfast.metrics.multilabel import f1_from_counts, multilabel_counts
from kdfast.distill.models import build_model
from kdfast.distributed import ProcessGroup, rank0_first

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"
# Keys that may differ between a run and its resumption: they do not change what is computed.
RESUME_FREE_KEYS = ("log", "workers", "eval_batch_size")


# ---------------------------------------------------------------------------------------------------------
# Processes


class Processes(ProcessGroup):
    """The trainer's reductions over the processes of a torchrun job."""

    def sum(self, values):
        """Element-wise sum over processes of a list of floats (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: '{name}' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ---------------------------------------------------------------------------------------------------------
# Random states


def rng_state(device):
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state array travels as a tensor, so checkpoints load with torch.load(weights_only=True).
        "numpy": _numpy_state_out(np.random.get_state()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_numpy_state_in(state["numpy"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _numpy_state_out(state):
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_in(state):
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _tuples(value):
    """random.setstate needs tuples where a checkpoint round trip may have left lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# Optimisation


class LRSchedule:
    """The learning-rate multiplier at optimisation step `step` (LambdaLR's lr_lambda): a linear warm-up over
    `warmup_epochs`, then step decay at the milestone epochs, a cosine decay to min_lr, or a constant."""

    def __init__(self, schedule, base_lr, steps_per_epoch, epochs):
        self.name = schedule.name
        self.milestones = list(schedule.milestones)
        self.gamma = schedule.gamma
        self.warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        self.start_factor = schedule.warmup_start_factor
        self.min_factor = schedule.min_lr / base_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        if self.name == "step":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.name == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


def build_optimizer(optim, parameters):
    if optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(parameters, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def _unitwise_norm(x):
    """L2 norm per output unit (dim 0) for weights, of the whole tensor for biases and gains."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_(parameters, clip=0.01, eps=1e-3):
    """Adaptive gradient clipping (Brock et al. 2021, as B-cos training uses): each unit's gradient is scaled
    down to norm clip·max(‖w‖, eps) where it exceeds that."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p).clamp(min=eps) * clip
        grad_norm = _unitwise_norm(p.grad)
        scale = (max_norm / grad_norm.clamp(min=1e-6)).clamp(max=1.0)
        p.grad.mul_(scale)


def clip_gradients(optim, parameters):
    if optim.grad_clip == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, optim.grad_clip_value or 1.0)
    elif optim.grad_clip == "agc":
        adaptive_clip_(parameters, optim.grad_clip_value or 0.01)


# ---------------------------------------------------------------------------------------------------------
# Data


class BcosEncoding:
    """Image (3, H, W) in [0, 1] → the B-cos input [r, g, b, 1−r, 1−g, 1−b] (kdfast.models.bcos.encode_input)."""

    def __call__(self, image):
        from kdfast.models.bcos import encode_input

        return encode_input(image[None])[0]


def dataset_root(data, processes, progress):
    """The folder holding the train/val splits; generated datasets are generated by rank 0 first."""
    if data.type == "imagefolder":
        return Path(data.root)
    make = {"hierarchical": hierarchical_dataset, "world": world_dataset}[data.type]
    generate = dict(root=data.root, progress=progress, **dataclasses.asdict(data.generate))
    try:
        return rank0_first(processes, lambda: make(**generate))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.root: {exc}") from exc


def build_datasets(config, processes, progress):
    """(training images, validation set of {"images", "targets", "indices"} items, class names). Training
    images are (image, target) pairs, randomly augmented, or deterministic (the evaluation transform) when
    frozen explanations will augment them together with the stored maps."""
    data = config.data
    if data.type == "memory":
        raise ConfigError("data.type: 'memory' datasets are passed in code (kdfast.distill.trainer.train(config, "
                          "datasets=in_memory_datasets(...))), not read from a config")
    if data.type in BOXED_TYPES or data.distill_images is not None:  # the e2KD paper's settings
        return task_datasets(config, processes, progress, build_datasets)
    root = dataset_root(data, processes, progress)
    norm = dict(normalize=data.normalize, mean=data.mean, std=data.std)
    val_tf = eval_transform(data.image_size, data.resize_size, **norm)
    if config.frozen_explanations:
        train_tf = eval_transform(data.image_size, data.resize_size, **norm)
    else:
        train_tf = train_transform(data.image_size, data.crop_scale, data.augment, **norm)
    if data.input_encoding == "bcos":
        train_tf.transforms.append(BcosEncoding())
        val_tf.transforms.append(BcosEncoding())
    try:
        train = image_folder(root, data.train_split, train_tf)
        val = image_folder(root, data.val_split, val_tf)
        check_same_classes(train, val)
        if data.few_shot is not None:
            train = few_shot_subset(train, data.few_shot, data.few_shot_seed)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data: {exc}") from exc
    return train, IndexedDataset(val), val.classes


class ImagesInMemory(Dataset):
    """(image, class index) pairs of an (N, C, H, W) image tensor; `targets` lists the labels (CRD reads them)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels.long()
        self.targets = self.labels.tolist()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def in_memory_datasets(images, labels, val_images, val_labels, classes=None):
    """The `datasets` argument of train() / Trainer for data held in memory (data.type: memory): float
    (N, C, H, W) images, as the model takes them (no transforms, no augmentation), and (N,) class indices."""
    for name, x, y in (("images", images, labels), ("val_images", val_images, val_labels)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.dtype.is_floating_point:
            raise ValueError(f"{name}: expected a float (N, C, H, W) tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),):
            shape = tuple(getattr(y, "shape", ()))
            raise ValueError(f"{name}: expected ({len(x)},) class indices beside it, got {shape}")
    if len(images) == 0 or len(val_images) == 0:
        raise ValueError(f"in-memory training needs images in both sets, got {len(images)} and {len(val_images)}")
    count = int(max(labels.max(), val_labels.max())) + 1
    classes = list(classes) if classes is not None else [str(k) for k in range(count)]
    return ImagesInMemory(images, labels), IndexedDataset(ImagesInMemory(val_images, val_labels)), classes


def _to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------
# The step


class DistillStep(nn.Module):
    """Student + method as one module, so that DDP all-reduces the gradients of both (CRD's heads, FT's
    translator, SSKD's head are trained with the student). The teacher is held outside the module tree: it is
    neither wrapped by DDP nor part of the checkpointed state."""

    def __init__(self, student, method, teacher):
        super().__init__()
        self.student = student
        self.method = method
        self._teacher = (teacher,)

    def forward(self, batch):
        out = self.method(self.student, self._teacher[0], batch)
        if not out.terms:
            raise RuntimeError(f"method '{self.method.name}' returned no loss terms")
        return out.terms, out.student_logits, out.teacher_logits


def _count_top1(logits, reference):
    return int((logits.argmax(dim=1) == reference).sum())


# ---------------------------------------------------------------------------------------------------------
# Files


def _atomic_save(obj, path):
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _write_csv(history, path):
    columns = list(dict.fromkeys(k for row in history for k in row))
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(history)


def _config_differences(saved, current, prefix=""):
    keys = sorted(set(saved) | set(current))
    diffs = []
    for key in keys:
        path = f"{prefix}{key}"
        if path in RESUME_FREE_KEYS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and path != "method.options":
            diffs += _config_differences(a, b, path + ".")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


# ---------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Builds everything a config describes; fit() trains and returns the run's summary."""

    def __init__(self, config, resume=False, datasets=None, student=None):
        """`datasets` (data.type memory): (train, val, classes) from in_memory_datasets. `student`: a module to
        train instead of building config.student (whose spec then only names it in the outputs)."""
        self.config = config
        self.device = resolve_device(config.device)
        self.processes = Processes(self.device)
        self.out = Path(config.output_dir)
        self.progress = config.log.progress and self.processes.main
        seed_everything(config.seed)
        self._check_output_dir(resume)

        world = self.processes.world
        if config.batch_size % world:
            raise ConfigError(f"batch_size: {config.batch_size} does not split evenly over {world} processes")
        if (datasets is None) != (config.data.type != "memory"):
            raise ConfigError("data.type: 'memory' goes with datasets passed in code, and only with them")
        train_images, val_set, self.classes = datasets or build_datasets(config, self.processes, self.progress)
        self.num_classes = len(self.classes)
        # Validation is sharded without padding (rank::world) so that the summed counts are exact.
        self.val_set = Subset(val_set, range(self.processes.rank, len(val_set), world))

        if student is None:
            student = build_model(config.student, self.num_classes, "student")
        self.student = student.to(self.device)
        self.teacher = None
        if config.teacher.spec is not None:
            self.teacher = build_model(config.teacher, self.num_classes, "teacher").to(self.device)
            self.teacher.eval().requires_grad_(False)
        self._check_outputs(val_set)
        self.method = self._build_method(len(train_images)).to(self.device)
        if self.method.needs_teacher and self.teacher is None:
            raise ConfigError(f"teacher.spec: method '{config.method.name}' needs a teacher model")
        if config.frozen_explanations:
            train_images = self._frozen_explanations(train_images)
        self.train_set = EpochSeededDataset(train_images, config.seed)

        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=self.processes.rank, shuffle=True,
                                          seed=config.seed)
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_size=config.batch_size // world, sampler=self.sampler,
                                       num_workers=config.workers, pin_memory=pin)
        self.val_loader = DataLoader(self.val_set, batch_size=config.eval_batch_size or config.batch_size // world,
                                     num_workers=config.workers, pin_memory=pin)

        self.start_epoch, self.history, self.best = 0, [], {"val_acc": -1.0, "epoch": None}
        checkpoint = self._load_checkpoint() if resume else None
        if checkpoint is not None:
            self.method.load_state_dict(checkpoint["method"])
        # Methods skip stages their (restored) state says are done, and rebuild what is not saved.
        self.sampler.set_epoch(0)
        self.train_set.set_epoch(0)
        self.method.prepare(self.student, self.teacher, self.train_loader, self.device)

        self.parameters = [p for m in (self.student, self.method) for p in m.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config.optim, self.parameters)
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, LRSchedule(config.schedule, config.optim.lr, steps, config.epochs))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if checkpoint is not None:
            self._restore(checkpoint)

        if config.sync_batchnorm and world > 1:
            if self.device.type != "cuda":
                raise ConfigError("sync_batchnorm: SyncBatchNorm needs CUDA devices")
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.step_module = DistillStep(self.student, self.method, self.teacher)
        if world > 1:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters)
        self.writer = self._tensorboard()

    # --- setup helpers

    def _check_output_dir(self, resume):
        last = self.out / CHECKPOINT_LAST
        if resume and not last.is_file():
            raise ConfigError(f"output_dir: --resume needs {last}, which does not exist")
        if not resume and last.exists():
            raise ConfigError(f"output_dir: {self.out} already holds a run ({last}); resume it with --resume or "
                              "choose another output_dir")
        if self.processes.main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(self.config, self.out / "config.yaml")

    def _build_method(self, num_samples):
        name, options = self.config.method.name, dict(self.config.method.options)
        try:
            # Memory-bank methods (CRD) keep one row per training sample.
            if "num_samples" in inspect.signature(method_class(name).__init__).parameters:
                options.setdefault("num_samples", num_samples)
            return build_method(name, **options)
        except ValueError as exc:
            key = "method.name" if "unknown distillation method" in str(exc) else "method.options"
            raise ConfigError(f"{key}: {exc}") from exc

    def _check_outputs(self, val_set):
        """One forward on two validation images: the models must give (B, num_classes) logits."""
        images = torch.stack([val_set[i]["images"] for i in range(min(2, len(val_set)))]).to(self.device)
        for key, model in (("student", self.student), ("teacher", self.teacher)):
            if model is None:
                continue
            mode = model.training
            model.eval()
            with torch.no_grad():
                logits = model(images)
            model.train(mode)
            if not isinstance(logits, torch.Tensor) or logits.shape != (len(images), self.num_classes):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ConfigError(f"{key}.spec: '{getattr(self.config, key).spec}' outputs {shape} for "
                                  f"{len(images)} images; expected ({len(images)}, {self.num_classes}) logits for "
                                  f"the dataset's {self.num_classes} classes")

    def _frozen_explanations(self, train_images):
        """The training set with the teacher's logits and explanations precomputed once into
        <output_dir>/frozen_explanations (by rank 0; resumable) and augmented together with the images."""
        from kdfast.explain import FrozenExplanationDataset, precompute_explanations

        explain = getattr(self.method, "explain_teacher", None)
        if explain is None:
            raise ConfigError(f"frozen_explanations: method '{self.config.method.name}' does not produce teacher "
                              "explanations (explain_teacher); use e2kd_gradcam or e2kd_bcos")
        store = self.out / "frozen_explanations"
        batch_size = self.config.eval_batch_size or self.config.batch_size // self.processes.world
        if self.processes.main:
            precompute_explanations(self.teacher, train_images, store, explain, batch_size=batch_size,
                                    num_workers=self.config.workers, device=self.device)
        self.processes.barrier()
        data = self.config.data
        return FrozenExplanationDataset(train_images, store, size=data.image_size, scale=tuple(data.crop_scale),
                                        flip_p=0.5 if data.augment else 0.0, augment=data.augment)

    def _amp_dtype(self):
        if not self.config.amp:
            return None
        if self.config.amp_dtype == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return getattr(torch, self.config.amp_dtype)

    def _tensorboard(self):
        if not (self.config.log.tensorboard and self.processes.main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(f"log.tensorboard: needs the tensorboard package (pip install tensorboard): {exc}")
        return SummaryWriter(str(self.out / "tensorboard"))

    # --- checkpoints

    def _load_checkpoint(self):
        path = self.out / CHECKPOINT_LAST
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        diffs = _config_differences(checkpoint["config"], self.config.to_dict())
        if diffs:
            raise ConfigError(f"{path} was written with a different config; resuming it needs the same one "
                              f"(differences: {'; '.join(diffs)})")
        if checkpoint["world_size"] != self.processes.world:
            raise ConfigError(f"{path} was written by {checkpoint['world_size']} processes; resume it with the same "
                              f"number (now {self.processes.world}) so that the data split and random streams match")
        self.student.load_state_dict(checkpoint["model"])
        return checkpoint

    def _restore(self, checkpoint):
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"]
        self.history = checkpoint["history"]
        self.best = checkpoint["best"]
        set_rng_state(checkpoint["rng"][self.processes.rank], self.device)

    def _save(self, epoch, is_best):
        rng = self.processes.gather(rng_state(self.device))
        if not self.processes.main:
            return
        checkpoint = {
            "model": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "config": self.config.to_dict(),
            "rng": rng,
            "history": self.history,
            "best": self.best,
            "world_size": self.processes.world,
            "classes": list(self.classes),
        }
        _atomic_save(checkpoint, self.out / CHECKPOINT_LAST)
        if is_best:
            with replacing(self.out / CHECKPOINT_BEST) as tmp:
                shutil.copyfile(self.out / CHECKPOINT_LAST, tmp)

    # --- loops

    def train_epoch(self, epoch):
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.step_module.train()
        self.check_new_parameters = epoch == self.start_epoch
        sums, term_names = None, None
        seen = correct = agree = compared = 0
        single_label = True
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=not self.progress,
                   leave=False)
        for step, batch in enumerate(bar):
            batch = _to_device(batch, self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                terms, student_logits, teacher_logits = self.step_module(batch)
            loss = sum(terms.values())
            values = torch.stack([t.detach().float() for t in terms.values()])
            if not bool(torch.isfinite(values).all()):
                shown = ", ".join(f"{k}={float(v):.4g}" for k, v in zip(terms, values))
                raise FloatingPointError(f"epoch {epoch + 1}, step {step + 1}: non-finite loss terms ({shown})")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.config.optim, self.parameters)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.check_new_parameters:
                self._check_no_new_parameters()

            size = len(batch["images"])
            term_names = list(terms)
            sums = values * size if sums is None else sums + values * size
            seen += size
            targets = batch["targets"]
            single_label = targets.dim() == 1  # multi-label (B, C) targets have no top-1 accuracy
            if single_label:
                correct += _count_top1(student_logits.detach(), targets)
            if teacher_logits is not None:
                agree += _count_top1(student_logits.detach(), teacher_logits.detach().argmax(dim=1))
                compared += size
            bar.set_postfix(loss=f"{float(values.sum()):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
        totals = self.processes.sum([seen, correct, agree, compared] + sums.tolist())
        seen, correct, agree, compared = totals[:4]
        row = {f"train_{name}": total / seen for name, total in zip(term_names, totals[4:])}
        row["train_loss"] = sum(totals[4:]) / seen
        row["train_acc"] = correct / seen if single_label else None
        row["train_agreement"] = agree / compared if compared else None
        return row

    def _check_no_new_parameters(self):
        """A method that creates parameters during its first forward would leave them out of the optimizer."""
        known = {id(p) for p in self.parameters}
        new = [f"{owner}.{n}" for owner, module in (("student", self.student), ("method", self.method))
               for n, p in module.named_parameters() if p.requires_grad and id(p) not in known]
        if new:
            raise RuntimeError(f"parameters {new[:5]} appeared after the optimizer was built (created in forward?); "
                               "create them in the method's __init__ or prepare()")
        self.check_new_parameters = False

    @torch.no_grad()
    def evaluate(self):
        """Top-1 accuracy on the validation set and top-1 agreement with the teacher (None without one).
        Multi-label (B, C) targets: "val_acc" is the micro F1 (kdfast.metrics.multilabel; logits >= 0)."""
        self.student.eval()
        seen = correct = agree = 0
        counts = [0, 0, 0]  # multi-label TP, FP, FN
        for batch in tqdm(self.val_loader, desc="validation", disable=not self.progress, leave=False):
            batch = _to_device(batch, self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.student(batch["images"])
                teacher_logits = self.teacher(batch["images"]) if self.teacher is not None else None
            seen += len(logits)
            if batch["targets"].dim() == 2:
                counts = [a + b for a, b in zip(counts, multilabel_counts(logits.float(), batch["targets"])[:3])]
            else:
                correct += _count_top1(logits, batch["targets"])
            if teacher_logits is not None:
                agree += _count_top1(logits, teacher_logits.argmax(dim=1))
        seen, correct, agree, *counts = self.processes.sum([seen, correct, agree] + counts)
        multilabel = any(counts)
        accuracy = f1_from_counts(*counts) if multilabel else correct / seen
        return {"val_acc": accuracy, "val_agreement": agree / seen if self.teacher is not None else None}

    def fit(self):
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                started = time.time()
                row = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0]}
                row.update(self.train_epoch(epoch))
                row.update(self.evaluate())
                row["seconds"] = time.time() - started
                self.history.append(row)
                is_best = row["val_acc"] > self.best["val_acc"]
                if is_best:
                    self.best = {"val_acc": row["val_acc"], "val_agreement": row["val_agreement"], "epoch": epoch + 1}
                self._save(epoch + 1, is_best)
                self._log(row)
            summary = self.summary()
            if self.processes.main:
                (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            return summary
        finally:
            if self.writer is not None:
                self.writer.close()
            self.processes.close()

    def _log(self, row):
        if not self.processes.main:
            return
        if self.config.log.csv:
            _write_csv(self.history, self.out / "metrics.csv")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    self.writer.add_scalar(key, value, row["epoch"])
        if not self.config.log.epoch_lines:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and v is not None)
        tqdm.write(f"[{self.config.name}] epoch {row['epoch']}/{self.config.epochs}: {shown}")

    def summary(self):
        last = self.history[-1] if self.history else {}
        return {
            "name": self.config.name,
            "method": self.config.method.name,
            "student": self.config.student.spec,
            "teacher": self.config.teacher.spec,
            "epochs": len(self.history),
            "best_epoch": self.best["epoch"],
            "best_val_acc": self.best["val_acc"],
            "best_val_agreement": self.best.get("val_agreement"),
            "final_val_acc": last.get("val_acc"),
            "final_val_agreement": last.get("val_agreement"),
            "checkpoint": str(self.out / CHECKPOINT_BEST),
        }


def train(config, resume=False, datasets=None, student=None):
    """Trains the student a Config describes; returns the summary (also written to <output_dir>/summary.json).
    `datasets` and `student`: see Trainer."""
    return Trainer(config, resume=resume, datasets=datasets, student=student).fit()
