"""Model Zoo readiness of ``bundle/``: the files the Zoo asks for, the metadata (checked offline
against the repository's schema of the MONAI Bundle Specification), the packages it lists, the
network's in/out check, and what ``ckpt_export`` does (see "Export" in ``bundle/docs/README.md``)."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata as md
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from tests.source_imports import source_imports

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
INFERENCE = str(CONFIGS / "inference.json")
SCHEMA = ROOT / "schemas" / "bundle_metadata.schema.json"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _metadata() -> dict:
    return json.loads(META.read_text())


def test_zoo_files_are_present():
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    for name in ("multi_gpu_train.json", "multi_gpu_evaluate.json"):
        assert (CONFIGS / name).is_file(), name
    license_text = (BUNDLE / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a pointer
    data_license = (BUNDLE / "docs" / "data_license.txt").read_text()
    assert "KPIs" in data_license and "syn54077668" in data_license and "synthetic" in data_license.lower()


def test_readme_follows_the_zoo_template():
    text = (BUNDLE / "docs" / "README.md").read_text()
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    for section in (
        "Model overview",
        "Data",
        "Training configuration",
        "Input and output formats",
        "Performance",
        "MONAI Bundle commands",
        "Export",
        "References",
        "License",
    ):
        assert any(h == section or h.startswith(section + " (") for h in headings), section
    # every config file a command in the README names exists
    for name in set(re.findall(r"configs/([\w/]+\.(?:json|conf))", text)):
        assert (CONFIGS / name).is_file(), name
    assert "torchrun --standalone --nnodes=1 --nproc_per_node=2" in text
    assert "--rdzv-endpoint" in text  # multi-node use is documented


def test_large_files_lists_sam2_checkpoints_with_hashes():
    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    paths = [e["path"] for e in entries]
    assert len(paths) == len(set(paths))
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}, entry
        assert entry["path"].startswith("models/") and entry["url"].startswith("https://")
        assert entry["hash_type"] == "sha256" and HEX64.match(entry["hash_val"]), entry
    b_plus = {e["path"]: e for e in entries}["models/sam2.1_hiera_base_plus.pt"]
    assert b_plus["url"].endswith("/092824/sam2.1_hiera_base_plus.pt")
    # the path is the one the docs tell users to pass as sam2_checkpoint
    assert "models/sam2.1_hiera_base_plus.pt" in (BUNDLE / "docs" / "README.md").read_text()


def _validator():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_metadata_validates_against_the_bundle_schema():
    validator = _validator()
    assert not [e.message for e in validator.iter_errors(_metadata())]
    # MONAI's own command, offline: the schema file exists, so nothing is downloaded (hash pinned)
    from monai.bundle import verify_metadata

    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA), hash_val=digest, hash_type="sha256")


@pytest.mark.parametrize(
    "path",
    [
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "optional_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "network_data_format/inputs/image/modality",
        "network_data_format/outputs/pred/channel_def",
        "network_data_format/outputs/pred/is_patch_data",
    ],
)
def test_schema_rejects_metadata_without_a_mandatory_field(path):
    meta = _metadata()
    *parents, key = path.split("/")
    node = meta
    for p in parents:
        node = node[p]
    del node[key]
    messages = [e.message for e in _validator().iter_errors(meta)]
    assert f"'{key}' is a required property" in messages


def test_schema_rejects_malformed_fields(tmp_path):
    bad = {
        ("version",): "1.0",
        ("changelog",): {"one": "first"},
        ("required_packages_version",): {"sam2": 1.1},
        ("network_data_format", "inputs", "image", "value_range"): [0.0],
        ("network_data_format", "inputs", "image", "num_channels"): 0,
        ("network_data_format", "outputs", "pred", "dtype"): "double precision",
    }
    for where, value in bad.items():
        meta = copy.deepcopy(_metadata())
        node = meta
        for p in where[:-1]:
            node = node[p]
        node[where[-1]] = value
        errors = list(_validator().iter_errors(meta))
        assert any(list(e.absolute_path)[: len(where)] == list(where) for e in errors), (where, errors)
    # MONAI's verify_metadata turns a violation into a ValueError naming the schema
    from monai.bundle import verify_metadata

    meta = _metadata()
    del meta["authors"]
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(path), filepath=str(SCHEMA))


def test_version_is_the_newest_changelog_entry():
    """The Zoo CI's version check (ci/verify_bundle.py): the version must be in the changelog."""
    meta = _metadata()
    versions = sorted(meta["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert meta["version"] == versions[-1]


def _imported_modules(package: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in ``package`` (lazy imports included) -> files."""
    found: dict[str, set[str]] = {}
    assert (package / "__init__.py").is_file(), package
    for path, name in source_imports(package):
        found.setdefault(name.split(".")[0], set()).add(path.relative_to(package).as_posix())
    return found


def _requirement_closure(dists: set[str]) -> set[str]:
    """``dists`` and, transitively, their installed requirements (extras not included)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = [canonicalize_name(d) for d in dists], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def _load_packager():
    spec = importlib.util.spec_from_file_location("package_bundle", ROOT / "scripts" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metadata_lists_every_package_the_code_imports(tmp_path):
    """The Zoo installs only the PyPI packages the metadata lists: everything the packaged bundle
    ships in scripts/ (the pathseqsam package) imports must come with them."""
    from packaging.utils import canonicalize_name

    shipped = _load_packager().package_bundle(tmp_path, make_zip=False) / "scripts" / "pathseqsam"

    meta = _metadata()
    listed = (
        {"monai", "torch", "numpy"}
        | set(meta["required_packages_version"])
        | set(meta["optional_packages_version"])
    )
    allowed = _requirement_closure(listed)
    module_to_dists = md.packages_distributions()
    missing = {}
    for module, files in sorted(_imported_modules(shipped).items()):
        if module in sys.stdlib_module_names or module in ("__future__", "pathseqsam"):
            continue
        dists = {canonicalize_name(d) for d in module_to_dists.get(module, [])}
        if not dists & allowed:
            missing[module] = sorted(files)
    assert not missing, f"imported but not provided by metadata.json's packages: {missing}"


def test_network_def_passes_verify_net_in_out(tmp_path):
    from monai.bundle import verify_net_in_out

    # [1, 3, 3 slices, 64, 64] in (metadata: ["*", "32*n", "32*n"]), 1 channel float32 out
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=INFERENCE, n=2, any=3, image_size=64
    )
    meta = _metadata()
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 2
    wrong = tmp_path / "metadata.json"
    wrong.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="channel"):  # the check is real: a wrong contract fails
        verify_net_in_out(net_id="network_def", meta_file=str(wrong), config_file=INFERENCE, image_size=64)


def test_ckpt_export_traces_a_fixed_length_torchscript_that_reproduces_pytorch(tmp_path):
    """Documented behaviour: scripting fails (SAM2's Python control flow); tracing works for one
    sequence length and image size, prompt-free, positions unknown, and reproduces PyTorch exactly,
    including the data-dependent top-K memory choice; it is not valid for another length."""
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    from pathseqsam import build_pathseqsam

    overrides = {"image_size": 64, "memory_k": 2}
    torch.manual_seed(0)
    net = build_pathseqsam(  # inference.json's network: memory compressed to 32 / 128 um tokens
        model="tiny",
        distance_unit_um=5.0,
        multimask_output=False,
        model_mpp_um=2.0,
        memory_token_um=(32.0, 128.0),
        **overrides,
    )
    with torch.no_grad():  # object score forced positive: real mask logits, not SAM2's -1024 everywhere
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    common = dict(
        net_id="network_def",
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(META),
        config_file=INFERENCE,
        **overrides,
    )
    with pytest.raises(RuntimeError, match=r"cannot be scripted with torch\.jit\.script.*use_trace true"):
        ckpt_export(filepath=str(tmp_path / "scripted.ts"), **common)
    assert not (tmp_path / "scripted.ts").exists()

    ckpt_export(
        filepath=str(tmp_path / "model.ts"),
        use_trace=True,
        input_shape=[1, 3, 5, 64, 64],
        converter_kwargs={"check_trace": False},
        **common,
    )
    traced, meta, extra = load_net_with_metadata(
        str(tmp_path / "model.ts"), more_extra_files=["inference.json"]
    )
    assert meta["version"] == _metadata()["version"] and "network_def" in json.loads(extra["inference.json"])
    net.eval()
    g = torch.Generator().manual_seed(2)  # inputs whose top-K choices differ (checked below)
    chosen = set()
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(1, 3, 5, 64, 64, generator=g)
            ref = net(x, return_aux=True)
            assert (ref["logits"] > NO_OBJ_SCORE).all() and ref["logits"].std() > 1e-3  # non-trivial
            torch.testing.assert_close(traced(x), ref["logits"], rtol=0, atol=1e-5)
            chosen.add(tuple(ref["memory_indices"][0, -1].tolist()))
        assert len(chosen) > 1  # inputs that pick different memory slices: the choice was traced, not frozen
        for n in (4, 6):  # another length: an error, or (silently) the traced length's output
            try:
                out = traced(torch.randn(1, 3, n, 64, 64, generator=g))
            except RuntimeError:
                continue
            assert out.shape[2] == 5 != n
