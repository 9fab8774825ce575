"""One BOLD series to 3D maps on the MNI grid of the T1w: the steps and their files.

``read (check_img, 4D) -> onto target_grid(resolution)`` (a series already in MNI space,
``space-MNI*``, is resampled; any other is registered through its mean volume with the
T1w registration, then each volume resampled once) ``-> brain mask x coverage -> confounds
(fMRIPrep table with a nilearn strategy, or none for plain BOLD) -> cleaning
(:func:`~neuroml.functional.clean.clean_series`) -> smoothing -> maps``:

=========  ===============================================================  ===============
desc       map                                                              computed on
=========  ===============================================================  ===============
mean       temporal mean of the BOLD                                        raw, on grid
alff       ALFF in ``band`` (0.01-0.08 Hz)                                  residual, smoothed
falff      fALFF                                                            residual, smoothed
reho       Kendall's W, 27 neighbours (unsmoothed data, as usual)           filtered
conn<X>    Fisher z with seed ``X`` (sphere) or network ``X`` (AAL regions)   filtered, smoothed
=========  ===============================================================  ===============

Maps are z-scored inside the mask (``map_normalization="zscore"``) so that subjects and
scanners are comparable; the atlas time series (filtered, unsmoothed) are kept for the
connectome baseline. :func:`neuroml.functional.files.preprocess_bold` writes the files (sidecar last).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroml._utils.fileio import read_json
from neuroml._utils.options import check_in_range, look_up_option
from neuroml._utils.types import PathLike
from neuroml._version import __version__
from neuroml.errors import ConfigError, InputError
from neuroml.functional.clean import STRATEGIES, clean_series, find_confounds_file, load_confounds
from neuroml.functional.maps import (
    alff_array,
    check_band,
    falff_array,
    reho_array,
    seed_connectivity_array,
    sphere_mask,
    zscore_in_mask,
)
from neuroml.io.bids import check_label, parse_entities, sidecar_chain
from neuroml.io.image import check_img, header_tr
from neuroml.io.templates import brain_mask_on_grid, target_grid

if TYPE_CHECKING:
    import pandas as pd
    import SimpleITK as sitk

__all__ = [
    "FUNC_PIPELINE_VERSION",
    "FUNC_DEFAULT_PARAMS",
    "BoldResult",
    "check_func_params",
    "map_names",
    "repetition_time",
    "in_mni_space",
    "bold_to_grid",
    "compute_maps",
    "preprocess_bold_scan",
]

log = logging.getLogger("neuroml")

#: Bumped whenever a change makes earlier outputs stale (checked on resume).
FUNC_PIPELINE_VERSION = "1"

#: Parameters that change the outputs (recorded in the sidecar, compared on resume).
FUNC_DEFAULT_PARAMS = {
    "resolution": 2.0,
    "confounds": "auto",  # auto: "simple" with an fMRIPrep table, "none" without
    "confound_options": {},  # passed to nilearn's load_confounds_strategy
    "detrend": True,
    "high_pass": 0.01,
    "low_pass": 0.1,
    "standardize": True,
    "smoothing_fwhm": 6.0,
    "band": [0.01, 0.08],
    "reho_neighbourhood": 27,
    "seeds": {"pcc": [0.0, -52.0, 26.0]},
    "seed_radius_mm": 8.0,
    "networks": {},
    "atlas": "aal",
    "map_normalization": "zscore",
    "tr": None,
    "min_volumes": 20,
    "min_coverage": 0.5,
    "registration_resolution": None,
    "sampling": 0.15,
    "seed": 0,
}

_BASE_MAPS = ("mean", "alff", "falff", "reho")
_DROP = ("space", "res", "den", "desc", "cohort")
_PLAIN_NOTE = (
    "none: plain BOLD without an fMRIPrep confounds table, so no motion or physiological "
    "regression and no scrubbing; only detrending and band-pass filtering"
)


def check_func_params(**params: Any) -> dict[str, Any]:
    """Validate and complete BOLD parameters; return the full, JSON-ready dict.

    Raises
    ------
    ConfigError
        For an unknown name (with a "did you mean" hint) or a bad value.
    """
    out = json.loads(json.dumps(FUNC_DEFAULT_PARAMS))
    for key, value in params.items():
        out[look_up_option("functional parameter", key, list(FUNC_DEFAULT_PARAMS))] = value
    out["resolution"] = float(check_in_range("resolution", out["resolution"], 0.5, 8.0))
    _check_cleaning_params(out)
    _check_map_params(out)
    _check_run_params(out)
    return out


def _check_cleaning_params(out):
    """Check and convert, in place, the confound, filter and smoothing parameters."""
    out["confounds"] = look_up_option("confounds", out["confounds"], ["auto", *STRATEGIES])
    if not isinstance(out["confound_options"], dict):
        raise ConfigError(
            "The 'confound_options' parameter must be a mapping of load_confounds options."
        )
    for key in ("detrend", "standardize"):
        if not isinstance(out[key], bool):
            raise ConfigError(
                f"The {key!r} parameter must be True or False. Got {out[key]!r} instead."
            )
    for key in ("high_pass", "low_pass"):
        if out[key] is not None:
            out[key] = float(check_in_range(key, out[key], 0.0, 10.0))
    if (
        out["high_pass"] is not None
        and out["low_pass"] is not None
        and out["high_pass"] >= out["low_pass"]
    ):
        raise ConfigError(
            f"high_pass ({out['high_pass']}) must be below low_pass ({out['low_pass']})."
        )
    out["smoothing_fwhm"] = float(
        check_in_range("smoothing_fwhm", out["smoothing_fwhm"] or 0.0, 0.0, 30.0)
    )


def _check_map_params(out):
    """Check and convert, in place, the parameters of the maps: band, ReHo, seeds, networks, atlas."""
    band = out["band"]
    if (
        not isinstance(band, (list, tuple))
        or len(band) != 2
        or not 0 <= float(band[0]) < float(band[1])
    ):
        raise ConfigError(
            f"The 'band' parameter must be [low, high] in Hz with low < high. Got {band!r} instead."
        )
    out["band"] = [float(band[0]), float(band[1])]
    out["reho_neighbourhood"] = int(
        look_up_option("reho_neighbourhood", out["reho_neighbourhood"], [7, 19, 27])
    )
    for key in ("seeds", "networks"):
        if not isinstance(out[key], dict):
            raise ConfigError(
                f"The {key!r} parameter must be a mapping of name -> "
                f"{'[x, y, z] in MNI mm' if key == 'seeds' else 'list of atlas region names'}."
            )
        for name in out[key]:
            check_label(name, what=f"{key[:-1]} name")
    for name, xyz in out["seeds"].items():
        if not isinstance(xyz, (list, tuple)) or len(xyz) != 3:
            raise ConfigError(f"seed {name!r} must be [x, y, z] in MNI mm. Got {xyz!r} instead.")
        out["seeds"][name] = [float(v) for v in xyz]
    clash = set(out["seeds"]) & set(out["networks"])
    if clash:
        raise ConfigError(f"names used both as seed and network: {sorted(clash)}")
    out["seed_radius_mm"] = float(
        check_in_range("seed_radius_mm", out["seed_radius_mm"], 1.0, 50.0)
    )
    from neuroml.io.atlases import ATLASES

    out["atlas"] = look_up_option("atlas", out["atlas"], ATLASES)
    out["map_normalization"] = look_up_option(
        "map_normalization", out["map_normalization"], ["zscore", "none"]
    )


def _check_run_params(out):
    """Check and convert, in place, TR, minimum volumes and coverage, registration and seed."""
    if out["tr"] is not None:
        out["tr"] = float(check_in_range("tr", out["tr"], 0.01, 60.0))
    out["min_volumes"] = int(
        check_in_range("min_volumes", out["min_volumes"], 3, 100000, kind=(int,))
    )
    out["min_coverage"] = float(check_in_range("min_coverage", out["min_coverage"], 0.0, 1.0))
    if out["registration_resolution"] is None:
        out["registration_resolution"] = float(min(max(out["resolution"], 3.0), 4.0))
    out["registration_resolution"] = float(
        check_in_range("registration_resolution", out["registration_resolution"], 1.0, 8.0)
    )
    out["sampling"] = float(check_in_range("sampling", out["sampling"], 0.01, 1.0))
    out["seed"] = int(check_in_range("seed", out["seed"], 0, 2**31 - 3, kind=(int, np.integer)))


def map_names(params: Mapping[str, Any]) -> list[str]:
    """desc labels of the maps written with these parameters.

    Examples
    --------
    >>> map_names(check_func_params())
    ['mean', 'alff', 'falff', 'reho', 'connpcc']
    """
    return [
        *_BASE_MAPS,
        *(f"conn{n}" for n in params["seeds"]),
        *(f"conn{n}" for n in params["networks"]),
    ]


def repetition_time(
    img: nib.spatialimages.SpatialImage, path: PathLike | None = None, override: float | None = None
) -> float:
    """The repetition time in seconds: ``override``, else the BIDS sidecars', else the header's.

    The sidecars are those that apply to ``path`` under BIDS inheritance, nearest first (the
    one beside the file, then those of the session, subject and dataset folders, e.g. a
    dataset-level ``task-rest_bold.json``); the first with a positive ``RepetitionTime`` wins.
    The header's TR is ``pixdim[4]`` (:func:`neuroml.io.image.header_tr`), which
    :func:`~neuroml.io.image.check_img` keeps.

    Raises
    ------
    InputError
        If none is known (naming the file), or a sidecar that applies is unreadable or not
        valid JSON (naming it: skipping it would silently use a farther sidecar's TR).
    """
    if override is not None:
        return float(override)
    if path is not None:
        for side in sidecar_chain(path):
            try:
                meta = read_json(side)
            except OSError as exc:
                raise InputError(
                    f"cannot read the sidecar that applies to {Path(path).name} ({exc.strerror or exc})",
                    side,
                ) from None
            # a broken sidecar must not let a farther one's TR win silently
            except InputError as exc:
                reason = str(exc).removeprefix(f"{exc.path}: ") if exc.path else str(exc)
                raise InputError(
                    f"{reason}; it applies to {Path(path).name} under BIDS "
                    "inheritance: fix it (or pass tr=)",
                    side,
                ) from None
            if not isinstance(meta, dict):
                raise InputError(
                    f"sidecar is not a JSON object; it applies to {Path(path).name} under BIDS "
                    "inheritance: fix it (or pass tr=)",
                    side,
                )
            tr = meta.get("RepetitionTime")
            if (
                isinstance(tr, (int, float))
                and not isinstance(tr, bool)
                and np.isfinite(tr)
                and tr > 0
            ):
                return float(tr)
    tr = header_tr(img)
    if tr is not None:
        return tr
    raise InputError(
        "repetition time unknown (no positive RepetitionTime in the JSON sidecars that apply under "
        "BIDS inheritance, none in the header); pass tr=",
        path,
    )


def in_mni_space(entities: Mapping[str, str]) -> bool:
    """True when the BIDS entities say the series is already in an MNI space (``space-MNI*``)."""
    return str(entities.get("space", "")).upper().startswith("MNI")


@dataclasses.dataclass
class BoldResult:
    """In-memory outputs of :func:`preprocess_bold_scan`.

    Attributes
    ----------
    maps : dict of str to nibabel.Nifti1Image
        desc label -> 3D float32 map on the grid.
    mask : nibabel.Nifti1Image
        Brain voxels the series covers (uint8).
    timeseries : pandas.DataFrame
        Atlas region means of the filtered series (kept volumes x regions).
    info : dict
        TR, volumes, dropped volumes, confounds, space handling, coverage, timings.
    transform : SimpleITK.Transform or None
        Template -> BOLD transform when the series was registered.
    """

    maps: dict[str, nib.Nifti1Image]
    mask: nib.Nifti1Image
    timeseries: pd.DataFrame
    info: dict[str, Any]
    transform: sitk.Transform | None = None


def _mean_volume(img):
    data = np.asarray(img.dataobj, dtype=np.float32)
    return nib.Nifti1Image(data.mean(axis=3), img.affine)


def bold_to_grid(
    img: nib.Nifti1Image, resolution: float, in_mni: bool, params: Mapping[str, Any]
) -> tuple[npt.NDArray[np.float32], dict[str, Any], sitk.Transform | None]:
    """Bring a 4D series onto ``target_grid(resolution)``.

    Returns
    -------
    data : ndarray of float32, shape (X, Y, Z, T)
    info : dict
        ``space_handling`` and, when registered, ``registration``.
    transform : SimpleITK.Transform or None
    """
    affine, shape = target_grid(resolution)
    if in_mni:
        from nilearn.image import resample_img

        out = resample_img(
            img,
            target_affine=affine,
            target_shape=shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
        return (
            np.asarray(out.dataobj, dtype=np.float32),
            {
                "space_handling": "already in MNI space (space- entity): resampled linearly onto the grid"
            },
            None,
        )
    import SimpleITK as sitk

    from neuroml.preprocessing.registration import (
        nib_to_sitk,
        register_to_template,
        resample_to_grid,
    )

    canon = nib.as_closest_canonical(img)
    mean = _mean_volume(canon)
    zooms = np.linalg.norm(np.asarray(canon.affine)[:3, :3], axis=0)
    extent = zooms * np.asarray(canon.shape[:3])
    if np.any(extent < 40.0) or np.any(zooms > 8.0 + 1e-3):
        raise InputError(
            f"cannot register to MNI: field of view {' x '.join(f'{e:.0f}' for e in extent)} mm "
            f"with {' x '.join(f'{z:g}' for z in zooms)} mm voxels (needs at least 40 mm along "
            "every axis and voxels up to 8 mm); pass a series already in MNI space (space-MNI*)"
        )
    moving = sitk.Clamp(nib_to_sitk(mean), sitk.sitkFloat32, 0.0)
    res = register_to_template(
        moving, params["registration_resolution"], seed=params["seed"], sampling=params["sampling"]
    )
    data = np.asarray(canon.dataobj, dtype=np.float32)
    out = np.empty((*shape, data.shape[3]), dtype=np.float32)
    for t in range(data.shape[3]):
        vol = nib.Nifti1Image(data[..., t], canon.affine)
        out[..., t] = np.asarray(resample_to_grid(vol, res.transform, resolution).dataobj)
    info = {
        "space_handling": "registered to MNI through its mean volume (rigid then affine, SimpleITK "
        "Mattes MI, as the T1w), each volume resampled once",
        "registration": {
            "init": res.init,
            "metric": round(res.metric, 5),
            "iterations": res.iterations,
        },
    }
    return out, info, res.transform


def _smooth(series4d, mask, fwhm_mm, voxel_mm):
    """Gaussian smoothing inside the mask (normalized by the smoothed mask: no edge darkening)."""
    from scipy.ndimage import gaussian_filter

    if fwhm_mm <= 0:
        return series4d
    sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / voxel_mm
    m = mask.astype(np.float32)
    norm = gaussian_filter(m, sigma)
    out = np.empty_like(series4d)
    with np.errstate(invalid="ignore", divide="ignore"):
        for t in range(series4d.shape[3]):
            s = gaussian_filter(series4d[..., t] * m, sigma)
            out[..., t] = np.where(mask, s / np.where(norm > 0, norm, 1), 0)
    return out


def _to_4d(values, mask):
    out = np.zeros((*mask.shape, values.shape[0]), dtype=np.float32)
    out[mask] = values.T
    return out


def _seed_masks(params, affine, shape):
    from neuroml.io.atlases import atlas_on_grid

    seeds = {
        f"conn{n}": sphere_mask(affine, shape, xyz, params["seed_radius_mm"])
        for n, xyz in params["seeds"].items()
    }
    if params["networks"]:
        labels, names = atlas_on_grid(params["atlas"], affine, shape)
        index = {v: k for k, v in names.items()}
        for n, regions in params["networks"].items():
            regions = [regions] if isinstance(regions, str) else list(regions)
            unknown = [r for r in regions if r not in index]
            if unknown:
                raise ConfigError(
                    f"network {n!r}: regions {unknown} are not in the {params['atlas']} atlas "
                    f"on this grid"
                )
            seeds[f"conn{n}"] = np.isin(labels, [index[r] for r in regions])
    return seeds


def _atlas_timeseries(filtered, mask, affine, shape, atlas):
    import pandas as pd

    from neuroml.io.atlases import atlas_on_grid

    labels, names = atlas_on_grid(atlas, affine, shape)
    lab = labels[mask]
    cols, empty = {}, []
    for k in sorted(names):
        sel = lab == k
        if sel.any():
            cols[names[k]] = filtered[:, sel].mean(axis=1)
        else:
            cols[names[k]] = np.zeros(filtered.shape[0], dtype=np.float32)
            empty.append(names[k])
    return pd.DataFrame(cols), empty


def compute_maps(
    data: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_],
    affine: npt.NDArray[Any],
    tr: float,
    regressors: npt.ArrayLike | None = None,
    sample_mask: npt.NDArray[np.integer[Any]] | None = None,
    **params: Any,
) -> tuple[dict[str, npt.NDArray[np.float32]], pd.DataFrame, dict[str, Any]]:
    """Clean a series and compute every map; works on any grid (array twin of the pipeline).

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
    mask : ndarray of bool, shape (X, Y, Z)
    affine : ndarray of shape (4, 4)
        Voxel -> world mm (seeds are spheres in world mm).
    tr : float
    regressors : array-like of shape (T, K), optional
        Confound regressors.
    sample_mask : ndarray of int, optional
        Volumes kept (scrubbing).
    **params
        See :data:`FUNC_DEFAULT_PARAMS`.

    Returns
    -------
    maps : dict of str to ndarray (X, Y, Z) float32
    timeseries : pandas.DataFrame
    info : dict
    """
    params = check_func_params(**params)
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    n = data.shape[3]
    voxel_mm = float(np.mean(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    maps = {"mean": data.mean(axis=3) * mask}
    resid, filt, filter_used = clean_series(
        data[mask].T,
        tr,
        regressors,
        sample_mask,
        detrend=params["detrend"],
        high_pass=params["high_pass"],
        low_pass=params["low_pass"],
        standardize=params["standardize"],
    )
    filt4d = _to_4d(filt, mask)
    maps["reho"] = reho_array(filt4d, mask, params["reho_neighbourhood"])
    resid4d = _smooth(_to_4d(resid, mask), mask, params["smoothing_fwhm"], voxel_mm)
    band = check_band(params["band"], tr)
    maps["alff"] = alff_array(resid4d, tr, params["band"], mask)
    maps["falff"] = falff_array(resid4d, tr, params["band"], mask)
    del resid4d
    smooth_filt = _smooth(filt4d, mask, params["smoothing_fwhm"], voxel_mm)
    for name, seed in _seed_masks(params, affine, mask.shape).items():
        try:
            maps[name] = seed_connectivity_array(smooth_filt, seed, mask)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
    del smooth_filt
    timeseries, empty = _atlas_timeseries(filt, mask, affine, mask.shape, params["atlas"])
    if params["map_normalization"] == "zscore":
        maps = {k: zscore_in_mask(v, mask) for k, v in maps.items()}
    maps = {k: np.asarray(v, dtype=np.float32) for k, v in maps.items()}
    kept = n if sample_mask is None else len(sample_mask)
    info = {
        "n_volumes": int(n),
        "n_volumes_kept": int(kept),
        "repetition_time": float(tr),
        "filter": filter_used,
        "alff_band_hz": [float(band[0]), float(band[1])],
        "regions_without_coverage": empty,
    }
    return maps, timeseries, info


def _confounds_for(path, entities, params):
    """(confounds, sample_mask, description) for a BOLD file."""
    strategy = params["confounds"]
    table = None if path is None else find_confounds_file(path)
    if strategy == "auto":
        strategy = "simple" if table is not None else "none"
    if strategy == "none":
        note = (
            _PLAIN_NOTE
            if table is None
            else "none (confounds='none' requested; the fMRIPrep table was ignored)"
        )
        return None, None, {"strategy": "none", "description": note, "dropped_volumes": []}
    if path is None or table is None:
        raise InputError(
            f"confounds={strategy!r} needs an fMRIPrep confounds table "
            "(*_desc-confounds_timeseries.tsv) beside the BOLD file; use confounds='none' "
            "for plain BOLD",
            path,
        )
    confounds, kept, info = load_confounds(path, strategy, **params["confound_options"])
    info["description"] = (
        f"nilearn load_confounds_strategy({strategy!r}): {info['n_regressors']} regressors"
        + (f", {len(info['dropped_volumes'])} volumes scrubbed" if info["dropped_volumes"] else "")
    )
    return confounds.to_numpy(), kept, info


def preprocess_bold_scan(
    img: PathLike | nib.spatialimages.SpatialImage,
    path: PathLike | None = None,
    entities: Mapping[str, str] | None = None,
    **params: Any,
) -> BoldResult:
    """Preprocess one BOLD series in memory (no files written).

    Parameters
    ----------
    img : str, Path or nibabel image
        4D BOLD.
    path : str or Path, optional
        The file (to find its confounds table and JSON sidecar); defaults to ``img`` when
        that is a path.
    entities : dict, optional
        BIDS entities (``space-MNI*`` means no registration); parsed from ``path``.
    **params
        See :data:`FUNC_DEFAULT_PARAMS`.

    Returns
    -------
    BoldResult

    Raises
    ------
    InputError
        Naming the file: not 4D, too few volumes, unknown TR, registration impossible,
        too little brain coverage, confounds missing for the requested strategy.
    """
    params = check_func_params(**params)
    if path is None and isinstance(img, (str, Path)):
        path = Path(img)
    label = str(path) if path is not None else None
    if entities is None:
        entities = parse_entities(Path(path).name)[0] if path is not None else {}
    timings = {}
    try:
        t0 = time.perf_counter()
        series = _load_series(img, path, entities, params, label)
        timings["load"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        res = params["resolution"]
        data, space_info, transform = bold_to_grid(series.img, res, in_mni_space(entities), params)
        timings["to_grid"] = round(time.perf_counter() - t1, 3)
        affine, _ = target_grid(res)
        mask, coverage = _covered_brain(data, res, params["min_coverage"])
        t1 = time.perf_counter()
        maps, timeseries, info = compute_maps(
            data,
            mask,
            affine,
            series.tr,
            series.confounds,
            series.sample_mask,
            **{k: v for k, v in params.items() if k not in ("tr", "band")},
            band=series.band,
        )
        timings["clean_and_maps"] = round(time.perf_counter() - t1, 3)
    except InputError as exc:
        if label and exc.path is None:
            raise InputError(str(exc), label) from None
        raise
    info.update(
        {
            "confounds": series.confounds_info,
            "dropped_volumes": series.confounds_info.get("dropped_volumes", []),
            "coverage": round(coverage, 4),
            **space_info,
            "timings_s": timings,
        }
    )
    return BoldResult(
        maps={k: _map_image(k, v, affine) for k, v in maps.items()},
        mask=nib.Nifti1Image(mask.astype(np.uint8), affine),
        timeseries=timeseries,
        info=info,
        transform=transform,
    )


@dataclasses.dataclass
class _Series:
    """A checked 4D BOLD series with its TR, ALFF band and confounds."""

    img: nib.Nifti1Image
    tr: float
    band: list
    confounds: np.ndarray | None
    sample_mask: np.ndarray | None
    confounds_info: dict


def _load_series(img, path, entities, params, label):
    """Read and check a BOLD series, its TR, ALFF band and confounds (before any resampling).

    Raises
    ------
    InputError
        Not 4D, fewer than ``min_volumes`` volumes, unknown TR, band above Nyquist, confounds
        missing or of the wrong length.
    """
    img = check_img(img, ndim=4, name=label)
    n = img.shape[3]
    if n < params["min_volumes"]:
        raise InputError(
            f"only {n} volumes: ALFF, ReHo and connectivity need at least "
            f"{params['min_volumes']} (min_volumes)"
        )
    tr = repetition_time(img, path, params["tr"])
    # checked here to fail before the resampling, and to warn once about a cut band
    band = list(check_band(params["band"], tr, where=label or "BOLD series"))
    confounds, kept, conf_info = _confounds_for(path, entities, params)
    if confounds is not None and confounds.shape[0] != n:
        raise InputError(f"the confounds table has {confounds.shape[0]} rows for {n} volumes")
    return _Series(img, tr, band, confounds, kept, conf_info)


def _covered_brain(data, resolution, min_coverage):
    """Template brain voxels where the series on the grid has finite, varying, non-zero values.

    Returns
    -------
    mask : ndarray of bool
    coverage : float
        Fraction of the template brain in ``mask``.

    Raises
    ------
    InputError
        If the coverage is below ``min_coverage``.
    """
    brain = np.asarray(brain_mask_on_grid(resolution).dataobj) > 0
    covered = (
        np.all(np.isfinite(data), axis=3) & (data.std(axis=3) > 0) & (np.abs(data.mean(axis=3)) > 0)
    )
    mask = brain & covered
    coverage = float(mask.sum() / max(brain.sum(), 1))
    if coverage < min_coverage:
        raise InputError(
            f"the series covers {100 * coverage:.0f}% of the template brain on the grid "
            f"(min_coverage {100 * min_coverage:.0f}%)"
        )
    return mask, coverage


def _map_image(desc, values, affine):
    """A map as a NIfTI image (units mm and s, ``descrip`` naming neuroml and the map)."""
    m = nib.Nifti1Image(values, affine)
    m.header.set_xyzt_units("mm", "sec")
    m.header["descrip"] = f"neuroml {__version__} {desc}".encode()[:79]
    return m
