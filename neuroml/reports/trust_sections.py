"""Report sections of the trust checks: confounds and the site probe, the bias audit,
harmonization against none, and the model card. Every string is escaped."""

import logging
from pathlib import Path

from neuroml._utils.fileio import write_text_atomic
from neuroml.reports.html import _e, _num, _table

__all__ = ["sections", "NAV"]

log = logging.getLogger("neuroml")

#: (anchor, title) of the sections, for the report's navigation bar.
NAV = (("confounds", "Confounds"), ("audit", "Bias audit"), ("model-card", "Model card"))


def _ci(ci):
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return "n/a"


def _confounds(metrics, confounds):
    out = ["<h2 id='confounds'>Site and demographic confounds</h2>"]
    tests = (confounds or {}).get("tests") or {}
    if not confounds:
        out.append("<p class='na'>confounds.json not found: confounds were not checked in this run.</p>")
    elif not tests:
        out.append("<p class='na'>No site, age or sex column in participants.tsv: nothing to test.</p>")
    else:
        rows = [(col, t.get("test") or "not tested", _num(t.get("statistic")), _num(t.get("p_value"), 4),
                 f"{t.get('effect')} {_num(t.get('effect_size'))}" if t.get("effect") else "n/a",
                 "ENTANGLED" if t.get("entangled") else "no") for col, t in tests.items()]
        out.append(_table(["column", "test against the label", "statistic", "p", "effect size", "entangled"], rows))
        for col in confounds.get("entangled") or []:
            out.append(f"<p class='warn'>Warning: the label is associated with {_e(col)} in this cohort. A model "
                       f"can reach high accuracy by recognising {_e(col)}; compare leave-one-site-out results and "
                       "the site probe below.</p>")
    probe = (metrics or {}).get("site_probe")
    if probe and probe.get("balanced_accuracy") is not None:
        cnn, base = (metrics or {}).get("cnn") or {}, (metrics or {}).get("baseline") or {}
        rows = [("site (probe on region means)", _num(probe["balanced_accuracy"]), _ci(probe.get("ci")),
                 _num(probe.get("chance")), probe.get("scheme", ""))]
        after = probe.get("after_combat")
        if after and after.get("balanced_accuracy") is not None:
            rows.append(("site after ComBat inside folds", _num(after["balanced_accuracy"]), _ci(after.get("ci")),
                         _num(after.get("chance")), after.get("scheme", "")))
        cnn_probe = probe.get("cnn") or {}
        if cnn_probe.get("balanced_accuracy") is not None:
            rows.append(("site (probe on the CNN's penultimate features)", _num(cnn_probe["balanced_accuracy"]),
                         _ci(cnn_probe.get("ci")), _num(cnn_probe.get("chance")), cnn_probe.get("scheme", "")))
        chance = (metrics or {}).get("chance_balanced_accuracy")
        rows.append(("diagnosis (CNN)", _num(cnn.get("balanced_accuracy")),
                     _ci((cnn.get("ci") or {}).get("balanced_accuracy")), _num(chance), "the run's folds"))
        if base.get("balanced_accuracy") is not None:
            rows.append(("diagnosis (baseline)", _num(base.get("balanced_accuracy")),
                         _ci((base.get("ci") or {}).get("balanced_accuracy")), _num(chance), "the run's folds"))
        out.append("<h3>Site probe beside diagnosis accuracy</h3>")
        out.append(_table(["predicted", "balanced accuracy", "95% CI", "chance", "folds"], rows))
        ci = probe.get("ci") or [None]
        if isinstance(ci[0], (int, float)) and ci[0] > probe.get("chance", 1):
            out.append("<p class='warn'>The site can be read from the inputs above chance: a network can "
                       "learn it too.</p>")
    harm = (metrics or {}).get("baseline_harmonized")
    if harm and "error" in harm:
        out.append(f"<h3>Harmonization against none</h3><p class='warn'>Harmonized baseline not computed: "
                   f"{_e(harm['error'])}</p>")
    elif harm:
        base = (metrics or {}).get("baseline") or {}
        rows = [(name, _num(m.get("balanced_accuracy")), _ci((m.get("ci") or {}).get("balanced_accuracy")),
                 _num(m.get("auc_macro")), _ci((m.get("ci") or {}).get("auc_macro")))
                for name, m in (("baseline, no harmonization", base), ("baseline, ComBat inside folds", harm))]
        out.append("<h3>Harmonization against none</h3>")
        out.append(_table(["model", "balanced accuracy", "95% CI", "AUC", "95% CI"], rows))
        out.append(f"<p class='note'>{_e(harm.get('model'))}; covariates kept: "
                   f"{_e(', '.join(harm.get('covariates_kept') or []) or 'none')}. ComBat is fitted on each "
                   "fold's training participants only and applied to its test participants.</p>")
    return "\n".join(out)


