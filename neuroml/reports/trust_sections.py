"""Report sections of the trust checks: confounds and the site probe, the bias audit,
harmonization against none, and the model card. Every string is escaped."""

import logging
from pathlib import Path

from neuroml._utils.fileio import write_text_atomic
from neuroml.errors import NeuromlError
from neuroml.reports._common import ci_text, escape, html_table
from neuroml.reports.checks import fmt_num
from neuroml.reports.model_card import model_card_text

__all__ = ["sections", "NAV"]

log = logging.getLogger("neuroml")

#: (anchor, title) of the sections, for the report's navigation bar.
NAV = (("confounds", "Confounds"), ("audit", "Bias audit"), ("model-card", "Model card"))


def _confounds(metrics, confounds):
    """The confounds section: label association tests, the site probe, harmonization."""
    out = ["<h2 id='confounds'>Site and demographic confounds</h2>"]
    out.extend(_confound_tests(confounds))
    out.extend(_site_probe(metrics))
    out.extend(_harmonization(metrics))
    return "\n".join(out)


def _confound_tests(confounds):
    """The table of ``confounds.json``'s tests against the label, its notes and warnings."""
    tests = (confounds or {}).get("tests") or {}
    if not confounds:
        return [
            "<p class='na'>confounds.json not found: confounds were not checked in this run.</p>"
        ]
    if not tests:
        return [
            "<p class='na'>No site, age or sex column in participants.tsv: nothing to test.</p>"
        ]
    rows = [
        (
            col,
            t.get("test") or "not tested",
            fmt_num(t.get("statistic")),
            fmt_num(t.get("p_value"), 4),
            f"{t.get('effect')} {fmt_num(t.get('effect_size'))}" if t.get("effect") else "n/a",
            "ENTANGLED" if t.get("entangled") else "no",
        )
        for col, t in tests.items()
    ]
    out = [
        html_table(
            ["column", "test against the label", "statistic", "p", "effect size", "entangled"],
            rows,
        )
    ]
    notes = [f"{escape(col)}: {escape(t['note'])}" for col, t in tests.items() if t.get("note")]
    if notes:
        out.append("<p class='note'>Notes: " + "; ".join(notes) + ".</p>")
    site_column = confounds.get("site_column")
    out.extend(_entangled_warning(col, site_column) for col in confounds.get("entangled") or [])
    return out


def _entangled_warning(col, site_column):
    """The warning that the label is associated with ``col``, and what to compare."""
    advice = (
        "compare leave-one-site-out results and the site probe below."
        if col == site_column
        else f"check the bias audit's per-{escape(col)} results and whether {escape(col)} alone "
        "predicts the label."
    )
    return (
        f"<p class='warn'>Warning: the label is associated with {escape(col)} in this cohort. "
        f"A model can reach high accuracy by recognising {escape(col)}; {advice}</p>"
    )


def _probe_row(label, probe):
    """A row of the site probe table from one probe's result."""
    return (
        label,
        fmt_num(probe["balanced_accuracy"]),
        ci_text(probe.get("ci")),
        fmt_num(probe.get("chance")),
        probe.get("scheme", ""),
    )


def _diagnosis_row(label, model, chance):
    """A row of the site probe table from a diagnosis model's metrics."""
    return (
        label,
        fmt_num(model.get("balanced_accuracy")),
        ci_text((model.get("ci") or {}).get("balanced_accuracy")),
        fmt_num(chance),
        "the run's folds",
    )


def _site_probe(metrics):
    """The site probe beside the diagnosis accuracy, and a warning when the site is readable."""
    metrics = metrics or {}
    probe = metrics.get("site_probe")
    if not probe or probe.get("balanced_accuracy") is None:
        return []
    rows = [_probe_row("site (probe on region means)", probe)]
    after = probe.get("after_combat")
    if after and after.get("balanced_accuracy") is not None:
        rows.append(_probe_row("site after ComBat inside folds", after))
    cnn_probe = probe.get("cnn") or {}
    inputs = cnn_probe.get("inputs") or {}
    if inputs.get("balanced_accuracy") is not None:
        label = "site (probe on region means of the CNN's harmonized inputs)"
        rows.append(_probe_row(label, inputs))
    if cnn_probe.get("balanced_accuracy") is not None:
        harmonized = bool((metrics.get("harmonization") or {}).get("cnn_inputs"))
        label = "site (probe on the CNN's penultimate features" + (
            ", harmonized inputs)" if harmonized else ")"
        )
        rows.append(_probe_row(label, cnn_probe))
    chance = metrics.get("chance_balanced_accuracy")
    rows.append(_diagnosis_row("diagnosis (CNN)", metrics.get("cnn") or {}, chance))
    base = metrics.get("baseline") or {}
    if base.get("balanced_accuracy") is not None:
        rows.append(_diagnosis_row("diagnosis (baseline)", base, chance))
    out = [
        "<h3>Site probe beside diagnosis accuracy</h3>",
        html_table(["predicted", "balanced accuracy", "95% CI", "chance", "folds"], rows),
    ]
    ci = probe.get("ci") or [None]
    if isinstance(ci[0], (int, float)) and ci[0] > probe.get("chance", 1):
        out.append(
            "<p class='warn'>The site can be read from the inputs above chance: a network can "
            "learn it too.</p>"
        )
    return out


