"""Prior feature-based methods the e2KD paper compares with (Tables 1-3, Fig. 3): CAT-KD and ReviewKD, for
models with torchvision's ResNet module names (the last stage `layer4` feeding `avgpool` and a linear `fc`).

CAT-KD (Guo et al., CVPR 2023, "Class attention transfer based knowledge distillation"; code
GzyAftermath/CAT-KD): the class activation maps CAM_k = Σ_c W[k, c]·relu(A_c) (the fc applied as a 1×1
convolution before pooling, no bias), both average-pooled to `resolution`×`resolution`, optionally
L2-normalised per map over its pixels, then weight·MSE(student, teacher) + ce_weight·CE. Defaults: the
authors' ImageNet ResNet-34 → ResNet-18 config (weight 0.5, resolution 4, no normalisation, CE weight 1);
their CIFAR config is weight 400, resolution 2, normalisation on. The e2KD paper sweeps the weight over
{1, 5, 10, 15}.

ReviewKD (Chen et al., CVPR 2021, "Distilling knowledge via knowledge review"; code dvlab-research/ReviewKD):
the student's stage outputs (deepest first) pass through attention-based fusion modules (ABF: 1×1 conv + BN
to `mid_channels`, fused with the upsampled (nearest) output of the deeper ABF through a 2-channel sigmoid
attention, then 3×3 conv + BN to the teacher's channels), and the hierarchical context loss (HCL: MSE plus
MSEs after average pooling to 4×4, 2×2, 1×1 where smaller than the map, weighted 1, 1/2, 1/4, 1/8 and
normalised by their sum) compares each with the teacher's stage output: weight·Σ HCL + ce_weight·CE.
Defaults: the authors' ImageNet ResNet-34 → ResNet-18 setup (layers layer1..layer4 and the pooled feature,
channels 64, 128, 256, 512, 512, mid 512, weight 1). Their CIFAR runs warm the weight up over 20 epochs; the
ImageNet script does not, and neither do we.
"""
import torch
import torch.nn.functional as F
from torch import nn

from kdfast.distill.features import capture_outputs, captured, find_submodule
from kdfast.distill.losses import supervised_loss
from kdfast.distill.method import DistillationMethod, StepOutput


def _number(option, value, minimum=0.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"option {option!r} must be a number >= {minimum}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------
# CAT-KD


def class_activation_maps(features, fc_weight):
    """(B, K, h, w) = Σ_c W[k, c]·relu(A_c): the fc applied as a bias-free 1×1 convolution before pooling."""
    return torch.einsum("kc,bchw->bkhw", fc_weight, F.relu(features))


def cat_loss(student_cams, teacher_cams, resolution, normalize):
    """MSE between the CAMs average-pooled to resolution×resolution (each map L2-normalised when `normalize`)."""
    student = F.adaptive_avg_pool2d(student_cams, (resolution, resolution))
    teacher = F.adaptive_avg_pool2d(teacher_cams, (resolution, resolution))
    if normalize:
        student, teacher = F.normalize(student, dim=(2, 3)), F.normalize(teacher, dim=(2, 3))
    return F.mse_loss(student, teacher)


class CATKD(DistillationMethod):
    name = "catkd"

    def __init__(self, *, weight=0.5, resolution=4, normalize=False, ce_weight=1.0, layer="layer4", head="fc",
                 teacher_layer=None, teacher_head=None):
        super().__init__()
        self.weight = _number("weight", weight)
        self.ce_weight = _number("ce_weight", ce_weight)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"option 'resolution' must be a positive integer, got {resolution!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"option 'normalize' must be true or false, got {normalize!r}")
        self.resolution, self.normalize = resolution, normalize
        self.layer, self.head = layer, head
        self.teacher_layer, self.teacher_head = teacher_layer or layer, teacher_head or head

    @staticmethod
    def _cams(model, images, layer, head):
        fc = find_submodule(model, head)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"CAT-KD needs a linear head; {head!r} is a {type(fc).__name__}")
        with capture_outputs(model, [layer]) as out:
            logits = model(images)
        return logits, class_activation_maps(captured(out, layer, model), fc.weight)

    def forward(self, student, teacher, batch):
        if teacher is None:
            raise ValueError("catkd needs a teacher model")
        images = batch["images"]
        logits, student_cams = self._cams(student, images, self.layer, self.head)
        with torch.no_grad():
            teacher_logits, teacher_cams = self._cams(teacher, images, self.teacher_layer, self.teacher_head)
        terms = {"cat": self.weight * cat_loss(student_cams, teacher_cams, self.resolution, self.normalize)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * supervised_loss(logits, batch["targets"])
        return StepOutput(terms, logits, teacher_logits)


# ---------------------------------------------------------------------------------------------------------
# ReviewKD


class AttentionFusion(nn.Module):
    """ReviewKD's ABF module."""

    def __init__(self, in_channels, mid_channels, out_channels, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual=None):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, :1] + residual * attention[:, 1:2]
        return self.conv2(x), x


