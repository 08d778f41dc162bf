"""Training under ``torchrun``: this process's place in the job, and what the processes do together.

With ``WORLD_SIZE`` > 1 in the environment, :func:`_start_distributed` joins (or creates) the process group;
each process then trains its share of every epoch's batches with DistributedDataParallel (:func:`_wrap`), sums
or maxes small tensors with the others (:func:`_reduce`), and waits for them at :func:`_barrier`. Only rank 0
writes files. Outside torchrun every function here is a no-op on a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from rockseg.errors import InputError


@dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun job (world 1 when not under torchrun)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    owned: bool = False  # the process group was created here, and is destroyed here

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reduce_on(self, device: torch.device) -> torch.device | str:
        """Where a tensor to :func:`_reduce` lives: the process group's device, or the CPU for a world of one."""
        return device if self.world > 1 else "cpu"


def _distributed_env() -> tuple[int, int, int, int]:
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in  # type: ignore[return-value]
                     (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK, LOCAL_RANK or LOCAL_WORLD_SIZE is not a whole number: launch with torchrun") from None


def _start_distributed(device: torch.device) -> _Dist:
    world, rank, local_rank, local_world = _distributed_env()
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError(f"WORLD_SIZE is {world} but this torch has no torch.distributed: run one process")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local_rank,
                 local_world=max(1, local_world), owned=owned)


def _stop_distributed(dist_info: _Dist) -> None:
    """Destroy the process group if :func:`_start_distributed` created it."""
    if dist_info.owned:
        import torch.distributed as dist

        dist.destroy_process_group()


def _barrier(dist_info: _Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _reduce(tensor: torch.Tensor, dist_info: _Dist, op: str = "sum") -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def _wrap(net: nn.Module, dist_info: _Dist, device: torch.device) -> nn.Module:
    """The module a process steps: ``net`` itself, or ``net`` in DistributedDataParallel under torchrun."""
    if dist_info.world <= 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _broadcast_buffers(net: nn.Module, dist_info: _Dist) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics differ by a step between processes)."""
    if dist_info.world > 1:
        import torch.distributed as dist

        for buffer in net.buffers():
            dist.broadcast(buffer, 0)
