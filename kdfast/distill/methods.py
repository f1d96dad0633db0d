"""The KD-family objectives of the ICML 2023 paper as DistillationMethods (kdfast.distill.method): scratch, label
smoothing, KD (also self-KD / born-again: the trainer picks a teacher of the student's architecture), AT, FT, CRD,
SSKD, and multi-label KD. Defaults are the paper's hyper-parameters (its appendix B, torchdistill configs).

Feature methods (AT, FT, CRD) add their term to the ground-truth cross-entropy; with `logit_kd=True` that CE is
replaced by KD on the logits, (1 − kd_alpha)·CE + kd_alpha·T²·KL. They read features with forward hooks by module
name, so they work on torchvision-style ResNets (`layer1`..`layer4`, `avgpool`, `fc`) as they are.
Loss terms are returned already weighted; their sum is the training loss.
"""
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from kdfast.distill.features import capture_outputs, captured
from kdfast.distill.losses import (
    attention_transfer_loss,
    check_class_targets,
    error_level_selection,
    factor_transfer_loss,
    label_smoothing_loss,
    multilabel_kd_loss,
    nce_contrast_loss,
    rotation_similarities,
    soft_target_kl,
    supervised_loss,
)
from kdfast.distill.method import DistillationMethod, StepOutput


# ---------------------------------------------------------------------------------------------------------- helpers
def _require(ok, option, expected, value):
    if not ok:
        raise ValueError(f"option {option!r} must be {expected}, got {value!r}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_weight(option, value):
    _require(_is_number(value) and value >= 0, option, "a number >= 0", value)


def _check_temperature(option, value):
    _require(_is_number(value) and value > 0, option, "a number > 0", value)


def _check_fraction(option, value):
    _require(_is_number(value) and 0 <= value <= 1, option, "a number in [0, 1]", value)


def _check_count(option, value, minimum=1):
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, option,
             f"an integer >= {minimum}", value)


def _check_name(option, value):
    _require(isinstance(value, str) and value, option, "a module name such as 'layer4'", value)


def _entry(batch, key):
    if key not in batch:
        raise KeyError(f"the batch has no {key!r} entry (it has: {', '.join(sorted(batch))})")
    return batch[key]


def _teacher_logits(teacher, batch, images):
    """The teacher's logits: precomputed ones from the batch when the frozen store provides them."""
    if batch.get("teacher_logits") is not None:
        return batch["teacher_logits"]
    if teacher is None:
        raise ValueError("this method needs a teacher, or precomputed batch['teacher_logits']")
    with torch.no_grad():
        return teacher(images)


def _kd_terms(student_logits, teacher_logits, targets, alpha, temperature):
    """KD split into its two weighted terms, so both are logged: (1 − α)·CE and α·T²·KL. With α = 1 there is
    no CE term (and the targets are not read): function matching on unlabelled or mixed images."""
    terms = {} if alpha == 1.0 else {"ce": (1.0 - alpha) * supervised_loss(student_logits, targets)}
    terms["kd"] = alpha * soft_target_kl(student_logits, teacher_logits, temperature)
    return terms


def _loader_images(batch):
    """Images from a loader batch: the contract's dict, or a torchvision-style (images, targets, ...) tuple."""
    if isinstance(batch, dict):
        return _entry(batch, "images")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    raise TypeError(f"loader batches must be dicts with 'images' or (images, targets, ...) tuples, got {type(batch)}")


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _main_process():
    return _world_size() == 1 or dist.get_rank() == 0


def _average_gradients(parameters):
    """Under DDP each rank of a `prepare` stage sees its own shard: average the gradients so all ranks train the
    same auxiliary module (every rank runs the same number of steps under a DistributedSampler)."""
    world = _world_size()
    if world > 1:
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= world


def _all_gather(tensor):
    """The concatenation of `tensor` over all DDP ranks (the tensor itself without DDP)."""
    world = _world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _global_mean(tensor):
    mean = tensor.mean()
    world = _world_size()
    if world > 1:
        dist.all_reduce(mean)
        mean = mean / world
    return mean


