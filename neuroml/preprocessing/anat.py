"""Image-level steps on anatomical scans: reorientation, plausibility, N4, normalization.

Each image function has an array (or SimpleITK) twin that does the work, so the
arithmetic can be tested on small arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroml._utils.options import check_in_range, look_up_option
from neuroml._utils.types import PathLike
from neuroml.errors import InputError
from neuroml.io.image import check_img

__all__ = [
    "NORMALIZATIONS",
    "reorient_ras",
    "check_plausible_t1w",
    "head_mask",
    "n4_bias_correct",
    "n4_bias_correct_sitk",
    "normalize_array",
    "normalize_intensity",
]

_Img = TypeVar("_Img", bound="nib.spatialimages.SpatialImage")

log = logging.getLogger("neuroml")

#: Intensity normalizations inside the brain mask.
NORMALIZATIONS = ("zscore", "percentile")

#: Smallest field of view (mm) accepted along each axis of a T1w scan.
MIN_EXTENT_MM = 40.0
#: Coarsest voxel (mm) accepted for a T1w scan.
MAX_VOXEL_MM = 6.0


def reorient_ras(img: PathLike | nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Reorder the axes of an image to the closest RAS+ orientation (no resampling).

    Parameters
    ----------
    img : str, Path or nibabel image

    Returns
    -------
    nibabel.Nifti1Image
        float32; the world position of every voxel is unchanged.
    """
    img = check_img(img)
    return nib.as_closest_canonical(img)


def check_plausible_t1w(img: _Img, label: str | None = None) -> _Img:
    """Reject images that cannot be a head scan: tiny field of view or huge voxels.

    Parameters
    ----------
    img : nibabel image
        3D image.
    label : str, optional
        Name used in the message (usually the file).

    Raises
    ------
    InputError
        Naming the problem, e.g. "field of view 20 x 40 x 40 mm is too small for a head".
    """
    zooms = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    extent = zooms * np.asarray(img.shape[:3])
    if np.any(zooms > MAX_VOXEL_MM):
        raise InputError(
            f"voxel size {' x '.join(f'{z:g}' for z in zooms)} mm is too coarse for a T1w "
            f"(largest accepted {MAX_VOXEL_MM:g} mm)",
            label,
        )
    if np.any(extent < MIN_EXTENT_MM):
        raise InputError(
            f"field of view {' x '.join(f'{e:.0f}' for e in extent)} mm is too small for a head "
            f"(at least {MIN_EXTENT_MM:g} mm along every axis)",
            label,
        )
    return img


def head_mask(image: sitk.Image) -> sitk.Image:
    """A rough head mask: Otsu threshold, holes filled (SimpleITK image in, uint8 image out)."""
    mask = sitk.OtsuThreshold(image, 0, 1, 128)
    mask = sitk.BinaryFillhole(mask)
    return mask


