"""This process's rank in a ``torch.distributed`` process group, and leaving the group, for code
below the engine layer.

The whole-slide pipeline (:mod:`pathseqsam.wsi`) shards slides over ranks and the engine's handlers
write on rank 0 only; both ask here, so neither layer imports the other.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["dist_rank_and_world", "end_process_group"]


def dist_rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process.

    Returns:
        ``(0, 1)`` outside a process group (a single-process run).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def end_process_group() -> None:
    """Leave the default process group in step with the other ranks (the bundle's ``finalize``).

    A barrier first, then ``destroy_process_group``: a rank that tears down its gloo connections
    while another rank is still finishing (rank 0 writes the reports and pictures after the last
    collective) can be aborted in gloo's teardown ("terminate called without an active
    exception", seen once in CI on the 2-process evaluation). No-op outside a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
