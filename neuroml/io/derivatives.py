"""The derivatives folder's resumable-output protocol, shared by every modality.

One scan's derivatives are a set of outputs and a JSON sidecar. The sidecar records the
pipeline version and parameters (:func:`params_key`), the input's SHA-256, and the size and
SHA-256 of every output (:func:`output_records`). Outputs are written atomically; the sidecar
is deleted before the first one is replaced (:func:`discard_sidecar`) and written last
(:func:`write_sidecar_last`), so its presence marks a finished scan and a killed run leaves
either a complete scan or one that is redone. A scan is complete (:func:`sidecar_is_current`)
when its sidecar records the same parameters and input, and each output is the file it
records. Step timers (:class:`StepTimer`) and thread limits (:func:`itk_threads`) serve the
pipelines that write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from neuroml._utils.fileio import (
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
)
from neuroml._utils.types import PathLike
from neuroml.errors import InputError

__all__ = [
    "StepTimer",
    "discard_failed_attempt",
    "discard_sidecar",
    "itk_threads",
    "output_records",
    "outputs_intact",
    "params_key",
    "read_sidecar",
    "relative_path",
    "relative_source",
    "remove_stale_temporaries_beside",
    "sidecar_is_current",
    "write_sidecar_last",
]


@contextlib.contextmanager
def itk_threads(n_threads: int | None) -> Iterator[None]:
    """Set SimpleITK's default number of threads inside a ``with`` block (None: unchanged)."""
    if n_threads is None:
        yield
        return
    import SimpleITK as sitk

    old = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(int(n_threads))
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(old)


class StepTimer:
    """Wall-clock and CPU seconds of named steps (``with timer("n4"): ...``)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = round(self.wall.get(name, 0.0) + time.perf_counter() - w, 3)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c, 3)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu)}


def params_key(version: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar's ``Parameters``: pipeline version and parameters as they read back from JSON.

    Examples
    --------
    >>> params_key("1", {"resolution": 2, "init": ("moments",)})
    {'pipeline_version': '1', 'resolution': 2, 'init': ['moments']}
    """
    return json.loads(json.dumps({"pipeline_version": version, **params}))


def relative_path(path: PathLike, root: PathLike) -> str | None:
    """``path`` relative to ``root`` as POSIX text, or None when it is not inside ``root``.

    The folder is resolved, not the file: a symlinked scan (git-annex) keeps its BIDS name.
    """
    path = Path(path)
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        return (path.parent.resolve() / path.name).relative_to(Path(root).resolve()).as_posix()
    return None


def relative_source(path: PathLike, bids_dir: PathLike | None) -> str:
    """The sidecar's ``SourceFile``: ``path`` relative to ``bids_dir``, else its file name."""
    rel = None if bids_dir is None else relative_path(path, bids_dir)
    return Path(path).name if rel is None else rel


def remove_stale_temporaries_beside(paths: Iterable[PathLike]) -> None:
    """Delete temporary files a killed run left beside these outputs (see ``atomic_path``): only
    those of dead writers of this host, so a concurrent task redoing the same scan keeps its own."""
    for path in paths:
        remove_stale_temporaries(Path(path).parent, Path(path).name)


def output_records(sidecar: PathLike, paths: Mapping[str, PathLike]) -> dict[str, dict[str, Any]]:
    """``{kind: {"File", "Size", "SHA256"}}`` of written outputs, for the sidecar ``sidecar``.

    ``File`` is relative to the sidecar's folder (the figure lives in another one).
    """
    out = {}
    for kind, path in paths.items():
        path = Path(path)
        out[kind] = {
            "File": Path(os.path.relpath(path, Path(sidecar).parent)).as_posix(),
            "Size": path.stat().st_size,
            "SHA256": sha256_file(path),
        }
    return out


def outputs_intact(sidecar: PathLike, side: Mapping[str, Any], paths: Iterable[PathLike]) -> bool:
    """True when each of ``paths`` is the file the sidecar recorded (same size and SHA-256).

    Parameters
    ----------
    sidecar : Path
        The sidecar's path (``OutputFiles`` names files relative to its folder).
    side : dict
        Its contents.
    paths : list of Path
        The outputs to check.
    """
    records = side.get("OutputFiles")
    if not isinstance(records, dict):
        return False
    by_file = {}
    for rec in records.values():
        if isinstance(rec, dict) and isinstance(rec.get("File"), str):
            by_file[os.path.normpath(Path(sidecar).parent / rec["File"])] = rec
    for path in paths:
        rec = by_file.get(os.path.normpath(path))
        try:
            if (
                rec is None
                or Path(path).stat().st_size != rec.get("Size")
                or sha256_file(path) != rec.get("SHA256")
            ):
                return False
        except OSError:
            return False
    return True


