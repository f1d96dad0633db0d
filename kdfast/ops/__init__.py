"""kdfast's custom ops: Python wrappers over torch.ops.kdfast.*, each beside its plain-PyTorch reference.

`kdfast.ops.iou_tally`, `kdfast.ops.kd_explain_loss` and `kdfast.ops.topk_threshold` are the op modules (a
package attribute never hides a submodule); the functions of the same name live in them, e.g.
`from kdfast.ops.iou_tally import iou_tally`.
"""
from kdfast.ops import iou_tally, kd_explain_loss, topk_threshold
from kdfast.ops.bcos_conv import bcos_conv2d, bcos_conv2d_reference
from kdfast.ops.iou_tally import iou_tally_reference
from kdfast.ops.kd_explain_loss import kd_explain_loss_reference, kd_explain_loss_terms
from kdfast.ops.topk_threshold import (
    StreamingTopK,
    quantile_rank,
    topk_threshold_reference,
    unit_topk,
    unit_topk_reference,
)

__all__ = [
    "StreamingTopK",
    "bcos_conv2d",
    "bcos_conv2d_reference",
    "kd_explain_loss",
    "kd_explain_loss_reference",
    "kd_explain_loss_terms",
    "iou_tally",
    "iou_tally_reference",
    "quantile_rank",
    "topk_threshold",
    "topk_threshold_reference",
    "unit_topk",
    "unit_topk_reference",
]