def _prepare_loop(module, loader, device, epochs, optimizer, step_loss, description, scheduler=None):
    """A small training loop for a method's auxiliary module (FT's paraphraser, SSKD's teacher head)."""
    module.train()
    for epoch in range(epochs):
        progress = tqdm(loader, desc=f"{description} {epoch + 1}/{epochs}", leave=False, disable=not _main_process())
        for batch in progress:
            loss = step_loss(_loader_images(batch).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(module.parameters())
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    module.zero_grad(set_to_none=True)
    module.requires_grad_(False)


# ------------------------------------------------------------------------------------------- logit-only methods
class Scratch(DistillationMethod):
    """Ground truth only: cross-entropy (binary cross-entropy per class for multi-label targets)."""

    name = "scratch"
    needs_teacher = False

    def forward(self, student, teacher, batch):
        logits = student(_entry(batch, "images"))
        return StepOutput({"ce": supervised_loss(logits, _entry(batch, "targets"))}, logits, None)


class LabelSmoothing(DistillationMethod):
    """(1 − α)·CE(z, y) + α·CE(z, uniform); the paper's α = 0.1."""

    name = "ls"
    needs_teacher = False

    def __init__(self, *, alpha=0.1):
        super().__init__()
        _check_fraction("alpha", alpha)
        self.alpha = alpha

    def forward(self, student, teacher, batch):
        logits = student(_entry(batch, "images"))
        return StepOutput({"ls": label_smoothing_loss(logits, _entry(batch, "targets"), self.alpha)}, logits, None)


class KD(DistillationMethod):
    """Hinton KD: (1 − α)·CE + α·T²·KL(p_t(T) ‖ p_s(T)); the paper's α = 0.5, T = 4 (self-KD: α = 0.1)."""

    name = "kd"

    def __init__(self, *, alpha=0.5, temperature=4.0):
        super().__init__()
        _check_fraction("alpha", alpha)
        _check_temperature("temperature", temperature)
        self.alpha, self.temperature = alpha, temperature

    def forward(self, student, teacher, batch):
        images = _entry(batch, "images")
        teacher_logits = _teacher_logits(teacher, batch, images)
        logits = student(images)
        terms = _kd_terms(logits, teacher_logits, _entry(batch, "targets"), self.alpha, self.temperature)
        return StepOutput(terms, logits, teacher_logits)


class MultiLabelKD(DistillationMethod):
    """Multi-label logit KD (the e2KD paper's VOC loss):
    τ·Σ_j KL(Bernoulli(ψ(z_t,j/τ)) ‖ Bernoulli(ψ(z_s,j/τ))), ψ = sigmoid. Like the e2KD reference code, it has
    no ground-truth term."""

    name = "multilabel_kd"

    def __init__(self, *, temperature=1.0):
        super().__init__()
        _check_temperature("temperature", temperature)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        images = _entry(batch, "images")
        teacher_logits = _teacher_logits(teacher, batch, images)
        logits = student(images)
        return StepOutput({"kd": multilabel_kd_loss(logits, teacher_logits, self.temperature)}, logits, teacher_logits)


# -------------------------------------------------------------------------------------------- feature methods
class FeatureDistillation(DistillationMethod):
    """Base of AT, FT and CRD: runs both models with hooks on the named layers, and supplies the logit terms
    (CE, or KD when `logit_kd`)."""

    def __init__(self, logit_kd, kd_alpha, kd_temperature):
        super().__init__()
        _require(isinstance(logit_kd, bool), "logit_kd", "true or false", logit_kd)
        _check_fraction("kd_alpha", kd_alpha)
        _check_temperature("kd_temperature", kd_temperature)
        self.logit_kd, self.kd_alpha, self.kd_temperature = logit_kd, kd_alpha, kd_temperature

    def run_models(self, student, teacher, images, student_layers, teacher_layers):
        """(student logits, teacher logits, {student layer: output}, {teacher layer: output}); the teacher runs
        without autograd."""
        if teacher is None:
            raise ValueError(f"{self.name} needs a teacher model: it distils the teacher's features")
        with capture_outputs(student, student_layers) as student_out:
            student_logits = student(images)
        with torch.no_grad(), capture_outputs(teacher, teacher_layers) as teacher_out:
            teacher_logits = teacher(images)
        return (
            student_logits,
            teacher_logits,
            {name: captured(student_out, name, student) for name in student_layers},
            {name: captured(teacher_out, name, teacher) for name in teacher_layers},
        )

    def logit_terms(self, student_logits, teacher_logits, targets):
        if self.logit_kd:
            return _kd_terms(student_logits, teacher_logits, targets, self.kd_alpha, self.kd_temperature)
        return {"ce": supervised_loss(student_logits, targets)}


def _layer_pairs(pairs):
    """AT's `pairs` option: each entry a module name used in both models, or [student_name, teacher_name]."""
    _require(isinstance(pairs, (list, tuple)) and len(pairs) > 0, "pairs", "a non-empty list", pairs)
    parsed = []
    for pair in pairs:
        if isinstance(pair, str):
            pair = (pair, pair)
        _require(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(n, str) and n for n in pair),
            "pairs", "a list of module names or [student_name, teacher_name] pairs", pairs,
        )
        parsed.append(tuple(pair))
    return tuple(parsed)


