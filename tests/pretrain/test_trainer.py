"""The pretraining loop: SAM2's checkpoint format loadable like an official one, determinism, resuming."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pathseqsam import build_pathseqsam
from pathseqsam.modeling.build import instantiate_sam2
from pathseqsam.modeling.checkpoint import PATHSEQSAM_NEW_KEYS
from pathseqsam.pretrain import PretrainConfig, pretrain
from pathseqsam.pretrain.report import running_median, sha256_of
from pathseqsam.pretrain.trainer import (
    _samples,
    _to_tensors,
    evaluate_propagation,
    other_object_of_same_stack,
    plan_batch,
    run_batch,
    save_sam2_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
# 3 iterations: a single-image batch, then video batches with box and mask prompts (seed 0)
CFG = PretrainConfig(
    iterations=3,
    image_size=SIZE,
    frames=2,
    videos_per_batch=1,
    images_per_batch=2,
    objects=2,
    corrections=1,
    warmup=1,
)
ARGS = [
    "--iterations", "3", "--image-size", str(SIZE), "--frames", "2", "--videos-per-batch", "1",
    "--images-per-batch", "2", "--objects", "2", "--corrections", "1", "--warmup", "1", "--data-workers", "0",
]  # fmt: skip


def _script():
    spec = importlib.util.spec_from_file_location(
        "pretrain_tiny_sam2", ROOT / "scripts" / "pretrain_tiny_sam2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    """The script, end to end, on a tiny setting."""
    out = tmp_path_factory.mktemp("pretrain")
    install = out / "shipped" / "tiny.pt"
    assert (
        _script().main([*ARGS, "--out", str(out / "run"), "--install", str(install), "--eval-every", "0"])
        == 0
    )
    return out / "run", install


def test_the_plan_covers_images_videos_and_every_prompt():
    plans = [plan_batch(PretrainConfig(), i) for i in range(200)]
    assert {p["frames"] for p in plans} == {1, 4}
    assert {p["prompt"] for p in plans if p["frames"] == 1} == {"box", "click"}  # no mask prompts on images
    assert {p["prompt"] for p in plans if p["frames"] == 4} == {"box", "click", "mask"}
    assert [plan_batch(CFG, i)["frames"] for i in range(3)] == [1, 2, 2]


def test_checkpoint_is_sam2_format_and_loads_like_an_official_one(scripted_run):
    run, install = scripted_run
    ckpt = run / "sam2_tiny_pretrained.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert list(state) == ["model"]
    sam2 = instantiate_sam2("tiny", SIZE, pathseqsam_class=False)
    assert set(state["model"]) == set(sam2.state_dict())  # SAM2's own key names, nothing else
    # build_pathseqsam loads it exactly as an official checkpoint: only PathSeqSAM's new keys missing
    net = build_pathseqsam(model="tiny", image_size=256, checkpoint=ckpt, lora_rank=8)
    own = net.state_dict()
    for key, value in state["model"].items():
        name = (
            key
            if key in own
            else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(own[name], value), key
    new = {k for k in own if "lora_" not in k and k not in state["model"] and ".base_layer." not in k}
    # a network in sequence coordinates adds Eq. 1's lambda only (lambda_slide: slide coordinates)
    assert new == {"distance_kernel.raw_lambda"} and new <= set(PATHSEQSAM_NEW_KEYS)
    # training changed the weights away from the seed's initialisation
    torch.manual_seed(CFG.seed)
    init = instantiate_sam2("tiny", SIZE, pathseqsam_class=False).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in state["model"].items())
    # the installed copy and its record
    assert sha256_of(install) == sha256_of(ckpt)
    record = json.loads(install.with_suffix(".json").read_text())
    assert record["sha256"] == sha256_of(ckpt) and record["bytes"] == ckpt.stat().st_size
    assert record["file"] == "tiny.pt"
    assert record["command"].startswith("python scripts/pretrain_tiny_sam2.py --iterations 3")
    assert record["config"] == CFG.as_dict()
    assert [e["iteration"] for e in record["evaluations"]] == [3]
    assert 0.0 <= record["evaluations"][0]["click_first"] <= 1.0
    assert 0.0 <= record["evaluations"][0]["other_mask_propagated"] <= 1.0
    assert (run / "pretrain_curve.png").stat().st_size > 10_000
    history = json.loads((run / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [1, 2, 3]


def test_same_seed_same_weights_even_interrupted_and_with_a_data_worker(scripted_run, tmp_path):
    run, _ = scripted_run
    lines = []
    first = pretrain(CFG, tmp_path / "b", save_every=1, stop_after=2, progress=lines.append)
    assert first["checkpoint"] is None and (tmp_path / "b" / "state.pt").is_file()
    second = pretrain(CFG, tmp_path / "b", save_every=1, progress=lines.append, data_workers=1)
    assert any(line.startswith("resuming") and "at iteration 2/3" in line for line in lines)
    assert any("ETA" in line and line.startswith("iter 3/3") for line in lines)
    a = torch.load(run / "sam2_tiny_pretrained.pt", weights_only=True)["model"]
    b = torch.load(second["checkpoint"], weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    history_a = json.loads((run / "history.json").read_text())["history"]
    assert [h["loss"] for h in history_a] == [h["loss"] for h in second["history"]]


def test_another_seed_other_weights_and_other_settings_refuse_the_state(scripted_run, tmp_path):
    run, _ = scripted_run
    other = pretrain(
        PretrainConfig(**{**CFG.as_dict(), "seed": 1, "mpp_range": (0.5, 2.0)}),
        tmp_path / "c",
        progress=print,
    )
    a = torch.load(run / "sam2_tiny_pretrained.pt", weights_only=True)["model"]
    c = torch.load(other["checkpoint"], weights_only=True)["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(
        ValueError, match=r"state.pt was written by other settings .*use another output folder"
    ):
        pretrain(CFG, tmp_path / "c")


def test_a_second_stage_starts_from_the_first_stage_checkpoint(scripted_run, tmp_path):
    run, _ = scripted_run
    first = run / "sam2_tiny_pretrained.pt"
    lines = []
    # stopped before its first iteration: the saved state holds exactly the weights it started from
    pretrain(CFG, tmp_path / "s2", init_checkpoint=first, stop_after=0, save_every=1, progress=lines.append)
    saved = torch.load(tmp_path / "s2" / "state.pt", weights_only=True)["model"]
    start = torch.load(first, weights_only=True)["model"]
    assert saved.keys() == start.keys() and all(torch.equal(saved[k], start[k]) for k in start)
    assert any(line == f"starting from the weights of {first}" for line in lines)
    # the record names the checkpoint it started from
    out = tmp_path / "script"
    assert _script().main([*ARGS, "--out", str(out), "--init", str(first), "--eval-every", "0"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["init"] == {"file": str(first), "sha256": sha256_of(first)}
    with pytest.raises(FileNotFoundError, match=r"init checkpoint not found: .*missing\.pt"):
        pretrain(CFG, tmp_path / "s3", init_checkpoint=tmp_path / "missing.pt")


def test_run_batch_propagates_and_rejects_unknown_prompts():
    torch.manual_seed(0)
    model = instantiate_sam2("tiny", SIZE, pathseqsam_class=False)
    plan = {"frames": 3, "prompt": "mask", "keys": [(7, 0)]}
    images, masks, video_of = _to_tensors(_samples(CFG, plan))
    assert images.shape == (3, 3, SIZE, SIZE) and masks.shape == (3, 2, 1, SIZE, SIZE)
    terms, preds = run_batch(model, images, masks, video_of, "mask")
    assert len(preds) == 3 and preds[0].shape == (2, 1, SIZE, SIZE)
    # the mask prompt is SAM2's conditioning frame output as is; later frames come from memory
    assert torch.equal(preds[0] > 0, masks[0] > 0.5)
    assert set(terms) == {"mask", "dice", "iou", "class", "total"}
    with pytest.raises(ValueError, match="prompt must be 'mask', 'box' or 'click', got 'scribble'"):
        run_batch(model, images, masks, video_of, "scribble")


def test_propagated_frames_train_their_masks_even_when_sam2_gates_them_off():
    """From random init every propagated frame's object score is negative, so SAM2's gated logits are
    all -1024 (no gradient): the loss must read the decoder's ungated masks, upsampled as SAM2 does."""
    from sam2.modeling.sam2_base import NO_OBJ_SCORE

    torch.manual_seed(0)
    model = instantiate_sam2("tiny", SIZE, pathseqsam_class=False)
    plan = {"frames": 2, "prompt": "mask", "keys": [(7, 0)]}
    images, masks, video_of = _to_tensors(_samples(CFG, plan))
    decoded = []
    hook = model.sam_mask_decoder.register_forward_hook(lambda _m, _i, out: decoded.append(out))
    terms, preds = run_batch(model, images, masks, video_of, "mask")
    hook.remove()
    low_res, _, _, scores = decoded[-1]  # frame 1, segmented from memory alone
    assert (scores < 0).all() and (preds[1] == NO_OBJ_SCORE).all()  # gated off, as at random init
    ungated = torch.nn.functional.interpolate(
        low_res, size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )
    # one candidate per object is supervised (the lowest 20 focal + dice), the IoU head on all of them
    from pathseqsam.pretrain.loss import sam2_frame_loss

    expected = sam2_frame_loss(ungated, decoded[-1][1], scores, masks[1])
    # frame 0 is the prompted mask itself (~0 loss): the total is frame 1's
    assert terms["mask"].item() == pytest.approx(expected["mask"].item(), rel=1e-5)
    assert terms["mask"].item() < 1.0  # -1024 logits would give ~0.25 * 1024 per object pixel
    terms["total"].backward()
    memory_grad = sum(p.grad.abs().sum() for p in model.memory_attention.parameters() if p.grad is not None)
    assert memory_grad > 0


