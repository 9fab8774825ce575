"""Files of the BOLD pipeline: finding series, naming outputs, resuming, writing derivatives.

:func:`preprocess_bold` runs :func:`~neuroml.functional.bold.preprocess_bold_scan` on one
file and writes its maps, mask, atlas time series, transform and sidecar (last, so its
presence marks a finished scan); :func:`is_func_complete` decides whether a scan can be
skipped on resume; :func:`find_bold_scans` lists the series of a dataset.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from neuroml._utils.fileio import save_nifti_atomic, sha256_file, write_text_atomic
from neuroml._utils.provenance import package_versions
from neuroml._utils.types import PathLike
from neuroml.functional.bold import (
    _DROP,
    FUNC_PIPELINE_VERSION,
    check_func_params,
    in_mni_space,
    map_names,
    preprocess_bold_scan,
)
from neuroml.functional.clean import find_confounds_file, framewise_displacement_summary
from neuroml.io.bids import Scan, derivative_name, scan_entities
from neuroml.io.derivatives import (
    discard_sidecar,
    itk_threads,
    params_key,
    relative_source,
    sidecar_is_current,
    write_sidecar_last,
)
from neuroml.io.templates import TEMPLATE_SPACE, res_entity

__all__ = ["func_output_paths", "is_func_complete", "preprocess_bold", "find_bold_scans"]


def func_output_paths(
    entities: Mapping[str, str], out_dir: PathLike, params: Mapping[str, Any]
) -> dict[str, Path]:
    """The output files of one BOLD scan.

    Returns
    -------
    dict
        ``map-<desc>`` for each map, ``mask``, ``timeseries``, ``xfm``, ``sidecar`` -> Path.

    Examples
    --------
    >>> p = func_output_paths({"sub": "01", "task": "rest", "space": "MNI152NLin6Asym", "desc": "preproc"},
    ...                       Path("/d"), check_func_params(resolution=4))
    >>> p["map-alff"].as_posix()
    '/d/sub-01/func/sub-01_task-rest_space-MNI152NLin2009aSym_res-4_desc-alff_boldmap.nii.gz'
    >>> p["xfm"].name
    'sub-01_task-rest_res-4_from-boldref_to-MNI152NLin2009aSym_mode-image_xfm.txt'
    """
    base = {k: v for k, v in entities.items() if k not in _DROP}
    folder = Path(out_dir) / f"sub-{base['sub']}"
    if base.get("ses"):
        folder = folder / f"ses-{base['ses']}"
    folder = folder / "func"
    space = {"space": TEMPLATE_SPACE, "res": res_entity(params["resolution"])}
    out = {
        f"map-{m}": folder / derivative_name(base, "boldmap", ".nii.gz", desc=m, **space)
        for m in map_names(params)
    }
    out["mask"] = folder / derivative_name(base, "mask", ".nii.gz", desc="bold", **space)
    out["timeseries"] = folder / derivative_name(
        base, "timeseries", ".tsv", atlas=params["atlas"], **space
    )
    out["xfm"] = folder / derivative_name(
        base,
        "xfm",
        ".txt",
        res=space["res"],
        **{"from": "boldref", "to": TEMPLATE_SPACE, "mode": "image"},
    )
    out["sidecar"] = folder / derivative_name(base, "bold", ".json", desc="maps", **space)
    return out


def _required(paths, side):
    """The outputs of a scan besides its sidecar (the transform only when it was registered)."""
    need = [p for k, p in paths.items() if k not in ("xfm", "sidecar")]
    if side.get("Registered"):
        need.append(paths["xfm"])
    return need


def _confounds_sha256(path, params):
    """SHA-256 of the confounds table the scan uses (None when it uses none)."""
    table = find_confounds_file(path)
    return sha256_file(table) if table is not None and params["confounds"] != "none" else None


def is_func_complete(
    scan: Scan | PathLike, out_dir: PathLike, sha256: str | None = None, **params: Any
) -> bool:
    """True when a BOLD scan's outputs exist, are intact and its sidecar matches the input and parameters.

    Intact: the size and SHA-256 that the sidecar records (see
    :func:`neuroml.io.derivatives.sidecar_is_current`), so a truncated map makes the scan
    incomplete. The sidecar also records the confounds table's SHA-256.
    """
    path, entities = scan_entities(scan)
    params = check_func_params(**params)
    paths = func_output_paths(entities, out_dir, params)
    return sidecar_is_current(
        paths["sidecar"],
        functools.partial(_required, paths),
        params_key(FUNC_PIPELINE_VERSION, params),
        path,
        sha256,
        check=lambda side: side.get("ConfoundsSHA256") == _confounds_sha256(path, params),
    )


def preprocess_bold(
    scan: Scan | PathLike,
    out_dir: PathLike,
    *,
    bids_dir: PathLike | None = None,
    participant_label: str | None = None,
    n_threads: int | None = 1,
    **params: Any,
) -> dict[str, Any]:
    """Preprocess one BOLD scan and write its maps as BIDS derivatives (sidecar last).

    Parameters
    ----------
    scan : str, Path or neuroml.io.bids.Scan
        A raw ``*_bold.nii[.gz]`` or an fMRIPrep ``*_space-MNI*_desc-preproc_bold.nii.gz``.
    out_dir : str or Path
        Derivatives folder (``sub-X/[ses-Y/]func/``).
    bids_dir : str or Path, optional
        Root of the input dataset, to record ``SourceFile`` relative to it.
    participant_label : str, optional
    n_threads : int, default=1
        SimpleITK threads for a registration.
    **params
        See :data:`FUNC_DEFAULT_PARAMS`.

    Returns
    -------
    dict
        Output paths (see :func:`func_output_paths`) and ``info``.
    """
    params = check_func_params(**params)
    path, entities = scan_entities(scan, participant_label)
    paths = func_output_paths(entities, out_dir, params)
    t0 = time.perf_counter()
    sha = sha256_file(path) if Path(path).is_file() else None
    with itk_threads(n_threads):
        result = preprocess_bold_scan(path, path=path, entities=entities, **params)
    discard_sidecar(paths["sidecar"])
    written = _write_outputs(result, paths)
    result.info["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    source = relative_source(path, bids_dir)
    write_sidecar_last(
        paths["sidecar"], _sidecar(result, paths, params, path, source, sha), written
    )
    return {**paths, "info": result.info}


def _write_outputs(result, paths):
    """Write the maps, the mask, the atlas time series and the transform (each atomically).

    Returns
    -------
    dict
        ``{kind: path}`` of the files written.
    """
    for name, img in result.maps.items():
        save_nifti_atomic(img, paths[f"map-{name}"])
    save_nifti_atomic(result.mask, paths["mask"])
    write_text_atomic(
        paths["timeseries"], result.timeseries.to_csv(sep="\t", index=False, float_format="%.6g")
    )
    if result.transform is not None:
        from neuroml.preprocessing.registration import write_transform

        write_transform(result.transform, paths["xfm"])
    return {
        k: p
        for k, p in paths.items()
        if k != "sidecar" and (k != "xfm" or result.transform is not None)
    }


def _cleaning(info, params):
    """The sidecar's ``Cleaning`` record."""
    return {
        "Confounds": info["confounds"],
        "Detrend": params["detrend"],
        "BandPassHz": [params["high_pass"], params["low_pass"]],
        "Filter": info["filter"],
        "Standardize": params["standardize"],
        "ALFFInput": "detrended and confound-regressed, not band-passed"
        + ("; scrubbed volumes filled by linear interpolation" if info["dropped_volumes"] else ""),
        "SmoothingFWHMmm": params["smoothing_fwhm"],
        "SmoothingAppliesTo": "alff, falff, conn* (not reho, not the atlas time series)",
    }


