"""The variants a comparison can run: PathSeqSAM, its baselines and its ablations, as bundle overlays.

A variant is ``train.json`` plus zero or more overlay files. Baselines live in
``bundle/configs/baselines/*.json``, ablations in ``bundle/configs/ablations/*.json``; a variant's
name is its file's stem and its description the file's ``_comment``. Adding a JSON file there adds a
variant. ``pathseqsam`` itself is ``train.json`` alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_VARIANTS",
    "REFERENCE_VARIANT",
    "Variant",
    "discover_variants",
    "select_variants",
]

REFERENCE_VARIANT = "pathseqsam"
# the paper's Table 1 rows (and SAM2 with its stock memory): the default comparison
DEFAULT_VARIANTS = (REFERENCE_VARIANT, "sam2_memory", "sam2_per_slice", "dynunet", "swinunetr")
GROUPS = ("baselines", "ablations")


@dataclass(frozen=True)
class Variant:
    """One model to train and evaluate.

    Attributes:
        name: identifier (overlay file stem; ``pathseqsam`` for the bundle as it is).
        group: ``"method"``, ``"baselines"`` or ``"ablations"``.
        description: what it is (the overlay's ``_comment``).
        overlays: overlay config files applied after ``train.json``, in order.
    """

    name: str
    group: str
    description: str
    overlays: tuple[Path, ...] = field(default_factory=tuple)


def _read_comment(path: Path) -> str:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a config overlay must be a JSON object")
    comment = content.get("_comment")
    if not isinstance(comment, str) or not comment.strip():
        raise ValueError(f"{path}: overlay has no '_comment' describing the variant")
    return comment.strip()


def discover_variants(configs_dir: str | Path) -> dict[str, Variant]:
    """All variants of a bundle's ``configs`` folder, reference first, then baselines, then ablations.

    Args:
        configs_dir: the bundle's ``configs`` folder (holding ``train.json``).

    Returns:
        ``{name: Variant}`` in that order (file names sorted within a group).

    Raises:
        FileNotFoundError: no ``train.json`` in ``configs_dir``.
        ValueError: an overlay is not a JSON object with a ``_comment``, or two overlays share a name.
    """
    configs_dir = Path(configs_dir)
    if not (configs_dir / "train.json").is_file():
        raise FileNotFoundError(f"{configs_dir / 'train.json'} not found: pass the bundle's configs folder")
    variants = {
        REFERENCE_VARIANT: Variant(
            REFERENCE_VARIANT,
            "method",
            "PathSeqSAM as configured in train.json: from the pretrained SAM2 checkpoint (the bundle's CPU-pretrained "
            "tiny SAM2 by default), image encoder frozen with rank-8 LoRA, top-K memory (Eq. 2), distance-aware "
            "attention (Eq. 1), loss Dice + 0.5 BCE + 0.2 consistency + object-score and IoU terms.",
        )
    }
    for group in GROUPS:
        for path in sorted((configs_dir / group).glob("*.json")):
            if path.stem in variants:
                raise ValueError(
                    f"{path}: variant name {path.stem!r} is already taken by {variants[path.stem]}"
                )
            variants[path.stem] = Variant(path.stem, group, _read_comment(path), (path,))
    return variants


def select_variants(available: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    """Resolve requested names (``all``, ``baselines``, ``ablations`` expand) into variants, in request order.

    Args:
        available: from :func:`discover_variants`.
        names: requested names; None or empty means :data:`DEFAULT_VARIANTS`.

    Returns:
        The variants, each once.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    requested = list(names) if names else list(DEFAULT_VARIANTS)
    chosen: list[str] = []
    for name in requested:
        if name == "all":
            expanded = list(available)
        elif name in GROUPS:
            expanded = [v.name for v in available.values() if v.group == name]
        elif name in available:
            expanded = [name]
        else:
            raise ValueError(
                f"unknown variant {name!r}; known: {', '.join(available)} (or all, baselines, ablations)"
            )
        chosen += [n for n in expanded if n not in chosen]
    return [available[n] for n in chosen]
