"""torch's CPU thread count, set for a block of work and restored after it."""
import contextlib


@contextlib.contextmanager
def torch_threads(count):
    """Runs the block with `count` torch CPU threads (None: the current count), then restores the caller's:
    in-process callers (tests, notebooks) keep the thread count they had."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
