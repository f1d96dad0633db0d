"""Runs NetDissect-Lite as released (a checkout of github.com/CSAILVision/NetDissect-Lite, not part of kdfast)
on the CPU with today's Python and SciPy, for benchmarks/bench_dissect_vs_ndl.py:

    python benchmarks/ndl_runner.py NDL_DIR BRODEN_DIR WEIGHTS OUT_DIR

Only what no longer exists is replaced, nothing that changes NDL's work:
* `scipy.misc.imread / imresize / imsave` (removed from SciPy): PIL-based stand-ins doing what SciPy's did
  (imresize was PIL's resize; mode='F' resizes float maps; non-uint8 arrays are byte-scaled first); imread
  returns int32 arrays, so that NDL's `png[:,:,0] + png[:,:,1] * 256` decodes labels under NumPy 2's type
  promotion as it did under NumPy 1's;
* `numpy.NaN` (removed in NumPy 2) is `numpy.nan` again;
* generators that end with `raise StopIteration` (a RuntimeError since Python 3.7, PEP 479) end with `return`;
* `settings.py` is written for this job: CPU, ResNet-18 `layer4` with WEIGHTS (a torchvision state dict),
  BRODEN_DIR's categories, results in OUT_DIR; everything else keeps NDL's released values (quantile 0.005,
  TOPN 10, batch 128, tally batch 16, one tally process, mmap features cleaned up at the end).
* NDL's bar graph crashes when no unit reaches IoU 0.04 (`max()` of an empty list), as with a random-init
  network; then the bar graph is skipped (the report still draws every unit, as NDL does).
"""
import runpy
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = """GPU = False
TEST_MODE = False
CLEAN = True
MODEL = 'resnet18'
DATASET = 'imagenet'
QUANTILE = 0.005
SEG_THRESHOLD = 0.04
SCORE_THRESHOLD = 0.04
TOPN = 10
PARALLEL = 1
CATAGORIES = {categories!r}
OUTPUT_FOLDER = {out!r}
DATA_DIRECTORY = {broden!r}
IMG_SIZE = 224
NUM_CLASSES = 1000
FEATURE_NAMES = ['layer4']
MODEL_FILE = {weights!r}
MODEL_PARALLEL = False
WORKERS = 12
BATCH_SIZE = 128
TALLY_BATCH_SIZE = 16
TALLY_AHEAD = 4
INDEX_FILE = 'index.csv'
"""


def _bytescale(array):
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    scale = 255.0 / (high - low) if high > low else 1.0
    return ((array - low) * scale).clip(0, 255).round().astype(np.uint8)


def imread(path, mode=None):
    with Image.open(path) as image:
        return np.asarray(image.convert(mode) if mode else image).astype(np.int32)


def imresize(array, size, interp="bilinear", mode=None):
    if mode == "F":
        image = Image.fromarray(np.asarray(array, dtype=np.float32), mode="F")
    else:
        image = Image.fromarray(array if array.dtype == np.uint8 else _bytescale(array))
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interp]
    return np.asarray(image.resize((int(size[1]), int(size[0])), resample))


def imsave(path, array):
    Image.fromarray(array if array.dtype == np.uint8 else _bytescale(array)).save(path)


def main(ndl, broden, weights, out):
    ndl, broden, out = Path(ndl).resolve(), Path(broden).resolve(), Path(out).resolve()
    categories = [line.split(",")[0] for line in (broden / "category.csv").read_text().splitlines()[1:] if line]
    settings_dir = Path(tempfile.mkdtemp(prefix="ndl_settings_"))
    (settings_dir / "settings.py").write_text(SETTINGS.format(
        categories=categories, out=str(out), broden=str(broden), weights=str(Path(weights).resolve())))
    sys.path[:0] = [str(settings_dir), str(ndl)]
    misc = types.ModuleType("scipy.misc")
    misc.imread, misc.imresize, misc.imsave = imread, imresize, imsave
    sys.modules["scipy.misc"] = misc
    np.NaN = np.nan

    from loader import data_loader

    def batches(self):
        while True:
            batch = self.fetch_batch()
            if batch is None:
                return
            yield batch

    def tensor_batches(self, bgr_mean=None, global_labels=False):
        while True:
            batch = self.fetch_tensor_batch(bgr_mean=bgr_mean, global_labels=global_labels)
            if batch is None:
                return
            yield batch

    data_loader.SegmentationPrefetcher.batches = batches
    data_loader.SegmentationPrefetcher.tensor_batches = tensor_batches

    from visualize import bargraph

    draw_bars = bargraph.make_svg_bargraph

    def make_svg_bargraph(labels, heights, *args, **kwargs):
        return draw_bars(labels, heights, *args, **kwargs) if heights else None

    bargraph.make_svg_bargraph = make_svg_bargraph
    runpy.run_path(str(ndl / "main.py"), run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