def _sidecar(result, paths, params, path, source, sha):
    """The sidecar's fields (``OutputFiles`` is added when it is written)."""
    info = result.info
    table = find_confounds_file(path)
    used_table = table is not None and info["confounds"]["strategy"] != "none"
    return {
        "Description": "BOLD maps on the T1w's MNI grid: "
        + info["space_handling"]
        + "; cleaning with nilearn "
        "(detrend, confound regression, band-pass, standardize), smoothing, then "
        + ", ".join(map_names(params))
        + " (see neuroml.functional.bold)",
        "SourceFile": source,
        "SourceSHA256": sha,
        "Sources": [f"bids:raw:{source}"],
        "ConfoundsFile": table.name if used_table else None,
        "ConfoundsSHA256": sha256_file(table) if used_table else None,
        "Space": TEMPLATE_SPACE,
        "Resolution": params["resolution"],
        "RepetitionTime": info["repetition_time"],
        "NumberOfVolumes": info["n_volumes"],
        "NumberOfVolumesKept": info["n_volumes_kept"],
        "DroppedVolumes": info["dropped_volumes"],
        "FramewiseDisplacement": (None if table is None else framewise_displacement_summary(table)),
        "Registered": result.transform is not None,
        "SpaceHandling": info["space_handling"],
        "Registration": info.get("registration"),
        "Cleaning": _cleaning(info, params),
        "Maps": {m: paths[f"map-{m}"].name for m in map_names(params)},
        "MapNormalization": params["map_normalization"],
        "Mask": paths["mask"].name,
        "Coverage": info["coverage"],
        "AtlasTimeseries": paths["timeseries"].name,
        "RegionsWithoutCoverage": info["regions_without_coverage"],
        "Parameters": params_key(FUNC_PIPELINE_VERSION, params),
        "Timings": info["timings_s"],
        "SoftwareVersions": package_versions(),
    }


def find_bold_scans(
    bids_dir: PathLike, participant_labels: str | Iterable[str] | None = None
) -> list[Scan]:
    """BOLD series of a raw BIDS dataset or of fMRIPrep derivatives, one per acquisition.

    fMRIPrep writes several versions of each run (spaces, resolutions): for each set of
    entities other than ``space``/``res``/``den``/``desc``, the ``desc-preproc`` series is
    preferred, and among those one in an MNI space (``MNI152NLin2009aSym`` first).

    Returns
    -------
    list of neuroml.io.bids.Scan
    """
    from neuroml.io.bids import find_scans

    groups: dict[tuple[tuple[str, str], ...], list[Scan]] = {}
    for scan in find_scans(bids_dir, "bold", "func", participant_labels):
        desc = scan.entities.get("desc")
        if desc not in (None, "preproc"):
            continue  # e.g. desc-brain masks or desc-confounds are not series
        key = tuple(sorted((k, v) for k, v in scan.entities.items() if k not in _DROP))
        groups.setdefault(key, []).append(scan)

    def rank(scan):
        space = str(scan.entities.get("space", ""))
        return (
            scan.entities.get("desc") != "preproc",
            space != TEMPLATE_SPACE,
            not in_mni_space(scan.entities),
            scan.path.name,
        )

    return [sorted(v, key=rank)[0] for _, v in sorted(groups.items())]
