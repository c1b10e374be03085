"""Data-parallel training across processes (issue 20, item 8), started by ``torchrun``.

``torchrun --nproc-per-node N -m mobileprune train|prune ...`` sets ``WORLD_SIZE``,
``RANK`` and the rendezvous address; :func:`init_from_env` joins the group (gloo on CPU,
NCCL when CUDA is there). Then, as ``DistributedDataParallel`` does:

* each rank reads its own share of every epoch (:func:`sampler`);
* after ``backward`` the gradients are averaged over the ranks
  (:func:`average_gradients`), so every rank takes the same optimizer step as one
  process on the joint batch, and the ranks stay equal; masks, ADMM's Z / U and the
  proximal steps are computed from equal weights, so they are equal too;
* buffers (BatchNorm statistics) are copied from rank 0 after each step
  (:func:`sync_buffers`, DDP's ``broadcast_buffers``); as under DDP without
  ``SyncBatchNorm``, each rank normalises a training batch with its own statistics.

Only rank 0 writes files (:func:`mobileprune.files.atomic_write` skips the others) and
prints. The gradient average is explicit rather than a ``DistributedDataParallel``
wrapper so that every hook of the library (masks, ADMM, proximal steps) sees the
user's own module.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["init_from_env", "active", "rank", "world_size", "backend", "is_main",
           "average_gradients", "sync_buffers", "sampler", "finish"]


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment; ``False``
    when the process runs alone (``WORLD_SIZE`` unset or 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def active() -> bool:
    """Whether this process is one of several in an initialised group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def backend() -> str | None:
    return str(dist.get_backend()) if active() else None


def is_main() -> bool:
    return rank() == 0


def average_gradients(model: nn.Module) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce;
    a parameter without a gradient on this step counts as zero)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    pos = 0
    for p in params:
        n = p.numel()
        p.grad = flat[pos:pos + n].view_as(p).clone()
        pos += n


def sync_buffers(model: nn.Module) -> None:
    """Copy every floating buffer (BatchNorm running statistics) from rank 0."""
    for b in model.buffers():
        if b.is_floating_point():
            dist.broadcast(b, src=0)


class _EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` that draws a new order each time it is iterated (each
    epoch), as a shuffled single-process loader does, without ``set_epoch`` calls."""

    def __iter__(self):
        it = super().__iter__()
        self.set_epoch(self.epoch + 1)
        return it


def sampler(data: Dataset, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This rank's share of ``data`` (padded so that every rank runs the same number of
    steps), reshuffled every epoch from ``seed``."""
    return _EpochSampler(data, shuffle=shuffle, seed=seed)


def finish() -> None:
    """Wait for every rank, then leave the group."""
    if active():
        dist.barrier()
        dist.destroy_process_group()
