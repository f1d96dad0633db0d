import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs differ between tests, not between runs."""
    return torch.Generator().manual_seed(torch.initial_seed() % (2**31))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and several threads spin badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
