"""The losses of the KD family as pure functions of tensors (the methods in kdfast.distill.methods run the
models and pick the tensors). Every function averages over the batch; defaults are the ICML 2023 paper's.

Notation: z_s, z_t student/teacher logits (B, C); p(T) = softmax(z / T); y integer targets (B,).
"""
import torch
import torch.nn.functional as F


def _check_logits(name, logits):
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (batch, classes), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; a batch mean over no samples is undefined")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")


def _check_pair(student_name, student, teacher_name, teacher):
    _check_logits(student_name, student)
    _check_logits(teacher_name, teacher)
    if student.shape != teacher.shape:
        raise ValueError(
            f"{student_name} {tuple(student.shape)} and {teacher_name} {tuple(teacher.shape)} must have the same shape"
        )


def _check_positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_fraction(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_class_targets(targets, logits):
    """Integer class targets (B,) in [0, C) for logits (B, C)."""
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be ({logits.shape[0]},) class indices for logits {tuple(logits.shape)}, "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must hold integer class indices, got {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(
            f"targets must lie in [0, {logits.shape[1]}), got values in [{int(targets.min())}, {int(targets.max())}]"
        )


def supervised_loss(logits, targets):
    """The ground-truth term: cross-entropy for integer targets (B,); for multi-label {0,1} float targets (B, C),
    binary cross-entropy on each logit (mean over batch and classes, as `BCEWithLogitsLoss`)."""
    _check_logits("logits", logits)
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"multi-label targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    check_class_targets(targets, logits)
    return F.cross_entropy(logits, targets)


def soft_target_kl(student_logits, teacher_logits, temperature):
    """T²·KL(p_t(T) ‖ p_s(T)), batch mean.

    This is Hinton's soft cross-entropy CE(p_t(T), p_s(T)) minus the teacher's entropy, which does not depend on
    the student: same gradient w.r.t. the student, d/dz_s = T·(p_s(T) − p_t(T))/B, and 0 when the two agree.
    The T² keeps that gradient's scale independent of T."""
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_positive("temperature", temperature)
    # Both sides as log-probabilities: exact for saturated softmaxes. A class the teacher gives probability 0
    # (a −inf logit, e.g. a masked class) adds 0, as torchdistill's KLDivLoss on probabilities (xlogy) does;
    # F.kl_div(log_target=True) would give 0·(−inf) = NaN there.
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    pt = log_pt.exp()
    kl = (pt * torch.where(pt > 0, log_pt - log_ps, 0.0)).sum() / student_logits.shape[0]
    return temperature**2 * kl


def kd_loss(student_logits, teacher_logits, targets, alpha=0.5, temperature=4.0):
    """Hinton KD as in the ICML paper: (1 − α)·CE(z_s, y) + α·T²·KL(p_t(T) ‖ p_s(T)).

    The T² factor is applied for every α (torchdistill's KDLoss drops it when α is 0/None)."""
    _check_fraction("alpha", alpha)
    return (1.0 - alpha) * supervised_loss(student_logits, targets) + alpha * soft_target_kl(
        student_logits, teacher_logits, temperature
    )


def label_smoothing_loss(logits, targets, alpha=0.1):
    """(1 − α)·CE(z, y) + α·CE(z, u) with u uniform over the C classes, i.e. cross-entropy against the smoothed
    target (1 − α)·onehot(y) + α/C (what `F.cross_entropy(label_smoothing=α)` computes)."""
    _check_logits("logits", logits)
    _check_fraction("alpha", alpha)
    check_class_targets(targets, logits)
    return F.cross_entropy(logits, targets, label_smoothing=alpha)


def multilabel_kd_loss(student_logits, teacher_logits, temperature=1.0):
    """Multi-label logit KD (the e2KD paper's VOC form, eq. C.1):
    τ·Σ_j KL([ψ_j(z_t/τ), 1 − ψ_j(z_t/τ)] ‖ [ψ_j(z_s/τ), 1 − ψ_j(z_s/τ)]), ψ = sigmoid, batch mean.
    Unlike the e2KD authors' module, saturated sigmoids are not clamped: logsigmoid keeps them exact."""
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_positive("temperature", temperature)
    zs, zt = student_logits / temperature, teacher_logits / temperature
    pt = torch.sigmoid(zt)
    # log ψ(z) = logsigmoid(z), log(1 − ψ(z)) = logsigmoid(−z): finite for any finite logit.
    kl = pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
    return temperature * kl.sum(dim=1).mean()


