"""Data-parallel training under ``torchrun``: plain torch.distributed, no wrapper.

``torchrun --nproc_per_node N -m text2sql train ...`` starts N processes; each reads its rank from
the environment, takes an equal share of every global batch (``--batch_size`` stays the global
batch), and after its backward pass the gradients are summed across processes in one flat
all-reduce. Each rank divides its loss by the *global* denominator, so the summed gradient is
exactly the one a single process computes over the whole batch, and every rank then takes the
same optimiser step from the same parameters (broadcast from rank 0 at the start). Only rank 0
evaluates, logs and writes the run folder. Backend: nccl on CUDA, gloo on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list) -> list:
        """This rank's share of a global batch (strided, so shares differ by at most one)."""
        return batch[self.rank::self.world] if self.enabled else batch

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_grads(self, params: list[torch.nn.Parameter]):
        """Sum every gradient across ranks in one flat buffer; a rank whose share left a
        parameter without gradient contributes zeros (all ranks must send the same layout)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def broadcast_params(self, module: torch.nn.Module):
        if self.enabled:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> tuple[Dist, str]:
    """-> (this process's place, the device it should use). Without torchrun's environment:
    one process, the device unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local), device
