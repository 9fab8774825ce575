"""Atomic file writes and checksums.

Every output neuroml writes goes through these helpers: the content is written to
a temporary file in the destination folder, flushed, then renamed over the final
name, so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroml._utils.types import PathLike

if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "atomic_path",
    "atomic_folder",
    "remove_stale_temporaries",
    "write_text_atomic",
    "write_json_atomic",
    "save_nifti_atomic",
    "save_npy_atomic",
    "sha256_file",
    "read_json",
    "advisory_lock",
]


def _owner():
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}"


# temporary names are ".<final name>.<host>-<pid>.<random>.tmp<suffix>": a temporary whose
# writer is dead (same host, process gone) is left over from a crash and can be deleted
_OWNER = _owner()
_TMP_RE = re.compile(r"\.(?P<host>[A-Za-z0-9]+)-(?P<pid>[0-9]+)\.[^.]+\.(?:tmp|partial)")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(
    folder: PathLike, name: str | None = None, recursive: bool = False
) -> int:
    """Delete temporary files that a killed writer left in ``folder`` (optionally only those of
    ``name``; with ``recursive``, also in every folder below it).

    Only temporaries of this host whose process is gone are deleted, so a concurrent writer
    (another SLURM task writing to the same folder) is never disturbed.

    Returns
    -------
    int
        The number of files deleted.
    """
    n = 0
    pattern = f".{glob.escape(name)}.*.tmp*" if name else ".*.tmp*"
    for tmp in stale_temporaries(folder, f"**/{pattern}" if recursive else pattern):
        with contextlib.suppress(OSError):
            tmp.unlink()
            n += 1
    return n


def stale_temporaries(folder, pattern):
    """Paths in ``folder`` matching ``pattern`` that are temporaries (``.<name>.<host>-<pid>.<random>.tmp``
    or ``.partial``) of a writer of this host whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    host = _OWNER.rsplit("-", 1)[0]
    for tmp in folder.glob(pattern):
        match = None
        for match in _TMP_RE.finditer(tmp.name):  # noqa: B007 (keep the last match)
            pass
        if (
            match is not None
            and match.group("host") == host
            and not _pid_alive(int(match.group("pid")))
        ):
            yield tmp


def _umask():
    """The process umask (read from /proc on Linux, where setting it to read it would race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder):
    """Make a rename durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path : str or Path
        Final destination.
    suffix : str, optional
        Suffix of the temporary file (some writers choose the format from it,
        e.g. ``.nii.gz``). Defaults to the suffixes of ``path``.
    """
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{_OWNER}.", suffix=".tmp" + suffix, dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        _raise_output_error(exc, path)
        raise
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_output_error(exc, path)
        elif isinstance(exc, Exception) and _disk_full(path.parent):
            # writers in C++ (torch.save) report a full disk as a RuntimeError
            _raise_output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
        raise


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; rename it onto ``path`` on success.

    ``path`` must not exist or be an empty folder. On success the folder gets the mode of the
    empty folder it replaces, else that of a new folder under the umask; on failure it is
    deleted, so nothing is left under ``path``. Temporary folders of killed writers of ``path``
    are deleted first.

    Parameters
    ----------
    path : str or Path
        Final folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path.parent, f".{glob.escape(path.name)}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{_OWNER}.", suffix=".partial", dir=path.parent)
    )
    try:
        yield work
        # mkdtemp makes the folder 0700
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o777 & ~_umask()
        os.chmod(work, mode)
        if path.exists():
            path.rmdir()  # fails if something appeared in it meanwhile
        os.rename(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _disk_full(folder):
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail == 0 and os.geteuid() != 0 or st.f_bfree == 0


#: errno values that mean "the output cannot be written here", whatever the file.
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is too large for this file system",
}


def _raise_output_error(exc, path):
    """Re-raise an OSError that means "cannot write here" as a one-line OutputError naming ``path``."""
    from neuroml.errors import NeuromlError, OutputError

    if isinstance(exc, NeuromlError):
        return
    code = exc.errno
    if code is None:  # some writers wrap the OSError they got (e.g. torch's RuntimeError chains)
        return
    if code not in _OUTPUT_ERRNOS:
        return
    raise OutputError(
        f"cannot write: {_OUTPUT_ERRNOS[code]} ({exc.strerror or exc}); nothing was left under this name. "
        "Free space or fix the folder's permissions (or choose another output folder), then rerun the "
        "same command: finished work is kept",
        path,
        errno=code,
    ) from None


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (str) to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def plain_value(obj):
    """A numpy scalar or array, or a path, as a plain Python value (the JSON ``default=`` hook)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(
        path, json.dumps(obj, indent=2, sort_keys=False, default=plain_value) + "\n"
    )


def read_json(path: PathLike) -> Any:
    """Read a JSON file, raising :class:`~neuroml.errors.InputError` naming it when broken."""
    from neuroml.errors import InputError

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None


def save_nifti_atomic(img: nib.Nifti1Image, path: PathLike) -> Path:
    """Save a nibabel image to ``path`` atomically; the format follows the suffix."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_npy_atomic(array: np.ndarray, path: PathLike) -> Path:
    """Save a numpy array as ``.npy`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def advisory_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` while the block runs.

    Writers that share a file (``meta.json`` of the tensor cache, ``failures.tsv`` of a batch)
    take turns through it. Without a lock the block still runs: where ``fcntl`` is missing
    (Windows), where the lock file cannot be created (a read-only folder: the writes that follow
    fail with their own clear error) and where the file system has no locks (``ENOLCK``, e.g.
    NFS without lockd).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError:
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            logging.getLogger("neuroml").debug("no lock on %s (%s); going on without it", path, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
