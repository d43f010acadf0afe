"""Tensors across the ranks of a distributed (DDP) run; plain identities in one process.

Each rank trains on its contiguous slice of a global batch (``data.geopairs.rank_slice``), so
concatenating in rank order what the ranks hold rebuilds the batch one process would see.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Ranks of the current process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_cat(tensor: Tensor, *, with_grad: bool) -> Tensor:
    """``tensor`` [B, ...] of every rank, concatenated in rank order: [world x B, ...].

    ``with_grad``: autograd flows back to each rank's own slice, summed over the ranks (every
    rank computes the same loss of the whole batch; DDP's gradient mean then gives the one
    process gradient of that loss). Without: a plain copy (keys for a queue)."""
    if world_size() == 1:
        return tensor
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
