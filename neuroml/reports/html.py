"""One self-contained HTML report of a run: metrics, pictures, regions, trust checks.

Everything is inside ``RUN/report.html``: pictures are base64 PNG data URIs, the style
sheet is inline, there is no script and no link to the network. Every string that
comes from data or configuration goes through :func:`html.escape`. Sections whose
inputs are missing (no attribution yet, no baseline) are left out or say so plainly.
"""

import datetime
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from neuroml._version import __version__
from neuroml._utils.fileio import read_json, write_text_atomic
from neuroml.errors import InputError, NeuromlError
from neuroml.reports import figures
from neuroml.reports._common import _e, _img, _inputs_text, _load_json, _load_tsv, _table
from neuroml.reports.checks import check_lines, current_sanity
from neuroml.reports.checks import fmt_num as _num

__all__ = ["build_report"]

log = logging.getLogger("neuroml")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222;line-height:1.4}
h1{border-bottom:2px solid #446;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}
.ok{color:#161}.warn{color:#a40}.na{color:#777;font-style:italic}details{margin:.4em 0}
nav a{margin-right:1em}
"""


def _figure(make, *args, **kwargs):
    """Call a figure helper; a failure becomes a note instead of a broken report."""
    try:
        return make(*args, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - a picture must never sink the report
        log.warning("report: figure %s failed: %s", make.__name__, exc)
        return (
            None,
            f'<p class="warn">Figure not drawn ({_e(type(exc).__name__)}: {_e(str(exc)[:200])}).</p>',
        )


# -- sections ---------------------------------------------------------------------------
def _summary(run_dir, config, provenance, predictions, splits):
    classes = config.get("classes") or []
    n = len(predictions) if predictions is not None else None
    rows = [
        ("run folder", run_dir.resolve().name),
        ("classes", ", ".join(map(str, classes))),
        ("CNN inputs (channels)", _inputs_text(config)),
        ("participants with out-of-fold predictions", n if n is not None else "not available"),
    ]
    if splits:
        rows.append(("folds", len(splits)))
    for key, value in config.items():
        if key in ("classes", "grid"):
            continue
        text = (
            value
            if isinstance(value, (str, int, float, bool)) or value is None
            else json.dumps(value, default=str)
        )
        rows.append((f"config: {key}", str(text)[:300]))
    grid = config.get("grid") or {}
    if "shape" in grid:
        rows.append(("grid shape", " x ".join(str(s) for s in grid["shape"])))
    out = ["<h2 id='summary'>Run summary</h2>", _table(["item", "value"], rows)]
    versions = (provenance or {}).get("packages") or (provenance or {}).get("versions")
    if isinstance(versions, dict) and versions:
        out.append("<details><summary>Package versions (provenance.json)</summary>")
        out.append(_table(["package", "version"], sorted(versions.items())))
        out.append("</details>")
    elif provenance is None:
        out.append('<p class="na">provenance.json not found in this run.</p>')
    return "\n".join(out)


def _connectome(run_dir):
    """``RUN/connectome_metrics.json`` (``neuroml connectome``) or None when absent or unreadable."""
    doc = _load_json(run_dir / "connectome_metrics.json")
    if doc is None:
        return None
    if not isinstance(doc, dict):
        log.warning(
            "report: skipping %s (not a metrics object)", run_dir / "connectome_metrics.json"
        )
        return None
    return doc


def _connectome_note(conn):
    """One paragraph describing the connectome baseline and its figures."""
    kind, atlas = conn.get("kind"), conn.get("atlas")
    named = ", ".join(
        f"{k} {v}" for k, v in (("kind", kind), ("atlas", atlas)) if v
    )  # absent in older files
    what = conn.get("features") or (
        f"{kind} connectivity of {conn.get('n_regions', 'n/a')} {atlas} regions"
        if kind and atlas
        else "connectivity features"
    )
    return (
        f"<p class='note' id='connectome'>Connectome baseline (connectome_metrics.json): "
        f"{_e(named + '; ' if named else '')}{_e(what)}; {_e(conn.get('model') or '')}; "
        f"fitted in the run's folds ({_e(conn.get('n_participants', 'n/a'))} participants with atlas time "
        f"series). Balanced accuracy {_e(_num(conn.get('balanced_accuracy')))} "
        f"(95% CI {_e(_ci(conn, 'balanced_accuracy'))}), AUC {_e(_num(conn.get('auc_macro')))}.</p>"
    )


def _ci(m, key):
    ci = (m.get("ci") or {}).get(key)
    if (
        isinstance(ci, (list, tuple))
        and len(ci) == 2
        and all(isinstance(v, (int, float)) for v in ci)
    ):
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return "n/a"


def _metrics(metrics, classes, connectome=None, config=None):
    if not metrics and not connectome:
        return "<h2 id='metrics'>Classification</h2><p class='na'>metrics.json not found: no metrics in this run.</p>"
    metrics = metrics or {}
    models = [
        (name, m)
        for name, m in (
            ("CNN", metrics.get("cnn")),
            ("baseline", metrics.get("baseline")),
            ("connectome baseline", connectome),
        )
        if isinstance(m, dict)
    ]
    headers = ["metric"] + [h for name, _ in models for h in (name, f"{name} 95% CI")]
    rows = []
    for key, label in (
        ("balanced_accuracy", "balanced accuracy"),
        ("accuracy", "accuracy"),
        ("auc_macro", "AUC (macro, one vs rest)"),
    ):
        rows.append([label] + [v for _, m in models for v in (_num(m.get(key)), _ci(m, key))])
    for c in classes:
        for key, label in (
            ("sensitivity", "sensitivity"),
            ("specificity", "specificity"),
            ("auc_per_class", "AUC"),
        ):
            rows.append(
                [f"{label}: {c}"]
                + [v for _, m in models for v in (_num((m.get(key) or {}).get(c)), "")]
            )
    if any("permutation_p" in m for _, m in models):
        rows.append(
            ["permutation p (balanced accuracy)"]
            + [v for _, m in models for v in (_num(m.get("permutation_p"), 4), "")]
        )
    out = ["<h2 id='metrics'>Classification (out-of-fold)</h2>"]
    if not metrics:
        out.append("<p class='na'>metrics.json not found: no CNN metrics in this run.</p>")
    out.append(_table(headers, rows))
    if config is not None:
        out.append(f"<p class='note'>CNN inputs: {_e(_inputs_text(config))}.</p>")
    desc = (metrics.get("baseline") or {}).get("description") or (
        metrics.get("baseline") or {}
    ).get("model")
    if desc:
        out.append(f"<p class='note'>Baseline: {_e(desc)}</p>")
    if connectome:
        out.append(_connectome_note(connectome))
    return "\n".join(out)


def _roc_and_confusion(metrics, predictions, classes):
    cnn = (metrics or {}).get("cnn") or {}
    curves, cm, aucs = cnn.get("roc"), cnn.get("confusion_matrix"), cnn.get("auc_per_class")
    if (not curves or cm is None) and predictions is not None and classes:
        probs_cols = [f"prob_{c}" for c in classes]
        if "true_label" in predictions and set(probs_cols) <= set(predictions.columns):
            known = predictions[predictions["true_label"].isin(classes)]
            y = np.array([classes.index(v) for v in known["true_label"]])
            p = known[probs_cols].astype(float).to_numpy()
            if curves is None and len(y):
                from sklearn.metrics import roc_curve

                curves = {}
                for k, c in enumerate(classes):
                    pos = y == k
                    fpr, tpr, _ = (
                        roc_curve(pos, p[:, k]) if 0 < pos.sum() < len(y) else ([], [], None)
                    )
                    curves[c] = {"fpr": list(fpr), "tpr": list(tpr)}
            if cm is None and len(y):
                cm = np.bincount(
                    y * len(classes) + p.argmax(1), minlength=len(classes) ** 2
                ).reshape(len(classes), -1)
    out = []
    if curves:
        png, err = _figure(figures.roc_png, curves, aucs)
        out.append(err or _img(png, "ROC curves per class"))
    if cm is not None:
        png, err = _figure(figures.confusion_png, cm, classes)
        out.append(err or _img(png, "confusion matrix"))
    if not out:
        return ""
    return "<h2 id='roc'>ROC curves and confusion matrix</h2>" + "\n".join(out)


def _training_curve(run_dir):
    png_path = run_dir / "training_curve.png"
    if png_path.is_file():
        return "<h2 id='training'>Training curves</h2>" + _img(
            png_path.read_bytes(), "training curves"
        )
    histories = {}
    for path in sorted(run_dir.glob("fold-*/history.tsv")):
        try:
            histories[path.parent.name[len("fold-") :]] = pd.read_csv(
                path, sep="\t", na_values=["n/a"]
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
    if not histories:
        return ""
    png, err = _figure(figures.curves_png, histories)
    return "<h2 id='training'>Training curves</h2>" + (err or _img(png, "training curves"))


def _attributions(run_dir):
    found = []
    for path in sorted((run_dir / "attribution").glob("*/attribution.json")):
        doc = _load_json(path)
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
    """75th percentile of the non-zero |values|, at least 5 % of the largest (region maps are heavy-tailed).

    Below the largest |value|, so a picture is never empty: a map whose top quarter is one value (a
    region map where a few regions share the only non-zero drop) is drawn from half its maximum.
    """
    vals = np.abs(data[np.isfinite(data) & (data != 0)])
    if not vals.size:
        return None
    top = float(vals.max())
    thr = max(float(np.percentile(vals, 75)), 0.05 * top)
    return thr if thr < top else 0.5 * top


def _attribution_section(folder, doc, resolution_mm=None):
    method = doc.get("method", folder.name)
    out = [
        f"<h2 id='attr-{_e(folder.name)}'>Attribution: {_e(method)}</h2>",
        f"<p class='note'>Target: {_e(doc.get('target'))}; atlas: {_e(doc.get('atlas'))}; "
        f"{_e(doc.get('n_subjects', len(doc['subjects'])))} scans; group maps average, per class, the maps of "
        "that class's subjects explaining that class. Pictures show the mean map above the 75th "
        "percentile of its absolute values (at least 5 % of the largest), inside the template brain mask, over "
        "the MNI152 template.</p>",
    ]
    group = doc.get("group") or {}
    if not group:
        out.append("<p class='na'>No group maps (no subject with a known class label).</p>")
    for cls, info in group.items():
        out.append(f"<h3>Class {_e(cls)} (n = {_e(info.get('n'))})</h3>")
        table = _load_tsv(folder / str(info.get("regions_tsv", "")))
        if table is not None and len(table):
            top = table.head(10)
            out.append(
                _table(
                    [
                        "rank",
                        "region",
                        "hemisphere",
                        "volume (ml)",
                        "mean attribution",
                        "share of positive",
                    ],
                    [
                        (
                            r["rank"],
                            r["region"],
                            r["hemisphere"],
                            f"{float(r['volume_ml']):.1f}",
                            f"{float(r['mean_attribution']):.4g}",
                            f"{100 * float(r['positive_share']):.1f} %",
                        )
                        for _, r in top.iterrows()
                    ],
                    numeric=(0, 3, 4, 5),
                )
            )
        mean_path = folder / str(info.get("mean_map", ""))
        if mean_path.is_file():
            img, bad = _masked(mean_path, resolution_mm)
            if bad:
                out.append(bad)
            else:
                thr = _threshold(np.asarray(img.dataobj))
                for make, alt in (
                    (figures.glass_brain_png, "glass brain"),
                    (figures.stat_map_png, "axial slices"),
                ):
                    png, err = _figure(make, img, threshold=thr)
                    out.append(err or _img(png, f"{alt} of the class {cls} group map"))
        else:
            out.append(f"<p class='na'>Group map file {_e(info.get('mean_map'))} not found.</p>")
        t_path = folder / str(info.get("tstat_map") or "")
        if info.get("tstat_map") and t_path.is_file():
            t_img, bad = _masked(t_path, resolution_mm)
            if bad:
                out.append(bad)
                continue
            t_max = float(np.abs(np.asarray(t_img.dataobj)).max())
            t_thr = 3.0 if t_max > 6.0 else round(0.5 * t_max, 2)
            out.append(
                f"<p class='note'>Voxel-wise one-sample t map (mean attribution against 0 across the "
                f"{_e(info.get('n'))} subjects; largest |t| {t_max:.1f}), shown above |t| = {t_thr:g}.</p>"
            )
            png, err = _figure(figures.glass_brain_png, t_img, threshold=t_thr)
            out.append(err or _img(png, f"glass brain of the class {cls} t map"))
    return "\n".join(out)


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
            f"<p class='warn'>Map {_e(path.name)} could not be read ({_e(type(exc).__name__)}: "
            f"{_e(text)}); rerun <code>neuroml attribute</code> to write it again.</p>"
        )
    return nib.Nifti1Image(data, img.affine), None


def _primary(attributions):
    """The ``(folder, attribution.json)`` the per-subject parts of the report show: the default
    method first (region_occlusion, then hirescam, gradcam), else the first folder by name."""
    preferred = {"region_occlusion": 0, "hirescam": 1, "gradcam": 2}
    return min(attributions, key=lambda fd: preferred.get(fd[1].get("method"), 9))


def _subject_sections(attributions, resolution_mm, max_pictures=40):
    """One collapsible section per scan: prediction, top regions and a glass brain of its map."""
    if not attributions:
        return ""
    folder, doc = _primary(attributions)
    out = [
        f"<h2 id='per-subject'>Per-subject attribution ({_e(doc.get('method'))})</h2>",
        f"<p class='note'>Each scan's map explains its target ({_e(doc.get('target'))}), from the fold model "
        f"that did not train on it. Pictures for the first {max_pictures} scans.</p>",
    ]
    for i, s in enumerate(doc["subjects"]):
        probs = ", ".join(f"{c}: {_num(p)}" for c, p in (s.get("probabilities") or {}).items())
        title = (
            f"{s.get('participant_id')}{' ses-' + str(s['session']) if s.get('session') else ''}"
            f"{' run-' + str(s['run']) if s.get('run') else ''}: true {s.get('true_label') or 'unknown'}, "
            f"predicted {s.get('predicted_label')}"
        )
        out.append(f"<details class='subject'><summary>{_e(title)}</summary>")
        out.append(
            _table(
                ["target", "probabilities", "folds", "model use"],
                [
                    (
                        s.get("target_label"),
                        probs,
                        ",".join(map(str, s.get("folds", []))),
                        s.get("model_use"),
                    )
                ],
            )
        )
        top = s.get("top_regions") or []
        if top:
            out.append(
                _table(
                    ["rank", "region", "hemisphere", "mean attribution"],
                    [
                        (
                            k + 1,
                            r.get("region"),
                            r.get("hemisphere", ""),
                            _sig(r.get("mean_attribution")),
                        )
                        for k, r in enumerate(top)
                    ],
                    numeric=(0, 3),
                )
            )
        path = folder / str(s.get("map", ""))
        if i < max_pictures and s.get("map") and path.is_file():
            img, bad = _masked(path, resolution_mm)
            png, err = (
                (None, bad)
                if bad
                else _figure(
                    figures.glass_brain_png, img, threshold=_threshold(np.asarray(img.dataobj))
                )
            )
            out.append(err or _img(png, f"glass brain of {s.get('participant_id')}'s map"))
        out.append("</details>")
    return "\n".join(out)


def _subjects(predictions, classes, attributions):
    if predictions is None and not attributions:
        return ""
    regions, source, doc = {}, None, None
    if attributions:
        folder, doc = _primary(attributions)
        source = doc.get("method", folder.name)
        for s in doc["subjects"]:
            top = ", ".join(
                f"{r.get('region')} ({_num(r.get('mean_attribution'), 4)})"
                for r in s.get("top_regions", [])
            )
            regions.setdefault(s.get("participant_id"), []).append(top)
    rows = []
    if predictions is not None:
        for _, r in predictions.iterrows():
            probs = ", ".join(
                f"{c}: {_num(_float(r.get(f'prob_{c}')))}" for c in classes if f"prob_{c}" in r
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
    else:
        for s in doc["subjects"]:
            probs = ", ".join(f"{c}: {_num(p)}" for c, p in (s.get("probabilities") or {}).items())
            rows.append(
                (
                    s.get("participant_id"),
                    s.get("true_label") or "",
                    s.get("predicted_label"),
                    probs,
                    ",".join(map(str, s.get("folds", []))),
                    " | ".join(regions.get(s.get("participant_id"), [])),
                )
            )
    note = (
        f"Top 5 regions by mean {_e(source)} attribution (target: {_e(doc.get('target'))})."
        if source
        else "No attribution maps in this run yet."
    )
    return (
        "<h2 id='subjects'>Subjects</h2>"
        f"<p class='note'>Out-of-fold predictions (each participant predicted by the fold model that did not "
        f"train on it). {note}</p>"
        + _table(
            ["participant", "true", "predicted", "probabilities", "fold", "top 5 regions"], rows
        )
    )


def _sig(v, digits=4):
    """A number with ``digits`` significant digits ('n/a' when not a number)."""
    f = _float(v)
    return "n/a" if f is None or not np.isfinite(f) else f"{f:.{digits}g}"


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _trust(run_dir, metrics, splits, predictions, attributions, classes, connectome=None):
    items = []
    if splits:
        try:
            from neuroml.training.splits import check_splits

            check_splits(splits)
            n_test = sum(len(f.get("test", [])) for f in splits)
            items.append(
                (
                    "ok",
                    f"Subject-level splits: no participant is in two parts of a fold; "
                    f"{n_test} participants tested once each across {len(splits)} folds.",
                )
            )
        except Exception as exc:  # noqa: BLE001 - LeakageError or a malformed file: report it
            items.append(("warn", f"Split check failed: {exc}"))
    else:
        items.append(("na", "splits.json not found: split leakage not checked in this run."))
    if predictions is not None and "fold" in predictions:
        items.append(
            (
                "ok",
                f"{len(predictions)} predictions are out-of-fold (column 'fold' records the model used).",
            )
        )
    cnn, base = (metrics or {}).get("cnn") or {}, (metrics or {}).get("baseline") or {}
    if classes and cnn.get("balanced_accuracy") is not None:
        chance = 1.0 / len(classes)
        ci = (cnn.get("ci") or {}).get("balanced_accuracy") or [None, None]
        text = (
            f"CNN balanced accuracy {_num(cnn['balanced_accuracy'])} (95% CI {_ci(cnn, 'balanced_accuracy')}); "
            f"chance level {chance:.3f}."
        )
        state = "ok" if isinstance(ci[0], (int, float)) and ci[0] > chance else "warn"
        if state == "warn":
            text += " The interval includes or lies below chance."
        if base.get("balanced_accuracy") is not None:
            text += f" Baseline {_num(base['balanced_accuracy'])} (95% CI {_ci(base, 'balanced_accuracy')})."
        if connectome and connectome.get("balanced_accuracy") is not None:
            text += (
                f" Connectome baseline {_num(connectome['balanced_accuracy'])} "
                f"(95% CI {_ci(connectome, 'balanced_accuracy')})."
            )
        items.append((state, text))
    if "permutation_p" in cnn:
        items.append(
            (
                "ok",
                f"Permutation test of the CNN balanced accuracy: p = {_num(cnn['permutation_p'], 4)}.",
            )
        )
    else:
        items.append(("na", "Permutation test: not computed in this run."))
    if not attributions:
        items.append(("na", "Attribution: no maps in this run, so no attribution checks."))
    for folder, doc in attributions:
        uses = (
            pd.Series([s.get("model_use", "unknown") for s in doc["subjects"]])
            .value_counts()
            .to_dict()
        )
        leaked = uses.get("trained-on", 0)
        parts = ", ".join(f"{v} {k}" for k, v in uses.items())
        items.append(
            (
                "warn" if leaked else "ok",
                f"{doc.get('method')}: maps from models that did not train on the subject ({parts})"
                + (f"; {leaked} explained by models trained on them (forced)." if leaked else "."),
            )
        )
        sanity = current_sanity(
            doc, _load_json(folder / "sanity.json")
        )  # not one left by an earlier call
        if isinstance(sanity, dict):
            items.extend(check_lines(doc.get("method", folder.name), sanity))
        else:
            reason = (
                (doc.get("sanity") or {}).get("reason")
                if isinstance(doc.get("sanity"), dict)
                else None
            )
            items.append(
                (
                    "na",
                    f"{doc.get('method')}: attribution trust checks (model randomization, deletion, "
                    "stability, ground truth) not computed by the call that made these maps"
                    + (f" ({reason})." if reason else "."),
                )
            )
    lis = "".join(f"<li class='{k}'>{_e(t)}</li>" for k, t in items)
    return f"<h2 id='trust'>Trust checks</h2><ul>{lis}</ul>" + _sanity_tables(attributions)


def _sanity_tables(attributions):
    """Side-by-side table of every method's trust checks, and their deletion curves."""
    rows, curves, classes = [], {}, []
    docs = [
        (d.get("method", f.name), current_sanity(d, _load_json(f / "sanity.json")))
        for f, d in attributions
    ]
    docs = [(m, s) for m, s in docs if isinstance(s, dict)]
    for _, s in docs:
        for c in s.get("ground_truth") or {}:
            if c not in classes:
                classes.append(c)
    if not docs:
        return ""
    for method, s in docs:
        rnd, dele = s.get("randomization") or {}, s.get("deletion") or {}
        stab = s.get("stability") or {}
        row = [
            method,
            _num(rnd.get("median_abs_rho")),
            f"{_num(dele.get('auc'))} / {_num(dele.get('auc_random'))}",
            ", ".join(
                f"{c}: {_num(v.get('median_rho'))} / {_num(v.get('median_top_overlap'), 2)}"
                for c, v in stab.items()
            )
            or "n/a",
        ]
        for c in classes:
            g = (s.get("ground_truth") or {}).get(c) or {}
            row += [
                _num(g.get("mass_enrichment"), 1),
                _num(g.get("roc_auc")),
                f"{g.get('top_k_planted', 'n/a')}/{g.get('top_k', 'n/a')}",
            ]
        rows.append(row)
        if dele.get("steps") and dele.get("probability"):
            curves[method] = dele
    headers = [
        "method",
        "randomization median |rho|",
        "deletion area (top first / random)",
        "fold stability: rho / top-10 overlap",
    ]
    for c in classes:
        headers += [
            f"{c}: mass in planted / share",
            f"{c}: voxel ROC AUC",
            f"{c}: top regions planted",
        ]
    out = [
        "<h3>Attribution trust checks, method by method</h3>",
        "<p class='note'>Randomization passes below 0.2; deletion passes when removing the top-ranked regions "
        "lowers the probability faster than random removal (smaller area); fold stability passes at a median "
        "rho of 0.5, or a median top-10 overlap above chance (p < 0.01); ground truth (synthetic cohorts) "
        "passes at 10x enrichment with the top 5 regions all planted.</p>",
        _table(headers, rows),
    ]
    if curves:
        png, err = _figure(figures.deletion_png, curves)
        out.append(err or _img(png, "deletion curves of every method"))
    return "\n".join(out)


def build_report(run_dir, out_path=None):
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    run_dir : str or Path
        Output folder of ``neuroml train`` (attribution outputs are optional).
    out_path : str or Path, optional
        Default ``RUN/report.html``.

    Returns
    -------
    Path
        The report.

    Raises
    ------
    InputError
        If ``run_dir`` has no ``config.json`` of a neuroml run (not a run folder).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():  # the message load_run gives
        raise InputError(
            "not a neuroml run folder (config.json missing); train one with `neuroml train`",
            run_dir,
        )
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise InputError("config.json is not a JSON object", run_dir / "config.json")
    if not isinstance(config.get("classes"), list):  # e.g. a model folder of another tool
        raise InputError(
            "not a neuroml run folder's config.json (no list of 'classes'); train one with "
            "`neuroml train`",
            run_dir / "config.json",
        )
    classes = [str(c) for c in config.get("classes") or []]
    metrics = _load_json(run_dir / "metrics.json")
    provenance = _load_json(run_dir / "provenance.json")
    splits_doc = _load_json(run_dir / "splits.json", (dict, list))
    splits = splits_doc.get("folds") if isinstance(splits_doc, dict) else splits_doc
    if splits_doc is not None and not (
        isinstance(splits, list) and all(isinstance(f, dict) for f in splits)
    ):
        log.warning("report: skipping %s: no list of folds", run_dir / "splits.json")
        splits = None
    predictions = _load_tsv(run_dir / "predictions.tsv")
    attributions = _attributions(run_dir)
    connectome = _connectome(run_dir)
    from neuroml.reports import trust_sections

    parts = [
        _summary(run_dir, config, provenance, predictions, splits),
        _metrics(metrics, classes, connectome, config),
        _roc_and_confusion(metrics, predictions, classes),
        _training_curve(run_dir),
        *(
            _attribution_section(folder, doc, config.get("resolution_mm"))
            for folder, doc in attributions
        ),
        _subjects(predictions, classes, attributions),
        _subject_sections(attributions, config.get("resolution_mm")),
        _trust(run_dir, metrics, splits, predictions, attributions, classes, connectome),
        *trust_sections.sections(run_dir, metrics, _load_json(run_dir / "confounds.json")),
    ]
    nav = " ".join(
        f"<a href='#{i}'>{t}</a>"
        for i, t in (
            ("summary", "Summary"),
            ("metrics", "Metrics"),
            ("subjects", "Subjects"),
            ("per-subject", "Per subject"),
            ("trust", "Trust checks"),
            *trust_sections.NAV,
        )
    )
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    doc = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>neuroml report: {_e(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>neuroml report: {_e(run_dir.resolve().name)}</h1><nav>{nav}</nav>"
        f"<p class='note'>Written {_e(stamp)} by neuroml {_e(__version__)}.</p>"
        + "\n".join(p for p in parts if p)
        + "</body></html>\n"
    )
    out_path = Path(out_path) if out_path is not None else run_dir / "report.html"
    write_text_atomic(out_path, doc)
    log.info("report -> %s", out_path)
    return out_path
