"""The derivatives folder's resumable-output protocol, shared by every modality: output
records in the sidecar, intactness checks, step timers and thread limits."""

import contextlib
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from neuroml._utils.fileio import sha256_file

__all__ = ["StepTimer", "itk_threads", "output_records", "outputs_intact"]


@contextlib.contextmanager
def itk_threads(n_threads):
    """Set SimpleITK's default number of threads inside a ``with`` block (None: unchanged)."""
    if n_threads is None:
        yield
        return
    old = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(int(n_threads))
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(old)


class StepTimer:
    """Wall-clock and CPU seconds of named steps (``with timer("n4"): ...``)."""

    def __init__(self):
        self.wall = {}
        self.cpu = {}

    @contextlib.contextmanager
    def __call__(self, name):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = round(self.wall.get(name, 0.0) + time.perf_counter() - w, 3)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c, 3)

    def as_dict(self):
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu)}


def output_records(sidecar, paths):
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


def _readable_image(path):
    try:
        np.asarray(nib.load(str(path)).dataobj)
        return True
    except Exception:  # noqa: BLE001 - truncated gzip (EOFError, zlib.error), bad header...: not readable
        return False


def outputs_intact(sidecar, side, paths):
    """True when each of ``paths`` is the file the sidecar recorded (same size and SHA-256).

    A sidecar written before the records existed (no ``OutputFiles``) is trusted when each
    NIfTI output can be read in full (header and voxels): a truncated file fails.
    """
    records = side.get("OutputFiles")
    if records is None:
        return all(
            Path(p).is_file() and (not str(p).endswith((".nii", ".nii.gz")) or _readable_image(p))
            for p in paths
        )
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
