"""Parameter checks shared by the synthetic cohorts (one clear :class:`ConfigError` each)."""

import re

import numpy as np

from neuroml._utils.options import check_in_range
from neuroml.errors import ConfigError


def _label(name):
    """``name`` with everything but letters and digits removed (a BIDS label)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(name))


def _as_int(name, value, low, high=None):
    """``value`` as an int in [low, high]; booleans and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"The {name!r} parameter must be an integer. Got {value!r} instead.")
    return int(check_in_range(name, int(value), low, high))


def _check_classes(classes):
    """The class names as a tuple: at least 2, distinct labels, the healthy class first."""
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
        raise ConfigError(
            f"The 'classes' parameter must be a tuple of class names. Got {classes!r} instead."
        )
    classes = tuple(classes)
    if len(classes) < 2:
        raise ConfigError(
            f"The 'classes' parameter needs at least 2 classes (healthy first). Got {classes!r}."
        )
    labels = []
    for c in classes:
        if not isinstance(c, str) or not _label(c):
            raise ConfigError(
                f"The 'classes' parameter must hold non-empty names with letters or digits. Got {c!r}."
            )
        labels.append(_label(c).lower())
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"The 'classes' parameter has duplicate names (ignoring case and punctuation): {classes!r}."
        )
    return classes
