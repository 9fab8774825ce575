"""Reading the ground truth a synthetic cohort stores, and the true MNI -> scanner mapping.

:func:`~neuroml.synth.cohort.make_cohort` writes, under ``<cohort>/derivatives/groundtruth/``,
for every subject the transform that was used to make its scan from the MNI template:

``scanner_mm = affine_mni_to_scanner @ (p + d(p))``

where ``p`` is a point in MNI world mm and ``d`` the displacement field (mm) stored as
``sub-XXX_desc-warp_xfm.nii.gz`` on a coarse MNI grid, interpolated trilinearly (the value
of the nearest grid point outside the grid). :func:`true_scanner_coords` applies it, so that
a registration can be scored against the truth.

:func:`~neuroml.synth.func.make_func_cohort` (functional cohorts) stores no such transform:
its series are made on the MNI grid of ``resolution`` (4 mm by default), and in the ``raw``
layout only rigidly moved, the move being ``scanner_from_mni`` in each subject's
``sub-XXX_task-rest_truth.json``. :func:`load_subject_transform` and
:func:`true_scanner_coords` refuse such a cohort with a message saying so;
:func:`planted_mask_path` works for both (the mask is on the cohort's own grid).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy.ndimage import map_coordinates

from neuroml._utils.fileio import read_json
from neuroml._utils.types import PathLike
from neuroml.errors import InputError

__all__ = [
    "GROUNDTRUTH_SUBDIR",
    "normalize_participant_id",
    "warp_displacement",
    "load_subject_transform",
    "true_scanner_coords",
    "planted_mask_path",
]

logger = logging.getLogger("neuroml")

#: Where the ground truth lives, relative to the cohort's root folder.
GROUNDTRUTH_SUBDIR = Path("derivatives") / "groundtruth"

_PID_RE = re.compile(r"^(sub-)?([A-Za-z0-9]+)$")


def normalize_participant_id(participant_id: str) -> str:
    """Return ``'sub-<label>'`` for ``'sub-<label>'`` or ``'<label>'``.

    Raises
    ------
    InputError
        If the id is not a BIDS participant label.
    """
    m = _PID_RE.match(str(participant_id))
    if not m:
        raise InputError(
            f"{participant_id!r} is not a BIDS participant id (expected 'sub-<alphanumeric>')"
        )
    return f"sub-{m.group(2)}"


def _groundtruth_dir(path):
    path = Path(path)
    if (path / "planted_regions.json").exists():
        return path
    if (path / GROUNDTRUTH_SUBDIR / "planted_regions.json").exists():
        return path / GROUNDTRUTH_SUBDIR
    raise InputError("no synthetic ground truth here (planted_regions.json not found)", path)


def warp_displacement(
    field: npt.NDArray[Any], field_affine: npt.ArrayLike, points_mm: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Displacement (mm) of a stored warp at MNI points, by trilinear interpolation.

    Parameters
    ----------
    field : ndarray of shape (X, Y, Z, 3)
        Displacement in mm on a grid.
    field_affine : ndarray of shape (4, 4)
        Voxel -> MNI mm affine of the grid.
    points_mm : ndarray of shape (N, 3)
        MNI world points (mm).

    Returns
    -------
    ndarray of shape (N, 3), float64
        ``d(p)``; outside the grid the value of the nearest grid point.
    """
    field = np.asarray(field, dtype=np.float64)
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    inv = np.linalg.inv(np.asarray(field_affine, dtype=np.float64))
    vox = (pts @ inv[:3, :3].T + inv[:3, 3]).T
    return np.stack(
        [
            map_coordinates(field[..., c], vox, order=1, mode="nearest", prefilter=False)
            for c in range(3)
        ],
        axis=1,
    )


def _refuse_func_cohort(gt):
    record = gt / "planted_regions.json"
    try:
        modality = read_json(record).get("modality")
    except (InputError, AttributeError):
        return
    if modality == "func":
        raise InputError(
            "a functional synthetic cohort (make_func_cohort) has no MNI -> scanner warp: its BOLD "
            "is made on the MNI grid and, in the raw layout, only rigidly moved (scanner_from_mni "
            "in each subject's sub-XXX_task-rest_truth.json)",
            record,
        )


