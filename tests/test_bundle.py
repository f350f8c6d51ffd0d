"""The MONAI bundle, Model-Zoo style: ConfigWorkflow initialize / check_properties / run / finalize.

Train (one short epoch, tiny model) -> evaluate the saved model -> inference (with and without
labels, slices and NIfTI stacks) -> resume from the latest checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from tests.bundle_paths import with_pretrained
from tests.reference import postprocess_reference

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
SIZE = 128
# evaluate.json and inference.json compress memory by default: native 32 um tokens at 2 um/px for the
# nearest memory slice, 4 x 4 pooling (128 um) beyond; training and its validation do not
EVAL_TOKEN_UM = (32.0, 128.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pathseqsam.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("bundle") / "data"
    # seed 0 at 1 um/px: every validation and test section holds a glomerulus
    generate_synthetic_dataset(
        out, cases=5, seed=0, image_size=SIZE, sections=4, contact_sheet=False, field_um=256.0
    )
    return out


@pytest.fixture(scope="module")
def trained(dataset, visible, tmp_path_factory) -> tuple[Path, ConfigWorkflow]:
    """One epoch of the bundle's training, started from the visible model's SAM2 checkpoint with a
    learning rate small enough to keep it predicting something: a 1-epoch model from random init
    (or at the default rate, whose first steps push every logit below 0) predicts nothing, and its
    validation Dice would be 0 == 0."""
    root = tmp_path_factory.mktemp("bundle_root")
    workflow = _train(root, dataset, epochs=1, **_from_visible(visible))
    return root, workflow


def _bundle_net(memory_token_um: tuple[float, ...] | None = None) -> torch.nn.Module:
    """The bundle's network built directly (the configs' settings at ``SIZE``), in eval mode."""
    from pathseqsam import build_pathseqsam

    return build_pathseqsam(
        model="tiny",
        image_size=SIZE,
        distance_unit_um=5.0,
        multimask_output=False,
        model_mpp_um=2.0,
        memory_token_um=memory_token_um,
    ).eval()


def _from_visible(visible: Path) -> dict:
    return {"sam2_checkpoint": str(visible / "sam2.pt"), "learning_rate": 1e-6}


@pytest.fixture(scope="module")
def visible(tmp_path_factory) -> Path:
    """A bundle root whose ``models/model.pt`` predicts something: a random tiny model with the
    object-score bias forced to +5, so SAM2 never gates the masks to -1024 and the mask logits
    hover around 0 (masks neither empty nor full). A 1-epoch model predicts nothing, which would
    make mask comparisons empty == empty."""
    torch.manual_seed(0)
    net = _bundle_net()
    with torch.no_grad():
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    root = with_pretrained(tmp_path_factory.mktemp("visible"))
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    # the same weights as a SAM2 checkpoint (SAM2's key names, LoRA merged), to train from
    from pathseqsam import export_sam2_checkpoint

    export_sam2_checkpoint(net, root / "sam2.pt")
    return root


def _direct_masks(
    state: Path, dataset: Path, case: dict, memory_token_um: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The bundle's prediction recomputed without the bundle: network call, then the reference
    post-processing. Returns (masks ``[N, H, W]`` bool, labels ``[N, H, W]`` bool or None)."""
    from pathseqsam.data.transforms import LoadSequenced, NormalizeSAM2d

    keys = [k for k in ("image", "label") if k in case]
    item = {k: ([str(dataset / p) for p in v] if k in keys else v) for k, v in case.items()}
    data = NormalizeSAM2d("image")(LoadSequenced(keys)(item))
    net = _bundle_net(memory_token_um)
    weights = torch.load(state, weights_only=True)
    net.load_state_dict(
        weights["model"] if "model" in weights else weights
    )  # training checkpoint or model.pt
    with torch.no_grad():
        probs = torch.sigmoid(net(data["image"][None], positions=data["positions"][None]))[0, 0]
    labels = np.asarray(data["label"][0]) > 0 if "label" in data else None
    return postprocess_reference(probs.numpy(), SIZE), labels


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Per-slice Dice; NaN where the label is empty (MONAI's ``ignore_empty=True``)."""
    if not label.any():
        return float("nan")
    return 2.0 * float((pred & label).sum()) / float(pred.sum() + label.sum())


def _overrides(root: Path, dataset: Path) -> dict:
    return {
        "bundle_root": str(root),
        "dataset_dir": str(dataset),
        "image_size": SIZE,
        "window": 2,
        "batch_size": 2,
        "train#windows_per_case": 1,
    }


def _run(workflow_type: str, config_file: str | list[str], **overrides) -> ConfigWorkflow:
    """The Zoo test pattern: initialize, no missing properties, run, finalize."""
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=config_file,
        meta_file=META,
        logging_file=LOGGING,
        **overrides,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return workflow


def _train(root: Path, dataset: Path, epochs: int, **extra) -> ConfigWorkflow:
    overrides = {**_overrides(root, dataset), "train#trainer#max_epochs": epochs, **extra}
    return _run("train", str(CONFIGS / "train.json"), **overrides)


def test_train_writes_checkpoints_curves_overlays(trained, dataset):
    root, workflow = trained
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "checkpoint_epoch=1.pt").is_file()
    state = torch.load(root / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    assert not list((root / "models").glob("*.tmp*"))
    rows = list(csv.DictReader(open(root / "eval" / "curves.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["train_loss"]) > 0
    # the epoch's validation Dice, recomputed from the epoch's weights without the bundle
    datalist = json.loads((dataset / "datalist.json").read_text())
    dices = []
    for case in datalist["validation"]:
        masks, labels = _direct_masks(root / "models" / "checkpoint_epoch=1.pt", dataset, case)
        dices += [_dice(m, lab) for m, lab in zip(masks, labels)]
    assert float(rows[0]["val_mean_dice"]) == pytest.approx(float(np.nanmean(dices)), abs=1e-4)
    assert 0.0 < float(np.nanmean(dices)) < 1.0  # the model predicts something: not 0 == 0
    assert Image.open(root / "eval" / "curves.png").size[0] > 100
    assert list((root / "eval" / "overlays").glob("*.png"))
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(float(rows[0]["val_mean_dice"]))


def test_evaluate_saves_per_patch_metrics(visible, dataset):
    root = visible
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    workflow = _run("train", configs, **_overrides(root, dataset))
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    details = evaluator.state.metric_details["val_mean_dice"].flatten().tolist()
    datalist = json.loads((dataset / "datalist.json").read_text())
    # independent: the same checkpoint called directly, the reference post-processing, numpy Dice
    expected, predicted = [], []
    for case in datalist["validation"]:
        masks, labels = _direct_masks(root / "models" / "model.pt", dataset, case, EVAL_TOKEN_UM)
        expected += [_dice(m, lab) for m, lab in zip(masks, labels)]
        predicted.append(masks)
    assert 0.01 < np.concatenate(predicted).mean() < 0.99  # the model predicts something
    np.testing.assert_allclose(details, expected, atol=1e-4)
    assert (
        0.0 < min(expected) and max(expected) < 1.0 and len(set(np.round(expected, 4))) > 1
    )  # not all 0 or 1
    n_slices = sum(len(item["image"]) for item in datalist["validation"])
    with open(root / "eval" / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) - 1 == n_slices == len(details)
    assert rows[1][0].startswith(datalist["validation"][0]["case"] + "/")
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], details, rtol=1e-4)  # nan == nan here
    assert all(d == d for d in details)  # every validation patch here has a glomerulus: none left out
    with open(root / "eval" / "metrics.csv") as f:
        metrics = dict(line.strip().split(",") for line in f if line.strip())
    assert float(metrics["val_mean_dice"]) == pytest.approx(
        evaluator.state.metrics["val_mean_dice"], rel=1e-4
    )
    assert float(metrics["val_mean_dice"]) == pytest.approx(float(np.nanmean(details)), rel=1e-4)
    assert "val_object_f1" in metrics
    assert (root / "eval" / "val_mean_dice_summary.csv").is_file()


def _infer(root: Path, dataset: Path, **extra) -> Path:
    _run(
        "infer",
        str(CONFIGS / "inference.json"),
        bundle_root=str(root),
        dataset_dir=str(dataset),
        image_size=SIZE,
        **extra,
    )
    return root / "eval" / "inference"


def test_inference_writes_masks_that_match_the_network(visible, dataset, tmp_path):
    root = visible
    out = _infer(root, dataset)
    summary = json.loads((out / "summary.json").read_text())
    datalist = json.loads((dataset / "datalist.json").read_text())
    case = datalist["test"][0]
    entry = summary["cases"][case["case"]]
    assert len(entry["slices"]) == len(case["image"])
    mask = np.asarray(Image.open(out / entry["slices"][0]["mask"]))
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / entry["slices"][0]["overlay"]).size == (SIZE, SIZE)

    # independent check: the same network and checkpoint, called directly
    masks, _ = _direct_masks(root / "models" / "model.pt", dataset, case, EVAL_TOKEN_UM)
    assert 0.01 < masks.mean() < 0.99  # not empty == empty
    for t, sl in enumerate(entry["slices"]):
        written = np.asarray(Image.open(out / sl["mask"])) > 0
        expected = masks[t]
        assert (written != expected).mean() < 1e-3, sl["slice"]
        assert sl["foreground_fraction"] == pytest.approx(expected.mean(), abs=1e-3)


def test_inference_without_labels_and_on_nifti_stacks(visible, dataset, tmp_path):
    root = visible
    datalist = json.loads((dataset / "datalist_nifti.json").read_text())
    unlabelled = {"test": [{k: v for k, v in item.items() if k != "label"} for item in datalist["test"]]}
    path = dataset / "datalist_nifti_unlabelled.json"
    path.write_text(json.dumps(unlabelled))
    out = _infer(root, dataset, datalist=str(path))
    summary = json.loads((out / "summary.json").read_text())
    case = unlabelled["test"][0]["case"]
    stack = out / summary["cases"][case]["stack"]
    volume = np.asarray(nib.load(stack).dataobj)
    source = nib.load(dataset / unlabelled["test"][0]["image"])
    assert volume.shape == source.shape[:3]
    # the stack holds the same masks as the per-slice PNGs (NIfTI is x, y, z)
    first = np.asarray(Image.open(out / summary["cases"][case]["slices"][0]["mask"]))
    np.testing.assert_array_equal(volume[:, :, 0].T, first)
    assert 0.01 < (volume > 0).mean() < 0.99  # masks neither empty nor full


def test_resume_continues_from_latest_checkpoint(trained, visible, dataset, tmp_path, capfd):
    root, first = trained
    resumed_root = tmp_path / "resume"
    (resumed_root / "models").mkdir(parents=True)
    latest = root / "models" / "checkpoint_epoch=1.pt"
    (resumed_root / "models" / latest.name).write_bytes(latest.read_bytes())
    workflow = _train(resumed_root, dataset, epochs=2, resume=True, **_from_visible(visible))
    assert f"resuming from {resumed_root / 'models' / latest.name}" in capfd.readouterr().out
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epoch_length = first.parser.get_parsed_content("train#trainer").state.epoch_length
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 2 * epoch_length  # continued, not restarted
    from pathseqsam.engine import latest_checkpoint

    assert Path(latest_checkpoint(resumed_root / "models")).name == "checkpoint_epoch=2.pt"


def test_inference_ensemble_averages_the_mirrored_passes(visible, dataset, tmp_path):
    """``--ensemble true``: the masks are those of the sigmoid averaged over the 4 in-plane mirrors,
    recomputed here with direct network calls; they differ from the single pass's masks."""
    from pathseqsam.data.transforms import LoadSequenced, NormalizeSAM2d

    # the visible model's mask logits hover around 0, so the mirrored passes change the masks
    net = _bundle_net(EVAL_TOKEN_UM)
    net.load_state_dict(torch.load(visible / "models" / "model.pt", weights_only=True))

    datalist = json.loads((dataset / "datalist.json").read_text())
    case = datalist["test"][0]
    item = {k: ([str(dataset / p) for p in v] if k in ("image", "label") else v) for k, v in case.items()}
    data = NormalizeSAM2d("image")(LoadSequenced(["image", "label"])(item))
    image, positions = data["image"][None], data["positions"][None]
    probs = []
    with torch.no_grad():
        for dims in ((), (3,), (4,), (3, 4)):
            x = torch.flip(image, dims) if dims else image
            out = net(x, positions=positions)
            probs.append(torch.sigmoid(torch.flip(out, dims) if dims else out)[0, 0])
    ensembled = postprocess_reference(torch.stack(probs).mean(0).numpy(), SIZE)
    single = postprocess_reference(probs[0].numpy(), SIZE)

    out = _infer(visible, dataset, ensemble=True)
    entry = json.loads((out / "summary.json").read_text())["cases"][case["case"]]
    written = np.stack([np.asarray(Image.open(out / sl["mask"])) > 0 for sl in entry["slices"]])
    assert 0.01 < written.mean() < 0.99  # masks neither empty nor full
    assert (written != ensembled).mean() < 1e-3
    assert (ensembled != single).mean() > 0.01  # the mirrored passes changed the masks here


@pytest.mark.parametrize(
    ("files", "overrides", "expected"),
    [
        (["train.json"], {}, None),  # training (and its validation) attends to every memory token
        (["train.json", "train_wsi.json"], {}, None),
        (["train.json", "evaluate.json"], {}, EVAL_TOKEN_UM),
        (["inference.json"], {}, EVAL_TOKEN_UM),
        (["inference.json"], {"model_mpp_um": 0.5}, (8.0, 32.0)),  # the same setting in micrometres
        (["inference.json"], {"memory_token_um": None}, None),  # off, for SAM2's own behaviour
        (["train.json", "baselines/sam2_memory.json", "evaluate.json"], {}, None),  # stock SAM2 stays stock
        (["inference.json"], {"compress_memory": False}, None),
        (["train.json"], {"compress_memory": True}, EVAL_TOKEN_UM),
    ],
)
def test_memory_compression_is_on_for_evaluation_and_inference_only(files, overrides, expected):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(ROOT / "bundle"), **overrides})
    assert parser.get_parsed_content("network_def").settings.memory_token_um == expected


@pytest.mark.parametrize("baseline", ["dynunet", "swinunetr"])
def test_the_2d_baselines_evaluate_without_a_memory_setting(baseline):
    """The 2D baselines replace ``network_def``; evaluation's compression switch must not reach them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(
        [str(CONFIGS / f) for f in ("train.json", f"baselines/{baseline}.json", "evaluate.json")]
    )
    parser.update({"bundle_root": str(ROOT / "bundle"), "image_size": 64})
    net = parser.get_parsed_content("network_def")
    assert not hasattr(net, "settings") and net(torch.zeros(1, 3, 2, 64, 64)).shape == (1, 1, 2, 64, 64)
