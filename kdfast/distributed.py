"""This process's place in a torchrun job, shared by the dissection and training pipelines."""
import os

import torch
import torch.distributed as dist


def rank0_first(group, make):
    """make() on rank 0, then on the other ranks, which find rank 0's files instead of writing them at once.
    `group` is anything with `main` and `barrier()` (a ProcessGroup)."""
    if group.main:
        made = make()
        group.barrier()
    else:
        group.barrier()
        made = make()
    return made


class ProcessGroup:
    """Rank and world size under torchrun (a plain run is rank 0 of 1, and every collective is local).

    Joins the default process group when torchrun started several processes and none exists yet (gloo on CPU,
    NCCL on CUDA), and leaves it on close(); join=False acts alone even under torchrun."""

    def __init__(self, device, join=True):
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if join else 1
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.device = device  # where collectives' tensors live (NCCL needs CUDA tensors)

    @staticmethod
    def local_device(device):
        """cuda → this rank's GPU (LOCAL_RANK under torchrun); cpu stays cpu."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] (any picklable object)."""
        if self.world == 1:
            return [obj]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False
