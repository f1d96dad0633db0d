"""Model definitions kdfast trains and explains: B-cos ResNets and ViT (the bcos package's architectures)."""
from kdfast.models.bcos import (
    BatchNormUncentered2d,
    BcosConv2d,
    BcosExplanation,
    BcosLinear,
    BcosResNet,
    LogitLayer,
    bcos_resnet18,
    bcos_resnet34,
    bcos_resnet50,
    encode_input,
    explain_batch,
    explanation_mode,
)
from kdfast.models.bcos_vit import BcosViT, bcos_vit_tiny

__all__ = [
    "BatchNormUncentered2d",
    "BcosConv2d",
    "BcosExplanation",
    "BcosLinear",
    "BcosResNet",
    "BcosViT",
    "LogitLayer",
    "bcos_resnet18",
    "bcos_resnet34",
    "bcos_resnet50",
    "bcos_vit_tiny",
    "encode_input",
    "explain_batch",
    "explanation_mode",
]
