"""Compile checks of the CUDA kernels for sm_90 (H100/H200), no GPU needed: registers, stack, spills, no
subroutine call (64-bit integer divide, double divide, ...) inside a loop of a kernel's SASS, and 16-B vector
loads where a kernel's design needs them.

    python scripts/check_cuda_build.py [--json out.json]

Each csrc/<op>/cuda/<op>_kernels.cuh holds the op's kernels without ATen, so nvcc compiles it alone in
seconds. Exit status 1 when a kernel breaks a rule, 2 when nvcc or cuobjdump is missing.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_REGISTERS = 64  # 256-thread blocks: >= 4 resident blocks (1024 threads) per SM
# Kernels whose loops may call a subroutine, and why that costs nothing that matters.
CALLS_ALLOWED = {
    "sample_kernel": "64-bit divides place 8192 samples per unit: ~0.3% of the values one top-k read visits",
}
# Kernels that must read global memory in 16-B vectors (LDG.E.128), and why.
VECTOR_LOADS_REQUIRED = {
    "candidates_flat_kernel": "the top-k's one full read of a contiguous tensor streams 16-B vectors",
}
NVCC_FLAGS = ["-std=c++17", "-arch=sm_90", "-O3", "-fmad=false", "--expt-relaxed-constexpr"]  # as setup.py builds


def find_tool(name):
    """`name` from CUDA_HOME/bin, /usr/local/cuda*/bin, PATH, or Triton's bundled CUDA tools."""
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"] + sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True)
    for home in filter(None, homes):
        if (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    if shutil.which(name):
        return shutil.which(name)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


def ptxas_report(text):
    """{kernel: {registers, stack_bytes, spill_stores, spill_loads, smem_bytes}} from nvcc -Xptxas -v output."""
    kernels, current = {}, None
    for line in text.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = kernels.setdefault(m.group(1), {})
        elif current is not None and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["smem_bytes"] = int(smem.group(1)) if smem else 0
    return kernels


def sass_report(sass):
    """{kernel: {calls_in_loops, local_memory_ops, instructions}}: a loop is the address range of a
    backward branch; a CALL inside one is a subroutine (64-bit divide, ...) run per iteration."""
    out = {}
    for name, body in re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*\.{5,}|\n\s*Function :|\Z)", sass, re.S):
        instructions = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
        loops = []
        for address, op in instructions:
            if m := re.search(r"\bBRA\b(?:\.\w+)*\s+(?:`?\(?)(0x[0-9a-f]+)", op):
                target = int(m.group(1), 16)
                if target <= address:
                    loops.append((target, address))
        calls = [a for a, op in instructions if re.search(r"\bCALL\b", op)]
        out[name] = {
            "calls_in_loops": sum(any(lo <= a <= hi for lo, hi in loops) for a in calls),
            "local_memory_ops": sum(bool(re.search(r"\b(LDL|STL)\b", op)) for _, op in instructions),
            "vector_loads": sum(bool(re.search(r"\bLDG\.E\.128\b", op)) for _, op in instructions),
            "instructions": len(instructions),
        }
    return out


def check_header(header, nvcc, cuobjdump, workdir):
    source = Path(workdir) / (header.stem + ".cu")
    cubin = source.with_suffix(".cubin")
    source.write_text(f'#include "{header.relative_to(ROOT / "csrc").as_posix()}"\n')
    build = subprocess.run([nvcc, *NVCC_FLAGS, f"-I{ROOT / 'csrc'}", "-cubin", "-Xptxas", "-v", "-o", str(cubin), str(source)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"nvcc failed on {header}:\n{build.stderr[-4000:]}")
    kernels = ptxas_report(build.stdout + build.stderr)
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    for name, info in sass_report(sass).items():
        kernels.setdefault(name, {}).update(info)
    return kernels


def problems(name, info):
    found = []
    if info.get("spill_stores", 0) or info.get("spill_loads", 0) or info.get("stack_bytes", 0):
        found.append(f"stack {info.get('stack_bytes')} B / spills {info.get('spill_stores')}+{info.get('spill_loads')} B")
    if info.get("local_memory_ops", 0):
        found.append(f"{info['local_memory_ops']} local-memory instructions")
    if info.get("calls_in_loops", 0) and not any(allowed in name for allowed in CALLS_ALLOWED):
        found.append(f"{info['calls_in_loops']} subroutine call(s) inside loops")
    if any(required in name for required in VECTOR_LOADS_REQUIRED) and not info.get("vector_loads", 0):
        found.append("no 16-B vector load (LDG.E.128)")
    if info.get("registers", 0) > MAX_REGISTERS:
        found.append(f"{info['registers']} registers > {MAX_REGISTERS}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the per-kernel report here")
    args = parser.parse_args(argv)
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if not nvcc or not cuobjdump:
        print(f"check_cuda_build: needs nvcc and cuobjdump (found {nvcc}, {cuobjdump})", file=sys.stderr)
        return 2
    headers = sorted((ROOT / "csrc").glob("*/cuda/*_kernels.cuh"))
    report, failed = {}, False
    with tempfile.TemporaryDirectory() as tmp:
        for header in headers:
            for name, info in check_header(header, nvcc, cuobjdump, tmp).items():
                info["header"] = header.relative_to(ROOT).as_posix()
                info["problems"] = problems(name, info)
                failed |= bool(info["problems"])
                report[name] = info
    print(f"{'kernel':60s} {'regs':>4s} {'smem':>6s} {'stack':>5s} {'calls-in-loops':>14s}  problems")
    for name, info in sorted(report.items()):
        print(f"{name[:60]:60s} {info.get('registers', 0):4d} {info.get('smem_bytes', 0):6d} {info.get('stack_bytes', 0):5d} "
              f"{info.get('calls_in_loops', 0):14d}  {'; '.join(info['problems']) or 'ok'}")
    for allowed, why in CALLS_ALLOWED.items():
        print(f"calls allowed in {allowed}: {why}")
    for required, why in VECTOR_LOADS_REQUIRED.items():
        print(f"16-B vector loads required in {required}: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
