"""One self-contained HTML report of a run: metrics, pictures, regions, trust checks.

Everything is inside ``RUN/report.html``: pictures are base64 PNG data URIs, the style
sheet is inline, there is no script and no link to the network. Every string that
comes from data or configuration goes through :func:`html.escape`. Sections whose
inputs are missing (no attribution yet, no baseline) are left out or say so plainly.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from neuroml._utils.fileio import read_json, write_text_atomic
from neuroml._version import __version__
from neuroml.errors import InputError
from neuroml.reports import figures, trust_sections
from neuroml.reports._common import (
    ci_text,
    escape,
    html_table,
    img_tag,
    inputs_text,
    load_json,
    load_tsv,
    picture,
)
from neuroml.reports.attribution_sections import (
    attribution_section,
    read_attributions,
    subject_sections,
    subjects_section,
)
from neuroml.reports.checks import check_lines, current_sanity, fmt_num

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

#: (anchor, title) of the report's own sections, for the navigation bar.
_NAV = (
    ("summary", "Summary"),
    ("metrics", "Metrics"),
    ("subjects", "Subjects"),
    ("per-subject", "Per subject"),
    ("trust", "Trust checks"),
)


def _metric_ci(m, key):
    """The 95% interval of metric ``key`` in the metrics ``m`` of one model."""
    return ci_text((m.get("ci") or {}).get(key))


# -- sections ---------------------------------------------------------------------------
def _summary(run_dir, config, provenance, predictions, splits):
    """The run summary: classes, inputs, folds, the configuration and the package versions."""
    n = len(predictions) if predictions is not None else None
    rows = [
        ("run folder", run_dir.resolve().name),
        ("classes", ", ".join(map(str, config.get("classes") or []))),
        ("CNN inputs (channels)", inputs_text(config)),
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
    out = ["<h2 id='summary'>Run summary</h2>", html_table(["item", "value"], rows)]
    versions = (provenance or {}).get("packages") or (provenance or {}).get("versions")
    if isinstance(versions, dict) and versions:
        out.append("<details><summary>Package versions (provenance.json)</summary>")
        out.append(html_table(["package", "version"], sorted(versions.items())))
        out.append("</details>")
    elif provenance is None:
        out.append('<p class="na">provenance.json not found in this run.</p>')
    return "\n".join(out)


def _connectome_note(conn):
    """One paragraph describing the connectome baseline (``connectome_metrics.json``)."""
    return (
        "<p class='note' id='connectome'>Connectome baseline (connectome_metrics.json): "
        f"kind {escape(conn.get('kind'))}, atlas {escape(conn.get('atlas'))}; "
        f"{escape(conn.get('features'))}; {escape(conn.get('model') or '')}; fitted in the run's "
        f"folds ({escape(conn.get('n_participants', 'n/a'))} participants with atlas time series). "
        f"Balanced accuracy {escape(fmt_num(conn.get('balanced_accuracy')))} "
        f"(95% CI {escape(_metric_ci(conn, 'balanced_accuracy'))}), "
        f"AUC {escape(fmt_num(conn.get('auc_macro')))}.</p>"
    )


def _metric_rows(models, classes):
    """Rows of the classification table: overall metrics, per-class ones, the permutation test."""
    rows = []
    for key, label in (
        ("balanced_accuracy", "balanced accuracy"),
        ("accuracy", "accuracy"),
        ("auc_macro", "AUC (macro, one vs rest)"),
    ):
        rows.append(
            [label] + [v for _, m in models for v in (fmt_num(m.get(key)), _metric_ci(m, key))]
        )
    for c in classes:
        for key, label in (
            ("sensitivity", "sensitivity"),
            ("specificity", "specificity"),
            ("auc_per_class", "AUC"),
        ):
            rows.append(
                [f"{label}: {c}"]
                + [v for _, m in models for v in (fmt_num((m.get(key) or {}).get(c)), "")]
            )
    if any("permutation_p" in m for _, m in models):
        rows.append(
            ["permutation p (balanced accuracy)"]
            + [v for _, m in models for v in (fmt_num(m.get("permutation_p"), 4), "")]
        )
    return rows


def _metrics(metrics, classes, connectome=None, config=None):
    """The classification section: CNN, baseline and connectome baseline side by side."""
    if not metrics and not connectome:
        return (
            "<h2 id='metrics'>Classification</h2>"
            "<p class='na'>metrics.json not found: no metrics in this run.</p>"
        )
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
    out = ["<h2 id='metrics'>Classification (out-of-fold)</h2>"]
    if not metrics:
        out.append("<p class='na'>metrics.json not found: no CNN metrics in this run.</p>")
    out.append(html_table(headers, _metric_rows(models, classes)))
    if config is not None:
        out.append(f"<p class='note'>CNN inputs: {escape(inputs_text(config))}.</p>")
    base = metrics.get("baseline") or {}
    desc = base.get("description") or base.get("model")
    if desc:
        out.append(f"<p class='note'>Baseline: {escape(desc)}</p>")
    if connectome:
        out.append(_connectome_note(connectome))
    return "\n".join(out)


def _labelled_predictions(predictions, classes):
    """``(labels, probabilities)`` of the predictions of a known class, or None without them."""
    probs_cols = [f"prob_{c}" for c in classes]
    if "true_label" not in predictions or not set(probs_cols) <= set(predictions.columns):
        return None
    known = predictions[predictions["true_label"].isin(classes)]
    y = np.array([classes.index(v) for v in known["true_label"]])
    return y, known[probs_cols].astype(float).to_numpy()


def _roc_curves(y, p, classes):
    """One ROC curve per class, one against the rest (empty for a class absent or alone)."""
    from sklearn.metrics import roc_curve

    curves = {}
    for k, c in enumerate(classes):
        pos = y == k
        fpr, tpr, _ = roc_curve(pos, p[:, k]) if 0 < pos.sum() < len(y) else ([], [], None)
        curves[c] = {"fpr": list(fpr), "tpr": list(tpr)}
    return curves


def _roc_and_confusion(metrics, predictions, classes):
    """ROC curves and the confusion matrix, from metrics.json or else from the predictions."""
    cnn = (metrics or {}).get("cnn") or {}
    curves, cm, aucs = cnn.get("roc"), cnn.get("confusion_matrix"), cnn.get("auc_per_class")
    if (not curves or cm is None) and predictions is not None and classes:
        known = _labelled_predictions(predictions, classes)
        if known is not None and len(known[0]):
            y, p = known
            if curves is None:
                curves = _roc_curves(y, p, classes)
            if cm is None:
                cm = np.bincount(
                    y * len(classes) + p.argmax(1), minlength=len(classes) ** 2
                ).reshape(len(classes), -1)
    out = []
    if curves:
        out.append(picture(figures.roc_png, "ROC curves per class", curves, aucs))
    if cm is not None:
        out.append(picture(figures.confusion_png, "confusion matrix", cm, classes))
    if not out:
        return ""
    return "<h2 id='roc'>ROC curves and confusion matrix</h2>" + "\n".join(out)


def _training_curve(run_dir):
    """The training curves: ``training_curve.png``, or drawn from the folds' ``history.tsv``."""
    png_path = run_dir / "training_curve.png"
    if png_path.is_file():
        return "<h2 id='training'>Training curves</h2>" + img_tag(
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
    return "<h2 id='training'>Training curves</h2>" + picture(
        figures.curves_png, "training curves", histories
    )


def _split_items(splits):
    """Trust check items of ``splits.json``: no participant in two parts of a fold."""
    if not splits:
        return [("na", "splits.json not found: split leakage not checked in this run.")]
    try:
        from neuroml.training.splits import check_splits

        check_splits(splits)
        n_test = sum(len(f.get("test", [])) for f in splits)
    except Exception as exc:  # noqa: BLE001 - LeakageError or a malformed file: report it
        return [("warn", f"Split check failed: {exc}")]
    return [
        (
            "ok",
            "Subject-level splits: no participant is in two parts of a fold; "
            f"{n_test} participants tested once each across {len(splits)} folds.",
        )
    ]


def _accuracy_item(metrics, classes, connectome):
    """The trust check item comparing the CNN's balanced accuracy with chance, or None."""
    cnn, base = (metrics or {}).get("cnn") or {}, (metrics or {}).get("baseline") or {}
    if not classes or cnn.get("balanced_accuracy") is None:
        return None
    chance = 1.0 / len(classes)
    ci = (cnn.get("ci") or {}).get("balanced_accuracy") or [None, None]
    text = (
        f"CNN balanced accuracy {fmt_num(cnn['balanced_accuracy'])} "
        f"(95% CI {_metric_ci(cnn, 'balanced_accuracy')}); chance level {chance:.3f}."
    )
    state = "ok" if isinstance(ci[0], (int, float)) and ci[0] > chance else "warn"
    if state == "warn":
        text += " The interval includes or lies below chance."
    if base.get("balanced_accuracy") is not None:
        text += (
            f" Baseline {fmt_num(base['balanced_accuracy'])} "
            f"(95% CI {_metric_ci(base, 'balanced_accuracy')})."
        )
    if connectome and connectome.get("balanced_accuracy") is not None:
        text += (
            f" Connectome baseline {fmt_num(connectome['balanced_accuracy'])} "
            f"(95% CI {_metric_ci(connectome, 'balanced_accuracy')})."
        )
    return state, text


def _attribution_items(folder, doc):
    """Trust check items of one attribution method: which models made its maps, and the
    verdicts of its ``sanity.json`` (only one written by the call that made these maps)."""
    uses = (
        pd.Series([s.get("model_use", "unknown") for s in doc["subjects"]]).value_counts().to_dict()
    )
    leaked = uses.get("trained-on", 0)
    parts = ", ".join(f"{v} {k}" for k, v in uses.items())
    items = [
        (
            "warn" if leaked else "ok",
            f"{doc.get('method')}: maps from models that did not train on the subject ({parts})"
            + (f"; {leaked} explained by models trained on them (forced)." if leaked else "."),
        )
    ]
    sanity = current_sanity(doc, load_json(folder / "sanity.json"))
    if isinstance(sanity, dict):
        items.extend(check_lines(doc.get("method", folder.name), sanity))
        return items
    reason = (
        (doc.get("sanity") or {}).get("reason") if isinstance(doc.get("sanity"), dict) else None
    )
    items.append(
        (
            "na",
            f"{doc.get('method')}: attribution trust checks (model randomization, deletion, "
            "stability, ground truth) not computed by the call that made these maps"
            + (f" ({reason})." if reason else "."),
        )
    )
    return items


def _trust(metrics, splits, predictions, attributions, classes, connectome=None):
    """The trust checks section: one line per check, then the attribution checks side by side."""
    items = _split_items(splits)
    if predictions is not None and "fold" in predictions:
        items.append(
            (
                "ok",
                f"{len(predictions)} predictions are out-of-fold (column 'fold' records the model "
                "used).",
            )
        )
    accuracy = _accuracy_item(metrics, classes, connectome)
    if accuracy:
        items.append(accuracy)
    cnn = (metrics or {}).get("cnn") or {}
    if "permutation_p" in cnn:
        p = fmt_num(cnn["permutation_p"], 4)
        items.append(("ok", f"Permutation test of the CNN balanced accuracy: p = {p}."))
    else:
        items.append(("na", "Permutation test: not computed in this run."))
    if not attributions:
        items.append(("na", "Attribution: no maps in this run, so no attribution checks."))
    for folder, doc in attributions:
        items.extend(_attribution_items(folder, doc))
    lis = "".join(f"<li class='{k}'>{escape(t)}</li>" for k, t in items)
    return f"<h2 id='trust'>Trust checks</h2><ul>{lis}</ul>" + _sanity_tables(attributions)


def _sanity_row(method, sanity, classes):
    """One method's row of the attribution trust checks table."""
    rnd, dele = sanity.get("randomization") or {}, sanity.get("deletion") or {}
    stab = sanity.get("stability") or {}
    row = [
        method,
        fmt_num(rnd.get("median_abs_rho")),
        f"{fmt_num(dele.get('auc'))} / {fmt_num(dele.get('auc_random'))}",
        ", ".join(
            f"{c}: {fmt_num(v.get('median_rho'))} / {fmt_num(v.get('median_top_overlap'), 2)}"
            for c, v in stab.items()
        )
        or "n/a",
    ]
    for c in classes:
        g = (sanity.get("ground_truth") or {}).get(c) or {}
        row += [
            fmt_num(g.get("mass_enrichment"), 1),
            fmt_num(g.get("roc_auc")),
            f"{g.get('top_k_planted', 'n/a')}/{g.get('top_k', 'n/a')}",
        ]
    return row


def _sanity_tables(attributions):
    """Side-by-side table of every method's trust checks, and their deletion curves."""
    docs = [
        (d.get("method", f.name), current_sanity(d, load_json(f / "sanity.json")))
        for f, d in attributions
    ]
    docs = [(m, s) for m, s in docs if isinstance(s, dict)]
    if not docs:
        return ""
    classes = []
    for _, s in docs:
        for c in s.get("ground_truth") or {}:
            if c not in classes:
                classes.append(c)
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
    rows = [_sanity_row(method, s, classes) for method, s in docs]
    out = [
        "<h3>Attribution trust checks, method by method</h3>",
        "<p class='note'>Randomization passes below 0.2; deletion passes when removing the "
        "top-ranked regions lowers the probability faster than random removal (smaller area); "
        "fold stability passes at a median rho of 0.5, or a median top-10 overlap above chance "
        "(p < 0.01); ground truth (synthetic cohorts) passes at 10x enrichment with the top 5 "
        "regions all planted.</p>",
        html_table(headers, rows),
    ]
    curves = {
        method: s["deletion"]
        for method, s in docs
        if (s.get("deletion") or {}).get("steps") and (s.get("deletion") or {}).get("probability")
    }
    if curves:
        out.append(picture(figures.deletion_png, "deletion curves of every method", curves))
    return "\n".join(out)


def _read_config(run_dir):
    """``config.json`` of a run folder.

    Raises
    ------
    InputError
        If ``run_dir`` has no ``config.json``, or one that is not a neuroml run's.
    """
    from neuroml.runs.folder import check_run_folder  # neuroml.runs imports torch

    check_run_folder(run_dir, ("config.json",))
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise InputError("config.json is not a JSON object", run_dir / "config.json")
    if not isinstance(config.get("classes"), list):  # e.g. a model folder of another tool
        raise InputError(
            "not a neuroml run folder's config.json (no list of 'classes'); train one with "
            "`neuroml train`",
            run_dir / "config.json",
        )
    return config


def _read_splits(run_dir):
    """The folds of ``splits.json``, or None when absent or not a list of folds."""
    splits_doc = load_json(run_dir / "splits.json", (dict, list))
    splits = splits_doc.get("folds") if isinstance(splits_doc, dict) else splits_doc
    if splits_doc is not None and not (
        isinstance(splits, list) and all(isinstance(f, dict) for f in splits)
    ):
        log.warning("report: skipping %s: no list of folds", run_dir / "splits.json")
        return None
    return splits


def _page(title, parts):
    """The HTML document: title, navigation bar, stamp and the non-empty ``parts``."""
    nav = " ".join(f"<a href='#{i}'>{t}</a>" for i, t in (*_NAV, *trust_sections.NAV))
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>neuroml report: {escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>neuroml report: {escape(title)}</h1><nav>{nav}</nav>"
        f"<p class='note'>Written {escape(stamp)} by neuroml {escape(__version__)}.</p>"
        + "\n".join(p for p in parts if p)
        + "</body></html>\n"
    )


def build_report(
    run_dir: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None
) -> Path:
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
    config = _read_config(run_dir)
    classes = [str(c) for c in config.get("classes") or []]
    resolution_mm = config.get("resolution_mm")
    metrics = load_json(run_dir / "metrics.json")
    provenance = load_json(run_dir / "provenance.json")
    splits = _read_splits(run_dir)
    predictions = load_tsv(run_dir / "predictions.tsv")
    attributions = read_attributions(run_dir)
    connectome = load_json(run_dir / "connectome_metrics.json")
    parts = [
        _summary(run_dir, config, provenance, predictions, splits),
        _metrics(metrics, classes, connectome, config),
        _roc_and_confusion(metrics, predictions, classes),
        _training_curve(run_dir),
        *(attribution_section(folder, doc, resolution_mm) for folder, doc in attributions),
        subjects_section(predictions, classes, attributions),
        subject_sections(attributions, resolution_mm),
        _trust(metrics, splits, predictions, attributions, classes, connectome),
        *trust_sections.sections(run_dir, metrics, load_json(run_dir / "confounds.json")),
    ]
    out_path = Path(out_path) if out_path is not None else run_dir / "report.html"
    write_text_atomic(out_path, _page(run_dir.resolve().name, parts))
    log.info("report -> %s", out_path)
    return out_path
