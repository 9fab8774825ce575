"""One T1w scan to the MNI grid: the steps in order, and their outputs on disk.

``read (check_img, RAS) -> N4 -> rigid + affine registration to MNI -> one resampling onto
target_grid(resolution) -> template brain mask -> intensity normalization -> QC``.

:func:`preprocess_scan` returns the images in memory; :func:`preprocess_t1w` writes the
files of ``docs/layout.md`` (sidecar last, so its presence marks a finished scan);
:class:`T1wPreprocessor` is the same as a scikit-learn-style transformer.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroml._utils.fileio import save_nifti_atomic, sha256_file
from neuroml._utils.options import check_in_range, look_up_option
from neuroml._utils.provenance import package_versions
from neuroml._utils.types import PathLike
from neuroml._version import __version__
from neuroml.errors import ConfigError, InputError
from neuroml.io.bids import Scan, derivative_name, scan_entities
from neuroml.io.derivatives import (
    StepTimer,
    discard_sidecar,
    itk_threads,
    params_key,
    relative_source,
    remove_stale_temporaries_beside,
    sidecar_is_current,
    write_sidecar_last,
)
from neuroml.io.image import check_img
from neuroml.io.templates import TEMPLATE_SPACE, brain_mask_on_grid, res_entity
from neuroml.preprocessing.anat import (
    NORMALIZATIONS,
    check_plausible_t1w,
    n4_bias_correct_sitk,
    normalize_array,
)
from neuroml.preprocessing.qc import fov_mask, qc_figure, registration_qc
from neuroml.preprocessing.registration import (
    INIT_MODES,
    affine_matrix,
    nib_to_sitk,
    register_to_template,
    resample_to_grid,
    write_transform,
)

__all__ = [
    "PIPELINE_VERSION",
    "DEFAULT_PARAMS",
    "T1wResult",
    "T1wPreprocessor",
    "check_params",
    "output_paths",
    "preprocess_scan",
    "preprocess_t1w",
    "is_complete",
]

log = logging.getLogger("neuroml")

#: The pipeline's version, recorded in each sidecar and compared on resume: a change that
#: alters the outputs bumps it.
PIPELINE_VERSION = "1"

#: Parameters that change the outputs (all recorded in the sidecar and compared on resume).
DEFAULT_PARAMS = {
    "resolution": 2.0,
    "normalization": "zscore",
    "registration_resolution": None,  # None: the target resolution clipped to [2, 3] mm
    "init": list(INIT_MODES),
    "sampling": 0.15,
    "seed": 0,
    "n4": True,
    "n4_spacing_mm": 6.0,
    "qc_min_r": 0.6,
    "qc_min_coverage": 0.8,
}


def check_params(**params: Any) -> dict[str, Any]:
    """Validate and complete preprocessing parameters; return the full, JSON-ready dict.

    Raises
    ------
    ConfigError
        For an unknown name (with a "did you mean" hint) or a bad value.
    """
    out: dict[str, Any] = dict(DEFAULT_PARAMS)
    for key, value in params.items():
        out[look_up_option("preprocessing parameter", key, list(DEFAULT_PARAMS))] = value
    out["resolution"] = float(check_in_range("resolution", out["resolution"], 0.5, 8.0))
    out["normalization"] = look_up_option("normalization", out["normalization"], NORMALIZATIONS)
    if out["registration_resolution"] is None:
        out["registration_resolution"] = float(min(max(out["resolution"], 2.0), 3.0))
    out["registration_resolution"] = float(
        check_in_range("registration_resolution", out["registration_resolution"], 1.0, 8.0)
    )
    init = out["init"]
    init = [init] if isinstance(init, str) else list(init)
    if not init:
        raise ConfigError(f"The 'init' parameter needs at least one of {list(INIT_MODES)}.")
    out["init"] = [look_up_option("init", m, INIT_MODES) for m in init]
    out["sampling"] = float(check_in_range("sampling", out["sampling"], 0.01, 1.0))
    out["seed"] = int(check_in_range("seed", out["seed"], 0, 2**31 - 3, kind=(int, np.integer)))
    if not isinstance(out["n4"], (bool, np.bool_)):
        raise ConfigError(f"The 'n4' parameter must be True or False. Got {out['n4']!r} instead.")
    out["n4"] = bool(out["n4"])
    out["n4_spacing_mm"] = float(check_in_range("n4_spacing_mm", out["n4_spacing_mm"], 1.0, 16.0))
    out["qc_min_r"] = float(check_in_range("qc_min_r", out["qc_min_r"], -1.0, 1.0))
    out["qc_min_coverage"] = float(
        check_in_range("qc_min_coverage", out["qc_min_coverage"], 0.0, 1.0)
    )
    return out


@dataclasses.dataclass
class T1wResult:
    """In-memory outputs of :func:`preprocess_scan`.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        Normalized float32 image on ``target_grid(resolution)``; 0 outside the mask.
    mask : nibabel.Nifti1Image
        The template brain mask on the same grid (uint8).
    transform : SimpleITK.AffineTransform
        Template -> subject transform (ITK convention, LPS).
    qc : dict
        See :func:`~neuroml.preprocessing.qc.registration_qc`.
    timings : StepTimer
        Wall-clock and CPU seconds per step (``timings.as_dict()``).
    registration : dict
        Winning start, metric values, iterations.
    fov : ndarray of bool
        Grid voxels inside the scan's field of view.
    """

    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    transform: sitk.Transform
    qc: dict[str, Any]
    timings: StepTimer
    registration: dict[str, Any]
    fov: npt.NDArray[np.bool_]


def _load(img, label, params=None):
    img = check_img(img, name=label)
    img = nib.as_closest_canonical(img)
    check_plausible_t1w(img, label)
    if params is not None:
        img = downsample_fine(img, min(params["resolution"], params["registration_resolution"]))
    return img


def downsample_fine(img, resolution):
    """Block-average a scan whose voxels are finer than half of ``resolution`` (mm).

    Each axis is reduced by the integer factor ``floor(resolution / (2 * voxel size))``, so
    the voxels stay at most half the target size (nothing changes for 1 mm scans and a 2 mm
    target). Every later step (N4, registration, resampling) then works on the reduced
    volume: a 512 x 512 x 400 scan at 0.5 mm needs 8 times less memory and time, and the
    block mean is a better anti-aliasing filter than one linear interpolation to the grid.

    Returns
    -------
    nibabel.Nifti1Image
        ``img`` itself when no axis is reduced; else float32 data and the matching affine
        (voxel centres of each block; at most ``factor - 1`` edge voxels are dropped).
    """
    zooms = np.sqrt((np.asarray(img.affine[:3, :3]) ** 2).sum(axis=0))
    factors = [max(1, int(np.floor(resolution / (2 * z) + 1e-6))) for z in zooms]
    factors = [min(f, max(1, s // 8)) for f, s in zip(factors, img.shape[:3])]
    if factors == [1, 1, 1]:
        return img
    fx, fy, fz = factors
    data = np.asanyarray(img.dataobj)
    nx, ny, nz = (s // f for s, f in zip(data.shape[:3], factors))
    out = np.empty((nx, ny, nz), dtype=np.float32, order="F")
    for k in range(nz):  # slab by slab: no full-size temporary
        slab = np.asarray(data[: nx * fx, : ny * fy, k * fz : (k + 1) * fz], dtype=np.float32)
        out[:, :, k] = slab.reshape(nx, fx, ny, fy, fz).mean(axis=(1, 3, 4), dtype=np.float64)
    scale = np.diag([fx, fy, fz, 1.0])
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0
    log.info(
        "voxels %s mm are finer than needed for a %g mm grid: block-averaged by %s",
        tuple(round(float(z), 3) for z in zooms),
        resolution,
        tuple(factors),
    )
    reduced = nib.Nifti1Image(out, img.affine @ scale)
    reduced.header.set_xyzt_units("mm", "sec")
    return reduced


def _label(img, name=None):
    if name is not None:
        return str(name)
    if isinstance(img, (str, os.PathLike)):
        return str(img)
    return getattr(img, "get_filename", lambda: None)()


def _bias_correct(img, params, label=None):
    image = sitk.Clamp(nib_to_sitk(img), sitk.sitkFloat32, 0.0)
    if not params["n4"]:
        return image
    try:
        corrected, _ = n4_bias_correct_sitk(image, target_spacing_mm=params["n4_spacing_mm"])
    except InputError as exc:
        raise InputError(str(exc), label) from None
    return corrected


def _register(image, params):
    res = register_to_template(
        image,
        params["registration_resolution"],
        init=params["init"],
        seed=params["seed"],
        sampling=params["sampling"],
    )
    info = {
        "init": res.init,
        "metric": round(res.metric, 5),
        "init_metrics": {
            k: (None if v is None else round(v, 5)) for k, v in res.init_metrics.items()
        },
        "iterations": res.iterations,
    }
    return res.transform, info


def _finish(image, native, transform, params, timer, label=None):
    res = params["resolution"]
    with timer("resample"):
        registered = resample_to_grid(image, transform, res)
    with timer("qc"):
        mask_img = brain_mask_on_grid(res)
        mask = np.asarray(mask_img.dataobj) > 0
        data = np.asarray(registered.dataobj)
        to_scanner = affine_matrix(transform)
        fov = fov_mask(res, to_scanner, native.affine, native.shape)
        qc = registration_qc(
            data,
            res,
            to_scanner,
            fov,
            min_r=params["qc_min_r"],
            min_coverage=params["qc_min_coverage"],
        )
    with timer("normalize"):
        try:
            # statistics over the brain the scan covers; voxels it does not cover stay 0
            norm = normalize_array(data, mask & fov, params["normalization"])
        except InputError as exc:
            raise InputError(
                f"{exc} after registration (the registration probably failed)", label
            ) from None
        out = nib.Nifti1Image(norm, registered.affine)
        out.header.set_xyzt_units("mm", "sec")
        out.header["descrip"] = f"neuroml {__version__} preproc".encode()[:79]
    return out, mask_img, qc, fov


def preprocess_scan(
    img: PathLike | nib.spatialimages.SpatialImage,
    n_threads: int | None = 1,
    name: str | None = None,
    **params: Any,
) -> T1wResult:
    """Preprocess one T1w image in memory (no files written).

    Parameters
    ----------
    img : str, Path or nibabel image
        A 3D T1w in any format nibabel reads.
    n_threads : int or None, default=1
        SimpleITK threads for this call (None: leave SimpleITK's setting). Results are
        identical for identical inputs, parameters and thread count; another thread count
        changes them slightly (summation order; about 0.01 mm), so batches use 1 thread
        per scan and run scans in parallel instead.
    name : str, optional
        Name used in error messages for an in-memory image.
    **params
        See :data:`DEFAULT_PARAMS`: ``resolution``, ``normalization``,
        ``registration_resolution``, ``init``, ``sampling``, ``seed``, ``n4``,
        ``n4_spacing_mm``, ``qc_min_r``, ``qc_min_coverage``.

    Returns
    -------
    T1wResult

    Raises
    ------
    InputError
        For an unreadable or implausible image, or a registration that fails everywhere.
    ConfigError
        For a bad parameter.
    """
    params = check_params(**params)
    label = _label(img, name)
    timer = StepTimer()
    with itk_threads(n_threads):
        with timer("load"):
            native = _load(img, label, params)
        with timer("n4"):
            image = _bias_correct(native, params, label)
        with timer("registration"):
            try:
                transform, info = _register(image, params)
            except InputError as exc:
                raise InputError(str(exc), label) from None
        out, mask, qc, fov = _finish(image, native, transform, params, timer, label)
    return T1wResult(
        image=out, mask=mask, transform=transform, qc=qc, timings=timer, registration=info, fov=fov
    )


# --------------------------------------------------------------------------- files
def output_paths(
    entities: Mapping[str, str], out_dir: PathLike, resolution: float
) -> dict[str, Path]:
    """The output files of one scan (``docs/layout.md``).

    Returns
    -------
    dict
        ``preproc``, ``sidecar``, ``mask``, ``xfm``, ``figure`` -> Path.

    Examples
    --------
    >>> p = output_paths({"sub": "01", "ses": "a"}, Path("/d"), 2.0)
    >>> p["preproc"].as_posix()
    '/d/sub-01/ses-a/anat/sub-01_ses-a_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz'
    >>> p["figure"].as_posix()
    '/d/sub-01/figures/sub-01_ses-a_res-2_desc-qc_T1w.png'
    >>> p["xfm"].name
    'sub-01_ses-a_res-2_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt'

    The transform and the figure name the resolution too (the registration runs on the
    template at that resolution), so two resolutions in one folder keep separate files.
    """
    out_dir = Path(out_dir)
    anat = out_dir / f"sub-{entities['sub']}"
    if entities.get("ses"):
        anat = anat / f"ses-{entities['ses']}"
    anat = anat / "anat"
    space = {"space": TEMPLATE_SPACE, "res": res_entity(resolution)}
    return {
        "preproc": anat / derivative_name(entities, "T1w", ".nii.gz", desc="preproc", **space),
        "sidecar": anat / derivative_name(entities, "T1w", ".json", desc="preproc", **space),
        "mask": anat / derivative_name(entities, "mask", ".nii.gz", desc="brain", **space),
        "xfm": anat
        / derivative_name(
            entities,
            "xfm",
            ".txt",
            res=space["res"],
            **{"from": "T1w", "to": TEMPLATE_SPACE, "mode": "image"},
        ),
        "figure": out_dir
        / f"sub-{entities['sub']}"
        / "figures"
        / derivative_name(entities, "T1w", ".png", res=space["res"], desc="qc"),
    }


def is_complete(
    scan: Scan | PathLike, out_dir: PathLike, sha256: str | None = None, **params: Any
) -> bool:
    """True when a scan's outputs are all there, intact, and its sidecar matches input and parameters.

    Intact: each output has the size and SHA-256 that the sidecar records (see
    :func:`~neuroml.io.derivatives.sidecar_is_current`), so a truncated or replaced file makes
    the scan incomplete.

    Parameters
    ----------
    scan : Scan or path
    out_dir : str or Path
    sha256 : str, optional
        The input's checksum, if already known.
    **params
        Preprocessing parameters (see :data:`DEFAULT_PARAMS`).
    """
    path, entities = scan_entities(scan)
    params = check_params(**params)
    paths = output_paths(entities, out_dir, params["resolution"])
    return sidecar_is_current(
        paths["sidecar"],
        [p for k, p in paths.items() if k != "sidecar"],
        params_key(PIPELINE_VERSION, params),
        path,
        sha256,
    )


def preprocess_t1w(
    scan: Scan | PathLike,
    out_dir: PathLike,
    resolution: float = 2.0,
    normalization: str = "zscore",
    *,
    bids_dir: PathLike | None = None,
    participant_label: str | None = None,
    n_threads: int | None = 1,
    **params: Any,
) -> dict[str, Any]:
    """Preprocess one T1w scan and write its derivatives (``docs/layout.md``).

    Parameters
    ----------
    scan : str, Path or neuroml.io.bids.Scan
        The raw T1w. A plain path needs a BIDS name (``sub-01[_ses-a][_run-1]_T1w.nii.gz``)
        or ``participant_label``.
    out_dir : str or Path
        Derivatives folder.
    resolution : float, default=2.0
        Target grid voxel size in mm (1, 1.5, 2, 3...).
    normalization : {"zscore", "percentile"}, default="zscore"
        Robust z-score (median, IQR/1.349) or 1st-99th percentile to 0-1, inside the
        template brain mask; 0 outside.
    bids_dir : str or Path, optional
        Root of the raw dataset, to record ``SourceFile`` relative to it.
    participant_label : str, optional
        Overrides the ``sub`` entity of the file name.
    n_threads : int or None, default=1
        SimpleITK threads (see :func:`preprocess_scan`).
    **params
        Other parameters of :data:`DEFAULT_PARAMS`.

    Returns
    -------
    dict
        Paths ``preproc``, ``sidecar``, ``mask``, ``xfm``, ``figure``, plus ``qc`` and
        ``timings``.

    Raises
    ------
    InputError, ConfigError
    """
    params = check_params(resolution=resolution, normalization=normalization, **params)
    path, entities = scan_entities(scan, participant_label)
    paths = output_paths(entities, out_dir, params["resolution"])
    remove_stale_temporaries_beside(paths.values())
    t0, c0 = time.perf_counter(), time.process_time()
    sha = sha256_file(path) if path.is_file() else None
    result = preprocess_scan(path, n_threads=n_threads, **params)
    discard_sidecar(paths["sidecar"])
    _write_images(result, paths, params, derivative_name(entities, "T1w", ""), n_threads)
    timings = result.timings.as_dict()
    timings["wall_s"]["total"] = round(time.perf_counter() - t0, 3)
    timings["cpu_s"]["total"] = round(time.process_time() - c0, 3)
    source = relative_source(path, bids_dir)
    write_sidecar_last(
        paths["sidecar"],
        _sidecar(result, paths, params, source, sha, timings, n_threads),
        {k: p for k, p in paths.items() if k != "sidecar"},
    )
    return {**paths, "qc": result.qc, "timings": timings}


def _write_images(result, paths, params, name, n_threads):
    """Write the QC figure, the image, the mask and the transform (each atomically), timed."""
    timer = result.timings
    with itk_threads(n_threads):
        with timer("qc"):
            qc_figure(
                np.asarray(result.image.dataobj),
                params["resolution"],
                paths["figure"],
                title=f"{name}   r={result.qc['correlation']:.2f}",
                fov=result.fov,
            )
        with timer("write"):
            save_nifti_atomic(result.image, paths["preproc"])
            save_nifti_atomic(result.mask, paths["mask"])
            write_transform(result.transform, paths["xfm"])


def _sidecar(result, paths, params, source, sha, timings, n_threads):
    """The sidecar's fields (``OutputFiles`` is added when it is written)."""
    return {
        "Description": "T1w: N4 bias-field correction, rigid then affine registration to "
        f"{TEMPLATE_SPACE} (SimpleITK, Mattes MI), one linear resampling onto the "
        f"{params['resolution']:g} mm template grid, intensity normalization "
        "inside the template brain mask (0 outside it, and 0 where the mask "
        "lies outside the scan's field of view)",
        "SourceFile": source,
        "SourceSHA256": sha,
        "Sources": [f"bids:raw:{source}"],
        "Space": TEMPLATE_SPACE,
        "Resolution": params["resolution"],
        "SkullStripped": True,
        "Normalization": params["normalization"],
        "Parameters": params_key(PIPELINE_VERSION, params),
        "Transform": paths["xfm"].name,
        "Mask": paths["mask"].name,
        "Registration": result.registration,
        "QC": result.qc,
        "Timings": timings,
        "Threads": n_threads,
        "SoftwareVersions": package_versions(),
    }


# --------------------------------------------------------------------------- estimator
class T1wPreprocessor:
    """T1w to the MNI grid as a scikit-learn-style transformer.

    ``fit(img)`` bias-corrects the image and learns its affine registration to the
    template; ``transform(img)`` bias-corrects an image of the same subject and space
    and resamples it with the learned transform (one interpolation), then normalizes it;
    ``fit_transform(img)`` does both for one image. The parameters are those of
    :data:`DEFAULT_PARAMS` (checked by :func:`check_params` in ``fit``).

    Parameters
    ----------
    resolution : float, default=2.0
    normalization : {"zscore", "percentile"}, default="zscore"
    registration_resolution : float, optional
        Grid of the registration; default the target resolution clipped to [2, 3] mm.
    init : str or sequence of str, optional
        Starting points of the rigid search (default: every one of ``INIT_MODES``).
    sampling : float, default=0.15
    seed : int, default=0
    n4 : bool, default=True
    n4_spacing_mm : float, default=6.0
    qc_min_r : float, default=0.6
    qc_min_coverage : float, default=0.8
    n_threads : int or None, default=1
        SimpleITK threads (see :func:`preprocess_scan`).

    Attributes
    ----------
    transform_ : SimpleITK.AffineTransform
        Template -> subject transform.
    registration_ : dict
    qc_ : dict
        QC of the last transformed image.

    Examples
    --------
    >>> pre = T1wPreprocessor(resolution=2.0)              # doctest: +SKIP
    >>> img_mni = pre.fit_transform("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> img_mni.shape                                      # doctest: +SKIP
    (73, 91, 78)
    """

    def __init__(
        self,
        resolution: float = 2.0,
        normalization: str = "zscore",
        registration_resolution: float | None = None,
        init: str | Sequence[str] | None = None,
        sampling: float = 0.15,
        seed: int = 0,
        n4: bool = True,
        n4_spacing_mm: float = 6.0,
        qc_min_r: float = 0.6,
        qc_min_coverage: float = 0.8,
        n_threads: int | None = 1,
    ) -> None:
        self.resolution = resolution
        self.normalization = normalization
        self.registration_resolution = registration_resolution
        self.init = init
        self.sampling = sampling
        self.seed = seed
        self.n4 = n4
        self.n4_spacing_mm = n4_spacing_mm
        self.qc_min_r = qc_min_r
        self.qc_min_coverage = qc_min_coverage
        self.n_threads = n_threads

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters and their values (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> T1wPreprocessor:
        """Set parameters by name; an unknown name is a :class:`ConfigError` with a hint."""
        for key, value in params.items():
            setattr(
                self, look_up_option("T1wPreprocessor parameter", key, self._param_names()), value
            )
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != _INIT_DEFAULTS.get(k)}
        return f"T1wPreprocessor({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _params(self):
        params = {k: v for k, v in self.get_params().items() if k != "n_threads"}
        if params["init"] is None:
            del params["init"]
        return check_params(**params)

    def fit(
        self, img: PathLike | nib.spatialimages.SpatialImage, y: object = None
    ) -> T1wPreprocessor:
        """Learn the registration of ``img`` to the template; return ``self``."""
        self._fit(img)
        return self

    def _fit(self, img):
        params = self._params()
        label = _label(img)
        with itk_threads(self.n_threads):
            native = _load(img, label, params)
            image = _bias_correct(native, params, label)
            self.transform_, self.registration_ = _register(image, params)
        return native, image, params

    def transform(self, img: PathLike | nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
        """Resample ``img`` (same subject) onto the MNI grid and normalize it."""
        if not hasattr(self, "transform_"):
            raise ConfigError(
                "This T1wPreprocessor is not fitted yet: call fit(img) or fit_transform(img) first."
            )
        params = self._params()
        label = _label(img)
        with itk_threads(self.n_threads):
            native = _load(img, label, params)
            image = _bias_correct(native, params, label)
            out, _, self.qc_, _ = _finish(
                image, native, self.transform_, params, StepTimer(), label
            )
        return out

    def fit_transform(
        self, img: PathLike | nib.spatialimages.SpatialImage, y: object = None
    ) -> nib.Nifti1Image:
        """Fit on ``img`` and return it on the MNI grid (bias correction done once)."""
        native, image, params = self._fit(img)
        with itk_threads(self.n_threads):
            out, _, self.qc_, _ = _finish(image, native, self.transform_, params, StepTimer())
        return out


_INIT_DEFAULTS = {
    name: p.default for name, p in inspect.signature(T1wPreprocessor.__init__).parameters.items()
}
