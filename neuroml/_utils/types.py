"""Type aliases shared by the annotated public API."""

from __future__ import annotations

import os
from typing import TypeAlias

__all__ = ["PathLike"]

#: A file or folder path as the public functions accept it: a string or a path object.
PathLike: TypeAlias = str | os.PathLike[str]
