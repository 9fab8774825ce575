"""Names and contents of an attribution folder: what a call writes, refuses and removes.

The layout is described in :mod:`neuroml.attribution.run`. A folder holds the attribution of
one method and one derivatives folder; :func:`check_folder` refuses any other, and
:func:`remove_unlisted` deletes the files a call's ``attribution.json`` no longer lists.
"""

from __future__ import annotations

import logging

import numpy as np

from neuroml._utils.fileio import read_json
from neuroml.errors import InputError

__all__ = ["map_name"]

log = logging.getLogger("neuroml")


def map_name(
    participant_id: str, session: str | None = None, run: str | None = None, method: str = "gradcam"
) -> str:
    """File name of a subject's map: ``sub-X[_ses-Y][_run-Z]_desc-<method>_map.nii.gz``.

    Examples
    --------
    >>> map_name("sub-01", "a", None, "integrated_gradients")
    'sub-01_ses-a_desc-integratedgradients_map.nii.gz'
    """
    parts = [str(participant_id)]
    if _given(session):
        parts.append(f"ses-{session}")
    if _given(run):
        parts.append(f"run-{run}")
    return "_".join(parts) + f"_desc-{method.replace('_', '')}_map.nii.gz"


def _given(value):
    return (
        value is not None
        and not (isinstance(value, float) and np.isnan(value))
        and str(value) not in ("", "n/a")
    )


def atlas_entity(atlas):
    """The atlas name as a BIDS label (``atlas-<label>``): its letters and digits."""
    return "".join(ch for ch in atlas if ch.isalnum())


def region_stem(name, atlas):
    """Stem of the region tables of map ``name``: ``..._desc-<method>_atlas-<atlas>_regions``."""
    return name.replace("_map.nii.gz", f"_atlas-{atlas_entity(atlas)}_regions")


def read_doc(json_path):
    """An earlier ``attribution.json`` as a dict ({} when there is none or it is unreadable)."""
    if not json_path.is_file():
        return {}
    try:
        doc = read_json(json_path)
    except InputError:
        return {}
    return doc if isinstance(doc, dict) else {}


def check_folder(out_dir, method, deriv_key):
    """The earlier ``attribution.json`` of ``out_dir`` (a dict, {} when none), after checking
    the folder may take a call of ``method`` on the derivatives ``deriv_key``.

    Raises
    ------
    InputError
        If the folder holds another method's attribution, files a call would not have written,
        or the attribution of other derivatives.
    """
    json_path = out_dir / "attribution.json"
    doc = read_doc(json_path)
    if doc.get("method") not in (None, method):
        raise InputError(
            f"holds the {doc.get('method')} attribution, not {method}: one method per "
            "folder (give another --out DIR)",
            out_dir,
        )
    # unlisted files are removed at the end: only ever ours
    foreign = _foreign_files(out_dir, method)
    if foreign:
        raise InputError(
            f"holds files attribute did not write ({', '.join(foreign[:3])}): give attribute an empty "
            "or new folder",
            out_dir,
        )
    recorded = doc.get("deriv_dir")
    if recorded is not None and str(recorded) != deriv_key:
        raise InputError(
            f"holds the attribution of the derivatives {recorded}, not of {deriv_key}: "
            "pass out_dir=... (--out DIR) to write the attribution of these derivatives elsewhere "
            "(or remove that folder first)",
            json_path,
        )
    return doc


def _own_patterns(method):
    """Glob patterns of the files a call of ``method`` writes in its folder, besides ``attribution.json``."""
    desc = map_name("sub-x", method=method)[len("sub-x_") : -len("_map.nii.gz")]  # desc-<method>
    return (
        f"*_{desc}_map.nii.gz",
        f"*_{desc}_atlas-*_regions.tsv",
        f"*_{desc}_atlas-*_regions.json",
        "regions_atlas-*.tsv",
        "regions_atlas-*.json",
        "sanity.json",
        "sanity_superseded.json",
        "group/*_map.nii.gz",
    )


def _foreign_files(out_dir, method):
    """Files of ``out_dir`` (relative names) that a call of ``method`` would not have written."""
    if not out_dir.is_dir():
        return []
    ours = {p for pattern in _own_patterns(method) for p in out_dir.glob(pattern)}
    return sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file()
        and p not in ours
        and p.name != "attribution.json"
        and not p.name.startswith(".")
    )


def _listed(doc):
    """Relative names of the files ``doc`` (an ``attribution.json``) lists."""
    keep = {"attribution.json"}
    for s in doc["subjects"]:
        keep.update((s["map"], s["regions_tsv"], s["regions_json"]))
    for g in doc["group"].values():
        keep.update(
            v
            for k, v in g.items()
            if k in ("mean_map", "tstat_map", "regions_tsv", "regions_json") and v
        )
    keep.update(v for v in (doc["sanity"]["file"], doc["sanity"]["superseded"]) if v)
    return keep


def remove_unlisted(out_dir, doc):
    """Delete the attribution files of ``out_dir`` that ``doc`` (its ``attribution.json``) does not list."""
    keep = _listed(doc)
    for pattern in _own_patterns(doc["method"]):
        for path in out_dir.glob(pattern):
            if path.is_file() and path.relative_to(out_dir).as_posix() not in keep:
                path.unlink(missing_ok=True)
                log.info("removed %s (no longer listed in attribution.json)", path)


def remove_other_tables(out_dir, name, keep_stem):
    """Delete a subject's region tables other than ``keep_stem`` (of other atlases: they describe
    the map ``name`` replaces)."""
    prefix = name.replace("_map.nii.gz", "_atlas-")
    for path in out_dir.glob(f"{prefix}*_regions.*"):
        if path.name.split(".")[0] != keep_stem and path.suffix in (".tsv", ".json"):
            path.unlink(missing_ok=True)
