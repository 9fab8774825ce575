"""Checking option strings against their allowed values, with a "did you mean" hint."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from neuroml.errors import ConfigError

__all__ = ["look_up_option", "closest", "check_in_range"]

_T = TypeVar("_T")


def look_up_option(name: str, value: Any, allowed: Iterable[_T]) -> _T:
    """Return ``value`` if it is one of ``allowed``; raise a helpful :class:`ConfigError` otherwise.

    Parameters
    ----------
    name : str
        Name of the parameter, used in the message.
    value : str
        The value given.
    allowed : iterable of str
        Allowed values.

    Examples
    --------
    >>> look_up_option("method", "gradcam", ["gradcam", "saliency"])
    'gradcam'
    """
    allowed = list(allowed)
    if value in allowed:
        return value
    if isinstance(value, str):
        lowered = {a.lower(): a for a in allowed if isinstance(a, str)}
        if value.lower() in lowered:
            return lowered[value.lower()]
    close = closest(value, allowed)
    hint = f" Did you mean {close!r}?" if close is not None else ""
    raise ConfigError(
        f"The {name!r} parameter must be one of {allowed}. Got {value!r} instead.{hint}"
    )


def closest(value: Any, allowed: Iterable[_T]) -> _T | None:
    """The allowed value closest to ``value`` (case ignored), for a "did you mean" hint; or None.

    Examples
    --------
    >>> closest("AAL3", ["aal", "harvard_oxford"]), closest("zzz", ["aal"])
    ('aal', None)
    """
    names = {str(a).lower(): a for a in allowed}
    close = difflib.get_close_matches(str(value).lower(), list(names), n=1)
    return names[close[0]] if close else None


def check_in_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    kind: type[Any] | tuple[type[Any], ...] = (int, float),
) -> Any:
    """Check that a number lies in ``[low, high]``; raise :class:`ConfigError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"The {name!r} parameter must be a number. Got {value!r} instead.")
    if not math.isfinite(value):
        raise ConfigError(f"The {name!r} parameter must be a finite number. Got {value!r} instead.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(
            f"The {name!r} parameter must be in [{low}, {high}]. Got {value!r} instead."
        )
    return value
