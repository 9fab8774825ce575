"""The one input checker: a path or an image in, a validated 3D/4D NIfTI image out.

Every stage that reads an image goes through :func:`check_img`, so every bad file is
reported the same way: a one-line :class:`~neuroml.errors.InputError` naming the file
and the problem, never a traceback from deep inside numpy or nibabel.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroml._utils.types import PathLike
from neuroml.errors import InputError

__all__ = ["check_img", "check_array", "load_data", "header_tr", "MAX_AXIS", "MAX_VOXELS"]

#: Largest length accepted along one axis (voxels).
MAX_AXIS = 4096
#: Largest number of voxels accepted in one image (about 4 GiB of float32 for 3D).
MAX_VOXELS = 2**30

# Readers raise many exception types on hostile input (ValueError, OSError, zlib.error,
# struct.error, PARRECError, ImportError for an optional reader...): all become InputError.
_READ_ERRORS = (Exception,)


def _name(img, name):
    if name is not None:
        return str(name)
    if isinstance(img, (str, os.PathLike)):
        return str(img)
    fn = getattr(img, "get_filename", lambda: None)()
    return fn or "<in-memory image>"


def _short(exc):
    if isinstance(exc, ImportError):
        return f"reading this format needs the missing package {exc.name!r}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _raw_nifti_problem(path):
    """What is wrong with a NIfTI header that nibabel would silently fix on load (or None).

    nibabel replaces negative voxel sizes by their absolute values (and logs it); a header
    that says so is corrupt, so it is refused before loading.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            block = fh.read(540)
        nifti2 = len(block) >= 540 and block[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdr = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(
                io.BytesIO(block), check=False
            )
        ndim = int(hdr["dim"][0])
        pixdim = np.asarray(hdr["pixdim"][1 : 1 + min(max(ndim, 0), 3)], dtype=np.float64)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by nib.load below
        return None
    if pixdim.size and not np.all(np.isfinite(pixdim)):
        return f"header voxel sizes {tuple(float(z) for z in pixdim)} are not finite"
    if np.any(pixdim < 0):
        return f"header voxel sizes {tuple(float(z) for z in pixdim)} are negative"
    return None


def _load(path):
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            try:
                os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InputError(
                        "symbolic link loop (the link points back to itself)", path
                    ) from None
            raise InputError("broken symbolic link", path)
        raise InputError("file not found", path)
    try:
        if path.is_dir():
            raise InputError("is a directory, expected an image file", path)
        if path.stat().st_size == 0:
            raise InputError("empty file (0 bytes)", path)
    except OSError as exc:  # symlink loops, permission problems
        raise InputError(f"cannot access file ({exc.strerror or exc})", path) from None
    problem = _raw_nifti_problem(path)
    if problem:
        raise InputError(f"{problem}; the header is corrupt", path)
    try:
        return nib.load(str(path))
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"not a readable image ({_short(exc)})", path) from None


