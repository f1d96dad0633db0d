"""Training BERT classifiers on SST: from scratch (cross-entropy) or by knowledge distillation with the KD loss of
kdfast.distill.losses, (1 − α)·CE + α·T²·KL(p_t(T) ‖ p_s(T)) (paper: α 0.5, T 4, 20 epochs).

The image trainer (kdfast.distill) feeds image batches to its methods; text batches differ (token ids, attention
masks, padded per batch), so this is a small loop of its own that shares the loss. The teacher is frozen and in
eval mode, hence deterministic: its logits for the training set are computed once up front instead of every
epoch.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..distill.losses import kd_loss
from .models import save_checkpoint
from .tokenizer import encode_sentences


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps with linear warm-up, then linear decay to 0
    alpha: float = 0.5
    temperature: float = 4.0
    amp: bool = False  # torch.autocast: float16 + GradScaler on CUDA, bfloat16 on CPU
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class _Collate:
    """Tokenizes a list of (index, example) pairs into a padded batch plus labels and dataset indices."""

    def __init__(self, tokenizer, max_length):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items):
        indices, examples = zip(*items)
        batch, _ = encode_sentences(self.tokenizer, [e.words for e in examples], self.max_length)
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
        batch["indices"] = torch.tensor(indices, dtype=torch.long)
        return batch


def _loader(examples, tokenizer, max_length, batch_size, shuffle, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(enumerate(examples)), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_Collate(tokenizer, max_length))


def _autocast(device, enabled):
    device_type = torch.device(device).type
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled)


def _model_inputs(batch, device):
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def predict_logits(model, tokenizer, examples, batch_size=64, device="cpu", amp=False, progress=False):
    """(N, C) float32 logits of `model` in eval mode for `examples`, in order."""
    if not examples:
        raise ValueError("predict_logits got no examples")
    model = model.to(device).eval()
    out = []
    loader = _loader(examples, tokenizer, model.config.max_position_embeddings, batch_size, shuffle=False)
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        with _autocast(device, amp):
            out.append(model(**_model_inputs(batch, device)).logits.float().cpu())
    return torch.cat(out)


def accuracy(logits, examples):
    labels = torch.tensor([e.label for e in examples])
    return float((logits.argmax(1) == labels).double().mean())


def train_classifier(model, tokenizer, train_examples, config, teacher=None, dev_examples=None, device="cpu",
                     checkpoint_dir=None, desc="train"):
    """Train `model` in place on `train_examples`: cross-entropy, or the KD loss with `teacher`. Logs per epoch
    the mean loss, train accuracy and (with dev_examples) dev accuracy; saves the final model, the tokenizer and
    this history into `checkpoint_dir` when given. Returns the history (list of dicts)."""
    if not train_examples:
        raise ValueError("train_classifier got no training examples")
    num_labels = model.config.num_labels
    labels = {e.label for e in train_examples}
    if min(labels) < 0 or max(labels) >= num_labels:
        raise ValueError(f"training labels range over {min(labels)}..{max(labels)} but the model has {num_labels} "
                         "classes")
    teacher_logits = None
    if teacher is not None:
        if teacher.config.num_labels != num_labels:
            raise ValueError(f"teacher has {teacher.config.num_labels} classes, student {num_labels}")
        teacher_logits = predict_logits(teacher, tokenizer, train_examples, device=device, amp=config.amp)
    torch.manual_seed(config.seed)
    model = model.to(device).train()
    loader = _loader(train_examples, tokenizer, model.config.max_position_embeddings, config.batch_size,
                     shuffle=True, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.floor(config.warmup * total_steps), total_steps)
    scaler = torch.amp.GradScaler(enabled=config.amp and torch.device(device).type == "cuda")
    history = []
    for epoch in tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch"):
        model.train()
        loss_sum, correct = 0.0, 0
        for batch in loader:
            with _autocast(device, config.amp):
                logits = model(**_model_inputs(batch, device)).logits.float()
            targets = batch["labels"].to(device)
            if teacher_logits is None:
                loss = F.cross_entropy(logits, targets)
            else:
                loss = kd_loss(logits, teacher_logits[batch["indices"]].to(device), targets, config.alpha,
                               config.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} in epoch {epoch}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
        record = {"epoch": epoch, "loss": loss_sum / len(train_examples), "train_acc": correct / len(train_examples)}
        if dev_examples:
            record["dev_acc"] = accuracy(predict_logits(model, tokenizer, dev_examples, device=device,
                                                        amp=config.amp), dev_examples)
        history.append(record)
    model.eval()
    if checkpoint_dir is not None:
        info = {"train_config": asdict(config), "distilled": teacher is not None, "history": history}
        save_checkpoint(checkpoint_dir, model, tokenizer, info)
    return history
