"""The dissection report and the pass-1 data it is drawn from: top images kept while activations stream (equal
to a sort of the whole maxima table, across batches and ranks), the separable upsampling (equal to the
reference), the two-tone mask edge, captions and every unit listed; a re-report runs no model; the tally does
not depend on the data path (stored activations or a second forward, batch size, loader) and fp16 storage
thresholds the stored values."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import requires_cuda
from dissect_helpers import QUANTILE, output_files, planted_args
from kdfast.dissect import cli
from kdfast.dissect.report import EDGE, RIM, overlay, upsample_maps
from kdfast.dissect.top_images import TopImages, order_by_peak
from kdfast.ops.iou_tally import upsample_reference
from kdfast.ops.topk_threshold import quantile_rank, unit_topk


@pytest.fixture(scope="module")
def default_run(broden, tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE)))
    return out


def _stream(acts, splits, count):
    top = TopImages(acts.shape[1], count, acts.shape[2:])
    index = torch.arange(acts.shape[0])
    for part, ids in zip(torch.split(acts, splits), torch.split(index, splits)):
        top.update(part, part.amax(dim=(2, 3)), ids)
    return top


@pytest.mark.parametrize("images, count", [(1, 1), (13, 4), (30, 30), (5, 8)])
def test_top_images_equal_a_sort_of_all_maxima(gen, images, count):
    # Few distinct values, so many maxima tie: ties must go to the lower image index.
    acts = torch.randint(0, 4, (images, 6, 3, 2), generator=gen).float()
    acts[:, 5] = 1.0  # an all-equal unit
    splits, sizes = [], iter([3, 1, 7, 2] * images)
    while sum(splits) < images:
        splits.append(min(next(sizes), images - sum(splits)))
    top = _stream(acts, splits, count)
    indices, maps = top.lists()
    peaks = acts.amax(dim=(2, 3))
    for u in range(acts.shape[1]):
        want = torch.argsort(peaks[:, u], descending=True, stable=True)[:count].tolist()
        assert indices[u] == want
        assert torch.equal(maps[u], acts[want, u])
    # Two ranks with strided shards, merged: the same choice as one process.
    ranks = []
    for r in range(2):
        shard = torch.arange(r, images, 2)
        part = TopImages(acts.shape[1], count, acts.shape[2:])
        if len(shard):
            part.update(acts[shard], peaks[shard], shard)
        ranks.append(part)
    merged_indices, merged_maps = ranks[0].merge([(ranks[1].values, ranks[1].indices, ranks[1].maps)]).lists()
    assert merged_indices == indices and all(torch.equal(a, b) for a, b in zip(merged_maps, maps))
    restored = TopImages.from_state_dict(top.state_dict())
    assert restored.lists()[0] == indices
    with pytest.raises(ValueError, match=f"keep {count} image"):
        top.lists(count + 1)


def test_order_by_peak_lexicographic():
    values = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), 2.0]])
    indices = torch.tensor([[4, 9, 2, -1, 0]])
    assert order_by_peak(values, indices).tolist() == [[2, 1, 4, 0, 3]]


@pytest.mark.parametrize("shape, size", [((1, 1), (4, 4)), ((3, 5), (7, 11)), ((7, 7), (112, 112)), ((14, 2), (3, 9))])
def test_upsample_maps_equal_the_reference(gen, shape, size):
    maps = torch.randn((3,) + shape, generator=gen)
    assert torch.equal(upsample_maps(maps, size), upsample_reference(maps[:, None], size)[:, 0])


def test_two_tone_edge_visible_on_yellow():
    image = np.zeros((12, 12, 3), np.uint8)
    image[:] = (250, 230, 10)  # yellow
    mask = np.zeros((12, 12), bool)
    mask[3:9, 4:10] = True
    out = overlay(image, mask)
    edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1] \
        | mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    rim = ~mask & (np.pad(mask, 1)[2:, 1:-1] | np.pad(mask, 1)[:-2, 1:-1]
                   | np.pad(mask, 1)[1:-1, 2:] | np.pad(mask, 1)[1:-1, :-2])
    assert (out[edge] == EDGE).all() and (out[rim] == RIM).all()
    interior = mask & ~edge
    assert (out[interior] == image[interior]).all()
    far = ~mask & ~rim
    assert (out[far] == (image[far] * 0.25).astype(np.uint8)).all()
    assert not np.array_equal(RIM, (image[0, 0] * 0.25).astype(np.uint8))  # the rim differs from the darkening


def test_report_lists_every_unit_with_captions(default_run):
    folder = default_run / "features"
    html = (folder / "report.html").read_text()
    with open(folder / "tally.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    positions = [html.index(f"src='images/unit{int(r['unit']):04d}.jpg'") for r in rows]
    assert len(rows) == 5 and positions == sorted(positions)  # every unit, in tally.csv order (best IoU first)
    assert html.count("class='below'") == sum(float(r["score"]) < 0.05 for r in rows) > 0
    assert (folder / "concepts.png").is_file()
    strip = np.asarray(Image.open(folder / "images" / f"unit{int(rows[0]['unit']):04d}.jpg"))
    band = strip[:18]
    assert (band < 100).any() and (band > 200).mean() > 0.5  # dark caption text on a white band


def test_rereport_draws_the_same_strips_without_a_forward(broden, default_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = planted_args(broden, out, "crashing", "--quantile", str(QUANTILE))
    cli.main(args)

    def drawn(folder):  # the layer's files that do not name the model spec
        return {k: v for k, v in output_files(folder / "features").items()
                if not k.endswith(("summary.json", "report.html"))}

    assert drawn(out) == drawn(default_run)
    monkeypatch.setenv("PLANTED_CRASH_AFTER", "2")  # only the layer check and the shape probe may run the model
    cli.main(args + ["--iou-threshold", "0.3"])
    strips = {k: v for k, v in drawn(out).items() if k.startswith("images/") or k == "tally.csv"}
    assert len(strips) == 6 and strips.items() <= drawn(default_run).items()  # the same maps, no new forward
    with pytest.raises(ValueError, match=r"keeps 5 top image\(s\) per unit, but --top-images is 6"):
        cli.main(args + ["--top-images", "6"])


@pytest.mark.parametrize("extra", [("--activation-cache-gb", "0"), ("--batch-size", "7", "--workers", "1")])
def test_tally_does_not_depend_on_the_data_path(broden, default_run, tmp_path, extra):
    out = tmp_path / "out"
    cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE), *extra))
    got, want = output_files(out / "features"), output_files(default_run / "features")
    assert got["tally.csv"] == want["tally.csv"] and got["summary.json"] == want["summary.json"]
    assert got == want  # the same top images and maps too


def test_half_storage_thresholds_the_stored_values(broden, tmp_path):
    import planted_model
    from kdfast.data.broden import BrodenDataset

    result = cli.main(planted_args(broden, tmp_path / "out", "planted", "--quantile", str(QUANTILE),
                                   "--activation-dtype", "float16"))
    data = BrodenDataset(broden)
    images = torch.stack([torch.from_numpy(data.load(i)["image"].copy()).permute(2, 0, 1) for i in range(len(data))])
    with torch.no_grad():
        acts = planted_model.planted().eval().features(images.float() / 255).half().float()
    k = quantile_rank(QUANTILE, acts.shape[0] * acts.shape[2] * acts.shape[3])
    assert np.array_equal(result.tallies["features"][0].thresholds, unit_topk(acts, k)[:, -1].numpy())


@requires_cuda
def test_cuda_pipeline_equals_cpu(broden, default_run, tmp_path):
    """The device data path (feeder, activations kept in GPU memory, device flags) against the CPU run; the
    CUDA run without stored activations (the model runs twice) gives the same files as with them."""
    out, twice = tmp_path / "cuda", tmp_path / "cuda_twice"
    cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE), "--device", "cuda"))
    cli.main(planted_args(broden, twice, "planted", "--quantile", str(QUANTILE), "--device", "cuda",
                          "--activation-cache-gb", "0"))
    assert output_files(out / "features") == output_files(twice / "features")
    with open(out / "features" / "tally.csv", newline="") as f, \
            open(default_run / "features" / "tally.csv", newline="") as g:
        got, want = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [(r["unit"], r["label"]) for r in got] == [(r["unit"], r["label"]) for r in want]
    assert np.allclose([float(r["score"]) for r in got], [float(r["score"]) for r in want], rtol=1e-4, atol=1e-6)