class AttentionTransfer(FeatureDistillation):
    """AT: CE + factor·Σ_pairs mean_{b,i} (q_s − q_t)², q = L2-normalised channel mean of squared activations.
    This is torchdistill's ATLoss (mode 'code', the AT authors' code) with its weight 1000 as used by the paper."""

    name = "at"

    def __init__(self, *, pairs=("layer3", "layer4"), factor=1000.0, logit_kd=False, kd_alpha=0.5,
                 kd_temperature=4.0):
        super().__init__(logit_kd, kd_alpha, kd_temperature)
        self.pairs = _layer_pairs(pairs)
        _check_weight("factor", factor)
        self.factor = factor

    def forward(self, student, teacher, batch):
        student_logits, teacher_logits, s_feat, t_feat = self.run_models(
            student, teacher, _entry(batch, "images"), [s for s, _ in self.pairs], [t for _, t in self.pairs]
        )
        terms = self.logit_terms(student_logits, teacher_logits, _entry(batch, "targets"))
        terms["at"] = self.factor * sum(attention_transfer_loss(s_feat[s], t_feat[t]) for s, t in self.pairs)
        return StepOutput(terms, student_logits, teacher_logits)


def _conv_stage(in_channels, out_channels, transposed=False):
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(in_channels, out_channels, 3, padding=1)
    return [conv, nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """FT's teacher-side convolutional autoencoder. The encoder's output is the teacher factor:
    3x3 convs C→C→F→F, each followed by LeakyReLU(0.1); the decoder mirrors it with transposed convs."""

    def __init__(self, channels, factor_channels):
        super().__init__()
        self.encoder = nn.Sequential(
            *_conv_stage(channels, channels), *_conv_stage(channels, factor_channels),
            *_conv_stage(factor_channels, factor_channels),
        )
        self.decoder = nn.Sequential(
            *_conv_stage(factor_channels, factor_channels, True), *_conv_stage(factor_channels, channels, True),
            *_conv_stage(channels, channels, True),
        )

    def forward(self, features):
        return self.decoder(self.encoder(features))


def translator(channels, factor_channels):
    """FT's student-side translator: the same three conv stages as the paraphraser's encoder."""
    return nn.Sequential(
        *_conv_stage(channels, channels), *_conv_stage(channels, factor_channels),
        *_conv_stage(factor_channels, factor_channels),
    )


def _check_channels(option, features, expected, layer):
    if features.dim() != 4 or features.shape[1] != expected:
        raise ValueError(
            f"option {option!r} is {expected} but the output of {layer!r} has shape {tuple(features.shape)}; "
            f"set {option} to its channel count"
        )


class FactorTransfer(FeatureDistillation):
    """FT: CE + factor·FT(translator(student layer4), paraphraser.encoder(teacher layer4)), p = 1.

    `prepare` first trains the paraphraser (teacher_channels → k·teacher_channels) to reconstruct the frozen
    teacher's features for `paraphraser_epochs` epochs: summed squared error, SGD(lr, momentum 0.9, wd 5e-4)
    as torchdistill's *sample* FT config does stage 1 (its official ImageNet config uses the mean, lr 0.01 and
    wd 1e-4: see docs/distill_losses.md). The paraphraser is frozen afterwards."""

    name = "ft"

    def __init__(self, *, factor=1000.0, p=1, k=0.5, student_channels=512, teacher_channels=512,
                 student_layer="layer4", teacher_layer="layer4", paraphraser_epochs=1, paraphraser_lr=1e-4,
                 logit_kd=False, kd_alpha=0.5, kd_temperature=4.0):
        super().__init__(logit_kd, kd_alpha, kd_temperature)
        _check_weight("factor", factor)
        _require(p in (1, 2), "p", "1 or 2", p)
        _check_count("student_channels", student_channels)
        _check_count("teacher_channels", teacher_channels)
        _require(_is_number(k) and int(teacher_channels * k) >= 1, "k",
                 "a rate giving at least one factor channel (int(teacher_channels·k) >= 1)", k)
        _check_name("student_layer", student_layer)
        _check_name("teacher_layer", teacher_layer)
        _check_count("paraphraser_epochs", paraphraser_epochs)
        _check_temperature("paraphraser_lr", paraphraser_lr)
        self.factor, self.p = factor, p
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.paraphraser_epochs, self.paraphraser_lr = paraphraser_epochs, paraphraser_lr
        factor_channels = int(teacher_channels * k)
        self.paraphraser = Paraphraser(teacher_channels, factor_channels)
        self.translator = translator(student_channels, factor_channels)
        # Saved with the method, so a resumed run does not train the paraphraser again.
        self.register_buffer("paraphraser_trained", torch.tensor(False))

    def teacher_features(self, teacher, images):
        with torch.no_grad(), capture_outputs(teacher, [self.teacher_layer]) as out:
            teacher(images)
        features = captured(out, self.teacher_layer, teacher)
        _check_channels("teacher_channels", features, self.teacher_channels, self.teacher_layer)
        return features

    def prepare(self, student, teacher, loader, device):
        self.to(device)
        if not bool(self.paraphraser_trained):
            mode = teacher.training
            teacher.eval()

            def reconstruction(images):
                features = self.teacher_features(teacher, images)
                return F.mse_loss(self.paraphraser(features), features, reduction="sum")

            optimizer = torch.optim.SGD(self.paraphraser.parameters(), lr=self.paraphraser_lr, momentum=0.9,
                                        weight_decay=5e-4)
            _prepare_loop(self.paraphraser, loader, device, self.paraphraser_epochs, optimizer, reconstruction,
                          "FT paraphraser epoch")
            teacher.train(mode)
            self.paraphraser_trained.fill_(True)
        self.paraphraser.requires_grad_(False)

    def forward(self, student, teacher, batch):
        if not bool(self.paraphraser_trained):
            raise RuntimeError("FT's paraphraser is untrained: call prepare(student, teacher, loader, device) first")
        student_logits, teacher_logits, s_feat, t_feat = self.run_models(
            student, teacher, _entry(batch, "images"), [self.student_layer], [self.teacher_layer]
        )
        student_features, teacher_features = s_feat[self.student_layer], t_feat[self.teacher_layer]
        _check_channels("student_channels", student_features, self.student_channels, self.student_layer)
        _check_channels("teacher_channels", teacher_features, self.teacher_channels, self.teacher_layer)
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher_features)
        terms = self.logit_terms(student_logits, teacher_logits, _entry(batch, "targets"))
        terms["ft"] = self.factor * factor_transfer_loss(self.translator(student_features), teacher_factor, self.p)
        return StepOutput(terms, student_logits, teacher_logits)