def _site_text(probe):
    """A site probe's balanced accuracy and interval, or ``n/a``."""
    probe = probe or {}
    if probe.get("balanced_accuracy") is None:
        return "n/a"
    return f"{fmt_num(probe.get('balanced_accuracy'))} {ci_text(probe.get('ci'))}"


def _harmonization(metrics):
    """Harmonization against none: the plain and ComBat baselines, the CNN (on harmonized
    inputs when the run harmonized them) and the site probe of each one's inputs."""
    metrics = metrics or {}
    harm, info = metrics.get("baseline_harmonized"), metrics.get("harmonization") or {}
    if not harm and not info:
        return []
    out = ["<h3>Harmonization against none</h3>"]
    if harm and "error" in harm:
        out.append(f"<p class='warn'>Harmonized baseline not computed: {escape(harm['error'])}</p>")
        harm = None
    out.extend(_harmonization_table(metrics, harm, info))
    if harm:
        out.append(
            f"<p class='note'>{escape(harm.get('model'))}; covariates kept: "
            f"{escape(', '.join(harm.get('covariates_kept') or []) or 'none')}. ComBat is fitted "
            "on each fold's training participants only and applied to its test participants.</p>"
        )
    if info.get("cnn_inputs"):
        out.extend(_harmonized_inputs_notes(info))
    return out


def _harmonization_table(metrics, harm, info):
    """One row per model: its accuracy and AUC with intervals, and the site probes of its inputs
    (and of the CNN's features)."""
    probe = metrics.get("site_probe") or {}
    cnn_probe = probe.get("cnn") or {}
    entries = [("baseline, no harmonization", metrics.get("baseline"), probe, None)]
    if harm:
        entries.append(
            ("baseline, ComBat on region means inside folds", harm, probe.get("after_combat"), None)
        )
    if info.get("cnn_inputs"):
        entries.append(
            (
                "CNN, ComBat on input voxels inside folds (this run's CNN)",
                metrics.get("cnn"),
                cnn_probe.get("inputs"),
                cnn_probe,
            )
        )
    rows = [
        (
            name,
            fmt_num(m.get("balanced_accuracy")),
            ci_text((m.get("ci") or {}).get("balanced_accuracy")),
            fmt_num(m.get("auc_macro")),
            ci_text((m.get("ci") or {}).get("auc_macro")),
            _site_text(p_in),
            _site_text(p_net) if p_net is not None else "",
        )
        for name, m, p_in, p_net in entries
        if m
    ]
    if not rows:
        return []
    headers = [
        "model",
        "balanced accuracy",
        "95% CI",
        "AUC",
        "95% CI",
        "site probe on its inputs [95% CI]",
        "site probe on CNN features [95% CI]",
    ]
    return [html_table(headers, rows)]


def _harmonized_inputs_notes(info):
    """How the CNN's inputs were harmonized, and the sites a fold left unharmonized."""
    folds = info.get("folds") or []
    voxels = sorted({f.get("voxels") for f in folds if f.get("voxels") is not None})
    unseen = {f["fold"]: f["unseen_sites"] for f in folds if f.get("unseen_sites")}
    covariates = ", ".join(info.get("covariates_kept") or []) or "none"
    out = [
        "<p class='note'>This run's CNN was trained and evaluated on harmonized inputs: per fold, "
        f"voxel-wise ComBat ({escape(info.get('voxels'))}, "
        f"{escape(', '.join(map(str, voxels)) or 'n/a')} voxels; covariates kept: "
        f"{escape(covariates)}) was fitted on {escape(info.get('cnn_fitted_on'))} and applied to "
        "its training, validation and test participants; the parameters are saved in each fold "
        "folder (combat.npz) and applied by predict and attribute. The same run without harmonize "
        "gives the CNN's unharmonized figures; the site probe on its inputs reads the region "
        "means of the harmonized volumes.</p>"
    ]
    if unseen:
        out.append(
            "<p class='warn'>Sites not estimated from a fold's training participants were left "
            "unharmonized for that fold: "
            + escape("; ".join(f"fold {k}: {', '.join(v)}" for k, v in unseen.items()))
            + "</p>"
        )
    return out


