import torch
from PIL import Image

from kdfast.metrics.plots import ground_truth_colours, image_grid, line_plot, radar_plots


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.size[0] > 50 and image.size[1] > 50


def test_plots_are_written(tmp_path):
    scores = {"auroc": 0.7, **{k: {"mean": 0.4, "max": 0.6} for k in ("precision", "recall", "f1")}}
    _check_png(radar_plots({"scratch": {"0|12": scores, "01|2": scores}, "kd": {"0|12": scores, "01|2": scores}},
                           tmp_path / "radar.png"))
    truth = torch.randint(0, 3, (3, 8, 8))
    rows = [("input", torch.rand(3, 3, 8, 8)), ("truth", ground_truth_colours(truth)), ("map", torch.rand(2, 8, 8))]
    _check_png(image_grid(rows, tmp_path / "sub" / "grid.png", {"map": ("hot", 0, 1)}, title="t"))
    _check_png(line_plot({"a": ([1, 2, 3], [0.1, 0.2, 0.1])}, tmp_path / "line.png", "x", "y"))
