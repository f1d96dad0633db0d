"""CAT-KD and ReviewKD (kdfast.distill.prior_work) against direct transcriptions of their authors' code
(GzyAftermath/CAT-KD mdistiller/distillers/CAT_KD.py; dvlab-research/ReviewKD ImageNet/models/reviewkd.py),
in float64 on tiny ResNets."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdfast.distill import build_method
from kdfast.distill.features import capture_outputs
from kdfast.distill.models import tiny_resnet

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def _models():
    torch.manual_seed(0)
    student = tiny_resnet(5, widths=(4, 8, 8, 16)).double()
    teacher = tiny_resnet(5, widths=(8, 8, 16, 16)).double().eval()
    batch = {"images": torch.rand(3, 3, 16, 16, dtype=torch.float64), "targets": torch.tensor([0, 4, 2]),
             "indices": torch.arange(3)}
    return student, teacher, batch


def _features(model, images, layers):
    with capture_outputs(model, layers) as out:
        logits = model(images)
    return logits, [out[n] for n in layers]


@pytest.mark.parametrize("resolution,normalize,weight", [(4, False, 0.5), (2, True, 400.0), (1, True, 3.0)])
def test_catkd_matches_the_authors_formula(resolution, normalize, weight):
    student, teacher, batch = _models()
    method = build_method("catkd", weight=weight, resolution=resolution, normalize=normalize)
    out = method(student, teacher, batch)

    # Their ResNet_test: feat5 = conv_test(relu(feat4)) with the fc as a bias-free 1x1 conv; then CAT_loss.
    logits, (s4,) = _features(student, batch["images"], ["layer4"])
    with torch.no_grad():
        _, (t4,) = _features(teacher, batch["images"], ["layer4"])
    cam_s = F.conv2d(F.relu(s4), student.fc.weight[:, :, None, None])
    cam_t = F.conv2d(F.relu(t4), teacher.fc.weight[:, :, None, None])
    pooled_s = F.adaptive_avg_pool2d(cam_s, (resolution, resolution))
    pooled_t = F.adaptive_avg_pool2d(cam_t, (resolution, resolution))
    if normalize:
        pooled_s, pooled_t = F.normalize(pooled_s, dim=(2, 3)), F.normalize(pooled_t, dim=(2, 3))
    expected_cat = weight * F.mse_loss(pooled_s, pooled_t)
    torch.testing.assert_close(out.terms["cat"], expected_cat, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.terms["ce"], F.cross_entropy(logits, batch["targets"]))
    grads = torch.autograd.grad(out.terms["cat"], student.fc.weight)[0]
    expected = torch.autograd.grad(expected_cat, student.fc.weight)[0]
    torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-14)


class _TheirABF(nn.Module):
    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None

    def forward(self, x, y=None, shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        y = self.conv2(x)
        return y, x


def _their_hcl(fstudent, fteacher):
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            cnt /= 2.0
            loss += F.mse_loss(F.adaptive_avg_pool2d(fs, (l, l)), F.adaptive_avg_pool2d(ft, (l, l)),
                               reduction="mean") * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


def test_reviewkd_matches_the_authors_formula():
    student, teacher, batch = _models()
    layers = LAYERS + ["avgpool"]
    s_channels, t_channels = [4, 8, 8, 16, 16], [8, 8, 16, 16, 16]
    method = build_method("reviewkd", layers=layers, student_channels=s_channels, teacher_channels=t_channels,
                          mid_channels=6, weight=1.0).double()
    out = method(student, teacher, batch)

    theirs = [_TheirABF(c_in, 6, c_out, i < 4).double() for i, (c_in, c_out) in enumerate(zip(s_channels, t_channels))]
    for mine, their in zip(method.abfs, theirs):
        their.load_state_dict(mine.state_dict())
    abfs = theirs[::-1]  # their ReviewKD keeps the deepest first
    logits, feats = _features(student, batch["images"], layers)
    x = [f if f.dim() == 4 else f[:, :, None, None] for f in feats][::-1]
    results = []
    out_features, res_features = abfs[0](x[0])
    results.append(out_features)
    for features, abf in zip(x[1:], abfs[1:]):
        out_features, res_features = abf(features, res_features, features.shape[-1])
        results.insert(0, out_features)
    with torch.no_grad():
        _, teacher_feats = _features(teacher, batch["images"], layers)
    expected = _their_hcl(results, teacher_feats)
    torch.testing.assert_close(out.terms["review"], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.terms["ce"], F.cross_entropy(logits, batch["targets"]))
    with pytest.raises(ValueError, match="expects 9 channels for the student's 'layer1'"):
        build_method("reviewkd", layers=layers, student_channels=[9, 8, 8, 16, 16], teacher_channels=t_channels,
                     mid_channels=6)(student, teacher, batch)
