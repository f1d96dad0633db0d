import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs differ between tests, not between runs."""
    return torch.Generator().manual_seed(torch.initial_seed() % (2**31))
