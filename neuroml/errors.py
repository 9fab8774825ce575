"""Typed exceptions raised by neuroml.

Every error a user can trigger with bad input derives from :class:`NeuromlError`,
so the command line can print a one-line message instead of a traceback.
"""

from __future__ import annotations

import os

__all__ = ["NeuromlError", "InputError", "OutputError", "ConfigError", "LeakageError"]


class NeuromlError(Exception):
    """Base class of all errors neuroml raises on purpose."""


class InputError(NeuromlError, ValueError):
    """An input file or array is unreadable or not what the step expects.

    The message names the file (when there is one) and the problem.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class OutputError(NeuromlError, OSError):
    """An output cannot be written: disk full, quota exceeded, read-only folder, no permission.

    Raised by the atomic writers (nothing is left under the final name); the message names
    the file and what to do. ``errno`` is the operating system's error number.
    """

    def __init__(
        self, message: str, path: str | os.PathLike[str] | None = None, errno: int | None = None
    ) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
        self.errno = errno

    def __str__(self) -> str:
        return self.args[0]


class ConfigError(NeuromlError, ValueError):
    """A parameter or configuration value is invalid."""


class LeakageError(NeuromlError):
    """A step was asked to report on subjects the model was trained on."""
