"""The sm_90 compile check of the CUDA kernels (scripts/check_cuda_build.py) runs wherever nvcc exists."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_cuda_build.py"


def _check_module():
    spec = importlib.util.spec_from_file_location("check_cuda_build", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sass_loops_catch_calls_and_local_memory():
    """The SASS parser flags a CALL inside a backward-branch range and LDL/STL; a CALL before the loop is fine."""
    sass = """
        Function : kernel_a
        /*0000*/                   CALL.REL.NOINC 0x100 ;
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0020*/                   CALL.REL.NOINC 0x100 ;
        /*0030*/              @P0 BRA 0x10 ;
        /*0040*/                   STL [R1], R2 ;
        /*0050*/                   EXIT ;
        ..........
        Function : kernel_b
        /*0000*/                   CALL.REL.NOINC 0x100 ;
        /*0010*/              @P0 BRA 0x20 ;
        /*0020*/                   EXIT ;
    """
    report = _check_module().sass_report(sass)
    assert report["kernel_a"]["calls_in_loops"] == 1 and report["kernel_a"]["local_memory_ops"] == 1
    assert report["kernel_b"]["calls_in_loops"] == 0 and report["kernel_b"]["local_memory_ops"] == 0


def test_vector_loads_are_counted_and_required_where_the_design_needs_them():
    module = _check_module()
    sass = """
        Function : _ZN6kdfast22candidates_flat_kernelEv
        /*0000*/                   LDG.E.128.CONSTANT R8, desc[UR8][R24.64] ;
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0020*/                   EXIT ;
    """
    info = module.sass_report(sass)["_ZN6kdfast22candidates_flat_kernelEv"]
    assert info["vector_loads"] == 1
    assert module.problems("_ZN6kdfast22candidates_flat_kernelEv", info) == []
    assert module.problems("_ZN6kdfast22candidates_flat_kernelEv", dict(info, vector_loads=0)) == [
        "no 16-B vector load (LDG.E.128)"
    ]
    assert module.problems("_ZN6kdfast17candidates_kernelEv", dict(info, vector_loads=0)) == []


def test_kernels_compile_for_sm90_without_spills_or_calls_in_loops(tmp_path):
    module = _check_module()
    if not module.find_tool("nvcc") or not module.find_tool("cuobjdump"):
        pytest.skip("needs nvcc and cuobjdump")
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", str(tmp_path / "report.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    names = " ".join(report)
    for kernel in ("iou_tally_kernel", "candidates_kernel", "candidates_flat_kernel", "radix_histogram_kernel"):
        assert kernel in names
    assert all(info["registers"] > 0 for info in report.values())
