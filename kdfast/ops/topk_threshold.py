"""Exact per-unit top-q thresholds: T_u = the k-th largest of unit u's M values, k = ceil(q·M).

NetDissect-Lite approximates this quantile with a randomized sketch; here it is exact, one-shot
(`topk_threshold`) or streaming over batches in O(U·k) memory (`StreamingTopK`), and both agree
bit for bit whatever the batching.
"""
import math
from fractions import Fraction

import torch

from kdfast import _extension
from kdfast.ops._checks import as_float32, check_dims

_LAYOUT = "(M, U) or (N, U, H, W)"


def quantile_rank(q, count):
    """k = ceil(q·count), with q taken as the decimal it is written as (0.1·30 is 3, not 4)."""
    q = float(q)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile q must be in (0, 1], got {q}")
    if count < 1:
        raise ValueError(f"cannot take a top-{q} threshold of {count} values")
    return max(1, math.ceil(Fraction(repr(q)) * int(count)))


def unit_values(acts):
    """(U, M) matrix of each unit's values (a view where the layout allows)."""
    check_dims(acts, "acts", (2, 4), _LAYOUT)
    if acts.dim() == 2:
        return acts.t()
    return acts.transpose(0, 1).reshape(acts.shape[1], -1)


def values_per_unit(acts):
    check_dims(acts, "acts", (2, 4), _LAYOUT)
    return acts.shape[0] if acts.dim() == 2 else acts.shape[0] * acts.shape[2] * acts.shape[3]


def topk_threshold_reference(acts, k):
    """Plain PyTorch: the k-th largest value of every unit (any float dtype)."""
    return torch.topk(unit_values(acts), k, dim=1).values[:, -1]


def unit_topk_reference(acts, k):
    """Plain PyTorch: every unit's k largest values, sorted descending."""
    return torch.topk(unit_values(acts), k, dim=1, sorted=True).values


def _checked(acts, name="acts"):
    # The kernels reject NaN/Inf themselves, counted during their first read (no extra pass over acts).
    acts = as_float32(acts, name, finite=False)
    check_dims(acts, name, (2, 4), _LAYOUT)
    _extension.load()
    return acts


def topk_threshold(acts, q):
    """Per-unit threshold T_u = k-th largest of the unit's M values, k = ceil(q·M); a (U,) float32 tensor."""
    acts = _checked(acts)
    return torch.ops.kdfast.topk_threshold(acts, quantile_rank(q, values_per_unit(acts)))


def unit_topk(acts, k):
    """Each unit's k largest values, sorted descending: a (U, k) float32 tensor."""
    acts = _checked(acts)
    m = values_per_unit(acts)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the values per unit), got {k}")
    return torch.ops.kdfast.unit_topk(acts, int(k))


class StreamingTopK:
    """Exact top-k per unit over a stream of batches, in O(U·k) memory.

    The k-th largest of a union equals the k-th largest of the union of each part's top-k, so batches
    are reduced to their top-k and merged whenever the pending values reach 2k columns. Ranks (and
    torch.distributed) merge the same way: `merge` takes other streams' `values()`.
    """

    def __init__(self, units, k, device="cpu"):
        if units < 0 or k < 1:
            raise ValueError(f"StreamingTopK needs units >= 0 and k >= 1, got units={units}, k={k}")
        self.units, self.k = int(units), int(k)
        self.seen = 0
        self._held = torch.empty(self.units, 0, dtype=torch.float32, device=device)
        self._pending = []
        self._pending_cols = 0

    def update(self, acts):
        """Adds a batch: (B, U, H, W) maps or (M, U) values."""
        acts = _checked(acts)
        if acts.shape[1] != self.units:
            raise ValueError(f"acts has {acts.shape[1]} units, this stream tracks {self.units}")
        m = values_per_unit(acts)
        if m == 0:
            return self
        if m <= self.k:  # kept as they are, so checked here (unit_topk checks the values it reads)
            as_float32(acts, "acts")
        vals = unit_topk(acts, self.k) if m > self.k else unit_values(acts).to(self._held.device)
        self._pending.append(vals.to(self._held.device))
        self._pending_cols += vals.shape[1]
        self.seen += m
        if self._pending_cols >= 2 * self.k:
            self._compact()
        return self

    def merge(self, values, seen):
        """Folds in another stream's `values()` (which summarised `seen` values per unit)."""
        values = as_float32(values, "values")
        if values.dim() != 2 or values.shape[0] != self.units:
            raise ValueError(f"values must be (U={self.units}, k'), got {tuple(values.shape)}")
        self._pending.append(values.to(self._held.device))
        self._pending_cols += values.shape[1]
        self.seen += int(seen)
        self._compact()
        return self

    def _compact(self):
        if not self._pending:
            return
        joined = torch.cat([self._held] + self._pending, dim=1)
        self._pending, self._pending_cols = [], 0
        if joined.shape[1] > self.k:
            self._held = torch.ops.kdfast.unit_topk(joined.t(), self.k)
        else:
            self._held = torch.sort(joined, dim=1, descending=True).values

    def values(self):
        """(U, min(k, seen)) largest values seen, sorted descending."""
        self._compact()
        return self._held

    def threshold(self, k=None):
        """The exact k-th largest value per unit (k defaults to the stream's k; any k' <= k works)."""
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}], got {k}")
        if self.seen < k:
            raise ValueError(f"only {self.seen} values per unit seen; the {k}-th largest does not exist yet")
        return self.values()[:, k - 1].clone()

    def state_dict(self):
        return {"units": self.units, "k": self.k, "seen": self.seen, "values": self.values().cpu()}

    @classmethod
    def from_state_dict(cls, state, device="cpu"):
        stream = cls(state["units"], state["k"], device=device)
        stream._held = state["values"].to(device)
        stream.seen = int(state["seen"])
        return stream


if _extension.available():

    @torch.library.register_fake("kdfast::topk_threshold")
    def _topk_threshold_fake(acts, k):
        return acts.new_empty(acts.shape[1])

    @torch.library.register_fake("kdfast::unit_topk")
    def _unit_topk_fake(acts, k):
        return acts.new_empty(acts.shape[1], k)
