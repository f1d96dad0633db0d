"""Each unit's top images and its maps on them, kept while pass 1 streams the activations.

The report shows, per unit, the images where the unit's maximum activation is highest (ties: the lower image
index first) with the unit's thresholded map over them. Keeping those maps during pass 1 means the report
needs no second forward pass, and because they are saved in the checkpoint, a resumed run or a re-report of a
finished run draws exactly the maps that pass 1 saw.
"""
import torch


def order_by_peak(values, indices):
    """Per row, the column order: value descending, ties by index ascending (a stable lexicographic sort)."""
    by_index = indices.argsort(dim=1, stable=True)
    by_value = values.gather(1, by_index).argsort(dim=1, descending=True, stable=True)
    return by_index.gather(1, by_value)


class TopImages:
    """Per unit, the `count` best images seen so far: peak values (U, count), image indices (U, count; −1 for
    a free slot) and the unit's maps on them (U, count, h, w), all on `device`. No host synchronisation."""

    def __init__(self, units, count, map_size, device="cpu"):
        if count < 1:
            raise ValueError(f"TopImages needs count >= 1, got {count}")
        h, w = map_size
        self.values = torch.full((units, count), float("-inf"), device=device)
        self.indices = torch.full((units, count), -1, dtype=torch.int64, device=device)
        self.maps = torch.zeros((units, count, h, w), device=device)

    @property
    def count(self):
        return self.values.shape[1]

    def _keep(self, values, indices, maps):
        """Keeps the best `count` of the candidate columns (values, indices: (U, n); maps: (U, n, h, w))."""
        order = order_by_peak(values, indices)[:, : self.count]
        rows = torch.arange(values.shape[0], device=values.device)[:, None]
        self.values, self.indices, self.maps = values.gather(1, order), indices.gather(1, order), maps[rows, order]

    def update(self, acts, peaks, image_indices):
        """acts (B, U, h, w), peaks = acts.amax((2, 3)) (B, U), image_indices (B,) int64, all on the device."""
        units = acts.shape[1]
        self._keep(torch.cat([self.values, peaks.t()], 1),
                   torch.cat([self.indices, image_indices[None, :].expand(units, -1)], 1),
                   torch.cat([self.maps, acts.transpose(0, 1)], 1))
        return self

    def merge(self, others):
        """Folds in other TopImages' (values, indices, maps) tuples, e.g. every rank's."""
        values, indices, maps = zip((self.values, self.indices, self.maps), *others)
        self._keep(torch.cat(values, 1), torch.cat(indices, 1), torch.cat(maps, 1))
        return self

    def lists(self, count=None):
        """(per unit: image indices, per unit: (n, h, w) CPU maps) of its best `count` images (all kept when
        None); free slots (fewer images than count) are left out."""
        count = self.count if count is None else int(count)
        if not 1 <= count <= self.count:
            raise ValueError(f"these TopImages keep {self.count} image(s) per unit; cannot show {count}")
        indices, maps = self.indices[:, :count].cpu(), self.maps[:, :count].cpu()
        kept = [int((row >= 0).sum()) for row in indices]
        return [row[:n].tolist() for row, n in zip(indices, kept)], [m[:n] for m, n in zip(maps, kept)]

    def state_dict(self):
        return {"values": self.values.cpu(), "indices": self.indices.cpu(), "maps": self.maps.cpu()}

    @classmethod
    def from_state_dict(cls, state, device="cpu"):
        units, count, h, w = state["maps"].shape
        top = cls(units, count, (h, w), device)
        top.values, top.indices = state["values"].to(device), state["indices"].to(device)
        top.maps = state["maps"].to(device)
        return top
