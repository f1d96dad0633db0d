"""B-cos benchmarks: batched explanations against a per-image loop, and the fused B-cos conv forward against a
plain convolution of the same shape (and against the eager B-cos formulation of the bcos package).

    python benchmarks/bench_bcos.py --device cpu --quick     # small sizes for this 2-core CPU
    python benchmarks/bench_bcos.py --device cuda            # H100/H200: ResNet-18 at 224 px, batch 64

Writes benchmarks/results/bench_bcos_<device>.json and .md (device, versions, sizes, times).
`run(device, quick)` returns the rows, for benchmarks/bench_distill.py to merge.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, time_fn, write_results  # noqa: E402
from kdfast.models.bcos import bcos_resnet18, encode_input, explain_batch  # noqa: E402
from kdfast.ops.bcos_conv import bcos_conv2d  # noqa: E402

# ResNet-18's B-cos convs at 224 px: (name, in, out, kernel, stride, padding, input size).
RESNET18_CONVS = [
    ("stem 7x7/2", 6, 64, 7, 2, 3, 224),
    ("layer1 3x3", 64, 64, 3, 1, 1, 56),
    ("layer2 3x3", 128, 128, 3, 1, 1, 28),
    ("layer3 3x3", 256, 256, 3, 1, 1, 14),
    ("layer4 3x3", 512, 512, 3, 1, 1, 7),
    ("layer4 down 1x1/2", 256, 512, 1, 2, 0, 14),
]


def eager_bcos_conv(x, w, stride, padding):
    """The bcos package's formulation: conv, then x² summed over channels, average-pooled × patch size,
    sqrt, and the scaling as separate elementwise ops."""
    out = F.conv2d(x, w, None, stride, padding)
    k = w.shape[-1]
    norm = (F.avg_pool2d((x**2).sum(1, keepdim=True), k, stride, padding) * (k * k) + 1e-6).sqrt_()
    return out.abs() / norm * out


def bench_conv(device, name, cin, cout, k, stride, padding, size, batch, dtype, gen, repeat):
    x = torch.randn(batch, cin, size, size, generator=gen).to(device, dtype)
    w = torch.randn(cout, cin, k, k, generator=gen)
    w = (w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)).to(device, dtype)
    with torch.no_grad():
        plain = time_fn(lambda: F.conv2d(x, w, None, stride, padding), device, repeat=repeat)
        fused = time_fn(lambda: bcos_conv2d(x, w, stride, padding), device, repeat=repeat)
        eager = time_fn(lambda: eager_bcos_conv(x, w, stride, padding), device, repeat=repeat)
        err = (bcos_conv2d(x, w, stride, padding).float() - eager_bcos_conv(x, w, stride, padding).float()).abs().max()
    return {
        "bench": "bcos_conv2d forward",
        "case": name,
        "shape": f"{batch}x{cin}x{size}x{size} -> {cout}, k{k}/s{stride}",
        "dtype": str(dtype).replace("torch.", ""),
        "plain_conv_s": plain,
        "fused_bcos_s": fused,
        "eager_bcos_s": eager,
        "fused_over_plain": fused / plain,
        "eager_over_fused": eager / fused,
        "max_abs_diff_vs_eager": float(err),
    }


def bench_explanations(device, batch, size, width, gen, repeat):
    torch.manual_seed(0)
    model = bcos_resnet18(1000, inplanes=width).to(device).eval()
    x6 = encode_input(torch.rand(batch, 3, size, size, generator=gen)).to(device)
    classes = torch.randint(0, 1000, (batch,), generator=gen).to(device)

    def per_image():
        return [explain_batch(model, x6[i : i + 1], classes[i : i + 1]).weights for i in range(batch)]

    batched = time_fn(lambda: explain_batch(model, x6, classes), device, repeat=repeat)
    looped = time_fn(per_image, device, warmup=1, repeat=max(1, repeat // 2))
    diff = (explain_batch(model, x6, classes).weights - torch.cat(per_image())).abs().max()
    return {
        "bench": "B-cos explanations W(x)",
        "case": f"bcos_resnet18 (width {width})",
        "shape": f"{batch}x6x{size}x{size}",
        "dtype": "float32",
        "batched_s": batched,
        "per_image_loop_s": looped,
        "speedup": looped / batched,
        "images_per_s_batched": batch / batched,
        "max_abs_diff": float(diff),
    }


def run(device, quick=False):
    """All rows: on a CPU with quick=True small sizes (a minute or so), else the issue's sizes."""
    gen = torch.Generator().manual_seed(0)
    repeat = 3 if quick else 20
    rows = []
    if quick:
        for name, cin, cout, k, stride, padding, size in RESNET18_CONVS:  # a quarter of the widths, half the size
            cin = cin if cin == 6 else cin // 4
            rows.append(bench_conv(device, name, cin, cout // 4, k, stride, padding, size // 2, 4, torch.float32, gen,
                                   repeat))
        rows.append(bench_explanations(device, 8, 64, 16, gen, repeat))
    else:
        dtypes = [torch.float32, torch.bfloat16] if torch.device(device).type == "cuda" else [torch.float32]
        for dtype in dtypes:
            for conv in RESNET18_CONVS:
                rows.append(bench_conv(device, *conv, 64, dtype, gen, repeat))
        rows.append(bench_explanations(device, 32, 224, 64, gen, repeat))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = run(args.device, quick=args.quick)
    out = args.out or Path(__file__).parent / "results" / f"bench_bcos_{torch.device(args.device).type}.json"
    print(write_results(rows, environment(args.device), out, "kdfast B-cos benchmarks"))


if __name__ == "__main__":
    main()
