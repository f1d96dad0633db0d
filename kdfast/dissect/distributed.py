"""Scale-out under torchrun: images are sharded rank::world_size and every reduction is exact, so the
results equal a single-process run's bit for bit.

* thresholds: each rank's StreamingTopK values (its k largest per unit) are all-gathered and merged;
  the k-th largest of the union of the parts' top-k is the k-th largest of all values;
* tally counts: int64 all_reduce(SUM);
* per-image maxima: each image lives on one rank, so the others contribute −inf and all_reduce(MAX)
  assembles the full table;
* top images: every rank's per-unit top images (peaks, indices, maps) are all-gathered and the best are kept
  (peak descending, then lower image index), which is the single process's choice.
"""
import torch
import torch.distributed as dist

from kdfast.distributed import ProcessGroup
from kdfast.ops.topk_threshold import StreamingTopK


class Distributed(ProcessGroup):
    """The dissection's exact reductions over the ranks of a torchrun job."""

    def shard(self, count):
        """This rank's image indices."""
        return range(self.rank, count, self.world)

    def merge_topk(self, stream):
        """A stream holding every rank's values (the local stream itself when single-process)."""
        if self.world == 1:
            return stream
        values = stream.values().to(self.device)
        widths = self._all_gather(torch.tensor([values.shape[1], stream.seen], dtype=torch.int64, device=self.device))
        widest = int(max(w[0] for w in widths))
        padded = torch.full((stream.units, widest), float("-inf"), device=self.device)
        padded[:, : values.shape[1]] = values
        merged = StreamingTopK(stream.units, stream.k, device=values.device)
        for part, (width, seen) in zip(self._all_gather(padded), widths):
            merged.merge(part[:, : int(width)], int(seen))
        return merged

    def merge_top_images(self, top):
        """TopImages holding the best images of every rank (the local one itself when single-process)."""
        if self.world == 1:
            return top
        gathered = [self._all_gather(t.to(self.device)) for t in (top.values, top.indices, top.maps)]
        others = [part for rank, part in enumerate(zip(*gathered)) if rank != self.rank]
        return top.merge(others)

    def sum_(self, tensor):
        """In-place sum over ranks."""
        if self.world > 1:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
        return tensor

    def assemble_rows(self, local, count):
        """(count, U) table from each rank's rows for its shard (rank::world order)."""
        full = torch.full((count, local.shape[1]), float("-inf"), dtype=local.dtype, device=self.device)
        full[torch.arange(self.rank, count, self.world, device=self.device)] = local.to(self.device)
        if self.world > 1:
            dist.all_reduce(full, op=dist.ReduceOp.MAX)
        return full.cpu()

    def _all_gather(self, tensor):
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return parts
