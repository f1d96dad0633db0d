import os
import random
import zlib

import numpy as np
import pytest
import torch

from dissect_helpers import SYNTHETIC
from kdfast.data.synthetic_broden import synthetic_broden


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; scripts/gpu_check.py runs exactly these (-m cuda)")


def requires_cuda(test):
    """Marks a test `cuda` (selected by scripts/gpu_check.py) and skips it where no GPU is present."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))

# Every test draws its random inputs from a seed derived from its node id: inputs differ between tests and
# are the same in every run, process, order and thread count, so a failure can be reproduced by rerunning the
# one test. KDFAST_TEST_SEED=<int> shifts all seeds at once (to try other inputs on purpose).
BASE_SEED = int(os.environ.get("KDFAST_TEST_SEED", "0"))


def node_seed(nodeid):
    """The seed of one test: crc32 of its node id (stable across Python processes, unlike hash())."""
    return (zlib.crc32(nodeid.encode()) + BASE_SEED) % (2**31)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Seeds torch's, numpy's and Python's global generators per test, for code that draws without `gen`."""
    seed = node_seed(request.node.nodeid)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture
def gen(request):
    """A fresh generator per test, seeded from the test's node id (a stream apart from the global one)."""
    return torch.Generator().manual_seed(node_seed(request.node.nodeid) ^ 0x5EED)


def pytest_report_header(config):
    return f"kdfast test seeds: crc32(node id) + KDFAST_TEST_SEED={BASE_SEED}; torch threads {torch.get_num_threads()}"


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    """A small synthetic Broden (dissect_helpers.SYNTHETIC) for the dissection tests, made once per module."""
    return synthetic_broden(tmp_path_factory.mktemp("broden") / "synthetic", progress=False, **SYNTHETIC)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and several threads spin badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