def hcl_loss(student_features, teacher_features):
    """ReviewKD's hierarchical context loss, summed over the feature pairs."""
    total = 0.0
    for fs, ft in zip(student_features, teacher_features):
        height = fs.shape[2]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            weights += weight
        total = total + loss / weights
    return total


RESNET18_LAYERS = ("layer1", "layer2", "layer3", "layer4", "avgpool")
RESNET18_CHANNELS = (64, 128, 256, 512, 512)


class ReviewKD(DistillationMethod):
    name = "reviewkd"

    def __init__(self, *, weight=1.0, ce_weight=1.0, layers=RESNET18_LAYERS, teacher_layers=None,
                 student_channels=RESNET18_CHANNELS, teacher_channels=RESNET18_CHANNELS, mid_channels=512):
        super().__init__()
        self.weight = _number("weight", weight)
        self.ce_weight = _number("ce_weight", ce_weight)
        self.layers = tuple(layers)
        self.teacher_layers = tuple(teacher_layers or layers)
        self.student_channels, self.teacher_channels = tuple(student_channels), tuple(teacher_channels)
        if not len(self.layers) == len(self.teacher_layers) == len(self.student_channels) == len(self.teacher_channels):
            raise ValueError(f"options 'layers', 'teacher_layers', 'student_channels' and 'teacher_channels' need one "
                             f"entry per feature; got {len(self.layers)}, {len(self.teacher_layers)}, "
                             f"{len(self.student_channels)}, {len(self.teacher_channels)}")
        # abfs[i] serves feature i (shallowest first); the deepest one has nothing to fuse with.
        last = len(self.layers) - 1
        self.abfs = nn.ModuleList(AttentionFusion(c_in, mid_channels, c_out, i < last)
                                  for i, (c_in, c_out) in enumerate(zip(self.student_channels, self.teacher_channels)))

    def review(self, features):
        """The ABF outputs (shallowest first) of the student features (shallowest first)."""
        out, residual = self.abfs[-1](features[-1])
        results = [out]
        for feature, abf in zip(features[-2::-1], list(self.abfs)[-2::-1]):
            out, residual = abf(feature, residual)
            results.insert(0, out)
        return results

    @staticmethod
    def _features(outputs, layers, channels, model, role, option):
        features = []
        for layer, expected in zip(layers, channels):
            value = captured(outputs, layer, model)
            if value.dim() == 2:
                value = value[:, :, None, None]
            if value.dim() != 4 or value.shape[1] != expected:
                raise ValueError(f"option {option!r} expects {expected} channels for the {role}'s {layer!r}, whose "
                                 f"output has shape {tuple(value.shape)}")
            features.append(value)
        return features

    def forward(self, student, teacher, batch):
        if teacher is None:
            raise ValueError("reviewkd needs a teacher model")
        images = batch["images"]
        with capture_outputs(student, self.layers) as out:
            logits = student(images)
        student_features = self._features(out, self.layers, self.student_channels, student, "student",
                                          "student_channels")
        with torch.no_grad(), capture_outputs(teacher, self.teacher_layers) as out:
            teacher_logits = teacher(images)
        teacher_features = self._features(out, self.teacher_layers, self.teacher_channels, teacher, "teacher",
                                          "teacher_channels")
        terms = {"review": self.weight * hcl_loss(self.review(student_features), teacher_features)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * supervised_loss(logits, batch["targets"])
        return StepOutput(terms, logits, teacher_logits)
