"""Multi-process training and evaluation as on a multi-GPU node, here 2 CPU processes with gloo.

The command is the documented one, unchanged:
``torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run training --config_file
"['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']" ...`` (tiny model, 64 px, one
epoch, 4 training windows), then the distributed evaluation, checked against a one-process one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.bundle_paths import with_pretrained
from tests.torchrun import torchrun_bundle

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
TRAIN, EVALUATE = str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")
MULTI_TRAIN, MULTI_EVALUATE = str(CONFIGS / "multi_gpu_train.json"), str(CONFIGS / "multi_gpu_evaluate.json")
META, LOGGING = str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")
SIZE = 64
TIMEOUT_S = 480

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("ddp") / "data"
    # 8 cases: 4 training, 2 validation, 2 test (every rank gets validation data)
    generate_synthetic_dataset(
        out, cases=8, seed=0, image_size=SIZE, sections=4, contact_sheet=False, field_um=256.0
    )
    return out


def _torchrun(workdir: Path, run_id: str, configs: list[str], **overrides) -> dict[int, str]:
    """Run ``torchrun ... -m monai.bundle run`` with 2 processes; return each rank's output."""
    return torchrun_bundle(workdir / "torchrun_logs", configs, run_id, timeout=TIMEOUT_S, **overrides)


def _common(root: Path, dataset: Path) -> dict:
    return {"bundle_root": with_pretrained(root), "dataset_dir": dataset, "image_size": SIZE}


@pytest.fixture(scope="module")
def ddp_training(dataset, tmp_path_factory) -> tuple[Path, dict[int, str]]:
    root = tmp_path_factory.mktemp("ddp_root")
    overrides = {
        **_common(root, dataset),
        "window": 2,
        "batch_size": 1,
        "train#windows_per_case": 1,
        "train#trainer#max_epochs": 1,
        "shard_log_dir": root / "shards",
    }
    return root, _torchrun(root, "training", [TRAIN, MULTI_TRAIN], **overrides)


def _scalars(event_file: Path) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file))
    acc.Reload()
    return sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])


