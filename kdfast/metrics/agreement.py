"""Top-1 agreement between a student and its teacher (ECCV 2024 e2KD paper, Eq. 4)."""
from ._checks import check_finite, check_nonempty, check_same_shape, check_tensor


def top1_agreement(student_logits, teacher_logits):
    """Fraction of samples on which both models predict the same top-1 class.

    Logits are (N, K). On tied maxima both sides take the lowest class index (torch.argmax's rule)."""
    check_tensor("student_logits", student_logits, dims=2, floating=True)
    check_tensor("teacher_logits", teacher_logits, dims=2, floating=True)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_nonempty("student_logits", student_logits)
    check_finite("student_logits", student_logits)
    check_finite("teacher_logits", teacher_logits)
    same = student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)
    return float(same.double().mean())
