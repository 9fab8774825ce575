"""Choosing the torch device."""

from __future__ import annotations

import torch

from neuroml.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; check that a requested CUDA device exists."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"The 'device' parameter must be 'auto', 'cpu' or 'cuda[:N]'. Got {device!r} instead."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} was requested but torch sees no CUDA device; use --device cpu "
            'or --device auto (device="cpu" or "auto" in Python)'
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"The 'device' parameter must be 'auto', 'cpu' or 'cuda[:N]'. Got {device!r} instead."
        )
    return dev
