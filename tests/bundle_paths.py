"""Where the tests find the bundle's configs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
