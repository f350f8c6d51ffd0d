"""Helpers of the multi-process overlays: which handlers each rank runs, the per-rank sample record,
and why DistributedDataParallel needs ``find_unused_parameters`` for PathSeqSAM."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import torch
from monai.data import DataLoader, DistributedSampler
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, LrScheduleHandler, MetricsSaver, StatsHandler, ValidationHandler

from pathseqsam.engine import (
    AtomicCheckpointSaver,
    NaNLossGuard,
    ShardRecorder,
    TrainingCurves,
    WallTimeBudget,
    handlers_for_rank,
)
from pathseqsam.engine.distributed import any_rank, gather_lists
from pathseqsam.ranks import end_process_group

ROOT = Path(__file__).resolve().parents[2]


class _Validation(ValidationHandler):
    """A subclass: kept on every rank like its parent."""


def test_handlers_for_rank_keeps_writers_on_rank_zero_only(tmp_path):
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handlers = [
        LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, 1)),
        _Validation(interval=1, validator=None),
        NaNLossGuard(),
        StatsHandler(),
        TrainingCurves(tmp_path),
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_final=True),
        CheckpointLoader(load_path=str(tmp_path / "x.pt"), load_dict={"model": net}),
        MetricsSaver(save_dir=str(tmp_path)),
    ]
    assert handlers_for_rank(handlers, rank=0) == handlers
    kept = handlers_for_rank(handlers, rank=1)
    assert [type(h).__name__ for h in kept] == [
        "LrScheduleHandler",
        "_Validation",
        "NaNLossGuard",
        "CheckpointLoader",
        "MetricsSaver",
    ]
    assert handlers_for_rank([WallTimeBudget(1.0)], rank=1)  # its stop decision is all-reduced
    assert handlers_for_rank(handlers, rank=3, all_ranks=["StatsHandler"]) == [handlers[3]]
    assert handlers_for_rank(None, rank=1) == []
    # without a process group this is rank 0: everything stays
    assert handlers_for_rank(handlers) == handlers


def _expected_shard(n: int, rank: int, world: int, epoch: int, seed: int = 0) -> list[int]:
    """torch's DistributedSampler split, computed independently: seeded permutation, strided."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return order[rank::world]


def test_shard_recorder_records_what_each_rank_trained_on(tmp_path):
    data = [
        {"image": torch.tensor([float(i)]), "label": torch.tensor([0.0]), "case": f"c{i}"} for i in range(6)
    ]
    records = []
    for rank in (0, 1):
        net = torch.nn.Linear(1, 1)
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=2,
            train_data_loader=DataLoader(data, batch_size=2, sampler=sampler),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
            loss_function=torch.nn.MSELoss(),
        )
        recorder = ShardRecorder(tmp_path / "shards", rank=rank, world_size=2)
        recorder.attach(trainer)
        trainer.run()
        records.append(json.loads((tmp_path / "shards" / f"rank{rank}.json").read_text()))

    for rank, record in enumerate(records):
        assert record["rank"] == rank and record["world_size"] == 2
        assert record["dataset_size"] == 6 and record["completed"] is True
        assert sorted(record["epochs"]) == ["1", "2"]
        for epoch, shard in record["epochs"].items():
            assert shard["indices"] == _expected_shard(6, rank, 2, int(epoch))
            assert shard["ids"] == [f"c{i}" for i in shard["indices"]]  # what the batches carried
    for epoch in ("1", "2"):
        a, b = (set(r["epochs"][epoch]["indices"]) for r in records)
        assert not a & b and a | b == set(range(6))
    assert records[0]["epochs"]["1"]["indices"] != records[0]["epochs"]["2"]["indices"]  # reshuffled


def test_training_step_leaves_parameters_without_gradient(make_tiny):
    """Prompt-free training never touches SAM2's mask-prompt path: plain DDP would fail on its second
    step ("Expected to have finished reduction..."), hence find_unused_parameters in the overlay."""
    from pathseqsam.losses import PathSeqSAMLoss

    net = make_tiny(image_size=64, train_image_encoder=True, multimask_output=False, distance_unit_um=5.0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 2, 64, 64, generator=g)
    label = (torch.rand(2, 1, 2, 64, 64, generator=g) > 0.7).float()
    out = net(images, positions=torch.tensor([[0.0, 5.0]] * 2), return_aux=True)
    PathSeqSAMLoss()(out, label).backward()
    unused = {n for n, p in net.named_parameters() if p.requires_grad and p.grad is None}
    assert unused and any(n.startswith("sam_prompt_encoder.mask_downscaling.") for n in unused)
    used = {n for n, p in net.named_parameters() if p.grad is not None}
    assert any(n.startswith("memory_attention.") for n in used)  # the 2-slice window used the memory path
    overlay = json.loads((ROOT / "bundle" / "configs" / "multi_gpu_train.json").read_text())
    assert overlay["network"]["find_unused_parameters"] is True


def _rank_worker(rank: int, store: str, out: str) -> None:
    """One of 2 gloo processes: collective helpers, and a time budget that runs out on rank 0 only."""
    import torch.distributed as dist
    from ignite.engine import Engine

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        result = {
            "any_true": any_rank(rank == 1),
            "any_false": any_rank(False),
            "gathered": gather_lists([f"r{rank}"] * (rank + 1)),
        }
        engine = Engine(lambda e, batch: None)
        # rank 0's clock jumps past the 1-minute budget at iteration 3; rank 1's never moves
        budget = WallTimeBudget(1.0, clock=lambda: 61.0 if rank == 0 and engine.state.iteration >= 3 else 0.0)
        budget.attach(engine)
        engine.run(range(5), max_epochs=4)
        result.update(iteration=engine.state.iteration, epoch=engine.state.epoch, expired=budget.expired)
        if rank == 0:
            time.sleep(1.0)  # rank 0 still busy (writing reports) while rank 1 reaches the end
        end_process_group()  # the bundle's finalize: leaves in step, then tears the group down
        result["initialized_after_end"] = dist.is_initialized()
        end_process_group()  # a second call (or one outside a group) does nothing
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_collective_helpers_and_time_budget_agree_across_ranks(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_worker, args=(r, str(tmp_path / "store"), str(tmp_path))) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    assert not alive, "a rank hung (ranks disagreed on a collective decision)"
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["any_true"] is True and result["any_false"] is False
        assert result["gathered"] == ["r0", "r1", "r1"]  # rank order
        # both stopped together, at the iteration where rank 0's time ran out
        assert (result["iteration"], result["epoch"], result["expired"]) == (3, 1, True)
        assert result["initialized_after_end"] is False
