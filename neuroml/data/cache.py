"""A float16 tensor cache of the preprocessed T1w volumes, memory-mapped for training.

Layout, inside the derivatives folder (``docs/layout.md``)::

    DERIV/cache/res-<r>_T1w.npy    float16, shape (N, X, Y, Z), every volume on one grid
    DERIV/cache/res-<r>_T1w.tsv    row, participant_id, session, run, path, sha256
    DERIV/cache/meta.json          {"entries": {"res-<r>": {affine, shape, resolution, ...}}}

The cache is rebuilt only when the index (paths and SHA-256 of the NIfTI files) changed;
rows whose file is unchanged are copied from the previous cache instead of re-read.
Every file is written atomically, the index before the array and ``meta.json`` last:
``meta.json`` records a digest of the index, so a cache interrupted half-way is detected
and rebuilt rather than trusted. Concurrent builders (other resolutions or inputs, or the
same cache) take turns through advisory locks, ``cache/.<stem>.lock`` and ``cache/.meta.lock``.
float16 keeps intensity-normalised volumes to within 5e-4 relative error at half the
size of float32.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd

from neuroml._utils.fileio import (
    advisory_lock,
    atomic_path,
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from neuroml._utils.types import PathLike
from neuroml.errors import ConfigError, InputError
from neuroml.io.bids import parse_entities
from neuroml.io.image import check_img
from neuroml.io.templates import TEMPLATE_SPACE, res_entity

__all__ = ["TensorCache", "build_cache", "find_preprocessed", "resolution_key", "CACHE_DIR"]

log = logging.getLogger("neuroml")

#: Folder of the cache inside the derivatives folder.
CACHE_DIR = "cache"
_INDEX_COLUMNS = ["row", "participant_id", "session", "run", "path", "sha256"]
_F16_MAX = float(np.finfo(np.float16).max)
_AFFINE_ATOL = 1e-4


@overload
def resolution_key(resolution: None) -> None: ...
@overload
def resolution_key(resolution: float | str) -> str: ...
def resolution_key(resolution: float | str | None) -> str | None:
    """BIDS ``res-`` value of a resolution given as a number (2.0) or an entity ("2", "1p5").

    Examples
    --------
    >>> resolution_key(2.0), resolution_key("1.5"), resolution_key("1p5")
    ('2', '1p5', '1p5')
    """
    if resolution is None:
        return None
    if isinstance(resolution, str):
        text = resolution.strip()
        if re.fullmatch(r"[0-9]+p[0-9]+", text):
            return text
        try:
            resolution = float(text)
        except ValueError:
            raise ConfigError(
                f"The 'resolution' parameter must be a voxel size in mm such as 2 or 1.5. "
                f"Got {resolution!r} instead."
            ) from None
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, float))
        or not resolution > 0
    ):
        raise ConfigError(
            f"The 'resolution' parameter must be a positive voxel size in mm. Got {resolution!r} instead."
        )
    return res_entity(resolution)


def _res_mm(key):
    return float(key.replace("p", "."))


def _pattern(input):
    """(datatype folder, file pattern) of an input: the T1w, or a BOLD map's desc label."""
    if input in (None, "T1w"):
        return "anat", "*_desc-preproc_T1w.nii.gz"
    if not re.fullmatch(r"[A-Za-z0-9]+", str(input)):
        raise ConfigError(
            f"The 'inputs' parameter takes 'T1w' or desc labels of BOLD maps such as 'alff', "
            f"'falff', 'reho', 'connpcc'. Got {input!r} instead."
        )
    return "func", f"*_desc-{input}_boldmap.nii.gz"


