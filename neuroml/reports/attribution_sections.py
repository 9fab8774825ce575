"""Report sections of the attribution maps: group maps per method, the subjects table and one
collapsible part per scan. Every string is escaped."""

import logging

import numpy as np

from neuroml.errors import NeuromlError
from neuroml.reports import figures
from neuroml.reports._common import escape, html_table, load_json, load_tsv, picture
from neuroml.reports.checks import fmt_num

__all__ = ["read_attributions", "attribution_section", "subjects_section", "subject_sections"]

log = logging.getLogger("neuroml")

#: Methods the per-subject parts show first, in this order.
_PREFERRED = {"region_occlusion": 0, "hirescam": 1, "gradcam": 2}


def read_attributions(run_dir):
    """``[(folder, attribution.json), ...]`` of every method under ``RUN/attribution``.

    A file without a list of subjects (of another tool) is skipped with a warning.
    """
    found = []
    for path in sorted((run_dir / "attribution").glob("*/attribution.json")):
        doc = load_json(path)
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("subjects"), list)
            and all(isinstance(x, dict) for x in doc["subjects"])
            and isinstance(doc.get("group") or {}, dict)
        ):
            found.append((path.parent, doc))
        elif doc is not None:
            log.warning("report: skipping %s: no list of subjects", path)
    return found


def _brain_mask(img, resolution_mm):
    """The template brain mask on the map's grid (1 where unknown), to hide out-of-brain values."""
    from neuroml.io.templates import brain_mask_on_grid

    try:
        mask = brain_mask_on_grid(float(resolution_mm))
    except (TypeError, ValueError, NeuromlError):
        return 1.0
    if mask.shape != img.shape[:3] or not np.allclose(mask.affine, img.affine, atol=1e-3):
        return 1.0
    return np.asarray(mask.dataobj, dtype=np.float32)


def _threshold(data):
    """75th percentile of the non-zero |values|, at least 5 % of the largest (region maps are
    heavy-tailed).

    Below the largest |value|, so a picture is never empty: a map whose top quarter is one value (a
    region map where a few regions share the only non-zero drop) is drawn from half its maximum.
    """
    vals = np.abs(data[np.isfinite(data) & (data != 0)])
    if not vals.size:
        return None
    top = float(vals.max())
    thr = max(float(np.percentile(vals, 75)), 0.05 * top)
    return thr if thr < top else 0.5 * top


def _masked(path, resolution_mm):
    """The map at ``path`` inside the template brain, and None; or None and a note naming the
    file when it cannot be read (truncated, not NIfTI): a damaged map must not sink the report."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32) * _brain_mask(img, resolution_mm)
    except Exception as exc:  # noqa: BLE001 - gzip, zlib, nibabel and numpy each raise their own
        text = " ".join(str(exc).split())[:200]
        log.warning("report: cannot read %s (%s: %s)", path, type(exc).__name__, text)
        return None, (
            f"<p class='warn'>Map {escape(path.name)} could not be read "
            f"({escape(type(exc).__name__)}: {escape(text)}); rerun <code>neuroml attribute</code> "
            "to write it again.</p>"
        )
    return nib.Nifti1Image(data, img.affine), None


def attribution_section(folder, doc, resolution_mm=None):
    """The section of one attribution method: per class, its top regions and group maps."""
    method = doc.get("method", folder.name)
    out = [
        f"<h2 id='attr-{escape(folder.name)}'>Attribution: {escape(method)}</h2>",
        f"<p class='note'>Target: {escape(doc.get('target'))}; atlas: {escape(doc.get('atlas'))}; "
        f"{escape(doc.get('n_subjects', len(doc['subjects'])))} scans; group maps average, per "
        "class, the maps of that class's subjects explaining that class. Pictures show the mean "
        "map above the 75th percentile of its absolute values (at least 5 % of the largest), "
        "inside the template brain mask, over the MNI152 template.</p>",
    ]
    group = doc.get("group") or {}
    if not group:
        out.append("<p class='na'>No group maps (no subject with a known class label).</p>")
    for cls, info in group.items():
        out.append(f"<h3>Class {escape(cls)} (n = {escape(info.get('n'))})</h3>")
        out.extend(_class_regions(folder, info))
        out.extend(_class_mean_map(folder, cls, info, resolution_mm))
        out.extend(_class_t_map(folder, cls, info, resolution_mm))
    return "\n".join(out)


def _class_regions(folder, info):
    """The 10 regions of largest mean attribution of one class's group map."""
    table = load_tsv(folder / str(info.get("regions_tsv", "")))
    if table is None or not len(table):
        return []
    headers = [
        "rank",
        "region",
        "hemisphere",
        "volume (ml)",
        "mean attribution",
        "share of positive",
    ]
    rows = [
        (
            r["rank"],
            r["region"],
            r["hemisphere"],
            f"{float(r['volume_ml']):.1f}",
            f"{float(r['mean_attribution']):.4g}",
            f"{100 * float(r['positive_share']):.1f} %",
        )
        for _, r in table.head(10).iterrows()
    ]
    return [html_table(headers, rows, numeric=(0, 3, 4, 5))]


