"""torchrun scale-out: two gloo CPU processes write exactly the files one process writes."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from dissect_helpers import SCRIPT, SYNTHETIC, output_files, planted_args
from kdfast.data.synthetic_broden import synthetic_broden
from kdfast.dissect import cli

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def test_two_ranks_equal_one_process(tmp_path):
    broden = synthetic_broden(tmp_path / "broden", progress=False, **SYNTHETIC)
    # 40 images, batches of 6: the ranks get uneven last batches; two quantiles exercise the merged top-k.
    extra = ("--quantiles", "0.02,0.05", "--batch-size", "6")
    single = tmp_path / "single"
    cli.main(planted_args(broden, single, "planted", *extra))
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
         *planted_args(broden, sharded, "planted", *extra)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted((sharded / ".checkpoints").iterdir()) == [sharded / ".checkpoints" / f"rank{r}.pt" for r in (0, 1)]
    single_files, sharded_files = output_files(single), output_files(sharded)
    assert single_files.keys() == sharded_files.keys()
    for name in single_files:
        assert single_files[name] == sharded_files[name], name