def find_preprocessed(
    deriv_dir: PathLike, resolution: float | str | None = None, input: str = "T1w"
) -> pd.DataFrame:
    """List the preprocessed T1w volumes (or BOLD maps) of a derivatives folder.

    Parameters
    ----------
    deriv_dir : str or Path
        Output folder of ``neuroml preprocess``.
    resolution : float or str, optional
        Voxel size (2.0) or ``res-`` value ("2"). By default the only one present.
    input : str, default="T1w"
        ``"T1w"``, or the desc label of a BOLD map (``alff``, ``falff``, ``reho``, ``mean``,
        ``conn<name>``) written by ``neuroml preprocess --modality func``.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id, session, run, path`` (path relative to ``deriv_dir``,
        POSIX), ``resolution`` (the ``res-`` value); sorted by participant, session, run.

    Raises
    ------
    InputError
        If the folder holds no preprocessed image (at that resolution).
    ConfigError
        If several resolutions are present and ``resolution`` is not given.
    """
    deriv_dir = Path(deriv_dir)
    if not deriv_dir.is_dir():
        raise InputError("derivatives folder not found", deriv_dir)
    folder, pattern = _pattern(input)
    found = sorted(
        set(deriv_dir.glob(f"sub-*/{folder}/{pattern}"))
        | set(deriv_dir.glob(f"sub-*/ses-*/{folder}/{pattern}"))
    )
    records = []
    for path in found:
        ent, _, _ = parse_entities(path.name)
        rel = path.relative_to(deriv_dir)
        if (
            ent.get("space") != TEMPLATE_SPACE
            or "res" not in ent
            or f"sub-{ent.get('sub')}" != rel.parts[0]
        ):
            continue
        records.append(
            {
                "participant_id": f"sub-{ent['sub']}",
                "session": ent.get("ses"),
                "run": ent.get("run"),
                "path": rel.as_posix(),
                "resolution": ent["res"],
            }
        )
    if not records:
        what = "--modality func" if folder == "func" else ""
        raise InputError(
            f"no preprocessed images (sub-*/[ses-*/]{folder}/"
            f"{pattern.replace('*_', f'*_space-{TEMPLATE_SPACE}_res-*_')}) "
            f"found; run `neuroml preprocess BIDS DERIV participant{' ' + what if what else ''}` first",
            deriv_dir,
        )
    df = pd.DataFrame.from_records(records)
    present = sorted(df["resolution"].unique(), key=_res_mm)
    key = resolution_key(resolution)
    if key is None:
        if len(present) > 1:
            raise ConfigError(
                f"{deriv_dir} holds several resolutions {present}; pass resolution= one of them"
            )
        key = present[0]
    elif key not in present:
        raise InputError(
            f"no preprocessed images at res-{key} (resolutions present: {present})", deriv_dir
        )
    df = df[df["resolution"] == key]
    order = df.assign(_s=df["session"].fillna(""), _r=df["run"].fillna(""))
    order = order.sort_values(["participant_id", "_s", "_r", "path"], kind="mergesort")
    return _missing_as_none(order.drop(columns=["_s", "_r"]).reset_index(drop=True))


def _missing_as_none(df):
    for col in ("session", "run"):
        values = [
            None if v is None or v == "n/a" or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in df[col]
        ]
        df[col] = pd.Series(values, index=df.index, dtype=object)
    return df


def _stem(key, input="T1w"):
    return f"res-{key}_T1w" if input in (None, "T1w") else f"res-{key}_desc-{input}_boldmap"


def _paths(deriv_dir, key, input="T1w"):
    folder = Path(deriv_dir) / CACHE_DIR
    stem = _stem(key, input)
    return folder / f"{stem}.npy", folder / f"{stem}.tsv", folder / "meta.json"


def _entry(key, input="T1w"):
    return f"res-{key}" if input in (None, "T1w") else _stem(key, input)


def _index_digest(index):
    h = hashlib.sha256()
    for path, sha in zip(index["path"], index["sha256"]):
        h.update(f"{path}\t{sha}\n".encode())
    return h.hexdigest()


def _read_index(path):
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if list(df.columns) != _INDEX_COLUMNS:
        raise InputError(f"unexpected cache index columns {list(df.columns)}", path)
    df["row"] = df["row"].astype(int)
    return _missing_as_none(df)