def _class_mean_map(folder, cls, info, resolution_mm):
    """A glass brain and axial slices of one class's mean map."""
    mean_path = folder / str(info.get("mean_map", ""))
    if not mean_path.is_file():
        return [f"<p class='na'>Group map file {escape(info.get('mean_map'))} not found.</p>"]
    img, bad = _masked(mean_path, resolution_mm)
    if bad:
        return [bad]
    thr = _threshold(np.asarray(img.dataobj))
    return [
        picture(make, f"{alt} of the class {cls} group map", img, threshold=thr)
        for make, alt in (
            (figures.glass_brain_png, "glass brain"),
            (figures.stat_map_png, "axial slices"),
        )
    ]


def _class_t_map(folder, cls, info, resolution_mm):
    """A glass brain of one class's voxel-wise t map, when the call wrote one."""
    t_path = folder / str(info.get("tstat_map") or "")
    if not (info.get("tstat_map") and t_path.is_file()):
        return []
    t_img, bad = _masked(t_path, resolution_mm)
    if bad:
        return [bad]
    t_max = float(np.abs(np.asarray(t_img.dataobj)).max())
    t_thr = 3.0 if t_max > 6.0 else round(0.5 * t_max, 2)
    return [
        f"<p class='note'>Voxel-wise one-sample t map (mean attribution against 0 across the "
        f"{escape(info.get('n'))} subjects; largest |t| {t_max:.1f}), shown above "
        f"|t| = {t_thr:g}.</p>",
        picture(
            figures.glass_brain_png, f"glass brain of the class {cls} t map", t_img, threshold=t_thr
        ),
    ]


def _primary(attributions):
    """The ``(folder, attribution.json)`` the per-subject parts of the report show: the default
    method first (region_occlusion, then hirescam, gradcam), else the first folder by name."""
    return min(attributions, key=lambda fd: _PREFERRED.get(fd[1].get("method"), 9))


def _probabilities(subject):
    """``class: probability, ...`` of one subject of an attribution.json."""
    return ", ".join(f"{c}: {fmt_num(p)}" for c, p in (subject.get("probabilities") or {}).items())


def subject_sections(attributions, resolution_mm, max_pictures=40):
    """One collapsible section per scan: prediction, top regions and a glass brain of its map."""
    if not attributions:
        return ""
    folder, doc = _primary(attributions)
    out = [
        f"<h2 id='per-subject'>Per-subject attribution ({escape(doc.get('method'))})</h2>",
        f"<p class='note'>Each scan's map explains its target ({escape(doc.get('target'))}), from "
        f"the fold model that did not train on it. Pictures for the first {max_pictures} "
        "scans.</p>",
    ]
    for i, s in enumerate(doc["subjects"]):
        out.extend(_subject_detail(folder, s, resolution_mm, picture_map=i < max_pictures))
    return "\n".join(out)


