"""Boolean settings given on the bundle's command line (`--ensemble false` arrives as the string 'false')."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from pathseqsam import config_flag
from pathseqsam.engine import SequenceEnsembleInferer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("False", False),
        (" no ", False),
        ("ON", True),
        (1, True),
        (0, False),
    ],
)
def test_words_become_booleans(value, expected):
    assert config_flag(value, "x") is expected


@pytest.mark.parametrize("value", ["ture", "", 2, None, 0.5])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"setting 'ensemble' = .*: expected true or false"):
        config_flag(value, "ensemble")


def test_the_command_line_really_hands_over_strings():
    code = "import fire; fire.Fire(lambda **kw: print(repr(kw['ensemble'])))"
    out = subprocess.run([sys.executable, "-c", code, "--ensemble", "false"], capture_output=True, text=True)
    assert out.stdout.strip() == "'false'"  # truthy in Python: why config_flag exists


@pytest.mark.parametrize(("word", "ensembled"), [("false", False), ("true", True)])
def test_inference_config_reads_the_word_as_meant(word, ensembled):
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "inference.json"))
    parser["ensemble"] = word
    parser["bundle_root"] = str(ROOT / "bundle")
    assert isinstance(parser.get_parsed_content("inferer"), SequenceEnsembleInferer) is ensembled


def test_plain_value_refuses_what_the_parser_would_read_as_code():
    from pathseqsam.config_values import plain_value

    assert plain_value("outputs/study", "out") == "outputs/study"
    for bad in ("$__import__('os').system('x')", "@network", "%other.json#key"):
        with pytest.raises(ValueError, match=r"out = .*would be read as config code"):
            plain_value(bad, "out")
