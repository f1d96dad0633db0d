"""Distillation-engine benchmarks:

* train-step time (forward, backward, SGD step) of KD vs e2KD with GradCAM, ResNet-34 teacher -> ResNet-18
  student: e2KD with the closed-form CAM (no double backward) and with the reference's autograd GradCAM
  trained through by a double backward;
* the fused KD + explanation loss (torch.ops.kdfast.kd_explain_loss: one call computing the loss and its
  gradients, a backward that only scales them) vs the same loss in eager PyTorch, forward + backward;
* benchmarks/bench_bcos.py's rows (batched B-cos explanations, B-cos conv), when that module exists.

GPU, the issue's sizes:  python -m benchmarks.bench_distill --device cuda
CPU smoke run:           python -m benchmarks.bench_distill --device cpu --quick
The fused loss alone:    python -m benchmarks.bench_distill --device cpu --loss-only
Results: benchmarks/results/bench_distill_<device>[_loss].json and .md (the CPU --loss-only run is committed as
the record behind benchmarks/NOTES.md; the others are not).
"""
import argparse
import importlib.util
from pathlib import Path

import torch
from torchvision.models import resnet18, resnet34

from benchmarks.common import environment, time_fn, write_results
from kdfast.distill import build_method
from kdfast.distill.e2kd import E2KDGradCAM
from kdfast.ops.kd_explain_loss import kd_explain_loss, kd_explain_loss_reference

RESULTS = Path(__file__).resolve().parent / "results"


def train_step_rows(device, batch_size, image_size, num_classes, amp, warmup, repeat):
    torch.manual_seed(0)
    teacher = resnet34(num_classes=num_classes).to(device).eval()
    student = resnet18(num_classes=num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    batch = {
        "images": torch.randn(batch_size, 3, image_size, image_size, device=device),
        "targets": torch.randint(0, num_classes, (batch_size,), device=device),
        "indices": torch.arange(batch_size, device=device),
    }
    methods = {
        "kd": build_method("kd"),
        "e2kd_gradcam closed-form CAM": E2KDGradCAM(),
        "e2kd_gradcam double backward": E2KDGradCAM(cam="autograd"),
    }
    rows = []
    for name, method in methods.items():
        method.to(device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                loss = method(student, teacher, batch).loss
            loss.backward()
            optimizer.step()

        seconds = time_fn(step, device, warmup=warmup, repeat=repeat)
        rows.append({
            "benchmark": "train step resnet34->resnet18",
            "variant": name,
            "shape": f"B={batch_size} {image_size}px K={num_classes}" + (" bf16 autocast" if amp else ""),
            "ms": seconds * 1e3,
            "images_per_s": batch_size / seconds,
        })
    return rows


def fused_loss_rows(device, batch_size, num_classes, map_size, warmup, repeat):
    gen = torch.Generator(device=device).manual_seed(0)
    shape_kn = (batch_size, num_classes)
    s = torch.randn(shape_kn, device=device, generator=gen).requires_grad_(True)
    t = torch.randn(shape_kn, device=device, generator=gen)
    u = torch.rand(batch_size, map_size * map_size, device=device, generator=gen).requires_grad_(True)
    v = torch.rand(batch_size, map_size * map_size, device=device, generator=gen)
    variants = {
        "fused op": lambda: kd_explain_loss(s, t, u, v, 4.0, 1.0),
        "eager PyTorch": lambda: sum(kd_explain_loss_reference(s, t, u, v, 4.0, 1.0)),
    }
    rows = []
    for name, loss_fn in variants.items():
        def step():
            s.grad = u.grad = None
            loss_fn().backward()

        seconds = time_fn(step, device, warmup=warmup, repeat=repeat)
        rows.append({
            "benchmark": "kd_explain_loss forward+backward",
            "variant": name,
            "shape": f"B={batch_size} K={num_classes} N={map_size}x{map_size} {s.dtype}".replace("torch.", ""),
            "ms": seconds * 1e3,
        })
    rows[0]["speedup_vs_eager"] = rows[1]["ms"] / rows[0]["ms"]
    return rows


def bcos_rows(device, quick):
    """benchmarks/bench_bcos.py's run(device, quick) rows, when that module is present."""
    if importlib.util.find_spec("benchmarks.bench_bcos") is None:
        print("[bench_distill] benchmarks/bench_bcos.py not found: no B-cos rows")
        return []
    from benchmarks import bench_bcos

    return bench_bcos.run(device, quick)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    parser.add_argument("--batch-size", type=int, help="train-step batch (default 64; quick 2)")
    parser.add_argument("--image-size", type=int, help="train-step image side (default 224; quick 64)")
    parser.add_argument("--num-classes", type=int, help="classes (default 1000; quick 10)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in the train steps")
    parser.add_argument("--repeat", type=int, help="timed repetitions (default 20; quick 3)")
    parser.add_argument("--skip-bcos", action="store_true", help="leave out benchmarks/bench_bcos.py's rows")
    parser.add_argument("--loss-only", action="store_true", help="only the fused loss rows (no train steps, no B-cos)")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/bench_distill_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick
    batch_size = args.batch_size or (2 if quick else 64)
    image_size = args.image_size or (64 if quick else 224)
    num_classes = args.num_classes or (10 if quick else 1000)
    repeat = args.repeat or (3 if quick else 20)
    warmup = 1 if quick else 3

    rows = [] if args.loss_only else train_step_rows(device, batch_size, image_size, num_classes, args.amp, warmup, repeat)
    if quick:
        rows += fused_loss_rows(device, 32, 100, 56, warmup, repeat)
    elif device.type == "cpu":  # modest CPU sizes: a 14² and a 56² map, ImageNet's K
        rows += fused_loss_rows(device, 64, 1000, 14, warmup, repeat)
        rows += fused_loss_rows(device, 64, 100, 56, warmup, repeat)
        rows += fused_loss_rows(device, 64, 1000, 56, warmup, repeat)
    else:
        rows += fused_loss_rows(device, 256, 1000, 224, warmup, repeat)
        rows += fused_loss_rows(device, 256, 1000, 7, warmup, repeat)
    if not (args.skip_bcos or args.loss_only):
        rows += bcos_rows(device, quick)
    suffix = "_loss" if args.loss_only else ""
    out = args.out or RESULTS / f"bench_distill_{device.type}{suffix}.json"
    print(write_results(rows, environment(device), out, "kdfast distillation benchmarks"))


if __name__ == "__main__":
    main()
