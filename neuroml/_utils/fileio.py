"""Atomic file writes and checksums.

Every output neuroml writes goes through these helpers: the content is written to
a temporary file in the destination folder, flushed, then renamed over the final
name, so a crash never leaves a half-written file under a final name.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_path",
    "remove_stale_temporaries",
    "write_text_atomic",
    "write_json_atomic",
    "save_nifti_atomic",
    "save_npy_atomic",
    "sha256_file",
    "read_json",
]


def _owner():
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}"


# temporary names are ".<final name>.<host>-<pid>.<random>.tmp<suffix>": a temporary whose
# writer is dead (same host, process gone) is left over from a crash and can be deleted
_OWNER = _owner()
_TMP_RE = re.compile(r"\.(?P<host>[A-Za-z0-9]+)-(?P<pid>[0-9]+)\.[^.]+\.tmp")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(folder, name=None):
    """Delete temporary files that a killed writer left in ``folder`` (optionally only those of ``name``).

    Only temporaries of this host whose process is gone are deleted, so a concurrent writer
    (another SLURM task writing to the same folder) is never disturbed.

    Returns
    -------
    int
        The number of files deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host = _OWNER.rsplit("-", 1)[0]
    pattern = f".{glob.escape(name)}.*.tmp*" if name else ".*.tmp*"
    n = 0
    for tmp in folder.glob(pattern):
        match = None
        for match in _TMP_RE.finditer(tmp.name):
            pass
        if match is None or match.group("host") != host or _pid_alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            n += 1
    return n


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
def atomic_path(path, suffix=None):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_OWNER}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text):
    """Write ``text`` (str) to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path):
    """Read a JSON file, raising :class:`~neuroml.errors.InputError` naming it when broken."""
    from neuroml.errors import InputError

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None


def save_nifti_atomic(img, path):
    """Save a nibabel image to ``path`` atomically; the format follows the suffix."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_npy_atomic(array, path):
    """Save a numpy array as ``.npy`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def sha256_file(path, chunk_size=1 << 20):
    """Return the hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
