"""Where the tests find the bundle's configs, and the bundle folders they make."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
PRETRAINED = ROOT / "bundle" / "pretrained"


def with_pretrained(root: Path) -> Path:
    """Make ``root`` (a test's ``bundle_root``) hold the bundle's ``pretrained/`` folder, as a real bundle
    folder does: ``train.json``'s default ``sam2_checkpoint`` is ``<bundle_root>/pretrained/...``.

    Args:
        root: the folder (created if missing).

    Returns:
        ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    link = root / "pretrained"
    if not link.exists():
        link.symlink_to(PRETRAINED, target_is_directory=True)
    return root
