"""What a call of :func:`~neuroml.attribution.attribute_run` writes once its maps are made:
the class group maps and their region tables, ``sanity.json`` and ``attribution.json``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroml._utils.fileio import write_json_atomic
from neuroml._utils.provenance import package_versions
from neuroml.attribution.files import atlas_entity
from neuroml.attribution.group import class_entity, class_group_maps, write_group_maps
from neuroml.attribution.regions import region_table, write_region_table

if TYPE_CHECKING:
    from neuroml.attribution.compute import Explained
    from neuroml.attribution.plan import AttributionCall, AttributionPlan, Sources

__all__ = ["write_groups", "write_sanity", "supersede_sanity", "attribution_doc"]

log = logging.getLogger("neuroml")


def _per_participant(maps, owners):
    """Each participant's mean map: ``(keys, maps)`` with ``keys`` the ``(participant_id, class)``
    in order of appearance."""
    keys = list(dict.fromkeys(owners))
    pos = {k: i for i, k in enumerate(keys)}
    sums = np.zeros((len(keys), *maps[0].shape), dtype=np.float32)
    counts = np.zeros(len(keys))
    for m, o in zip(maps, owners):
        sums[pos[o]] += m
        counts[pos[o]] += 1
    return keys, sums / counts[:, None, None, None]


def write_groups(
    call: AttributionCall, src: Sources, explained: Explained
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Average each participant's scans, then write the class group maps and their region tables.

    Returns
    -------
    (dict, dict, dict)
        ``group`` of ``attribution.json`` (per class), the group maps of
        :func:`~neuroml.attribution.group.class_group_maps`, and each class's region table
        (all empty when no scan is labelled).
    """
    if not explained.maps:
        return {}, {}, {}
    out_dir, classes = call.out_dir, src.classes
    keys, per_participant = _per_participant(explained.maps, explained.owners)
    groups = class_group_maps(per_participant, [k[1] for k in keys], classes)
    written = write_group_maps(groups, src.cache.affine, out_dir / "group", classes)
    info, tables = {}, {}
    for c, g in groups.items():
        stem = f"regions_atlas-{atlas_entity(call.atlas)}_class-{class_entity(c, classes)}"
        table = tables[c] = region_table(g["mean"], src.atlas_labels, src.atlas_names, src.voxel_ml)
        meta = {
            "method": call.method,
            "atlas": call.atlas,
            "class": c,
            "n_subjects": g["n"],
            "map": f"group/{written[c]['mean'].name}",
        }
        write_region_table(table, out_dir / f"{stem}.tsv", out_dir / f"{stem}.json", meta)
        info[c] = {
            "n": g["n"],
            "participants": sorted(k[0] for k in keys if k[1] == c),
            "mean_map": f"group/{written[c]['mean'].name}",
            "tstat_map": f"group/{written[c]['tstat'].name}" if written[c]["tstat"] else None,
            "regions_tsv": f"{stem}.tsv",
            "regions_json": f"{stem}.json",
        }
    return info, groups, tables


def write_sanity(out_dir: Path, trust: dict[str, Any], plan: AttributionPlan) -> dict[str, Any]:
    """Write the checks ``trust`` of the call of ``plan`` as ``sanity.json`` (removing a
    superseded one); return ``sanity`` of ``attribution.json``."""
    trust.update(
        call_id=plan.call_id, identity_sha256=plan.identity_sha256, attribution="attribution.json"
    )
    write_json_atomic(out_dir / "sanity.json", trust)
    (out_dir / "sanity_superseded.json").unlink(missing_ok=True)
    return {
        "run": True,
        "reason": None,
        "file": "sanity.json",
        "call_id": plan.call_id,
        "superseded": None,
    }


def supersede_sanity(out_dir: Path, method: str, sanity: bool) -> dict[str, Any]:
    """For a call that does not run the checks (``sanity`` False, or no labelled scan): move an
    earlier ``sanity.json`` to ``sanity_superseded.json``; return ``sanity`` of ``attribution.json``."""
    sanity_path, superseded = out_dir / "sanity.json", out_dir / "sanity_superseded.json"
    reason = (
        "sanity=False (--no-sanity)"
        if not sanity
        else "no explained scan has a class label (the checks explain each subject's true class)"
    )
    moved = None
    # an earlier call's checks: never left where readers take them as this call's
    if sanity_path.is_file():
        os.replace(sanity_path, superseded)
        moved = superseded.name
    elif superseded.is_file():
        moved = superseded.name
    log.info(
        "attribution %s: trust checks not run (%s)%s",
        method,
        reason,
        f"; the earlier sanity.json is now {moved}" if moved else "",
    )
    return {"run": False, "reason": reason, "file": None, "call_id": None, "superseded": moved}


def _trust_summary(trust):
    """The pass/fail lines of ``sanity.json`` kept in ``attribution.json``."""
    if not trust:
        return None
    out = {"file": "sanity.json", "call_id": trust.get("call_id")}
    if trust.get("randomization"):
        out["randomization"] = {k: trust["randomization"][k] for k in ("median_abs_rho", "passed")}
    if trust.get("deletion"):
        out["deletion"] = {k: trust["deletion"][k] for k in ("auc", "auc_random", "passed")}
    if trust.get("stability"):
        out["stability"] = {
            c: {k: v.get(k) for k in ("median_rho", "median_top_overlap", "passed")}
            for c, v in trust["stability"].items()
        }
    if trust.get("ground_truth"):
        out["ground_truth"] = {
            c: {k: v.get(k) for k in ("mass_enrichment", "roc_auc", "top_k_planted", "passed")}
            for c, v in trust["ground_truth"].items()
        }
    return out


def attribution_doc(
    call: AttributionCall,
    src: Sources,
    plan: AttributionPlan,
    explained: Explained,
    group_info: dict[str, Any],
    sanity_doc: dict[str, Any] | None,
    trust: dict[str, Any] | None,
) -> dict[str, Any]:
    """The content of ``attribution.json``: settings, subjects, group maps, timings, checks."""
    entries, cfg = explained.entries, src.cfg
    doc = {
        "call_id": plan.call_id,
        "identity": plan.identity,
        "identity_sha256": plan.identity_sha256,
        "method": call.method,
        "target": call.target,
        "atlas": call.atlas,
        "target_layer": plan.target_layer,
        "classes": src.classes,
        "grid": {"affine": src.cache.affine.tolist(), "shape": list(src.cache.shape)},
        "deriv_dir": call.deriv_key,
        "n_subjects": len(entries),
        "subjects": [entries[k] for k in sorted(entries)],
        "group": group_info,
        "timing": {
            "total_seconds": round(explained.seconds, 3),
            "seconds_per_subject": {n: entries[n]["seconds"] for n in sorted(entries)},
        },
        "sanity": sanity_doc,
        "trust": _trust_summary(trust),
    }
    if plan.inputs.harmonized is not None:
        doc["harmonized_inputs"] = {
            "method": cfg["harmonized_inputs"].get("method"),
            "unseen_sites": plan.inputs.unseen_sites(),
        }
    doc["versions"] = package_versions()
    return doc