def load_subject_transform(groundtruth_dir: PathLike, participant_id: str) -> dict[str, Any]:
    """Load one subject's true MNI -> scanner transform (T1w cohorts of :func:`~neuroml.synth.make_cohort`).

    Parameters
    ----------
    groundtruth_dir : str or Path
        ``<cohort>/derivatives/groundtruth`` (the cohort's root folder is accepted too).
    participant_id : str
        ``'sub-001'`` or ``'001'``.

    Returns
    -------
    dict
        The subject's ``sub-XXX_xfm.json`` record, plus ``"affine"`` (4x4 ndarray),
        ``"warp_field"`` ((X, Y, Z, 3) float64 ndarray, mm) and ``"warp_affine"`` (4x4).

    Raises
    ------
    InputError
        If a file is missing or broken, or the cohort is a functional one (which stores no warp).
    """
    gt = _groundtruth_dir(groundtruth_dir)
    _refuse_func_cohort(gt)
    pid = normalize_participant_id(participant_id)
    rec = read_json(gt / pid / f"{pid}_xfm.json")
    try:
        affine = np.asarray(rec["affine_mni_to_scanner"], dtype=np.float64)
        warp_name = rec["warp"]["file"]
    except (KeyError, TypeError):
        raise InputError(
            "transform record lacks 'affine_mni_to_scanner' or 'warp.file'",
            gt / pid / f"{pid}_xfm.json",
        ) from None
    if affine.shape != (4, 4):
        raise InputError(
            f"'affine_mni_to_scanner' must be 4x4, got shape {affine.shape}",
            gt / pid / f"{pid}_xfm.json",
        )
    warp_path = gt / pid / warp_name
    if not warp_path.exists():
        raise InputError("warp file not found", warp_path)
    img = cast(nib.Nifti1Image, nib.load(str(warp_path)))
    field = np.asarray(img.dataobj, dtype=np.float64)
    if field.ndim != 4 or field.shape[3] != 3:
        raise InputError(
            f"warp must be a 4D (x, y, z, 3) field, got shape {field.shape}", warp_path
        )
    out = dict(rec)
    out.update(
        affine=affine, warp_field=field, warp_affine=np.asarray(img.affine, dtype=np.float64)
    )
    return out


def true_scanner_coords(
    groundtruth_dir: PathLike, participant_id: str, points_mni: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Map MNI points (mm) to the subject's true scanner points (mm): warp, then affine (T1w cohorts only).

    Parameters
    ----------
    groundtruth_dir : str or Path
        ``<cohort>/derivatives/groundtruth`` (the cohort's root folder is accepted too).
    participant_id : str
        ``'sub-001'`` or ``'001'``.
    points_mni : array-like of shape (N, 3) or (3,)
        MNI152NLin2009aSym world coordinates in mm.

    Returns
    -------
    ndarray of shape (N, 3)
        Scanner world coordinates (mm) of the same anatomical points; apply the inverse of
        the subject's T1w NIfTI affine to get voxel indices.

    Examples
    --------
    >>> xyz = true_scanner_coords("data_samples/derivatives/groundtruth", "sub-001",
    ...                           [[0.0, -18.0, 18.0]])  # doctest: +SKIP
    """
    pts = np.asarray(points_mni, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts.reshape(1, -1)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points_mni must have shape (N, 3), got {np.shape(points_mni)}")
    if not np.all(np.isfinite(pts)):
        raise InputError("points_mni contains NaN or infinite values")
    xfm = load_subject_transform(groundtruth_dir, participant_id)
    warped = pts + warp_displacement(xfm["warp_field"], xfm["warp_affine"], pts)
    a = xfm["affine"]
    return warped @ a[:3, :3].T + a[:3, 3]


def planted_mask_path(groundtruth_dir: PathLike, diagnosis: str) -> Path:
    """Path of the planted-region mask (uint8) of a patient class.

    The mask is on the grid the cohort was made on: the 1 mm MNI template grid for
    :func:`~neuroml.synth.make_cohort`, the MNI grid of ``resolution`` (4 mm by default) for
    :func:`~neuroml.synth.func.make_func_cohort`; its affine says which.

    Raises
    ------
    InputError
        If the class has no mask (the healthy class, or an unknown class).
    """
    from neuroml.io.groundtruth import mask_filename

    gt = _groundtruth_dir(groundtruth_dir)
    path = gt / mask_filename(diagnosis)
    if not path.exists():
        rec = read_json(gt / "planted_regions.json")
        raise InputError(
            f"no planted-region mask for class {diagnosis!r}; classes with planted regions: "
            f"{sorted(rec.get('planted', {}))}",
            path,
        )
    return path


def mask_filename(diagnosis):
    """File name of the planted-region mask of a class (in the ground-truth folder)."""
    from neuroml.io.templates import TEMPLATE_SPACE

    return f"space-{TEMPLATE_SPACE}_desc-{re.sub(r'[^A-Za-z0-9]', '', str(diagnosis))}_mask.nii.gz"
