"""The README and the bundle docs are model cards, not lab notebooks.

History (commit hashes, run names, past figures) lives in CHANGELOG.md and docs/experiments/. These
tests keep it out of the two READMEs, keep their links and CI markers working, and keep them short.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "bundle" / "docs" / "README.md")
# a 7-40 character hex word: what an abbreviated or full commit hash looks like (a 64-character
# sha256 is longer and not matched)
HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z_])[0-9a-fA-F]{7,40}(?![0-9A-Za-z_])")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], input=stdin, capture_output=True, text=True, check=False
    )


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    done = _git("rev-parse", "--is-inside-work-tree")
    return done.returncode == 0 and done.stdout.strip() == "true"


def commit_tokens(text: str) -> list[str]:
    """The hex words of ``text`` that name a commit of this repository.

    Args:
        text: any text.

    Returns:
        The tokens, in order, that ``git rev-parse --verify <token>^{commit}`` resolves.
    """
    found = []
    for token in dict.fromkeys(HEX_TOKEN.findall(text)):
        if _git("rev-parse", "--verify", "--quiet", f"{token}^{{commit}}").returncode == 0:
            found.append(token)
    return found


needs_git = pytest.mark.skipif(
    not _in_git_checkout(), reason="not a git checkout (no history to check against)"
)


@needs_git
def test_commit_token_check_finds_a_real_commit():
    # the check itself must be able to fail: the HEAD commit, short and full, is found in prose
    head = _git("rev-parse", "HEAD").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head), head
    text = f"measured at {head[:7]}, see {head} (sha256 {'ab' * 32}, 12 tiles, deadbeefcafe)"
    assert commit_tokens(text) == [head[:7], head]


@needs_git
@pytest.mark.parametrize("doc", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readmes_name_no_commit(doc):
    tokens = commit_tokens(doc.read_text(encoding="utf-8"))
    assert not tokens, (
        f"{doc.relative_to(ROOT)} names commits {tokens}: history goes to CHANGELOG.md or docs/experiments/"
    )


@pytest.mark.parametrize("marker", ["<!-- test-command -->", "<!-- label-test-command -->"])
def test_ci_markers_are_followed_by_their_command(marker):
    # .ci/run takes the first line starting "python3 " after each marker (same rule as its awk)
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines.count(marker) == 1, f"README.md must hold {marker} exactly once"
    after = lines[lines.index(marker) + 1 :]
    command = next((line for line in after if line.startswith("python3 ")), None)
    assert command is not None, f"no python3 command after {marker}"
    assert after.index(command) <= 2, f"the command after {marker} is not right below it (in its code block)"
    if marker == "<!-- test-command -->":
        assert command.endswith('-e ".[test]" && .venv/bin/python -m pytest -q'), command
    else:
        assert "PATHSEQSAM_LABEL_TESTS=required" in command and command.endswith("pytest -q tests/label"), (
            command
        )


def _relative_links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # not inside code
    return [
        link.split("#", 1)[0]
        for link in LINK.findall(text)
        if not re.match(r"[a-z]+:", link) and not link.startswith("#")
    ]


@pytest.mark.parametrize(
    "doc",
    [*READMES, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_resolve(doc):
    links = _relative_links(doc)
    broken = [link for link in links if not (doc.parent / link).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_readmes_stay_short():
    # the budgets: a model card of about 200 lines, a Zoo README of about 300
    budgets = {READMES[0]: 220, READMES[1]: 320}
    for doc, budget in budgets.items():
        n = len(doc.read_text(encoding="utf-8").splitlines())
        assert n <= budget, f"{doc.relative_to(ROOT)} has {n} lines (budget {budget}): move detail to docs/"


def test_readme_recipes_link_their_details():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/own_data.md", "docs/whole_slides.md", "docs/monai_label.md", "bundle/docs/README.md"):
        assert f"]({page})" in text, f"README does not link {page}"
