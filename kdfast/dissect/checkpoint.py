"""Resumable runs: each rank's pass state saved atomically, tied to the run configuration it came from."""
import time
from pathlib import Path

import torch

from kdfast.atomic import replacing


class RunMismatch(ValueError):
    """The output folder holds a checkpoint of a run with other arguments."""


class Checkpoint:
    """`OUT/.checkpoints/rank<r>.pt`: written to a temporary file, then os.replace'd, so a kill at any
    moment leaves either the previous or the new checkpoint, never a torn one."""

    def __init__(self, out, rank, identity):
        self.path = Path(out) / ".checkpoints" / f"rank{rank}.pt"
        self.identity = identity

    def load(self):
        """The saved state, or None when there is none; a checkpoint of other arguments is an error."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file: say which one and how to move on
            raise RunMismatch(f"cannot read checkpoint {self.path} ({exc}); use a new --out or pass --restart") from exc
        saved = state.get("identity", {})
        if saved != self.identity:
            differ = sorted(k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k))
            details = "; ".join(f"{k}: {saved.get(k)!r} then, {self.identity.get(k)!r} now" for k in differ)
            raise RunMismatch(
                f"{self.path.parent.parent} holds a checkpoint of a run with different arguments ({details}). "
                "Use a new --out, or pass --restart to discard it."
            )
        return state

    def save(self, state):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(self.path) as tmp:
            torch.save({**state, "identity": self.identity}, tmp)

    def remove(self):
        self.path.unlink(missing_ok=True)


class Schedule:
    """When to checkpoint: every `every` batches, or (every=None) once `seconds` have passed since the last."""

    def __init__(self, every=None, seconds=60.0):
        self.every, self.seconds = every, seconds
        self._batches, self._last = 0, time.monotonic()

    def due(self):
        """Call once per finished batch."""
        self._batches += 1
        if self.every is not None:
            due = self._batches % self.every == 0
        else:
            due = time.monotonic() - self._last >= self.seconds
        if due:
            self._last = time.monotonic()
        return due
