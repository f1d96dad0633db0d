"""e2KD for multi-label data (the e2KD paper's VOC setting, Table 4): the logit term is the multi-label KD loss
of eq. C.1 (τ·Σ_j KL of per-class Bernoullis, kdfast.distill.losses.multilabel_kd_loss) instead of the softmax
KL, plus λ·(1 − cos) between teacher and student explanations of the teacher's highest-scoring class (B-cos
W(x) or GradCAM, exactly as kdfast.distill.e2kd computes it). Which class is explained for multi-label
images is not stated in the paper; we use the teacher's top logit, as the single-label e2KD does.
"""
from kdfast.distill.losses import multilabel_kd_loss
from kdfast.distill.method import DistillationMethod


class MultiLabelE2KD(DistillationMethod):
    """build_method("multilabel_e2kd", explanation="bcos", tau=1.0, lam=1.0) (GradCAM: explanation="gradcam",
    with e2kd_gradcam's layer/head options in `explanation_options`)."""

    name = "multilabel_e2kd"

    def __init__(self, *, explanation="bcos", tau=1.0, lam=1.0, explanation_options=None):
        super().__init__()
        from kdfast.distill import build_method

        if explanation not in ("bcos", "gradcam"):
            raise ValueError(f"explanation must be 'bcos' or 'gradcam', got {explanation!r}")
        self.tau = tau
        self.e2kd = build_method(f"e2kd_{explanation}", tau=tau, lam=lam, **(explanation_options or {}))

    def forward(self, student, teacher, batch):
        out = self.e2kd(student, teacher, batch)
        out.terms = {"kd": multilabel_kd_loss(out.student_logits, out.teacher_logits, self.tau),
                     "explanation": out.terms["explanation"]}
        return out
