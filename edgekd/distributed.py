"""Several processes training as one, through PyTorch's DistributedDataParallel under
`torchrun` (one machine or many: whatever starts torchrun, a shell or a Slurm/Kubernetes job).

    torchrun --nproc_per_node=2 -m edgekd run PIPELINE

edgekd adds no launcher and no communication of its own: torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK, `init` opens the process group (gloo on CPUs, NCCL on GPUs), the training loop wraps
the student in DDP and gives each rank its share of every global batch (data/datasets.py), and
this module's helpers are thin calls into torch.distributed. What edgekd decides is which rank
does what (pipeline.py): every rank runs the training stages; rank 0 alone runs the others,
writes artifacts, manifests and reports, and the others wait for it at a barrier."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported where it is used: `edgekd validate` stays torch-free
    import torch

T = TypeVar("T")


def world() -> int:
    """How many processes train together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 alone; a RANK left in the environment without a WORLD_SIZE
    above 1 means nothing)."""
    return int(os.environ.get("RANK", "0")) if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


_alone = False  # rank 0 running a stage the other ranks do not run (see `alone`)


def active() -> bool:
    """Whether this process is one of several, its process group is open, and the others take
    part in what it does now."""
    import torch.distributed as dist

    return world() > 1 and not _alone and dist.is_available() and dist.is_initialized()


@contextmanager
def alone(solo: bool = True) -> Iterator[None]:
    """Rank 0 running a stage on its own (a search's proxy trainings, a benchmark): inside,
    collectives are off (no DDP wrapper, no sharding, no all-reduce), since the other ranks
    are waiting elsewhere and would never answer."""
    global _alone
    before, _alone = _alone, _alone or solo
    try:
        yield
    finally:
        _alone = before


def init(device: str = "auto") -> None:
    """Open the process group torchrun's environment describes (nothing to do for one
    process): NCCL when this rank trains on a GPU, gloo otherwise."""
    import torch.distributed as dist

    if world() == 1 or dist.is_initialized():
        return
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Ranks other than 0 wait at a collective while rank 0 alone runs a stage (a search or a
    # benchmark can take an hour): the default 30-minute timeout would end them.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=24))


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value`, on every rank (any picklable object)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value summed over the ranks (counts of correct predictions, say)."""
    if not active() or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}


def once(compute: Callable[[], T], share: Callable[[T], Any], rebuild: Callable[[Any], T]) -> T:
    """`compute()` on rank 0 alone (a calibration, a pruning), the other ranks rebuilding its
    result from what `share` makes of it (plain data and CPU tensors), which rank 0
    broadcasts; without torchrun, `compute()`. Every rank must call it."""
    if not active():
        return compute()
    if is_main():
        result = compute()
        broadcast(share(result))
        return result
    return rebuild(broadcast(None))


def mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (their epoch losses, say)."""
    return {k: v / world() for k, v in total(values, device).items()} if active() else values


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch: every world()-th image from its rank on, so the
    ranks together see the batch one process would."""
    return index[rank() :: world()] if active() else index


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel under torchrun (its weights and buffers made rank
    0's), else `model` itself. Call the wrapper; hooks and saving use `model`."""
    if not active():
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # find_unused_parameters: some losses train part of the network alone for a while
    # (FitNets' hint stage), which DDP must be told to expect.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def average_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of `module`'s trainable parameters over the ranks, in one
    all-reduce (the distiller's loss modules, which DDP does not wrap; see distill/trainer)."""
    if not active():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