def read_sidecar(path: PathLike) -> dict[str, Any] | None:
    """The contents of the sidecar ``path`` as a dict; None when it is missing, not valid JSON or
    not a JSON object."""
    if not Path(path).is_file():
        return None
    try:
        side = read_json(path)
    except InputError:
        return None
    return side if isinstance(side, dict) else None


def sidecar_is_current(
    sidecar: PathLike,
    outputs: Iterable[PathLike] | Callable[[dict[str, Any]], Iterable[PathLike]],
    params_key: Mapping[str, Any],
    source: PathLike,
    source_sha256: str | None = None,
    check: Callable[[dict[str, Any]], bool] | None = None,
) -> bool:
    """True when a scan's sidecar matches its input and parameters and its outputs are intact.

    The cheap tests come first and the input's checksum last: the sidecar exists and is a JSON
    object, records ``params_key`` as ``Parameters``, each output exists, ``check`` passes, the
    sidecar records the input's SHA-256, and each output has the size and SHA-256 it records
    (:func:`outputs_intact`: a truncated or replaced file makes the scan incomplete).

    Parameters
    ----------
    sidecar : Path
    outputs : list of Path or callable
        The outputs other than the sidecar, or a function of the sidecar's contents that gives
        them (for outputs that only some scans have).
    params_key : dict
        See :func:`params_key`.
    source : Path
        The input.
    source_sha256 : str, optional
        Its SHA-256, if already known.
    check : callable, optional
        ``check(side) -> bool``, a further test of the sidecar's contents.
    """
    side = read_sidecar(sidecar)
    if side is None or side.get("Parameters") != params_key:
        return False
    outputs = list(outputs(side) if callable(outputs) else outputs)
    if not all(Path(p).is_file() for p in outputs):
        return False
    if check is not None and not check(side):
        return False
    if side.get("SourceSHA256") != (source_sha256 or sha256_file(source)):
        return False
    return outputs_intact(sidecar, side, outputs)


def _previous_version_intact(sidecar, source):
    """True when ``sidecar`` and every file it records are intact and it was made from ``source``
    as it is now (same SHA-256), whatever the parameters: a version to keep when a new attempt
    fails."""
    try:
        side = read_json(sidecar)
        records = side.get("OutputFiles")
        if not isinstance(records, dict) or side.get("SourceSHA256") != sha256_file(source):
            return False
        files = [Path(sidecar).parent / str(rec["File"]) for rec in records.values()]
        return outputs_intact(sidecar, side, files)
    except (InputError, OSError, AttributeError, KeyError, TypeError):
        return False


def discard_failed_attempt(paths: Mapping[str, PathLike], source: PathLike) -> None:
    """Delete the outputs ``paths`` (``{kind: path}``, with ``sidecar``) of a scan whose attempt
    failed, unless they are a whole previous version made from ``source`` as it is now.

    A previous version is whole when its sidecar and every file it records are intact (size and
    SHA-256); made from the same input (with other parameters, say), it stays as it was.
    Outputs of another input are deleted: they would not match the scan any more. The failed
    attempt's own temporaries are gone already (``atomic_path`` removes them).
    """
    if _previous_version_intact(paths["sidecar"], source):
        return
    for path in paths.values():
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


def discard_sidecar(sidecar: PathLike) -> None:
    """Delete a scan's sidecar before its outputs are replaced.

    Up to this call a previous version stays whole (a failure before it keeps it); from here on
    the files are replaced one by one, so the scan is incomplete until
    :func:`write_sidecar_last` writes the new sidecar.
    """
    with contextlib.suppress(FileNotFoundError):
        Path(sidecar).unlink()


def write_sidecar_last(
    sidecar: PathLike, contents: Mapping[str, Any], outputs: Mapping[str, PathLike]
) -> dict[str, Any]:
    """Write a scan's sidecar atomically, once its outputs are written: its presence marks a
    finished scan.

    Parameters
    ----------
    sidecar : Path
    contents : dict
        The sidecar's fields; ``OutputFiles`` (:func:`output_records` of ``outputs``) is added
        last.
    outputs : dict
        ``{kind: path}`` of the outputs written.

    Returns
    -------
    dict
        The contents written.
    """
    contents = {**contents, "OutputFiles": output_records(sidecar, outputs)}
    write_json_atomic(sidecar, contents)
    return contents
