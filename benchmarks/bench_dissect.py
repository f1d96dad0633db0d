"""Dissection microbenchmarks: kdfast's ops against eager PyTorch, and (with --pipeline) the whole run.

    python benchmarks/bench_dissect.py --device cpu --quick       # this 2-core machine
    python benchmarks/bench_dissect.py --device cuda              # H100/H200: the issue's layer4 sizes

Writes benchmarks/results/bench_dissect_<device>.json and .md (device, versions, sizes, times).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, generator_on, time_fn, write_results  # noqa: E402
from kdfast import ops  # noqa: E402
from kdfast.ops.iou_tally import iou_tally  # noqa: E402
from kdfast.ops.topk_threshold import quantile_rank, topk_threshold  # noqa: E402


def eager_threshold(acts, k):
    """What a plain PyTorch user writes: torch.topk over every unit's values."""
    return torch.topk(acts.transpose(0, 1).reshape(acts.shape[1], -1), k, dim=1).values[:, -1]


def eager_tally(acts, thresholds, seg, image_labels, label_category, num_categories):
    """Plain PyTorch: materialise the upsampled maps, compare, and scatter masks into per-label counts."""
    B, U = acts.shape[:2]
    L = label_category.shape[0]
    up = F.interpolate(acts, size=seg.shape[-2:], mode="bilinear", align_corners=False)
    mask = (up > thresholds[None, :, None, None]).flatten(2).float()  # (B, U, S·S)
    inter = torch.zeros(U, L, device=acts.device)
    per_cat = torch.zeros(B, U, num_categories, device=acts.device)
    cat_onehot = F.one_hot(label_category.clamp(min=0), num_categories).float() * (label_category >= 0)[:, None]
    for b in range(B):
        image_inter = torch.zeros(U, L, device=acts.device)
        for p in range(seg.shape[1]):
            index = seg[b, p].flatten().long().expand(U, -1)
            image_inter.scatter_add_(1, index, mask[b])
        active = mask[b].sum(1)
        for label in image_labels[b].long().tolist():
            if label:
                image_inter[:, label] += active
        image_inter[:, 0] = 0
        inter += image_inter
        per_cat[b] = ((image_inter @ cat_onehot) > 0).float() * active[:, None]
    return inter.long(), per_cat.sum(0).long()


def tally_inputs(batch, units, size, seg_size, planes, labels, categories, device, gen):
    gen = generator_on(device, gen)  # drawn on the device
    acts = torch.randn(batch, units, size, size, generator=gen, device=device).relu_()
    k = quantile_rank(0.005, batch * size * size)
    thresholds = ops.unit_topk(acts, k)[:, -1]
    seg = torch.randint(0, labels, (batch, planes, seg_size, seg_size), generator=gen, dtype=torch.int32, device=device)
    image_labels = torch.randint(0, labels, (batch, 2), generator=gen, dtype=torch.int32, device=device)
    label_category = torch.randint(0, categories, (labels,), generator=gen, device=device)
    label_category[0] = -1
    return [acts, thresholds, seg, image_labels, label_category]


def bench_topk(device, images, units, size, gen, repeat):
    acts = torch.randn(images, units, size, size, generator=generator_on(device, gen), device=device)
    k = quantile_rank(0.005, images * size * size)
    ours = time_fn(lambda: topk_threshold(acts, 0.005), device, repeat=repeat)
    eager = time_fn(lambda: eager_threshold(acts, k), device, repeat=repeat)
    copy = time_fn(lambda: acts.clone(), device, repeat=repeat)
    nbytes = acts.numel() * 4
    assert torch.equal(topk_threshold(acts, 0.005), eager_threshold(acts, k))
    return {
        "op": "topk_threshold",
        "shape": f"{images}x{units}x{size}x{size}",
        "k": k,
        "kdfast_s": ours,
        "eager_s": eager,
        "speedup": eager / ours,
        "read_GBps": nbytes / ours / 1e9,
        # clone() reads and writes every byte: its bandwidth is 2·bytes/time.
        "fraction_of_copy_bandwidth": (nbytes / ours) / (2 * nbytes / copy),
    }


def bench_tally(device, batch, units, size, seg_size, gen, repeat):
    acts, thr, seg, img, cat = tally_inputs(batch, units, size, seg_size, 4, 1200, 6, device, gen)
    ours = time_fn(lambda: iou_tally(acts, thr, seg, img, cat, 6), device, repeat=repeat)
    eager = time_fn(lambda: eager_tally(acts, thr, seg, img, cat, 6), device, repeat=repeat)
    got = iou_tally(acts, thr, seg, img, cat, 6)
    inter, act = eager_tally(acts, thr, seg, img, cat, 6)
    # float32 F.interpolate may round a pixel differently from the exact kernel; counts agree to a pixel or so.
    mismatch = int((got.intersections - inter).abs().sum())
    return {
        "op": "iou_tally",
        "shape": f"{batch}x{units}x{size}x{size}->{seg_size}x{seg_size}",
        "kdfast_s": ours,
        "eager_s": eager,
        "speedup": eager / ours,
        "images_per_s": batch / ours,
        "eager_count_mismatch": mismatch,
    }


def bench_pipeline(device, images, batch_size, workers):
    """The whole dissection (packed synthetic Broden, ResNet-18 layer4, both passes), with peak host RSS."""
    import resource
    import tempfile

    from kdfast.data.synthetic_broden import synthetic_broden
    from kdfast.dissect.cli import main as dissect_main

    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_broden(Path(tmp) / "broden", images=images, size=224, seed=0)
        argv = ["--model", "resnet18", "--layers", "layer4", "--broden", str(root), "--out", str(Path(tmp) / "out"),
                "--device", device, "--batch-size", str(batch_size), "--workers", str(workers)]
        dissect_main(argv + ["--pack-only"])  # the one-time packing is not part of the timed run
        t0 = time.perf_counter()
        dissect_main(argv)
        seconds = time.perf_counter() - t0
    return {
        "op": "pipeline resnet18 layer4",
        "shape": f"{images} images 224px",
        "kdfast_s": seconds,
        "images_per_s": images / seconds,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU")
    parser.add_argument("--pipeline-images", type=int, default=None,
                        help="also time the whole pipeline on this many synthetic images (63305 = full Broden)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    repeat = 3 if args.quick else 10
    rows = []
    # layer4 of ResNet-18 on Broden: 512 units, 7x7 maps, 112x112 segmentations.
    topk_images = 2000 if args.quick else 63305
    rows.append(bench_topk(args.device, topk_images, 512, 7, gen, repeat))
    rows.append(bench_topk(args.device, topk_images // 16, 64, 56, gen, repeat))  # layer1: 64 units, 56x56
    tally_batch = 32 if args.quick else 256
    rows.append(bench_tally(args.device, tally_batch, 512, 7, 112, gen, repeat))
    rows.append(bench_tally(args.device, tally_batch // 4, 256, 14, 112, gen, repeat))  # layer3
    if args.pipeline_images:
        rows.append(bench_pipeline(args.device, args.pipeline_images, args.batch_size, args.workers))
    env = environment(args.device)
    out = args.out or Path(__file__).parent / "results" / f"bench_dissect_{torch.device(args.device).type}.json"
    print(write_results(rows, env, out, "kdfast dissection benchmarks"))


if __name__ == "__main__":
    main()