def test_running_median_ignores_spikes():
    values = [1.0, 1.0, 1000.0, 1.0, 1.0]
    assert list(running_median(values, 3)) == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_single_mask_tracking_trains_the_token_the_bundle_decodes_with():
    """With multimask_tracking false, propagated sections are decoded (and supervised) with SAM2's
    single-mask token, as the bundle's network decodes every slice (multimask_output false)."""
    from pathseqsam.pretrain.trainer import _apply_model_settings

    plan = {"frames": 2, "prompt": "mask", "keys": [(7, 0)]}
    images, masks, video_of = _to_tensors(_samples(CFG, plan))
    counts = {}
    for tracking in (True, False):
        torch.manual_seed(0)
        model = instantiate_sam2("tiny", SIZE, pathseqsam_class=False)
        _apply_model_settings(model, PretrainConfig(multimask_tracking=tracking))
        decoded = []
        hook = model.sam_mask_decoder.register_forward_hook(lambda _m, _i, out, d=decoded: d.append(out))
        run_batch(model, images, masks, video_of, "mask")
        hook.remove()
        counts[tracking] = decoded[-1][0].shape[1]  # masks returned for frame 1 (memory only)
    assert counts == {True: 3, False: 1}


def test_other_object_is_a_different_object_of_the_same_stack():
    video_of = torch.tensor([0, 0, 0, 1, 1, 2])
    other = other_object_of_same_stack(video_of)
    assert other.tolist() == [1, 2, 0, 4, 3, 5]  # stack 2 has one object: it keeps it
    assert torch.equal(video_of[other], video_of)


