"""The contract between distillation objectives and the trainer.

A method is an nn.Module: trainable extras it needs (CRD embeddings and memory, an FT translator, the SSKD
head) are its submodules, so the trainer optimises `student.parameters()` and `method.parameters()` together
and checkpoints `method.state_dict()`. The method runs the models itself, because objectives differ in what they
need from a step (hooked features, rotated copies of the batch, dataset indices, the teacher's explanation).
"""
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepOutput:
    """What one training step produced: the named loss terms (their sum is minimised and each is logged),
    and the logits used for accuracy and teacher agreement (teacher_logits is None without a teacher)."""

    terms: dict = field(default_factory=dict)
    student_logits: torch.Tensor = None
    teacher_logits: torch.Tensor = None

    @property
    def loss(self):
        return sum(self.terms.values())


class DistillationMethod(nn.Module):
    """Base class. `batch` is a dict with "images" (B,3,H,W) float, "targets" (B,) int64 (or (B,C) multi-label
    {0,1} floats), "indices" (B,) int64 dataset indices, and optionally "teacher_logits" / "teacher_explanations"
    precomputed by kdfast.explain's frozen-explanation store (then the teacher need not run)."""

    name = "base"
    needs_teacher = True

    def prepare(self, student, teacher, loader, device):
        """Optional stage before training (e.g. FT's paraphraser pre-training). Default: nothing."""

    def forward(self, student, teacher, batch):  # pragma: no cover - abstract
        raise NotImplementedError
