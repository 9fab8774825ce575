"""The MNI152 2009 template that nilearn ships, and the fixed analysis grids built on it.

Everything here works offline: nilearn carries the 1 mm MNI152 2009a symmetric template
and its grey/white-matter maps inside the package.
"""

from __future__ import annotations

import functools
import warnings

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroml._utils.options import check_in_range

__all__ = [
    "TEMPLATE_SPACE",
    "mni_template",
    "mni_brain_mask",
    "mni_gm_map",
    "target_grid",
    "template_on_grid",
    "brain_mask_on_grid",
    "res_entity",
]

#: BIDS ``space-`` label of the template.
TEMPLATE_SPACE = "MNI152NLin2009aSym"


@functools.cache
def mni_template() -> nib.Nifti1Image:
    """The 1 mm MNI152 2009a T1 template (197 x 233 x 189), as shipped by nilearn."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


@functools.cache
def mni_brain_mask() -> nib.Nifti1Image:
    """The 1 mm MNI152 brain mask (uint8), as shipped by nilearn."""
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=1)
    return nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine)


@functools.cache
def mni_gm_map() -> nib.Nifti1Image:
    """The 1 mm MNI152 grey-matter probability map (float32, 0..1)."""
    from nilearn.datasets import load_mni152_gm_template

    img = load_mni152_gm_template(resolution=1)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


@functools.cache
def _brain_bbox_mm():
    mask = mni_brain_mask()
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    corners = np.array([idx.min(0), idx.max(0)], dtype=float)
    mm = nib.affines.apply_affine(mask.affine, corners)
    return np.minimum(mm[0], mm[1]), np.maximum(mm[0], mm[1])


def target_grid(resolution: float = 2.0) -> tuple[npt.NDArray[np.float64], tuple[int, ...]]:
    """The fixed RAS grid every subject is resampled to, cropped to the template's brain.

    Parameters
    ----------
    resolution : float, default=2.0
        Isotropic voxel size in mm (1 to 8).

    Returns
    -------
    affine : ndarray of shape (4, 4)
    shape : tuple of 3 int

    Examples
    --------
    >>> affine, shape = target_grid(2.0)
    >>> shape
    (73, 91, 78)
    """
    resolution = float(check_in_range("resolution", resolution, 0.5, 8.0))
    lo, hi = _brain_bbox_mm()
    shape = tuple(int(np.floor((h - lo_) / resolution + 1e-6)) + 1 for lo_, h in zip(lo, hi))
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = lo
    return affine, shape


def res_entity(resolution: float) -> str:
    """BIDS ``res-`` value for a resolution: ``2`` for 2.0 mm, ``1p5`` for 1.5 mm."""
    r = float(resolution)
    return str(int(r)) if r == int(r) else f"{r:g}".replace(".", "p")


@functools.lru_cache(maxsize=8)
def template_on_grid(resolution: float = 2.0) -> nib.Nifti1Image:
    """The T1 template resampled (linear) onto :func:`target_grid`."""
    from nilearn.image import resample_img

    affine, shape = target_grid(resolution)
    img = resample_img(
        mni_template(),
        target_affine=affine,
        target_shape=shape,
        interpolation="continuous",
        force_resample=True,
        copy_header=True,
    )
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), affine)


@functools.lru_cache(maxsize=8)
def brain_mask_on_grid(resolution: float = 2.0) -> nib.Nifti1Image:
    """The template brain mask on :func:`target_grid` (uint8, 0/1)."""
    from nilearn.image import resample_img

    affine, shape = target_grid(resolution)
    with warnings.catch_warnings():  # linear on purpose: the fraction is thresholded at 0.5 below
        warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
        img = resample_img(
            nib.Nifti1Image(
                np.asarray(mni_brain_mask().dataobj, dtype=np.float32), mni_brain_mask().affine
            ),
            target_affine=affine,
            target_shape=shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
    return nib.Nifti1Image((np.asarray(img.dataobj) >= 0.5).astype(np.uint8), affine)