def _audit(metrics):
    """The bias audit section: per model, its metrics per subgroup and the largest gap."""
    audits = (metrics or {}).get("audit") or {}
    out = ["<h2 id='audit'>Bias audit: performance per subgroup</h2>"]
    if not audits:
        out.append("<p class='na'>No bias audit in this run.</p>")
        return "\n".join(out)
    headers = [
        "attribute",
        "group",
        "n",
        "balanced accuracy",
        "95% CI",
        "AUC",
        "95% CI",
        "sensitivity [95% CI]",
        "specificity [95% CI]",
    ]
    for name, audit in audits.items():
        rows = _audit_rows(audit)
        out.append(f"<h3>{escape('CNN' if name == 'cnn' else name)}</h3>")
        if not rows:
            out.append("<p class='na'>No sex, age or site column in participants.tsv.</p>")
            continue
        out.append(html_table(headers, rows, numeric=(2,)))
        out.append(_gap_text(audit))
    return "\n".join(out)


def _per_class(values, intervals):
    """``class value [CI]`` for each class of a per-class metric, joined by semicolons."""
    return "; ".join(
        f"{c} {fmt_num(v)} {ci_text((intervals or {}).get(c))}" for c, v in (values or {}).items()
    )


def _audit_rows(audit):
    """One row per subgroup of one model's audit."""
    rows = []
    for attr, info in audit.get("attributes", {}).items():
        for g, m in info.get("groups", {}).items():
            ci = m.get("ci") or {}
            rows.append(
                (
                    attr,
                    g,
                    m.get("n"),
                    fmt_num(m.get("balanced_accuracy")),
                    ci_text(ci.get("balanced_accuracy")),
                    fmt_num(m.get("auc_macro")),
                    ci_text(ci.get("auc_macro")),
                    _per_class(m.get("sensitivity"), ci.get("sensitivity")),
                    _per_class(m.get("specificity"), ci.get("specificity")),
                )
            )
    return rows


def _gap_text(audit):
    """The largest gap between two subgroups, or why there is none to show."""
    gap = audit.get("largest_gap")
    if not gap:
        return (
            f"<p class='na'>No two groups of at least {escape(audit.get('min_group_size'))} "
            "participants with both classes to compare.</p>"
        )
    overlap = "do not overlap" if gap.get("intervals_separate") else "overlap"
    return (
        f"<p class='warn'><strong>Largest gap</strong>: {escape(gap['metric'])} differs by "
        f"{escape(fmt_num(gap['value']))} across {escape(gap['attribute'])} "
        f"({escape(gap['best'])} {escape(fmt_num(gap['best_value']))} vs {escape(gap['worst'])} "
        f"{escape(fmt_num(gap['worst_value']))}); the 95% intervals {overlap}.</p>"
    )


def _model_card(run_dir):
    """The model card section: ``model_card.md`` made again (with the attribution checks made
    since training) and written beside the report."""
    try:
        text = model_card_text(run_dir)
    except NeuromlError as exc:
        log.warning("report: model card not made: %s", exc)
        return (
            "<h2 id='model-card'>Model card</h2>"
            f"<p class='warn'>Model card not made: {escape(exc)}</p>"
        )
    try:  # a read-only run folder fails the report itself, with one clear line
        write_text_atomic(Path(run_dir) / "model_card.md", text)
    except OSError as exc:
        log.debug("model card not written: %s", exc)
    return (
        "<h2 id='model-card'>Model card</h2>"
        "<p class='note'>model_card.md of this run (Markdown).</p>"
        f"<pre style='white-space:pre-wrap'>{escape(text)}</pre>"
    )


def sections(run_dir, metrics, confounds):
    """The HTML of the trust sections, in order."""
    return [_confounds(metrics, confounds), _audit(metrics), _model_card(run_dir)]
