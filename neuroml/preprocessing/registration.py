"""Affine registration of a T1w image to the MNI template with SimpleITK, and resampling.

Conventions
-----------
nibabel affines map voxels to RAS+ millimetres; ITK works in LPS+ millimetres. The
converters here (:func:`nib_to_sitk`, :func:`sitk_to_nib`) flip the first two axes, so a
point keeps its anatomical meaning on both sides.

The transform :func:`register_to_template` returns follows ITK's convention: it maps a
point of the *fixed* image (the template, MNI LPS mm) to the corresponding point of the
*moving* image (the subject's scanner LPS mm). That is the transform
:func:`resample_to_grid` needs to pull the subject onto the MNI grid in one interpolation,
and the one written as ``*_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt``
(fMRIPrep's convention for ``mode-image`` transforms). :func:`mni_to_scanner` applies it to
RAS points.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroml._utils.options import check_in_range, look_up_option
from neuroml._utils.types import PathLike
from neuroml.errors import InputError
from neuroml.io.templates import mni_brain_mask, mni_template, target_grid

__all__ = [
    "INIT_MODES",
    "RegistrationResult",
    "nib_to_sitk",
    "sitk_to_nib",
    "grid_reference",
    "register_to_template",
    "resample_to_grid",
    "mni_to_scanner",
    "affine_matrix",
    "write_transform",
    "read_transform",
]

log = logging.getLogger("neuroml")

_LPS = np.diag([-1.0, -1.0, 1.0])

#: Starting points tried by :func:`register_to_template`.
INIT_MODES = ("moments", "geometry", "identity")


# --------------------------------------------------------------------------- conversions
def nib_to_sitk(
    img: nib.spatialimages.SpatialImage, dtype: npt.DTypeLike = np.float32
) -> sitk.Image:
    """Convert a 3D nibabel image to a SimpleITK image with the same world geometry.

    Parameters
    ----------
    img : nibabel image
        3D image (any affine without shear).
    dtype : numpy dtype, default=float32

    Returns
    -------
    SimpleITK.Image
    """
    data = np.asarray(img.dataobj, dtype=dtype)
    if data.ndim != 3:
        raise InputError(f"expected a 3D image, got shape {data.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    _set_geometry(image, img.affine)
    return image


def _set_geometry(image, affine):
    affine = np.asarray(affine, dtype=np.float64)
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = _LPS @ (m / spacing)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])
    return image


def _sitk_affine(image):
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def sitk_to_nib(image: sitk.Image, dtype: npt.DTypeLike = np.float32) -> nib.Nifti1Image:
    """Convert a 3D SimpleITK image to a nibabel ``Nifti1Image`` (RAS affine)."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(dtype, copy=False)
    out = nib.Nifti1Image(np.ascontiguousarray(data), _sitk_affine(image))
    out.header.set_xyzt_units("mm", "sec")
    return out


def grid_reference(
    affine: npt.ArrayLike, shape: Sequence[int], pixel_type: int = sitk.sitkUInt8
) -> sitk.Image:
    """An empty SimpleITK image with the geometry of a nibabel grid (for resampling onto it)."""
    image = sitk.Image([int(s) for s in shape], pixel_type)
    return _set_geometry(image, affine)