class ContrastMemory(nn.Module):
    """CRD's two memory banks (N × D, one row per training sample): `student_bank` holds momentum averages of the
    student's embeddings, `teacher_bank` of the teacher's. Initialised uniform in ±1/sqrt(D/3), as in the CRD code."""

    def __init__(self, num_samples, dim, temperature=0.07, momentum=0.5):
        super().__init__()
        self.num_samples, self.temperature, self.momentum = num_samples, temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student_bank", torch.rand(num_samples, dim) * (2 * bound) - bound)
        self.register_buffer("teacher_bank", torch.rand(num_samples, dim) * (2 * bound) - bound)
        # Z of the student- and teacher-anchored scores; −1 = unset, fixed from the first batch (as CRD does).
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    def scores(self, student_embed, teacher_embed, contrast_indices):
        """exp(v · m / τ) / Z for each anchor v and the bank rows `contrast_indices` (B, 1 + K) of the other model:
        the student's embedding against `teacher_bank`, the teacher's against `student_bank`. At least float32,
        also under autocast: exp(1/0.07) overflows float16."""
        dtype = torch.promote_types(self.student_bank.dtype, torch.float32)
        with torch.autocast(student_embed.device.type, enabled=False):
            student_scores = self._exp_scores(self.teacher_bank, contrast_indices, student_embed, dtype)
            teacher_scores = self._exp_scores(self.student_bank, contrast_indices, teacher_embed, dtype)
            if float(self.normalizers[0]) < 0:
                self.normalizers.copy_(
                    torch.stack([_global_mean(student_scores.detach()), _global_mean(teacher_scores.detach())])
                    * self.num_samples
                )
            return student_scores / self.normalizers[0], teacher_scores / self.normalizers[1]

    def _exp_scores(self, bank, contrast_indices, embed, dtype):
        rows = bank[contrast_indices].to(dtype)
        return torch.exp(torch.bmm(rows, embed.to(dtype)[:, :, None])[..., 0] / self.temperature)

    @torch.no_grad()
    def update(self, indices, student_embed, teacher_embed):
        """bank[i] ← normalise(momentum·bank[i] + (1 − momentum)·embedding) for the samples `indices`."""
        for bank, embed in ((self.student_bank, student_embed), (self.teacher_bank, teacher_embed)):
            mixed = bank[indices] * self.momentum + embed.to(bank.dtype) * (1 - self.momentum)
            bank.index_copy_(0, indices, F.normalize(mixed, dim=1))


