"""Every random stream of a training run as one checkpointable object.

A run resumed from ``checkpoint_epoch=N.pt`` repeats the uninterrupted run only if it draws the same
random numbers: torch's generator (data order of the shuffling sampler, dropout, the
DataLoader's base seed), numpy's and Python's global generators, and the private
``RandomState`` of each MONAI randomizable transform (windows, flips, stain jitter; with
``num_workers=0`` they run in the training process and carry their stream across epochs).
:class:`RandomStates` saves and restores all of them through ``state_dict`` / ``load_state_dict``,
so it sits in the bundle's ``checkpoint_dict`` beside the model, optimizer and scheduler. The state
holds only tensors and numbers, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

__all__ = ["RandomStates"]


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_tuple(state: dict[str, Any]) -> tuple:
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    return state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])


def _randomizables(transform: Any) -> Iterator[Randomizable]:
    """Randomizable transforms inside ``transform`` (a Compose, a list, or one transform), in order."""
    if isinstance(transform, Compose):
        for t in transform.transforms:
            yield from _randomizables(t)
    elif isinstance(transform, (list, tuple)):
        for t in transform:
            yield from _randomizables(t)
    elif isinstance(transform, Randomizable):
        yield transform


class RandomStates:
    """Checkpointable random state of a run: torch (CPU and CUDA), numpy, Python, MONAI transforms.

    Args:
        transforms: the training preprocessing (a ``Compose``), whose randomizable transforms' own
            generators are saved in order; None for the global generators only.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def _transforms(self) -> list[Randomizable]:
        return list(_randomizables(self.transforms)) if self.transforms is not None else []

    def state_dict(self) -> dict[str, Any]:
        """The current state of every stream (tensors and numbers only)."""
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),  # noqa: NPY002 (the legacy global stream is the state)
            "python": {
                "version": int(version),
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
            "transforms": [_numpy_state(t.R.get_state()) for t in self._transforms()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every stream.

        Args:
            state: from :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint's transforms differ in number from this run's (another
                preprocessing chain), naming both counts.
        """
        transforms = self._transforms()
        if len(state["transforms"]) != len(transforms):
            raise ValueError(
                f"checkpoint holds random states of {len(state['transforms'])} randomizable transforms, "
                f"this run's preprocessing has {len(transforms)}: resume with the configuration that saved it"
            )
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        np.random.set_state(_numpy_tuple(state["numpy"]))  # noqa: NPY002
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
        for t, s in zip(transforms, state["transforms"]):
            rs = np.random.RandomState()
            rs.set_state(_numpy_tuple(s))
            t.set_random_state(state=rs)