def n4_bias_correct_sitk(
    image: sitk.Image,
    shrink_factor: int | None = None,
    n_iterations: Sequence[int] = (50, 50, 30),
    convergence: float = 1e-3,
    n_control_points: int = 4,
    target_spacing_mm: float = 4.0,
) -> tuple[sitk.Image, sitk.Image]:
    """N4 bias-field correction of a SimpleITK image; the field is fitted on a shrunk copy.

    Parameters
    ----------
    image : SimpleITK.Image
        3D, float32, non-negative.
    shrink_factor : int, optional
        Shrink factor of the fitting copy; default: whatever brings the voxels to about
        ``target_spacing_mm`` (4 for a 1 mm scan).
    n_iterations : sequence of int, default=(50, 50, 30)
        Maximum iterations per fitting level (the B-spline mesh doubles each level).
    convergence : float, default=1e-3
    n_control_points : int, default=4
        Initial mesh control points per axis.
    target_spacing_mm : float, default=4.0

    Returns
    -------
    corrected : SimpleITK.Image
        Full-resolution image divided by the fitted field (float32).
    log_field : SimpleITK.Image
        The log bias field at full resolution.
    """
    spacing = np.asarray(image.GetSpacing())
    if shrink_factor is None:
        shrink = [max(1, int(round(target_spacing_mm / s))) for s in spacing]
    else:
        shrink = [int(check_in_range("shrink_factor", shrink_factor, 1, 16))] * 3
    shrink = [min(f, max(1, sz // 8)) for f, sz in zip(shrink, image.GetSize())]
    small = sitk.Shrink(image, shrink)
    mask = head_mask(small)
    # N4 works on log intensities: only positive voxels may be in the mask
    mask = sitk.And(mask, sitk.Cast(small > 0, sitk.sitkUInt8))
    if int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) < 64:
        raise InputError(
            "too few foreground voxels for bias-field correction (is the image empty?)"
        )
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in n_iterations])
    corrector.SetConvergenceThreshold(float(convergence))
    corrector.SetNumberOfControlPoints([int(n_control_points)] * 3)
    corrector.Execute(small, mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    corrected = sitk.Divide(image, sitk.Exp(log_field))
    return sitk.Cast(corrected, sitk.sitkFloat32), log_field


def n4_bias_correct(img: nib.spatialimages.SpatialImage, **kwargs: Any) -> nib.Nifti1Image:
    """N4 bias-field correction of a nibabel image (see :func:`n4_bias_correct_sitk`).

    Negative voxels (interpolation ringing) are set to 0 first.

    Returns
    -------
    nibabel.Nifti1Image
        float32, same grid as ``img``.
    """
    from neuroml.preprocessing.registration import nib_to_sitk, sitk_to_nib

    img = check_img(img)
    image = sitk.Clamp(nib_to_sitk(img), sitk.sitkFloat32, 0.0)
    corrected, _ = n4_bias_correct_sitk(image, **kwargs)
    out = sitk_to_nib(corrected)
    return nib.Nifti1Image(np.asarray(out.dataobj), img.affine)


def normalize_array(
    data: npt.NDArray[Any], mask: npt.NDArray[np.bool_], method: str = "zscore"
) -> npt.NDArray[np.float32]:
    """Normalize intensities inside a mask; set everything outside to 0.

    Parameters
    ----------
    data : ndarray
        Intensities.
    mask : ndarray of bool, same shape
        Voxels used for the statistics (the brain).
    method : {"zscore", "percentile"}, default="zscore"
        ``"zscore"``: robust z-score, ``(x - median) / (IQR / 1.349)`` (IQR/1.349 equals
        the standard deviation for Gaussian data, and ignores outliers);
        ``"percentile"``: 1st-99th percentile mapped to 0-1, clipped to [0, 1].

    Returns
    -------
    ndarray of float32

    Raises
    ------
    InputError
        If the mask is empty or the intensities inside it do not vary.

    Examples
    --------
    >>> x = np.arange(24, dtype=float).reshape(2, 3, 4)
    >>> out = normalize_array(x, x > 3)
    >>> float(np.median(out[x > 3])), float(out[0, 0, 0])
    (0.0, 0.0)
    """
    method = look_up_option("normalization", method, NORMALIZATIONS)
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape:
        raise InputError(f"mask shape {mask.shape} differs from image shape {data.shape}")
    values = data[mask]
    if values.size == 0:
        raise InputError("the brain mask is empty: nothing to normalize")
    out = np.zeros_like(data)
    if method == "zscore":
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        scale = (q3 - q1) / 1.349
        if not scale > 0:
            raise InputError(
                "intensities inside the brain mask do not vary (interquartile range 0)"
            )
        out[mask] = (values - med) / scale
    else:
        lo, hi = np.percentile(values, [1, 99])
        if not hi > lo:
            raise InputError(
                "intensities inside the brain mask do not vary (1st = 99th percentile)"
            )
        out[mask] = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return out


def normalize_intensity(
    img: nib.spatialimages.SpatialImage,
    mask_img: nib.spatialimages.SpatialImage,
    method: str = "zscore",
) -> nib.Nifti1Image:
    """Image twin of :func:`normalize_array` (same grid for image and mask)."""
    img = check_img(img)
    mask = np.asarray(mask_img.dataobj) > 0
    out = nib.Nifti1Image(normalize_array(np.asarray(img.dataobj), mask, method), img.affine)
    out.header.set_xyzt_units("mm", "sec")
    return out
