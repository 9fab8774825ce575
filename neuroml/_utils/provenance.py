"""Provenance: package versions and seeds recorded with every output."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np

__all__ = ["package_versions", "seed_everything"]

_PACKAGES = (
    "neuroml",
    "numpy",
    "scipy",
    "nibabel",
    "nilearn",
    "torch",
    "monai",
    "scikit-learn",
    "SimpleITK",
    "captum",
    "pandas",
)


def package_versions() -> dict[str, str | None]:
    """Return a dict of the versions of Python and of the packages neuroml relies on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def seed_everything(seed: int) -> int:
    """Seed Python's, numpy's and torch's global generators; return the seed."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return seed
