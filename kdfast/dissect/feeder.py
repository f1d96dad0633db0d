"""Host → device batch transfer for the dissection passes.

On a GPU each batch (contiguous slices of the packed Broden memmaps) is copied into pinned host memory and sent
to the device on a side stream one batch ahead of the compute (double buffering), so the copies overlap the
forward pass and the tally, and nothing in the loop waits on the host. On the CPU the batches pass through
unchanged, so the CPU tests exercise the same pass loops.
"""
import torch


class DeviceFeeder:
    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, batches):
        """(b, {name: CPU tensor}) pairs → (b, {name: tensor on the device}) pairs, in order."""
        if self.stream is None:
            yield from batches
            return
        ahead = None
        for b, batch in batches:
            sent = self._send(batch)  # batch b+1's copy is queued before batch b is handed out
            if ahead is not None:
                yield self._receive(*ahead)
            ahead = (b, sent)
        if ahead is not None:
            yield self._receive(*ahead)

    def _send(self, batch):
        with torch.cuda.stream(self.stream):
            # pin_memory() takes its buffer from torch's caching host allocator, which keeps a buffer until
            # the copy that reads it has finished, so two batches in flight never share one.
            return {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in batch.items()}

    def _receive(self, b, sent):
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)  # a device-side wait: the host does not block
        for t in sent.values():
            t.record_stream(compute)  # the side stream's allocations are now used on the compute stream
        return b, sent