# --------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=4)
def _fixed_images(resolution, margin_mm=12.0):
    """Template and dilated brain mask at ``resolution`` mm, on the brain box plus a margin."""
    resolution = float(resolution)
    grid_affine, grid_shape = target_grid(resolution)
    pad = int(np.ceil(margin_mm / resolution))
    affine = grid_affine.copy()
    affine[:3, 3] -= pad * resolution
    shape = [s + 2 * pad for s in grid_shape]
    ref = grid_reference(affine, shape, sitk.sitkFloat32)
    template = nib_to_sitk(mni_template())
    sigma = 0.5 * np.sqrt(max(resolution**2 - 1.0, 0.0))  # anti-aliasing from the 1 mm template
    if sigma > 0:
        template = sitk.SmoothingRecursiveGaussian(template, float(sigma))
    fixed = sitk.Resample(template, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = nib_to_sitk(mni_brain_mask(), np.uint8)
    mask = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    radius = max(1, int(round(margin_mm / 2 / resolution)))
    mask = sitk.BinaryDilate(mask, [radius] * 3)
    return fixed, mask


def _prepare_moving(moving, resolution):
    """Clip bright outliers and bring a fine image down to about ``resolution`` mm."""
    arr = sitk.GetArrayViewFromImage(moving)
    hi = float(np.percentile(arr[arr > 0], 99.5)) if np.any(arr > 0) else float(arr.max())
    moving = sitk.Clamp(moving, sitk.sitkFloat32, 0.0, hi)
    spacing = np.asarray(moving.GetSpacing())
    if np.all(spacing >= 0.8 * resolution):
        return moving
    sigmas = [0.5 * float(np.sqrt(max(resolution**2 - s**2, 0.0))) for s in spacing]
    smoothed = sitk.SmoothingRecursiveGaussian(moving, sigmas)
    new_spacing = np.maximum(spacing, resolution)
    size = np.asarray(moving.GetSize()) * spacing / new_spacing
    ref = sitk.Image([max(2, int(np.ceil(s))) for s in size], sitk.sitkFloat32)
    ref.SetSpacing([float(s) for s in new_spacing])
    ref.SetDirection(moving.GetDirection())
    # keep the outer edge of the field of view where it was
    direction = np.asarray(moving.GetDirection()).reshape(3, 3)
    corner = (
        np.asarray(moving.GetOrigin()) - direction @ (spacing / 2) + direction @ (new_spacing / 2)
    )
    ref.SetOrigin([float(c) for c in corner])
    return sitk.Resample(smoothed, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


# --------------------------------------------------------------------------- registration
@dataclasses.dataclass
class RegistrationResult:
    """Outcome of :func:`register_to_template`.

    Attributes
    ----------
    transform : SimpleITK.AffineTransform
        Maps template (MNI, LPS mm) points to subject (scanner, LPS mm) points.
    metric : float
        Final Mattes mutual information (lower is better).
    init : str
        The starting point that won.
    init_metrics : dict
        Metric after the rigid stage for every starting point tried.
    iterations : dict
        Optimizer iterations per stage.
    """

    transform: sitk.Transform
    metric: float
    init: str
    init_metrics: dict[str, float | None]
    iterations: dict[str, Any]


def _method(fixed_mask, seed, sampling, levels, iterations, bins):
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift the user's seed by one
    reg.SetMetricSamplingPercentage(float(sampling), int(seed) % (2**31 - 2) + 1)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    # The step length is estimated once per level from the physical shift it causes. With a
    # fixed learning rate of 1.0 the first affine step can move matrix entries by up to 1.0
    # once the translation gradient has vanished after the rigid stage (observed: 26 mm
    # error from a good start); the estimate keeps the first step to about one voxel.
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-3,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
        estimateLearningRate=reg.Once,
        maximumStepSizeInPhysicalUnits=0.0,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = [int(s) for s, _ in levels]
    sigma = [float(g) for _, g in levels]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigma)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _initial_rigid(fixed, moving, mode):
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    if mode == "identity":
        tx = sitk.Euler3DTransform()
        tx.SetCenter(center)
        return tx
    flag = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if mode == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), flag)


def _as_affine(tx):
    """Flatten a (composite) rigid or affine transform into one AffineTransform."""
    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    if isinstance(tx, sitk.CompositeTransform):
        tx.FlattenTransform()
        if tx.GetNumberOfTransforms() != 1:
            raise RuntimeError("registration returned a composite of several transforms")
        tx = tx.GetNthTransform(0).Downcast()
    out = sitk.AffineTransform(3)
    out.SetCenter(tx.GetCenter())
    out.SetMatrix(tx.GetMatrix())
    out.SetTranslation(tx.GetTranslation())
    return out