def test_prompting_with_the_own_mask_or_click_is_the_own_row():
    # one object per stack: "another object's" prompt is the object's own, so the rows agree exactly
    torch.manual_seed(0)
    model = instantiate_sam2("tiny", SIZE, pathseqsam_class=False)
    cfg = PretrainConfig(image_size=SIZE, frames=2, objects=1)
    scores = evaluate_propagation(model, cfg, videos=2)
    assert set(scores) == {
        "click_first",
        "click_propagated",
        "mask_propagated",
        "other_mask_propagated",
        "other_click_first",
    }
    assert scores["other_mask_propagated"] == scores["mask_propagated"]
    assert scores["other_click_first"] == scores["click_first"]


def test_checkpoint_bytes_depend_on_the_weights_only(tmp_path):
    # torch.save to a file name stores the (random, temporary) name inside the zip: the same weights
    # written twice gave two sha256; written through a file object they give one
    from pathseqsam import export_sam2_checkpoint

    torch.manual_seed(0)
    model = instantiate_sam2("tiny", 64, pathseqsam_class=False)
    a = save_sam2_checkpoint(model, tmp_path / "a" / "sam2_tiny_pretrained.pt")
    b = save_sam2_checkpoint(model, tmp_path / "b" / "other_name.pt")
    assert a.read_bytes() == b.read_bytes() and sha256_of(a) == sha256_of(b)
    saved = torch.load(a, weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert sha256_of(save_sam2_checkpoint(model, tmp_path / "c.pt")) != sha256_of(a)
    net = build_pathseqsam(model="tiny", image_size=64, model_mpp_um=2.0)
    e1 = export_sam2_checkpoint(net, tmp_path / "e1.pt")
    e2 = export_sam2_checkpoint(net, tmp_path / "x" / "e2.pt")
    assert e1.read_bytes() == e2.read_bytes()