def _check_header(img, label):
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape):
        raise InputError(f"image has an empty axis (shape {shape})", label)
    if any(s > MAX_AXIS for s in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise InputError(
            f"image dimensions {shape} are implausibly large (limit {MAX_AXIS} per axis, "
            f"{MAX_VOXELS} voxels); the header is probably corrupt",
            label,
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError("affine contains NaN or infinite values", label)
    det = np.linalg.det(affine[:3, :3])
    if not np.isfinite(det) or abs(det) < 1e-6:
        raise InputError("affine is singular (zero voxel size or collapsed axes)", label)
    zooms = img.header.get_zooms()[:3] if hasattr(img, "header") else ()
    if any((not np.isfinite(z)) or z < 0 for z in zooms):
        raise InputError(
            f"header voxel sizes {tuple(float(z) for z in zooms)} are negative or not finite", label
        )
    return affine


def _read_voxels(img):
    """The voxel array with scaling applied, as float32 for scaled files, without nibabel's
    whole-volume float64 intermediate (a 512 x 512 x 400 int16 scan: 0.8 GiB less at peak).

    Values are those of ``np.asanyarray(img.dataobj).astype(np.float32)``: each slab is
    scaled in float64, then rounded to float32.
    """
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", None), getattr(proxy, "inter", None)
    if not nib.is_proxy(proxy) or slope is None or not hasattr(proxy, "get_unscaled"):
        return np.asanyarray(proxy)
    slope, inter = float(np.asarray(slope)), float(np.asarray(inter))
    raw = proxy.get_unscaled()
    if (slope == 1.0 and inter == 0.0) or np.iscomplexobj(raw) or raw.ndim == 0:
        return np.asanyarray(proxy) if raw.dtype.kind not in "iuf" else raw
    out = np.empty(raw.shape, dtype=np.float32, order="F")
    flat_raw = raw.reshape(raw.shape[0], -1, order="F") if raw.ndim > 1 else raw.reshape(-1, 1)
    flat_out = out.reshape(flat_raw.shape, order="F")
    step = max(
        1, (1 << 18) // max(1, flat_raw.shape[0])
    )  # about 256 k voxels (2 MiB float64) per slab
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(0, flat_raw.shape[1], step):
            flat_out[:, j : j + step] = flat_raw[:, j : j + step] * slope + inter
    return out


def check_array(
    data: npt.NDArray[Any],
    label: str = "<array>",
    ndim: int | Sequence[int] = 3,
    ensure_finite: bool = True,
    allow_constant: bool = False,
) -> npt.NDArray[np.float32]:
    """Validate a voxel array; return it as float32.

    Parameters
    ----------
    data : ndarray
        Voxel data.
    label : str
        Name used in error messages (usually the file name).
    ndim : int or tuple of int
        Accepted dimensionality.
    ensure_finite : bool
        Raise if any voxel is NaN or infinite.
    allow_constant : bool
        Accept an all-constant (for example all-zero) volume.

    Raises
    ------
    InputError
        Naming ``label`` and the problem.
    """
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if data.ndim not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise InputError(
            f"expected a {want} image and got a {data.ndim}D image of shape {tuple(data.shape)}",
            label,
        )
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.asarray(data, dtype=np.float32)
    if ensure_finite:
        n_bad = data.size - int(
            np.count_nonzero(np.isfinite(data))
        )  # one boolean temporary, not two
        if n_bad:
            raise InputError(
                f"{n_bad} of {data.size} voxels are NaN or infinite "
                "(check the scaling factors or the file)",
                label,
            )
    if not allow_constant and data.size and float(np.nanmax(data)) == float(np.nanmin(data)):
        raise InputError(
            f"volume is constant (every voxel is {float(data.flat[0]):g}): no image content", label
        )
    return data


def header_tr(img: nib.spatialimages.SpatialImage) -> float | None:
    """The repetition time (seconds) that a 4D image's header records, or None.

    NIfTI's ``pixdim[4]`` in its time unit (``msec`` and ``usec`` converted); a value over
    100 with no unit is taken as milliseconds.

    Examples
    --------
    >>> import numpy as np, nibabel as nib
    >>> img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    >>> img.header.set_zooms((1, 1, 1, 2500.0)); img.header.set_xyzt_units("mm", "msec")
    >>> header_tr(img)
    2.5
    """
    header = getattr(img, "header", None)
    if header is None or len(getattr(img, "shape", ())) < 4:
        return None
    try:
        zooms = header.get_zooms()
    except Exception:  # noqa: BLE001 - an odd header simply records no TR
        return None
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or not zooms[3] > 0:
        return None
    unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "sec"
    tr = float(zooms[3]) / {"msec": 1000.0, "usec": 1e6}.get(unit, 1.0)
    if unit not in ("msec", "usec") and tr > 100:  # units missing but clearly milliseconds
        tr /= 1000.0
    return tr


def check_img(
    img: PathLike | nib.spatialimages.SpatialImage,
    ndim: int | Sequence[int] = 3,
    name: str | None = None,
    ensure_finite: bool = True,
    allow_constant: bool = False,
) -> nib.Nifti1Image:
    """Turn a path or a nibabel image into a validated NIfTI-1 image with float32 data.

    Any format nibabel reads is accepted (NIfTI-1/2, Analyze, MINC, MGH/MGZ, PAR/REC);
    scaling factors are applied. A 4D image with a single volume is accepted where 3D is
    expected. Calling it on its own output changes nothing.

    Parameters
    ----------
    img : str, Path or nibabel image
        The image or its path.
    ndim : int or tuple of int, default=3
        Accepted dimensionality.
    name : str, optional
        Name used in messages for in-memory images.
    ensure_finite : bool, default=True
        Reject NaN or infinite voxels.
    allow_constant : bool, default=False
        Accept a constant volume.

    Returns
    -------
    nibabel.Nifti1Image
        float32 data, the image's affine (sform/qform resolved by nibabel); a 4D image keeps
        its repetition time (:func:`header_tr`, in seconds).

    Raises
    ------
    InputError
        For a missing, unreadable, wrongly dimensioned, non-finite or constant image,
        naming the file.

    Examples
    --------
    >>> import numpy as np, nibabel as nib
    >>> img = nib.Nifti1Image(np.random.default_rng(0).random((7, 8, 9)), np.eye(4))
    >>> check_img(img).shape
    (7, 8, 9)
    """
    label = _name(img, name)
    if isinstance(img, (str, os.PathLike)):
        img = _load(img)
    elif not hasattr(img, "dataobj") or not hasattr(img, "affine"):
        raise InputError(f"expected a path or a nibabel image, got {type(img).__name__}", label)
    if getattr(img, "affine", None) is None:
        raise InputError("image has no affine (no orientation information)", label)
    affine = _check_header(img, label)
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    try:
        data = _read_voxels(img)
    except _READ_ERRORS as exc:
        raise InputError(
            f"voxel data cannot be read ({_short(exc)}); the file may be truncated", label
        ) from None
    if data.ndim == 4 and 3 in ndims and 4 not in ndims and data.shape[3] == 1:
        data = data[..., 0]
    while data.ndim > 4 and data.shape[-1] == 1 and data.ndim - 1 >= min(ndims):
        data = data[..., 0]
    if np.iscomplexobj(data):
        raise InputError("complex-valued data is not supported (expected a magnitude image)", label)
    data = check_array(
        data, label, ndim=ndims, ensure_finite=ensure_finite, allow_constant=allow_constant
    )
    if (
        isinstance(img, nib.Nifti1Image)
        and not isinstance(img, nib.Nifti2Image)
        and img.get_data_dtype() == np.float32
        and img.dataobj.__class__ is np.ndarray
        and data.shape == img.shape
    ):
        return img
    out = nib.Nifti1Image(data, affine)
    out.header.set_xyzt_units("mm", "sec")
    tr = header_tr(cast(nib.spatialimages.SpatialImage, img)) if data.ndim == 4 else None
    if tr is not None:  # a fresh header says 1.0: keep the series' TR
        out.header.set_zooms(out.header.get_zooms()[:3] + (tr,))
    return out


def load_data(
    img: PathLike | nib.spatialimages.SpatialImage, **kwargs: Any
) -> npt.NDArray[np.float32]:
    """Return the float32 voxel array of :func:`check_img` (same arguments)."""
    return np.asarray(check_img(img, **kwargs).dataobj)