def register_to_template(
    moving: nib.spatialimages.SpatialImage | sitk.Image,
    resolution: float = 2.0,
    *,
    init: str | Sequence[str] = INIT_MODES,
    seed: int = 0,
    sampling: float = 0.15,
    rigid_levels: Sequence[tuple[int, float]] = ((4, 4.0), (2, 2.0)),
    affine_levels: Sequence[tuple[int, float]] = ((2, 2.0), (1, 0.0)),
    iterations: int = 100,
    bins: int = 32,
    use_fixed_mask: bool = True,
) -> RegistrationResult:
    """Register a subject to the MNI template: rigid from several starts, then affine.

    Parameters
    ----------
    moving : nibabel image or SimpleITK.Image
        The subject's 3D T1w (bias-corrected; any orientation and voxel size).
    resolution : float, default=2.0
        Voxel size (mm) of the template used as fixed image (2 or 3 mm is plenty for an
        affine); a finer subject is smoothed and downsampled to it first.
    init : sequence of {"moments", "geometry", "identity"}
        Starting points of the rigid stage: centre of mass, centre of the field of view,
        or no shift. The one with the best metric after the rigid stage goes on to the
        affine stage (a partial field of view fails from a centre-of-mass start).
    seed : int, default=0
        Seed of the metric's random sampler: equal inputs give equal transforms.
    sampling : float, default=0.15
        Fraction of the fixed image's voxels sampled by the metric (random, seeded).
    rigid_levels, affine_levels : sequence of (shrink factor, smoothing sigma in mm)
        Multi-resolution schedule of each stage.
    iterations : int, default=100
        Maximum optimizer iterations per level.
    bins : int, default=32
        Histogram bins of the Mattes mutual information.
    use_fixed_mask : bool, default=True
        Sample the metric only in the template brain mask dilated by about 1 cm.

    Returns
    -------
    RegistrationResult
    """
    check_in_range("resolution", resolution, 0.5, 8.0)
    check_in_range("sampling", sampling, 0.001, 1.0)
    modes = [init] if isinstance(init, str) else list(init)
    if not modes:
        raise ValueError("init needs at least one starting point")
    modes = [look_up_option("init", m, INIT_MODES) for m in modes]
    if not isinstance(moving, sitk.Image):
        moving = nib_to_sitk(moving)
    fixed, mask = _fixed_images(float(resolution))
    problem = _Problem(
        fixed=fixed,
        moving=_prepare_moving(sitk.Cast(moving, sitk.sitkFloat32), float(resolution)),
        fixed_mask=mask if use_fixed_mask else None,
        seed=seed,
        sampling=sampling,
        iterations=iterations,
        bins=bins,
    )
    init_metrics, iters = {}, {}
    best = None
    for mode in modes:
        start = _rigid_stage(problem, mode, rigid_levels)
        init_metrics[mode] = None if start is None else start.metric
        if start is None:
            continue
        iters[f"rigid_{mode}"] = start.iterations
        if best is None or start.metric < best.metric:
            best = start
    if best is None:
        raise InputError(
            "registration to the template failed from every starting point "
            "(the image probably does not contain a head)"
        )
    tx, metric = _affine_stage(problem, best, affine_levels, iters)
    return RegistrationResult(
        transform=tx, metric=metric, init=best.mode, init_metrics=init_metrics, iterations=iters
    )