def _audit(metrics):
    audits = (metrics or {}).get("audit") or {}
    out = ["<h2 id='audit'>Bias audit: performance per subgroup</h2>"]
    if not audits:
        out.append("<p class='na'>No bias audit in this run.</p>")
        return "\n".join(out)
    for name, audit in audits.items():
        rows = []
        for attr, info in audit.get("attributes", {}).items():
            for g, m in info.get("groups", {}).items():
                ci = m.get("ci") or {}
                sens = "; ".join(f"{c} {_num(v)} {_ci((ci.get('sensitivity') or {}).get(c))}"
                                 for c, v in (m.get("sensitivity") or {}).items())
                spec = "; ".join(f"{c} {_num(v)} {_ci((ci.get('specificity') or {}).get(c))}"
                                 for c, v in (m.get("specificity") or {}).items())
                rows.append((attr, g, m.get("n"), _num(m.get("balanced_accuracy")), _ci(ci.get("balanced_accuracy")),
                             _num(m.get("auc_macro")), _ci(ci.get("auc_macro")), sens, spec))
        out.append(f"<h3>{_e('CNN' if name == 'cnn' else name)}</h3>")
        if not rows:
            out.append("<p class='na'>No sex, age or site column in participants.tsv.</p>")
            continue
        out.append(_table(["attribute", "group", "n", "balanced accuracy", "95% CI", "AUC", "95% CI",
                           "sensitivity [95% CI]", "specificity [95% CI]"], rows, numeric=(2,)))
        gap = audit.get("largest_gap")
        if gap:
            sep = gap.get("intervals_separate")
            out.append(f"<p class='warn'><strong>Largest gap</strong>: {_e(gap['metric'])} differs by "
                       f"{_e(_num(gap['value']))} across {_e(gap['attribute'])} ({_e(gap['best'])} "
                       f"{_e(_num(gap['best_value']))} vs {_e(gap['worst'])} {_e(_num(gap['worst_value']))}); the "
                       f"95% intervals {'do not overlap' if sep else 'overlap'}.</p>")
        else:
            out.append(f"<p class='na'>No two groups of at least {_e(audit.get('min_group_size'))} participants "
                       "with both classes to compare.</p>")
    return "\n".join(out)


def _model_card(run_dir):
    from neuroml.errors import NeuromlError
    from neuroml.reports.model_card import model_card_text

    try:
        text = model_card_text(run_dir)
    except NeuromlError as exc:
        log.warning("report: model card not made: %s", exc)
        return f"<h2 id='model-card'>Model card</h2><p class='warn'>Model card not made: {_e(exc)}</p>"
    try:  # refreshed beside the report; a read-only run folder fails the report itself with one clear line
        write_text_atomic(Path(run_dir) / "model_card.md", text)
    except OSError as exc:
        log.debug("model card not written: %s", exc)
    return ("<h2 id='model-card'>Model card</h2><p class='note'>model_card.md of this run (Markdown).</p>"
            f"<pre style='white-space:pre-wrap'>{_e(text)}</pre>")


def sections(run_dir, metrics, confounds):
    """The HTML of the trust sections, in order."""
    return [_confounds(metrics, confounds), _audit(metrics), _model_card(run_dir)]
