"""Helpers for multi-process (torchrun / DistributedDataParallel) runs of the bundle.

The bundle's ``multi_gpu_train.json`` / ``multi_gpu_evaluate.json`` overlays use them to keep the
handlers that write files or logs on rank 0 only (:func:`handlers_for_rank`) and, on request, to
record which samples each rank trained on (:class:`ShardRecorder`), so that the
``DistributedSampler`` split can be checked: disjoint shards that together cover the dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from pathseqsam.atomic import atomic_write_json
from pathseqsam.ranks import dist_rank_and_world

__all__ = [
    "ALL_RANKS_HANDLERS",
    "ShardRecorder",
    "any_rank",
    "gather_lists",
    "handlers_for_rank",
]

logger = logging.getLogger("pathseqsam")

# Handlers every rank must run: they change the training itself (learning rate, validation, the NaN
# stop, the time budget, whose stop decision is all-reduced) or take part in collective
# communication (CheckpointLoader restores every replica; MetricsSaver and PerPatchSaver all-gather
# the per-patch rows and write on rank 0 only). Everything else (loggers, TensorBoard, curves,
# overlays, checkpoint savers) runs on rank 0 alone.
ALL_RANKS_HANDLERS = (
    "LrScheduleHandler",
    "ValidationHandler",
    "NaNLossGuard",
    "WallTimeBudget",
    "CheckpointLoader",
    "MetricsSaver",
    "PerPatchSaver",
)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a MAX all-reduce; every rank must call it, in step).

    Lets decisions taken from local state (a wall clock) stay the same on every rank: a rank that
    stops alone leaves the others waiting in DistributedDataParallel's next all-reduce forever.

    Args:
        flag: this rank's value.

    Returns:
        ``flag`` outside a process group, else the OR over all ranks.
    """
    if dist_rank_and_world()[1] == 1:
        return bool(flag)
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_lists(items: Sequence[Any]) -> list[Any]:
    """Concatenate every rank's ``items`` in rank order (the order MONAI's metric gathering uses).

    Args:
        items: this rank's picklable items (every rank must call it).

    Returns:
        ``list(items)`` outside a process group, else rank 0's items, then rank 1's, ...
    """
    world = dist_rank_and_world()[1]
    if world == 1:
        return list(items)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def handlers_for_rank(
    handlers: Iterable[Any] | None, all_ranks: Sequence[str] = ALL_RANKS_HANDLERS, rank: int | None = None
) -> list[Any]:
    """The handlers this rank attaches: all of them on rank 0, on other ranks those in ``all_ranks``.

    Args:
        handlers: instantiated handlers (``@train#handlers``); None is an empty list.
        all_ranks: class names (a handler matches when any class in its MRO has one of them) that run
            on every rank.
        rank: the process rank; default: from ``torch.distributed`` (0 without a process group).

    Returns:
        The handlers to pass to the engine, in their original order.
    """
    if rank is None:
        rank = dist_rank_and_world()[0]
    handlers = list(handlers or [])
    if rank == 0:
        return handlers
    keep = set(all_ranks)
    return [h for h in handlers if any(c.__name__ in keep for c in type(h).__mro__)]


def _items(batch: Any) -> list[Any]:
    """The per-sample values of ``batch`` (MONAI decollates into a list of dicts; a dict holds lists)."""
    if isinstance(batch, (list, tuple)):
        return list(batch)
    return [batch]


class ShardRecorder:
    """Write ``rank<r>.json`` with the samples this process trained on, per epoch.

    For each epoch: ``indices``, the dataset indices the (distributed) sampler gave this rank, and
    ``ids``, the ``key`` of every sample of every batch the engine actually processed, in order.
    ``completed`` turns true when the engine finishes; ``pid`` tells the processes' files apart
    (TensorBoard names its event files after it). Attach it on every rank.

    Args:
        output_dir: folder for ``rank<r>.json`` (created).
        key: per-sample field recorded (the datalist's case name by default).
        rank: this process's rank; default: from ``torch.distributed``.
        world_size: number of processes; default: from ``torch.distributed``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        key: str = "case",
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.output_dir, self.key = Path(output_dir), key
        own_rank, own_world = dist_rank_and_world()
        self.rank = own_rank if rank is None else rank
        self.world_size = own_world if world_size is None else world_size
        self.record: dict[str, Any] = {
            "rank": self.rank,
            "world_size": self.world_size,
            "pid": os.getpid(),
            "dataset_size": None,
            "epochs": {},
            "completed": False,
        }

    @property
    def path(self) -> Path:
        return self.output_dir / f"rank{self.rank}.json"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _epoch_started(self, engine: Engine) -> None:
        loader = getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)
        sampler = getattr(loader, "sampler", None)
        indices = None
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            # the trainer has set this epoch on the sampler already: iterating again repeats its order
            indices = [int(i) for i in sampler]
            self.record["dataset_size"] = len(sampler.dataset)
        self.record["epochs"][str(engine.state.epoch)] = {"indices": indices, "ids": []}

    def _iteration(self, engine: Engine) -> None:
        ids = self.record["epochs"][str(engine.state.epoch)]["ids"]
        for item in _items(engine.state.batch):
            value = item.get(self.key) if isinstance(item, dict) else None
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.extend(None if v is None else str(v) for v in values)

    def _write(self, _engine: Engine | None = None) -> None:
        atomic_write_json(self.path, self.record)

    def _completed(self, _engine: Engine) -> None:
        self.record["completed"] = True
        self._write()
        logger.info("rank %d/%d finished; samples written to %s", self.rank, self.world_size, self.path)