@dataclasses.dataclass(frozen=True)
class _Problem:
    """The images and metric settings shared by every stage of one registration."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: sitk.Image | None
    seed: int
    sampling: float
    iterations: int
    bins: int

    def method(self, levels):
        """A registration method with this metric over the multi-resolution ``levels``."""
        return _method(
            self.fixed_mask, self.seed, self.sampling, levels, self.iterations, self.bins
        )


@dataclasses.dataclass(frozen=True)
class _RigidStart:
    """The rigid stage from one starting point."""

    mode: str
    metric: float
    transform: sitk.Transform
    iterations: int


def _rigid_stage(problem, mode, levels):
    """Rigid registration from the starting point ``mode``; None when it fails.

    The metric is evaluated again at full resolution without smoothing, so that the starting
    points are compared on the same footing.
    """
    reg = problem.method(levels)
    reg.SetInitialTransform(_initial_rigid(problem.fixed, problem.moving, mode), inPlace=False)
    try:
        tx = reg.Execute(problem.fixed, problem.moving)
        value = float(reg.GetMetricValue())
    except RuntimeError as exc:  # e.g. "too many samples map outside moving image buffer"
        log.debug("rigid registration from %s start failed: %s", mode, exc)
        return None
    ev = problem.method(((1, 0.0),))
    ev.SetInitialTransform(tx)
    try:
        value = float(ev.MetricEvaluate(problem.fixed, problem.moving))
    except RuntimeError:
        pass
    log.debug("rigid from %s start: metric %.4f", mode, value)
    return _RigidStart(mode, value, tx, int(reg.GetOptimizerIteration()))


def _affine_stage(problem, start, levels, iters):
    """Affine registration from the best rigid start: (AffineTransform, metric).

    Records its iterations in ``iters``; when it fails, the rigid transform is kept.
    """
    affine = _as_affine(start.transform)
    reg = problem.method(levels)
    reg.SetInitialTransform(affine, inPlace=False)
    try:
        tx = _as_affine(reg.Execute(problem.fixed, problem.moving))
        metric = float(reg.GetMetricValue())
        iters["affine"] = int(reg.GetOptimizerIteration())
    except RuntimeError as exc:
        log.debug("affine stage failed, keeping the rigid transform: %s", exc)
        tx, metric = affine, float(start.metric)
    return tx, metric


# --------------------------------------------------------------------------- applying
def resample_to_grid(
    img: nib.spatialimages.SpatialImage | sitk.Image,
    transform: sitk.Transform,
    resolution: float = 2.0,
    interpolation: str = "linear",
    default: float = 0.0,
) -> nib.Nifti1Image:
    """Resample a subject image onto :func:`~neuroml.io.templates.target_grid` in one step.

    Parameters
    ----------
    img : nibabel image or SimpleITK.Image
        The subject's image in its own (scanner) space, full resolution.
    transform : SimpleITK.Transform
        Template -> subject transform (as returned by :func:`register_to_template`).
    resolution : float, default=2.0
        Voxel size of the target grid (mm).
    interpolation : {"linear", "bspline", "nearest"}
    default : float
        Value outside the subject's field of view.

    Returns
    -------
    nibabel.Nifti1Image
        float32, exactly ``target_grid(resolution)``.
    """
    interp = {
        "linear": sitk.sitkLinear,
        "bspline": sitk.sitkBSpline,
        "nearest": sitk.sitkNearestNeighbor,
    }[look_up_option("interpolation", interpolation, ["linear", "bspline", "nearest"])]
    affine, shape = target_grid(resolution)
    image = img if isinstance(img, sitk.Image) else nib_to_sitk(img)
    out = sitk.Resample(
        image, grid_reference(affine, shape), transform, interp, float(default), sitk.sitkFloat32
    )
    data = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    result = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    result.header.set_xyzt_units("mm", "sec")
    return result


def affine_matrix(transform: sitk.Transform) -> npt.NDArray[np.float64]:
    """The 4x4 RAS matrix of an affine template -> subject transform (MNI mm -> scanner mm)."""
    tx = _as_affine(transform)
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + c - a @ c
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def mni_to_scanner(transform: sitk.Transform, points_mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map MNI RAS points (mm) to the subject's scanner RAS points (mm).

    Parameters
    ----------
    transform : SimpleITK.Transform
        Template -> subject transform.
    points_mni : array-like of shape (N, 3)

    Returns
    -------
    ndarray of shape (N, 3)
    """
    pts = np.asarray(points_mni, dtype=np.float64).reshape(-1, 3)
    m = affine_matrix(transform)
    return pts @ m[:3, :3].T + m[:3, 3]


def write_transform(transform: sitk.Transform, path: PathLike) -> PathLike:
    """Write a transform in ITK text format, atomically."""
    from neuroml._utils.fileio import atomic_path

    with atomic_path(path, suffix=".txt") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def read_transform(path: PathLike) -> sitk.AffineTransform:
    """Read a transform written by :func:`write_transform` (as an AffineTransform)."""
    try:
        return _as_affine(sitk.ReadTransform(str(path)))
    except RuntimeError as exc:
        raise InputError(
            f"not a readable ITK transform ({str(exc).strip().splitlines()[-1]})", path
        ) from None
