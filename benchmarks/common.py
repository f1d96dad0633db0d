"""Shared benchmark plumbing: timing (CUDA events on GPU, perf_counter on CPU), the environment record,
and writing results as JSON plus a Markdown table."""
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def environment(device):
    """Device name and versions, recorded with every result file."""
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def generator_on(device, cpu_generator):
    """Where benchmark inputs are drawn: the given CPU generator on a CPU; on a GPU a seeded generator of that
    device, so that goal-size inputs (6 GB for layer4 top-k) are generated there, not copied from the host."""
    if torch.device(device).type == "cpu":
        return cpu_generator
    return torch.Generator(device=device).manual_seed(int(cpu_generator.initial_seed()))


def time_fn(fn, device, warmup=2, repeat=5):
    """Median seconds per call of fn() (after warm-up); synchronises CUDA around every call."""
    is_cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if is_cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeat):
        if is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_results(rows, env, out_json, title):
    """Writes {"environment", "results"} JSON and a Markdown table beside it (same stem, .md)."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [f"# {title}", "", f"{env['device_name']} · torch {env['torch']} · {env['time']}", ""]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out_json.with_suffix(".md").write_text(table)
    return table
