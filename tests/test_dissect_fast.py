"""The dissection's speed options: BatchNorm folding, the --fast preset, batched report masks and the malloc
setting of CPU runs; each against the plain computation it replaces."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from kdfast.dissect import cli
from kdfast.dissect.models import LayerRecorder, fold_batchnorm
from kdfast.dissect.report import unit_masks, upsample_maps
from kdfast.ops.iou_tally import upsample_reference


def _resnet18_with_statistics():
    """A ResNet-18 whose BatchNorms have non-trivial running statistics and affine parameters."""
    model = torchvision.models.resnet18().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.normal_(1, 0.3)
            module.bias.data.normal_(0, 0.2)
    return model


def test_fold_batchnorm_computes_the_same_function():
    model = _resnet18_with_statistics()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        recorder = LayerRecorder(model, ["layer3", "layer4"])
        expected = recorder(x)
        recorder.close()  # fold before hooking: the fx trace would run the hooks on proxies
        folded = fold_batchnorm(model, keep=("layer2.0.conv1",))
        got = LayerRecorder(model, ["layer3", "layer4"])(x)
    assert len(folded) == 19  # 20 conv→BN pairs in a ResNet-18, one kept
    assert ("layer2.0.conv1", "layer2.0.bn1") not in folded
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d) and isinstance(model.layer1[0].bn1, nn.Identity)
    for layer in expected:
        scale = expected[layer].abs().max()
        assert (got[layer] - expected[layer]).abs().max() <= 1e-5 * scale
        assert not torch.equal(got[layer], expected[layer])  # another rounding: why it is an option


class _SharedOutput(nn.Module):
    """conv → bn, but the conv's output is also added after the bn: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _ConvUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


@pytest.mark.parametrize("module", [_SharedOutput, _ConvUsedTwice])
def test_fold_batchnorm_leaves_convolutions_whose_output_is_used_elsewhere(module):
    model = module().eval()
    model.bn.running_mean.normal_()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    assert fold_batchnorm(model) == []
    assert torch.equal(model(x), expected)


def test_fold_batchnorm_refuses_untraceable_and_training_models():
    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        fold_batchnorm(_Untraceable().eval())
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_SharedOutput().train())


@pytest.mark.parametrize("native", [True, False])
def test_fast_chooses_channels_last_folding_and_bf16_where_native(monkeypatch, native):
    monkeypatch.setattr(cli, "native_bfloat16", lambda device: native)
    args = cli.parse_args(["--fast"])
    assert cli.forward_settings(args) == {"channels_last": True, "fold_batchnorm": True,
                                          "autocast": "bfloat16" if native else None}
    args = cli.parse_args(["--fast", "--autocast", "float16"])
    assert cli.forward_settings(args)["autocast"] == "float16"
    assert cli.forward_settings(cli.parse_args([])) == {"channels_last": False, "autocast": None,
                                                        "fold_batchnorm": False}


def test_folded_dissection_is_exact_up_to_rounding_and_recorded(broden, tmp_path):
    """--fold-batchnorm (float32) against the default on a ResNet-18: the same maxima up to rounding, the same
    tally rows; run.json and the resume identity record the setting."""
    common = ["--model", "resnet18", "--layers", "layer4", "--broden", str(broden), "--batch-size", "20",
              "--quiet", "--preprocess", "lite"]
    exact = cli.main(common + ["--out", str(tmp_path / "exact")])
    folded = cli.main(common + ["--out", str(tmp_path / "folded"), "--fold-batchnorm"])
    a, b = exact.maxima["layer4"], folded.maxima["layer4"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    run = json.loads((tmp_path / "folded" / "run.json").read_text())
    assert "fold_batchnorm" in json.dumps(run)
    assert folded.config.state_identity("m", "b", 1, 1)["forward"]["fold_batchnorm"] is True
    assert "fold_batchnorm" not in exact.config.state_identity("m", "b", 1, 1)["forward"]


def test_unit_masks_equal_the_reference_per_unit():
    gen = torch.Generator().manual_seed(0)
    for h, w, size in ((7, 7, (112, 112)), (5, 3, (17, 40)), (1, 1, (4, 4))):
        counts = [3, 0, 1, 5]
        maps = [torch.randn(n, h, w, generator=gen) for n in counts]
        maps[3][2] = 0.25  # a constant map at the threshold: no pixel is above it (ties are inactive)
        thresholds = [0.1, 0.0, -0.2, 0.25]
        got = unit_masks(maps, thresholds, size)
        for unit_maps, t, mask in zip(maps, thresholds, got):
            expected = (upsample_reference(unit_maps[:, None], size)[:, 0] > t).numpy()
            assert mask.dtype == bool and mask.shape == expected.shape and np.array_equal(mask, expected)
        assert not got[3][2].any()
        assert torch.equal(upsample_maps(maps[0], size), upsample_reference(maps[0][:, None], size)[:, 0])
    assert [m.shape for m in unit_masks([torch.zeros(0, 2, 2)], [0.0], (4, 4))] == [(0, 4, 4)]


_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from kdfast.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    for step in range(30):
        if step == 20:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20)  # 64 MB allocated, written, freed
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_keep_freed_memory_reuses_pages():
    """64 MB tensors made and freed 30 times: by default each is a fresh mapping (16k page faults each, counted
    over the last ten); with keep_freed_memory the heap grows for the first few (aligned requests do not fit
    the freed block until neighbours coalesce), then reuses what was freed without faulting."""
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "1", "PATH": ""}, check=True)
        return int(done.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 10 * 15000 and kept < 3 * 16384, (default, kept)


def test_untraceable_model_with_fold_fails_before_packing(broden, tmp_path):
    source = tmp_path / "untraceable.py"
    source.write_text(textwrap.dedent("""
        from torch import nn

        class Untraceable(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

            def forward(self, x):
                if x.sum() > 0:  # data-dependent control flow
                    x = -x
                return self.features(x)

        def build():
            return Untraceable()
    """))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="torch.fx cannot trace.*instead of --fast"):
        cli.main(["--model", f"{source}:build", "--layers", "features", "--broden", str(broden), "--broden-cache",
                  str(cache), "--out", str(tmp_path / "out"), "--quiet", "--fast"])
    assert not cache.exists()  # refused before the Broden was packed
