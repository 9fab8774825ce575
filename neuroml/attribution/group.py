"""Per-class group maps: the mean attribution and a voxel-wise one-sample t map.

For class ``C`` the inputs are the maps of the subjects whose label is ``C``, each
explaining class ``C``. The t statistic tests, voxel by voxel, whether the mean
attribution differs from 0 (:func:`scipy.stats.ttest_1samp` over subjects, vectorised
over voxels in chunks to bound memory).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroml._utils.fileio import save_nifti_atomic
from neuroml._utils.types import PathLike
from neuroml.errors import InputError

__all__ = ["group_statistics", "class_group_maps", "class_entity", "write_group_maps"]


def group_statistics(
    maps: npt.NDArray[Any], chunk: int = 65536
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Mean map and one-sample t map (against 0) over subjects.

    Parameters
    ----------
    maps : ndarray, shape (n_subjects, X, Y, Z)
    chunk : int, default=65536
        Voxels per :func:`scipy.stats.ttest_1samp` call.

    Returns
    -------
    mean : ndarray of float32, shape (X, Y, Z)
    tstat : ndarray of float32, shape (X, Y, Z), or None
        None for fewer than 2 subjects; 0 where all subjects agree exactly (no variance).

    Examples
    --------
    >>> mean, t = group_statistics(np.array([[[[1.0, 2.0]]], [[[3.0, 2.0]]]]))
    >>> mean.tolist(), t.tolist()
    ([[[2.0, 2.0]]], [[[2.0, 0.0]]])
    """
    from scipy.stats import ttest_1samp

    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] < 1:
        raise InputError(f"expected maps of shape (n_subjects, X, Y, Z), got {maps.shape}")
    flat = maps.reshape(maps.shape[0], -1)
    mean = flat.mean(0, dtype=np.float64).astype(np.float32).reshape(maps.shape[1:])
    if maps.shape[0] < 2:
        return mean, None
    t = np.empty(flat.shape[1], dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # constant voxels (outside the brain): t set to 0 below
        for i in range(0, flat.shape[1], chunk):
            part = flat[:, i : i + chunk].astype(np.float64)
            t[i : i + chunk] = ttest_1samp(part, 0.0, axis=0).statistic
    t[~np.isfinite(t)] = 0.0
    return mean, t.reshape(maps.shape[1:])


def class_group_maps(
    maps: npt.NDArray[Any], labels: Sequence[str | None] | npt.NDArray[Any], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """:func:`group_statistics` for every class that has subjects.

    Parameters
    ----------
    maps : ndarray, shape (n_subjects, X, Y, Z)
        Map ``i`` explains class ``labels[i]``.
    labels : sequence of str
        Class of each subject (None for unknown: left out).
    classes : sequence of str

    Returns
    -------
    dict
        ``{class: {"mean": ndarray, "tstat": ndarray or None, "n": int}}``.
    """
    labels = np.asarray(labels, dtype=object)
    if len(labels) != len(maps):
        raise InputError(f"got {len(labels)} labels for {len(maps)} maps")
    out = {}
    for c in classes:
        sel = np.flatnonzero(labels == c)
        if len(sel):
            mean, t = group_statistics(maps[sel])
            out[c] = {"mean": mean, "tstat": t, "n": int(len(sel))}
    return out


def class_entity(label: str, classes: Sequence[str] | None = None) -> str:
    """A BIDS-safe ``class-`` value (letters and digits only) for a class label.

    Falls back to the class's position in ``classes`` when nothing is left or two
    labels would collide.

    Examples
    --------
    >>> class_entity("MDD"), class_entity("<b>", ["a", "<b>"]), class_entity("<b>", ["b", "<b>"])
    ('MDD', 'b', '1')
    """
    safe = re.sub(r"[^A-Za-z0-9]", "", str(label))
    if classes is not None:
        classes = list(classes)
        others = [re.sub(r"[^A-Za-z0-9]", "", str(c)) for c in classes if c != label]
        if not safe or safe in others:
            return str(classes.index(label))
    return safe or "unnamed"


def write_group_maps(
    groups: Mapping[str, Mapping[str, Any]],
    affine: npt.ArrayLike,
    out_dir: PathLike,
    classes: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Save group maps as ``class-<C>_desc-mean_map.nii.gz`` / ``..._desc-tstat_map.nii.gz``.

    Parameters
    ----------
    groups : dict
        Output of :func:`class_group_maps`.
    affine : ndarray, shape (4, 4)
        The grid's affine.
    out_dir : str or Path
    classes : sequence of str, optional
        All class labels (used to keep file names unique).

    Returns
    -------
    dict
        ``{class: {"mean": Path, "tstat": Path or None, "n": int}}``.
    """

    out_dir = Path(out_dir)
    classes = list(classes) if classes is not None else list(groups)
    written = {}
    for c, g in groups.items():
        stem = f"class-{class_entity(c, classes)}"
        entry = {"n": g["n"], "tstat": None}
        entry["mean"] = save_nifti_atomic(
            _img(g["mean"], affine), out_dir / f"{stem}_desc-mean_map.nii.gz"
        )
        if g["tstat"] is not None:
            entry["tstat"] = save_nifti_atomic(
                _img(g["tstat"], affine), out_dir / f"{stem}_desc-tstat_map.nii.gz"
            )
        written[c] = entry
    return written


def _img(data, affine):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code="mni")
    img.set_qform(img.affine, code="mni")
    img.header.set_xyzt_units("mm")
    return img
