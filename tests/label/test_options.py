"""The typed whitelist of MONAI Label request options (runs in the core environment too)."""

from __future__ import annotations

import logging

import pytest

from pathseqsam.label.requests.options import (
    MAX_CLICKS,
    RequestRefused,
    clean_request,
    infer_options,
    options_schema,
    train_options,
)

DEVICES = ("cpu", "cuda", "cuda:0")


@pytest.fixture
def train():
    return train_options(40, devices=DEVICES)


@pytest.fixture
def interactive():
    return infer_options(True, devices=DEVICES)


def test_valid_train_request_is_converted(train):
    got = clean_request(
        {"max_epochs": 3, "val_split": 0.25, "device": "cpu", "model": "m"}, train, keep=["model"]
    )
    assert got == {"model": "m", "max_epochs": 3, "val_split": 0.25, "device": "cpu"}
    assert clean_request({"max_epochs": 7.0}, train) == {"max_epochs": 7}  # a whole float is an integer
    assert clean_request({"device": ["cuda:0", "cpu"]}, train) == {"device": "cuda:0"}  # an echoed list


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"max_epochs": "$__import__('os')"},
            r"request 'max_epochs' = .*: expected an integer \(1 <= max_epochs <= 1000\)",
        ),
        ({"max_epochs": "10"}, r"'max_epochs' = '10': expected an integer"),
        ({"max_epochs": True}, r"'max_epochs' = True: expected an integer"),
        ({"max_epochs": 0}, r"'max_epochs' = 0: out of range \(1 <= max_epochs <= 1000\)"),
        ({"max_epochs": 1001}, r"out of range"),
        ({"max_epochs": 2.5}, r"got a fraction"),
        ({"max_epochs": float("nan")}, r"'max_epochs' = nan: expected an integer .*\(finite\)"),
        ({"max_epochs": 10**400}, r"\(finite\)"),
        ({"val_split": 1.0}, r"'val_split' = 1.0: out of range \(0 <= val_split < 1\)"),
        ({"val_split": -0.1}, r"out of range"),
        ({"val_split": float("inf")}, r"'val_split' = inf: expected a number .*\(finite\)"),
        ({"device": "cuda:7"}, r"'device' = 'cuda:7': expected one of \['cpu', 'cuda', 'cuda:0'\]"),
        ({"device": "$torch.device('cpu')"}, r"expected one of"),
        ({"device": ["cpu", "@network"]}, r"'@network' is not one of"),
        ({"device": 0}, r"expected one of"),
    ],
)
def test_wrong_train_values_are_refused_naming_the_field(train, body, message):
    with pytest.raises(RequestRefused, match=message) as info:
        clean_request(body, train)
    assert info.value.status_code == 400


def test_unknown_and_internal_keys_are_dropped_and_logged(interactive, caplog):
    body = {
        "foreground": [[1, 2, 0]],
        "slice_index": [0, 0, 0],
        "positions_um": [[0.0]],
        "degraded": [1],
        "image": "/etc/passwd",
        "label_tag": "../../x",
        "client_id": "slicer",
    }
    with caplog.at_level(logging.INFO, logger="pathseqsam.label.requests.options"):
        got = clean_request(body, interactive, where="infer m")
    assert got == {"foreground": [[1, 2, 0]]}
    assert (
        "infer m: ignoring keys that are not options of this task: "
        "['client_id', 'degraded', 'image', 'label_tag', 'positions_um', 'slice_index']"
    ) in caplog.text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"foreground": [[1, 2, 3, 4]]}, r"'foreground'\[0\] = \[1, 2, 3, 4\]: expected a list of \[x, y\]"),
        (
            {"foreground": [[[1, 2], 3]]},
            r"request 'foreground'\[0\] = \[1, 2\]: expected a pixel coordinate$",
        ),
        ({"background": "[[1, 2]]"}, r"'background' = '\[\[1, 2\]\]': expected a list of"),
        ({"foreground": [[1, float("nan")]]}, r"\(finite\)"),
        ({"foreground": [[1e12, 2]]}, r"pixel coordinate beyond"),
        (
            {"foreground": [[1, 2]] * (MAX_CLICKS + 1)},
            rf"{MAX_CLICKS + 1} clicks, more than the {MAX_CLICKS}",
        ),
        ({"foreground": [[1, 2]] * 200, "background": [[1, 2]] * 57}, r"257 clicks, more than the 256"),
        ({"roi": [1, 2, 3]}, r"'roi' = \[1, 2, 3\]: expected \[x0, y0, x1, y1\]"),
        ({"slice": 1e999}, r"'slice' = inf: expected an integer .*\(finite\)"),
        ({"slice": -1}, r"out of range"),
        ({"size": [-5, 4]}, r"'size' = \[-5, 4\]: out of range"),
        ({"location": [1, 2, 3]}, r"two whole numbers"),
        ({"level": 33}, r"'level' = 33: out of range \(0 <= level <= 32\)"),
        ({"level": 1.5}, r"'level' = 1.5: expected an integer .*got a fraction"),
        ({"tile_size": [0, 512]}, r"'tile_size' = \[0, 512\]: out of range"),
    ],
)
def test_wrong_infer_values_are_refused(interactive, body, message):
    with pytest.raises(RequestRefused, match=message):
        clean_request(body, interactive)


def test_request_must_be_an_object(train):
    with pytest.raises(RequestRefused, match="request: expected a JSON object of options, got list"):
        clean_request([["max_epochs", 3]], train)


def test_automatic_task_has_no_prompt_options():
    auto = infer_options(False, devices=DEVICES)
    assert set(auto) == {"device", "location", "size", "level", "tile_size"}
    assert clean_request({"foreground": [[1, 2]]}, auto) == {}


def test_schema_is_what_is_enforced(train):
    schema = options_schema(train)
    assert schema["max_epochs"] == {
        "type": "int",
        "default": 40,
        "min": 1,
        "max": 1000,
        "help": "epochs to train",
    }
    assert schema["val_split"]["exclusive_max"] == 1.0 and schema["val_split"]["min"] == 0.0
    assert schema["device"]["choices"] == list(DEVICES)
    assert train["device"].advertised() == list(DEVICES)
    assert train_options(5000, devices=DEVICES)["max_epochs"].default == 1000  # clipped to the range
