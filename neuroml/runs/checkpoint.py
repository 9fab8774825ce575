"""Checkpoints of plain tensors and plain Python types, written atomically, loaded safely.

A checkpoint is read only with ``torch.load(path, weights_only=True)``: a file holding
pickled Python objects (which could run code when unpickled) is refused.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroml._utils.fileio import atomic_path, plain_value
from neuroml.errors import InputError

__all__ = ["save_checkpoint", "load_checkpoint", "plain"]


def plain(obj: object) -> Any:
    """Convert numpy scalars/arrays, paths and tuples inside ``obj`` to plain Python types."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, Path)):
        return plain_value(obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise TypeError(f"checkpoint values must be tensors or plain types, got {type(obj).__name__}")


def save_checkpoint(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it onto ``path``."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    require: Sequence[str] = (),
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Parameters
    ----------
    path : str or Path
    map_location : str or torch.device, default="cpu"
    require : sequence of str
        Keys the checkpoint dict must have (e.g. ``("state_dict", "meta")``).

    Raises
    ------
    InputError
        If the file is missing, unreadable, holds pickled Python objects (refused for
        safety), or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about legacy (non-zip) files: the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights only" not in str(exc).lower():  # garbage, not a pickle of Python objects
            raise InputError(
                f"not a readable torch checkpoint (UnpicklingError: {first[:200]})", path
            ) from None
        raise InputError(
            "refusing to load: the checkpoint holds pickled Python objects, not only tensors and plain "
            f"types (loaded with weights_only=True for safety; {first[:200]}). Only load checkpoints "
            "written by neuroml from sources you trust",
            path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes raise KeyError, RuntimeError, EOFError...
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(
            f"not a readable torch checkpoint ({type(exc).__name__}: {first[:200]})", path
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a dict checkpoint, got {type(obj).__name__}", path)
    missing = [k for k in require if k not in obj]
    if missing:
        raise InputError(f"checkpoint lacks {missing} (keys: {sorted(obj)[:10]})", path)
    return obj