def attention_map(features):
    """AT's spatial attention of a (B, C, H, W) feature map: the mean over channels of the squared activations,
    flattened and L2-normalised per sample -> (B, H·W)."""
    if features.dim() != 4:
        raise ValueError(f"attention maps need (batch, channels, height, width) features, got {tuple(features.shape)}")
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student_features, teacher_features):
    """One AT pair as the AT authors' code (and torchdistill's mode='code') computes it: the mean over batch and
    positions of (q_s − q_t)², q = attention_map(·). Channel counts may differ; spatial sizes must match."""
    student_shape, teacher_shape = student_features.shape, teacher_features.shape
    if student_shape[0] != teacher_shape[0] or student_shape[2:] != teacher_shape[2:]:
        raise ValueError(
            f"attention transfer needs the same batch and spatial size: student features "
            f"{tuple(student_features.shape)}, teacher features {tuple(teacher_features.shape)}"
        )
    return (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


def factor_transfer_loss(student_factor, teacher_factor, p=1):
    """FT between the translator's and the paraphraser's factors, each flattened and L2-normalised per sample.
    p=1: the mean absolute difference over batch and elements (torchdistill's FTLoss with p=1, the ICML setting);
    p=2: the batch mean of the per-sample Euclidean distance."""
    if student_factor.shape != teacher_factor.shape:
        raise ValueError(
            f"student factor {tuple(student_factor.shape)} and teacher factor {tuple(teacher_factor.shape)} "
            "must have the same shape"
        )
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    fs = F.normalize(student_factor.flatten(1), dim=1)
    ft = F.normalize(teacher_factor.flatten(1), dim=1)
    if p == 1:
        return (fs - ft).abs().mean()
    return (fs - ft).norm(dim=1).mean()


def nce_contrast_loss(scores, num_samples, eps=1e-7):
    """CRD's NCE loss. `scores` (B, 1 + K): column 0 the positive pair, the rest K negatives, each an
    unnormalised density exp(v·m / τ)/Z. With noise density P_n = 1/N (N = `num_samples`):
    −(1/B)·[Σ_b log(P_pos / (P_pos + K·P_n + ε)) + Σ_{b,k} log(K·P_n / (P_neg + K·P_n + ε))]."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (batch, 1 + negatives) with at least one negative, got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("scores is an empty batch")
    _check_positive("num_samples", num_samples)
    noise = (scores.shape[1] - 1) / num_samples
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def rotation_similarities(embeddings):
    """SSKD's contrastive matrix. `embeddings` (4B, D) hold each image followed by its three rotations
    (rows 4b, 4b+1, 4b+2, 4b+3). Returns (3B, B): the cosine similarity of every rotated copy (sample-major)
    to every unrotated image; row r's own image is column r // 3."""
    if embeddings.dim() != 2 or embeddings.shape[0] % 4:
        raise ValueError(
            f"embeddings must be (4·batch, dim) in groups of four rotations, got {tuple(embeddings.shape)}"
        )
    groups = F.normalize(embeddings, dim=1).unflatten(0, (-1, 4))
    return groups[:, 1:].flatten(0, 1) @ groups[:, 0].T


def error_level_selection(scores, targets, keep_ratio):
    """SSKD's error-level ranking: the rows to distil. A row's rank is the number of entries scoring strictly above
    its target; every rank-0 row is kept, plus the ⌊keep_ratio·W⌋ of the W other rows with the smallest rank
    (ties by row order). Returns the kept row indices in increasing order."""
    _check_logits("scores", scores)
    check_class_targets(targets, scores)
    _check_fraction("keep_ratio", keep_ratio)
    rank = (scores > scores.gather(1, targets[:, None])).sum(dim=1)
    wrong = int((rank > 0).sum())
    keep = scores.shape[0] - wrong + int(wrong * keep_ratio)
    return torch.argsort(rank, stable=True)[:keep].sort().values