class TensorCache:
    """The memory-mapped cache of one resolution (open it with :meth:`open` or :func:`build_cache`).

    Attributes
    ----------
    deriv_dir : Path
    resolution : str
        ``res-`` value ("2").
    data : numpy.memmap of float16, shape (N, X, Y, Z)
    index : pandas.DataFrame
        One row per volume: ``row, participant_id, session, run, path, sha256``.
    affine : ndarray of shape (4, 4)
    shape : tuple of 3 int
    digest : str
        SHA-256 of the index (paths and checksums): identifies the cached data.
    """

    def __init__(
        self,
        deriv_dir: PathLike,
        resolution: str,
        data: npt.NDArray[Any],
        index: pd.DataFrame,
        affine: npt.ArrayLike,
        shape: Sequence[int],
        digest: str,
    ) -> None:
        self.deriv_dir = Path(deriv_dir)
        self.resolution = resolution
        self.data = data
        self.index = index
        self.affine = np.asarray(affine, dtype=np.float64)
        self.shape = tuple(int(s) for s in shape)
        self.digest = digest

    def __repr__(self):
        return (
            f"TensorCache({str(self.deriv_dir)!r}, res-{self.resolution}, {len(self)} volumes "
            f"of {self.shape})"
        )

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def resolution_mm(self) -> float:
        """Voxel size in mm."""
        return _res_mm(self.resolution)

    @property
    def sha256(self) -> dict[str, str]:
        """Dict: volume path (relative to ``deriv_dir``) -> SHA-256 of the NIfTI file."""
        return dict(zip(self.index["path"], self.index["sha256"]))

    def volume(self, row: int) -> npt.NDArray[np.float32]:
        """One volume as a float32 array of shape ``(X, Y, Z)``."""
        return np.asarray(self.data[int(row)], dtype=np.float32)

    def load(self, rows: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Volumes ``rows`` (default all) read into RAM as float32, shape ``(len(rows), X, Y, Z)``."""
        if rows is None:
            return np.asarray(self.data, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i] = self.data[r]
        return out

    @classmethod
    def open(
        cls, deriv_dir: PathLike, resolution: float | str | None = None, input: str = "T1w"
    ) -> TensorCache:
        """Open an existing, complete cache (memory-mapped, read-only) of the T1w or of a BOLD map (``input``).

        Raises
        ------
        InputError
            If there is no cache, or it is incomplete or inconsistent (run :func:`build_cache`).
        """
        deriv_dir = Path(deriv_dir)
        key = resolution_key(resolution)
        if key is None:
            tail = _stem("", input)[len("res-") :] + ".npy"
            present = sorted(
                p.name[len("res-") : -len(tail)]
                for p in (deriv_dir / CACHE_DIR).glob(f"res-*{tail}")
            )
            if len(present) != 1:
                raise InputError(
                    f"{'no' if not present else 'several'} tensor caches found ({present}); "
                    "build one with neuroml.data.build_cache(deriv_dir, resolution)",
                    deriv_dir / CACHE_DIR,
                )
            key = present[0]
        npy, tsv, meta_path = _paths(deriv_dir, key, input)
        hint = "; rebuild it with neuroml.data.build_cache(deriv_dir)"
        for p in (npy, tsv, meta_path):
            if not p.is_file():
                raise InputError(f"tensor cache incomplete: {p.name} missing{hint}", p.parent)
        entries = read_json(meta_path)
        entries = entries.get("entries") if isinstance(entries, dict) else None
        meta = entries.get(_entry(key, input)) if isinstance(entries, dict) else None
        if not isinstance(meta, dict) or not meta:
            raise InputError(f"no entry for {_entry(key, input)}{hint}", meta_path)
        index = _read_index(tsv)
        digest = _index_digest(index)
        if digest != meta.get("index_sha256"):
            raise InputError(
                f"cache index does not match meta.json (interrupted build?){hint}", tsv
            )
        try:
            data = np.load(npy, mmap_mode="r")
        except (ValueError, EOFError) as exc:  # truncated or not an .npy file
            raise InputError(f"cache array cannot be read ({exc}){hint}", npy) from None
        try:
            shape = tuple(int(n) for n in meta["shape"])
            affine = np.asarray(meta["affine"], dtype=np.float64).reshape(4, 4)
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"entry {_entry(key, input)} lacks a valid shape or affine{hint}", meta_path
            ) from None
        if data.dtype != np.float16 or data.shape != (len(index), *shape):
            raise InputError(
                f"cache array is {data.dtype} {data.shape}, expected float16 "
                f"{(len(index), *shape)}{hint}",
                npy,
            )
        return cls(deriv_dir, key, data, index, affine, shape, digest)


def _try_open(deriv_dir, key, input="T1w"):
    try:
        return TensorCache.open(deriv_dir, key, input)
    except (InputError, ValueError, KeyError, OSError):
        return None


def _header_grid(path):
    try:
        img = nib.load(str(path))
    except Exception:  # noqa: BLE001 - any reader error: check_img gives the message
        img = check_img(path)
    return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3]), img.shape


def _check_grids(deriv_dir, paths):
    ref_affine, ref_shape, _ = _header_grid(deriv_dir / paths[0])
    for p in paths[1:]:
        affine, shape, full = _header_grid(deriv_dir / p)
        if (
            shape != ref_shape
            or len(full) > 3
            and any(s != 1 for s in full[3:])
            or not np.allclose(affine, ref_affine, atol=_AFFINE_ATOL)
        ):
            raise InputError(
                f"not on the grid of the other volumes: shape {tuple(full)} affine {affine[:3].round(4).tolist()}, "
                f"expected shape {ref_shape} affine {ref_affine[:3].round(4).tolist()} (as {paths[0]}); "
                "preprocess every subject with the same --resolution",
                deriv_dir / p,
            )
    return ref_affine, ref_shape


def _to_float16(path, deriv_dir):
    data = np.asarray(check_img(deriv_dir / path).dataobj, dtype=np.float32)
    peak = float(np.abs(data).max())
    if peak > _F16_MAX:
        raise InputError(
            f"values up to {peak:g} exceed the float16 range of the tensor cache; the cache "
            "expects intensity-normalised volumes (neuroml preprocess normalises them)",
            deriv_dir / path,
        )
    return data.astype(np.float16)


def _allocate(path):
    """Reserve the disk blocks of a (sparse) file now, so a full disk raises OSError(ENOSPC)."""
    import os

    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - not POSIX
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _write_cache(deriv_dir, key, input, index, digest, old, show_progress):
    """Write the index, the array and the ``meta.json`` entry of one cache (under its lock)."""
    from tqdm.auto import tqdm

    paths, shas = index["path"].tolist(), index["sha256"].tolist()
    affine, shape = _check_grids(deriv_dir, paths)
    reuse = _reusable_rows(old, affine, shape)
    npy, tsv, meta_path = _paths(deriv_dir, key, input)
    n_read = sum((p, s) not in reuse for p, s in zip(paths, shas))
    log.info(
        "building tensor cache res-%s: %d volumes (%d read, %d reused)",
        key,
        len(paths),
        n_read,
        len(paths) - n_read,
    )
    write_text_atomic(tsv, index.fillna("n/a").to_csv(sep="\t", index=False))
    with atomic_path(npy, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float16, shape=(len(paths), *shape)
        )
        _allocate(tmp)  # a sparse memmap on a full disk dies of SIGBUS; fail with ENOSPC instead
        for i, (p, s) in enumerate(
            tqdm(
                list(zip(paths, shas)),
                desc=f"cache res-{key}",
                disable=not show_progress or n_read == 0,
            )
        ):
            out[i] = old.data[reuse[(p, s)]] if (p, s) in reuse else _to_float16(p, deriv_dir)
        out.flush()
        del out
    _record_entry(
        meta_path,
        _entry(key, input),
        {
            "resolution": key,
            "resolution_mm": _res_mm(key),
            "affine": affine.tolist(),
            "shape": list(shape),
            "n_volumes": len(paths),
            "dtype": "float16",
            "data": npy.name,
            "index": tsv.name,
            "index_sha256": digest,
        },
    )
    return TensorCache.open(deriv_dir, key, input)


def _reusable_rows(old, affine, shape):
    """``(path, sha256) -> row`` of the volumes of ``old`` that can be copied (same grid), else {}."""
    if old is None or old.shape != shape or not np.allclose(old.affine, affine, atol=_AFFINE_ATOL):
        return {}
    return {(p, s): r for p, s, r in zip(old.index["path"], old.index["sha256"], old.index["row"])}


def _record_entry(meta_path, name, entry):
    """Set ``entries[name]`` of ``meta.json``, keeping the entries of the other caches.

    Caches of other resolutions or inputs share ``meta.json``: it is read and written under
    its lock; an unreadable one is replaced.
    """
    with advisory_lock(meta_path.parent / ".meta.lock"):
        meta = {}
        if meta_path.is_file():
            try:
                meta = read_json(meta_path)
            except InputError:
                meta = {}
        meta = meta if isinstance(meta, dict) else {}
        entries = meta.get("entries") if isinstance(meta.get("entries"), dict) else {}
        entries[name] = entry
        write_json_atomic(meta_path, {"format": 1, "entries": entries})


def build_cache(
    deriv_dir: PathLike,
    resolution: float | str | None = None,
    show_progress: bool = False,
    input: str = "T1w",
) -> TensorCache:
    """Build (or reuse) the float16 tensor cache of a derivatives folder.

    Parameters
    ----------
    deriv_dir : str or Path
        Output folder of ``neuroml preprocess``.
    resolution : float or str, optional
        Voxel size; by default the only one in the folder.
    show_progress : bool, default=False
        Show a progress bar while reading volumes.
    input : str, default="T1w"
        ``"T1w"`` or the desc label of a BOLD map (see :func:`find_preprocessed`).

    Returns
    -------
    TensorCache
        Memory-mapped, read-only.

    Raises
    ------
    InputError
        If no preprocessed image is found, a volume is unreadable, not finite, out of the
        float16 range, or not on the same grid as the others (naming the file).

    Notes
    -----
    Processes building caches in one folder at once (SLURM jobs on a shared file system)
    take turns through advisory locks (``cache/.<cache>.lock``, ``cache/.meta.lock``): one
    builds a cache, the others then find it up to date. An up-to-date cache is opened
    without writing anything, so a read-only derivatives folder works once it is built.
    """
    deriv_dir = Path(deriv_dir)
    scans = find_preprocessed(deriv_dir, resolution, input)
    key = scans["resolution"].iloc[0]
    paths = scans["path"].tolist()
    shas = [sha256_file(deriv_dir / p) for p in paths]
    index = scans[["participant_id", "session", "run", "path"]].copy()
    index.insert(0, "row", np.arange(len(index)))
    index["sha256"] = shas
    digest = _index_digest(index)
    remove_stale_temporaries(
        deriv_dir / CACHE_DIR
    )  # a killed build may have left a large temporary array
    old = _try_open(deriv_dir, key, input)
    if old is not None and old.digest == digest:
        log.debug("tensor cache res-%s is up to date (%d volumes)", key, len(old))
        return old
    npy = _paths(deriv_dir, key, input)[0]
    with advisory_lock(
        npy.parent / f".{npy.stem}.lock"
    ):  # a concurrent build of this cache finishes first
        old = _try_open(deriv_dir, key, input)
        if old is not None and old.digest == digest:
            log.debug(
                "tensor cache res-%s was built by another process (%d volumes)", key, len(old)
            )
            return old
        return _write_cache(deriv_dir, key, input, index, digest, old, show_progress)
