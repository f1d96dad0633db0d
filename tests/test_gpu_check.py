"""scripts/gpu_check.py in its --cpu-dry-run mode: every stage's plumbing (build check, the `cuda` test
selection, each goal's benchmark code at tiny sizes, the sanitizer workload), the summary and the logs."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_dry_run_writes_a_judged_summary_and_logs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                                      "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "cpu-dry-run"
    stages = summary["stages"]
    assert set(stages) >= {"build", "tests", "sanitize_workload"}
    assert all(stage["status"] == "PASS" for name, stage in stages.items() if name != "bench_pipeline_layer4"), stages
    assert stages["bench_pipeline_layer4"]["status"].startswith("SKIPPED")
    goals = {g["goal"]: g for g in summary["goals"]}
    assert set(goals) == {"topk_bandwidth", "tally_layer4", "tally_layer3", "kd_loss", "bcos_conv", "e2kd_step",
                          "pipeline_layer4"}
    for name, goal in goals.items():
        if name == "pipeline_layer4":
            assert goal["status"] == "NOT RUN" and goal["measured"] is None
        else:
            assert goal["status"] == "DRY (not judged)" and goal["measured"] > 0 and goal["predicted"], goal
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert "summary.json" in names and "logs/tests.log" in names
    assert "test_cuda_paths.py::" in (tmp_path / "logs" / "tests.log").read_text()
    last = done.stdout.strip().splitlines()[-len(goals):]  # the goal table is printed last
    assert [line.split()[0] for line in last] == list(goals)