def _subject_detail(folder, s, resolution_mm, picture_map):
    """The collapsible part of one scan; ``picture_map`` adds a glass brain of its map."""
    title = (
        f"{s.get('participant_id')}{' ses-' + str(s['session']) if s.get('session') else ''}"
        f"{' run-' + str(s['run']) if s.get('run') else ''}: "
        f"true {s.get('true_label') or 'unknown'}, predicted {s.get('predicted_label')}"
    )
    row = (
        s.get("target_label"),
        _probabilities(s),
        ",".join(map(str, s.get("folds", []))),
        s.get("model_use"),
    )
    out = [
        f"<details class='subject'><summary>{escape(title)}</summary>",
        html_table(["target", "probabilities", "folds", "model use"], [row]),
    ]
    top = s.get("top_regions") or []
    if top:
        rows = [
            (k + 1, r.get("region"), r.get("hemisphere", ""), _sig(r.get("mean_attribution")))
            for k, r in enumerate(top)
        ]
        out.append(
            html_table(["rank", "region", "hemisphere", "mean attribution"], rows, numeric=(0, 3))
        )
    path = folder / str(s.get("map", ""))
    if picture_map and s.get("map") and path.is_file():
        img, bad = _masked(path, resolution_mm)
        out.append(
            bad
            or picture(
                figures.glass_brain_png,
                f"glass brain of {s.get('participant_id')}'s map",
                img,
                threshold=_threshold(np.asarray(img.dataobj)),
            )
        )
    out.append("</details>")
    return out


def subjects_section(predictions, classes, attributions):
    """The table of every participant: prediction, probabilities, fold and top 5 regions."""
    if predictions is None and not attributions:
        return ""
    regions, source, doc = {}, None, None
    if attributions:
        folder, doc = _primary(attributions)
        source = doc.get("method", folder.name)
        for s in doc["subjects"]:
            top = ", ".join(
                f"{r.get('region')} ({fmt_num(r.get('mean_attribution'), 4)})"
                for r in s.get("top_regions", [])
            )
            regions.setdefault(s.get("participant_id"), []).append(top)
    if predictions is not None:
        rows = _prediction_rows(predictions, classes, regions)
    else:
        rows = [
            (
                s.get("participant_id"),
                s.get("true_label") or "",
                s.get("predicted_label"),
                _probabilities(s),
                ",".join(map(str, s.get("folds", []))),
                " | ".join(regions.get(s.get("participant_id"), [])),
            )
            for s in doc["subjects"]
        ]
    note = (
        f"Top 5 regions by mean {escape(source)} attribution (target: {escape(doc.get('target'))})."
        if source
        else "No attribution maps in this run yet."
    )
    return (
        "<h2 id='subjects'>Subjects</h2>"
        "<p class='note'>Out-of-fold predictions (each participant predicted by the fold model "
        f"that did not train on it). {note}</p>"
        + html_table(
            ["participant", "true", "predicted", "probabilities", "fold", "top 5 regions"], rows
        )
    )


def _prediction_rows(predictions, classes, regions):
    """One row per line of ``predictions.tsv``, with the top regions of each participant."""
    rows = []
    for _, r in predictions.iterrows():
        probs = ", ".join(
            f"{c}: {fmt_num(_float(r.get(f'prob_{c}')))}" for c in classes if f"prob_{c}" in r
        )
        rows.append(
            (
                r.get("participant_id"),
                r.get("true_label", ""),
                r.get("predicted_label", ""),
                probs,
                r.get("fold", ""),
                " | ".join(regions.get(r.get("participant_id"), [])) or "-",
            )
        )
    return rows


def _sig(v, digits=4):
    """A number with ``digits`` significant digits ('n/a' when not a number)."""
    f = _float(v)
    return "n/a" if f is None or not np.isfinite(f) else f"{f:.{digits}g}"


def _float(v):
    """``float(v)``, or None when ``v`` is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