def test_two_process_training_shards_and_single_checkpoint(ddp_training, dataset):
    root, outputs = ddp_training
    datalist = json.loads((dataset / "datalist.json").read_text())
    train_cases = [item["case"] for item in datalist["training"]]
    records = [json.loads((root / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]

    # both ranks ran to the end, in one world of 2
    assert [(r["rank"], r["world_size"], r["completed"]) for r in records] == [(0, 2, True), (1, 2, True)]
    # the DistributedSampler shards are disjoint and together cover the training set
    shards = [r["epochs"]["1"]["indices"] for r in records]
    assert all(r["dataset_size"] == len(train_cases) for r in records)
    assert len(shards[0]) == len(shards[1]) == len(train_cases) // 2
    assert sorted(shards[0] + shards[1]) == list(range(len(train_cases)))
    for record, shard in zip(records, shards):
        assert record["epochs"]["1"]["ids"] == [train_cases[i] for i in shard]  # what each rank trained on

    # one latest checkpoint and one best model, written once, by rank 0
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert "Saved checkpoint at epoch: 1" in outputs[0]
    state = torch.load(root / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    # one rank's share of the 4 windows at batch size 1 (a single process would run 4 iterations)
    assert state["trainer"]["epoch_length"] == state["trainer"]["iteration"] == len(train_cases) // 2
    from pathseqsam import build_pathseqsam

    net = build_pathseqsam(
        model="tiny", image_size=SIZE, distance_unit_um=5.0, multimask_output=False, model_mpp_um=2.0
    )
    net.load_state_dict(state["model"])  # strict: the DDP wrapper was unwrapped, no "module." keys
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))

    # validation ran on both ranks and was gathered: every validation patch counted on rank 0
    n_val = sum(len(item["image"]) for item in datalist["validation"])
    assert f", {n_val} patches)" in outputs[0]  # ValidationSummary: "(median ..., N patches)"
    rows = list(csv.DictReader(open(root / "eval" / "curves.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and rows[0]["val_mean_dice"] != ""

    # writers are attached on rank 0 only: rank 1's TensorBoard files (created when the handler
    # objects are built) hold no scalar, rank 0's do
    pids = {r["rank"]: r["pid"] for r in records}
    events = {int(f.name.split(".")[-2]): f for f in (root / "eval").glob("events.out.tfevents.*")}
    by_rank = {rank: [f for pid, f in events.items() if pid == p] for rank, p in pids.items()}
    assert sum(_scalars(f) for f in by_rank[0]) > 0
    assert sum(_scalars(f) for f in by_rank[1]) == 0


def test_two_process_evaluation_matches_one_process(ddp_training, dataset, tmp_path):
    from monai.bundle import ConfigWorkflow

    from pathseqsam import build_pathseqsam

    ddp_root, _ = ddp_training
    # the 1-epoch model predicts nothing yet; push its object score up so per-patch Dice varies
    net = build_pathseqsam(
        model="tiny", image_size=SIZE, distance_unit_um=5.0, multimask_output=False, model_mpp_um=2.0
    )
    net.load_state_dict(torch.load(ddp_root / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(20.0)
    roots = {name: tmp_path / name for name in ("two", "one")}
    for root in roots.values():
        (root / "models").mkdir(parents=True)
        torch.save(net.state_dict(), root / "models" / "model.pt")

    # a one-epoch 64-px model predicts speckle that the post-processing would remove entirely; keep
    # every region so the Dice values have a spread to compare
    keep_all = {"min_object_um2": 0}
    _torchrun(
        roots["two"], "run", [TRAIN, EVALUATE, MULTI_EVALUATE], **_common(roots["two"], dataset), **keep_all
    )
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[TRAIN, EVALUATE],
        meta_file=META,
        logging_file=LOGGING,
        **{k: str(v) if isinstance(v, Path) else v for k, v in _common(roots["one"], dataset).items()},
        **keep_all,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()

    def per_patch(root: Path) -> dict[str, float]:
        with open(root / "eval" / "val_mean_dice_raw.csv") as f:
            return {row[0]: float(row[1]) for row in list(csv.reader(f))[1:]}

    two, one = per_patch(roots["two"]), per_patch(roots["one"])
    datalist = json.loads((dataset / "datalist.json").read_text())
    assert len(two) == sum(len(item["image"]) for item in datalist["validation"])  # both ranks' patches
    assert {name.split("/")[0] for name in two} == {item["case"] for item in datalist["validation"]}
    assert two.keys() == one.keys()
    assert len({round(v, 4) for v in one.values()}) > 1  # a real spread of Dice values, not all 0
    for name, value in one.items():
        assert two[name] == pytest.approx(value, abs=1e-4), name

    # PerPatchSaver gathers its rows like the metrics: the same table as one process writes
    def table(root: Path) -> dict[str, dict[str, str]]:
        with open(root / "eval" / "per_patch_validation.csv") as f:
            return {row["patch"]: row for row in csv.DictReader(f)}

    table2, table1 = table(roots["two"]), table(roots["one"])
    assert table2.keys() == table1.keys() == one.keys()
    for name, row in table1.items():
        assert {k: v for k, v in table2[name].items() if k != "dice"} == {
            k: v for k, v in row.items() if k != "dice"
        }
        assert float(table2[name]["dice"]) == pytest.approx(float(row["dice"]), abs=1e-4)

    def metrics(root: Path) -> dict[str, float]:
        with open(root / "eval" / "metrics.csv") as f:
            return {k: float(v) for k, v in (line.strip().split(",") for line in f if line.strip())}

    m2, m1 = metrics(roots["two"]), metrics(roots["one"])
    assert m2["val_mean_dice"] == pytest.approx(m1["val_mean_dice"], abs=1e-4)
    assert m2["val_object_f1"] == pytest.approx(m1["val_object_f1"], abs=1e-4)