def dataset_targets(dataset):
    """Every sample's class label, for CRD's class-aware negatives: `dataset.targets` (ImageFolder and
    torchvision datasets, kdfast's training sets), also through a `Subset` without its own `targets`."""
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if targets is None:
        raise ValueError(
            f"CRD with negatives='other_class' reads every training label from loader.dataset.targets, which "
            f"{type(dataset).__name__} does not have; give the dataset a `targets` list or use negatives='uniform'"
        )
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.dim() != 1 or len(targets) != len(dataset) or (len(targets) and int(targets.min()) < 0):
        raise ValueError(
            f"{type(dataset).__name__}.targets must hold one class index >= 0 per sample ({len(dataset)}), "
            f"got shape {tuple(targets.shape)}"
        )
    return targets


class CRD(FeatureDistillation):
    """CRD: CE + factor·(NCE(student anchor vs teacher bank) + NCE(teacher anchor vs student bank)).

    Embeddings: a linear head per model on the flattened `avgpool` output to `feature_dim`, L2-normalised (the
    teacher's head is trained too, as in CRD). Each anchor is contrasted with its own bank row (the positive) and
    `num_negatives` rows drawn with replacement: from samples of other classes (`negatives='other_class'`, the
    paper's torchdistill 'exact' mode; `prepare` reads the labels from loader.dataset.targets) or from all other
    samples (`'uniform'`). The banks have one row per training sample (`num_samples`, rows addressed by
    batch['indices']) and are updated with `momentum` after each step; under DDP with the embeddings of all ranks."""

    name = "crd"

    def __init__(self, *, num_samples, factor=0.8, feature_dim=128, num_negatives=16384, temperature=0.07,
                 momentum=0.5, negatives="other_class", student_dim=512, teacher_dim=512, student_layer="avgpool",
                 teacher_layer="avgpool", logit_kd=False, kd_alpha=0.5, kd_temperature=4.0):
        super().__init__(logit_kd, kd_alpha, kd_temperature)
        _check_count("num_samples", num_samples, minimum=2)
        _check_weight("factor", factor)
        _check_count("feature_dim", feature_dim)
        _check_count("num_negatives", num_negatives)
        _check_temperature("temperature", temperature)
        _check_fraction("momentum", momentum)
        _require(negatives in ("other_class", "uniform"), "negatives", "'other_class' or 'uniform'", negatives)
        _check_count("student_dim", student_dim)
        _check_count("teacher_dim", teacher_dim)
        _check_name("student_layer", student_layer)
        _check_name("teacher_layer", teacher_layer)
        self.num_samples, self.factor = num_samples, factor
        self.num_negatives, self.negatives = num_negatives, negatives
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_embed = nn.Linear(student_dim, feature_dim)
        self.teacher_embed = nn.Linear(teacher_dim, feature_dim)
        self.memory = ContrastMemory(num_samples, feature_dim, temperature, momentum)
        # Class-aware sampling tables, derived from the dataset in `prepare` (not saved).
        for name in ("sample_labels", "class_order", "class_starts", "class_counts"):
            self.register_buffer(name, torch.empty(0, dtype=torch.long), persistent=False)

    def prepare(self, student, teacher, loader, device):
        dataset = loader.dataset
        if len(dataset) != self.num_samples:
            raise ValueError(
                f"option 'num_samples' is {self.num_samples} but the training set has {len(dataset)} samples; "
                "CRD keeps one memory row per sample"
            )
        if self.negatives == "other_class":
            labels = dataset_targets(dataset)
            counts = torch.bincount(labels)
            if int(counts.max()) == len(labels):
                raise ValueError("CRD with negatives='other_class' needs at least two classes in the training set")
            self.sample_labels = labels
            self.class_order = torch.argsort(labels, stable=True)
            self.class_counts = counts
            self.class_starts = torch.cumsum(counts, 0) - counts
        self.to(device)

    def sample_negatives(self, indices):
        """(B, num_negatives) bank rows: uniform over the samples of other classes (or over all other samples)."""
        draw = torch.rand(len(indices), self.num_negatives, dtype=torch.float64, device=indices.device)
        if self.negatives == "uniform":
            rows = (draw * (self.num_samples - 1)).long()
            return rows + (rows >= indices[:, None]).long()  # skip the anchor's own row
        if self.sample_labels.numel() == 0:
            raise RuntimeError(
                "CRD.prepare(student, teacher, loader, device) must run first: it reads the training labels "
                "for negatives='other_class'"
            )
        labels = self.sample_labels[indices]
        counts, starts = self.class_counts[labels][:, None], self.class_starts[labels][:, None]
        # A position among the N − n_c samples of other classes, mapped past the anchor class's block in the
        # label-sorted order.
        positions = (draw * (self.num_samples - counts)).long()
        return self.class_order[positions + (positions >= starts).long() * counts]

    def embed(self, head, features, dim, option):
        flat = features.flatten(1)
        if flat.shape[1] != dim:
            raise ValueError(
                f"option {option!r} is {dim} but the hooked features flatten to {flat.shape[1]} values per sample; "
                f"set {option} to {flat.shape[1]}"
            )
        # float32 (the banks' dtype) also for a float64 model, where the reference keeps float64 (documented).
        return F.normalize(head(flat).float(), dim=1)

    def forward(self, student, teacher, batch):
        indices = _entry(batch, "indices")
        if indices.dim() != 1 or indices.dtype != torch.int64:
            raise ValueError(f"batch['indices'] must be (batch,) int64, got {tuple(indices.shape)} {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            raise ValueError(
                f"batch['indices'] must lie in [0, num_samples={self.num_samples}), got "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        student_logits, teacher_logits, s_feat, t_feat = self.run_models(
            student, teacher, _entry(batch, "images"), [self.student_layer], [self.teacher_layer]
        )
        student_embed = self.embed(self.student_embed, s_feat[self.student_layer], self.student_dim, "student_dim")
        teacher_embed = self.embed(self.teacher_embed, t_feat[self.teacher_layer], self.teacher_dim, "teacher_dim")
        indices = indices.to(student_embed.device)
        contrast = torch.cat([indices[:, None], self.sample_negatives(indices)], dim=1)
        student_scores, teacher_scores = self.memory.scores(student_embed, teacher_embed, contrast)
        crd = nce_contrast_loss(student_scores, self.num_samples) + nce_contrast_loss(teacher_scores, self.num_samples)
        self.memory.update(
            _all_gather(indices), _all_gather(student_embed.detach()), _all_gather(teacher_embed.detach())
        )
        terms = self.logit_terms(student_logits, teacher_logits, _entry(batch, "targets"))
        terms["crd"] = self.factor * crd
        return StepOutput(terms, student_logits, teacher_logits)


# ------------------------------------------------------------------------------------------------------- SSKD
def ss_head(dim):
    """SSKD's self-supervision module on the pooled features: Linear-ReLU-Linear, dim → dim."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


def rotated_batch(images):
    """(B, C, S, S) → (4B, C, S, S): each image followed by its rotations by 90, 180 and 270 degrees."""
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(
            f"SSKD rotates images by 90 degrees, so they must be square (B, C, S, S), got {tuple(images.shape)}"
        )
    return torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)


class SSKD(DistillationMethod):
    """SSKD (Xu et al. 2020) with the paper's weights: ce·CE + kd·KD + ss·SS + tf·TF, computed on each image and
    its three rotations (rows 4b..4b+3 of the 4B-image batch; the student and teacher logits returned are the
    unrotated ones).

    - CE, KD: on the unrotated images; KD = T_kd²·KL(p_t(T_kd) ‖ p_s(T_kd)).
    - TF: KD at T_tf on the rotated images, restricted by error-level ranking to the rotated images whose label
      the teacher ranks first, plus the tf_ratio fraction of the others ranked best.
    - SS: each model's SS head embeds the pooled features; every rotated image's cosine similarities to the B
      unrotated ones form a (3B, B) matrix whose row-softmax at T_ss the student matches (T_ss²·KL), on the rows
      kept by error-level ranking of the teacher's matrix (own image = target) with ss_ratio.
    `prepare` trains the teacher's SS head on the frozen teacher (`teacher_ss_epochs`, CE over the similarity
    matrix with the own image as the target, SGD lr `teacher_ss_lr` ÷10 after 1/3 and 2/3 of the epochs, momentum
    0.9, wd 5e-4); it is frozen afterwards."""

    name = "sskd"

    def __init__(self, *, ce_weight=1.0, kd_weight=0.9, ss_weight=10.0, tf_weight=2.7, kd_temperature=4.0,
                 ss_temperature=0.5, tf_temperature=4.0, ss_ratio=0.75, tf_ratio=1.0, student_dim=512,
                 teacher_dim=512, student_layer="avgpool", teacher_layer="avgpool", teacher_ss_epochs=30,
                 teacher_ss_lr=0.1):
        super().__init__()
        for option, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight), ("ss_weight", ss_weight),
                              ("tf_weight", tf_weight)):
            _check_weight(option, value)
        for option, value in (("kd_temperature", kd_temperature), ("ss_temperature", ss_temperature),
                              ("tf_temperature", tf_temperature), ("teacher_ss_lr", teacher_ss_lr)):
            _check_temperature(option, value)
        _check_fraction("ss_ratio", ss_ratio)
        _check_fraction("tf_ratio", tf_ratio)
        _check_count("student_dim", student_dim)
        _check_count("teacher_dim", teacher_dim)
        _check_name("student_layer", student_layer)
        _check_name("teacher_layer", teacher_layer)
        _check_count("teacher_ss_epochs", teacher_ss_epochs)
        self.weights = {"ce": ce_weight, "kd": kd_weight, "ss": ss_weight, "tf": tf_weight}
        self.kd_temperature, self.ss_temperature, self.tf_temperature = kd_temperature, ss_temperature, tf_temperature
        self.ss_ratio, self.tf_ratio = ss_ratio, tf_ratio
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.teacher_ss_epochs, self.teacher_ss_lr = teacher_ss_epochs, teacher_ss_lr
        self.student_head = ss_head(student_dim)
        self.teacher_head = ss_head(teacher_dim)
        self.register_buffer("teacher_head_trained", torch.tensor(False))

    def pooled(self, model, images, layer, dim, option, grad):
        """(logits, flattened output of `layer`) of `model` on `images`."""
        with torch.set_grad_enabled(grad), capture_outputs(model, [layer]) as out:
            logits = model(images)
        features = captured(out, layer, model).flatten(1)
        if features.shape[1] != dim:
            raise ValueError(
                f"option {option!r} is {dim} but the output of {layer!r} flattens to {features.shape[1]} values "
                f"per sample; set {option} to {features.shape[1]}"
            )
        return logits, features

    def prepare(self, student, teacher, loader, device):
        self.to(device)
        if not bool(self.teacher_head_trained):
            mode = teacher.training
            teacher.eval()

            def contrastive_prediction(images):
                _, features = self.pooled(teacher, rotated_batch(images), self.teacher_layer, self.teacher_dim,
                                          "teacher_dim", grad=False)
                similarities = rotation_similarities(self.teacher_head(features))
                own = torch.arange(len(images), device=images.device).repeat_interleave(3)
                return F.cross_entropy(similarities, own)

            optimizer = torch.optim.SGD(self.teacher_head.parameters(), lr=self.teacher_ss_lr, momentum=0.9,
                                        weight_decay=5e-4)
            epochs = self.teacher_ss_epochs
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 3, 2 * epochs // 3], 0.1)
            _prepare_loop(self.teacher_head, loader, device, epochs, optimizer, contrastive_prediction,
                          "SSKD teacher SS head epoch", scheduler)
            teacher.train(mode)
            self.teacher_head_trained.fill_(True)
        self.teacher_head.requires_grad_(False)

    def forward(self, student, teacher, batch):
        if not bool(self.teacher_head_trained):
            raise RuntimeError("SSKD's teacher SS head is untrained: call prepare(student, teacher, loader, device)")
        if teacher is None:
            raise ValueError("sskd needs a teacher model")
        images, targets = _entry(batch, "images"), _entry(batch, "targets")
        rotated = rotated_batch(images)
        student_logits, student_features = self.pooled(student, rotated, self.student_layer, self.student_dim,
                                                        "student_dim", grad=torch.is_grad_enabled())
        teacher_logits, teacher_features = self.pooled(teacher, rotated, self.teacher_layer, self.teacher_dim,
                                                        "teacher_dim", grad=False)
        student_logits, teacher_logits = student_logits.unflatten(0, (-1, 4)), teacher_logits.unflatten(0, (-1, 4))
        s_normal, s_rotated = student_logits[:, 0], student_logits[:, 1:].flatten(0, 1)
        t_normal, t_rotated = teacher_logits[:, 0], teacher_logits[:, 1:].flatten(0, 1)
        check_class_targets(targets, s_normal)

        kept = error_level_selection(t_rotated, targets.repeat_interleave(3), self.tf_ratio)
        tf = self.kl_on_rows(s_rotated, t_rotated, kept, self.tf_temperature)

        s_similarities = rotation_similarities(self.student_head(student_features))
        with torch.no_grad():
            t_similarities = rotation_similarities(self.teacher_head(teacher_features))
        own = torch.arange(len(images), device=images.device).repeat_interleave(3)
        kept = error_level_selection(t_similarities, own, self.ss_ratio)
        ss = self.kl_on_rows(s_similarities, t_similarities, kept, self.ss_temperature)

        terms = {
            "ce": F.cross_entropy(s_normal, targets),
            "kd": soft_target_kl(s_normal, t_normal, self.kd_temperature),
            "ss": ss,
            "tf": tf,
        }
        return StepOutput({k: self.weights[k] * v for k, v in terms.items()}, s_normal, t_normal)

    @staticmethod
    def kl_on_rows(student, teacher, rows, temperature):
        """T²·KL on the kept rows (batch mean over them); 0 when error-level ranking kept none, still connected
        to the student's graph so that DDP sees the SS head used in every step."""
        if rows.numel() == 0:
            return 0.0 * student.sum()
        return soft_target_kl(student[rows], teacher[rows], temperature)
