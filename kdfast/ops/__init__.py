"""kdfast's custom ops: Python wrappers over torch.ops.kdfast.*, each beside its plain-PyTorch reference."""
from kdfast.ops.iou_tally import iou_tally, iou_tally_reference
from kdfast.ops.topk_threshold import (
    StreamingTopK,
    quantile_rank,
    topk_threshold,
    topk_threshold_reference,
    unit_topk,
    unit_topk_reference,
)

__all__ = [
    "StreamingTopK",
    "iou_tally",
    "iou_tally_reference",
    "quantile_rank",
    "topk_threshold",
    "topk_threshold_reference",
    "unit_topk",
    "unit_topk_reference",
]
