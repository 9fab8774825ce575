"""Report sections of the trust checks: confounds and the site probe, the bias audit,
harmonization against none, and the model card. Every string is escaped."""

import logging
from pathlib import Path

from neuroml._utils.fileio import write_text_atomic
from neuroml.reports._common import _e, _table
from neuroml.reports.checks import fmt_num as _num

__all__ = ["sections", "NAV"]

log = logging.getLogger("neuroml")

#: (anchor, title) of the sections, for the report's navigation bar.
NAV = (("confounds", "Confounds"), ("audit", "Bias audit"), ("model-card", "Model card"))


def _ci(ci):
    if (
        isinstance(ci, (list, tuple))
        and len(ci) == 2
        and all(isinstance(v, (int, float)) for v in ci)
    ):
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return "n/a"


def _confounds(metrics, confounds):
    out = ["<h2 id='confounds'>Site and demographic confounds</h2>"]
    tests = (confounds or {}).get("tests") or {}
    if not confounds:
        out.append(
            "<p class='na'>confounds.json not found: confounds were not checked in this run.</p>"
        )
    elif not tests:
        out.append(
            "<p class='na'>No site, age or sex column in participants.tsv: nothing to test.</p>"
        )
    else:
        rows = [
            (
                col,
                t.get("test") or "not tested",
                _num(t.get("statistic")),
                _num(t.get("p_value"), 4),
                f"{t.get('effect')} {_num(t.get('effect_size'))}" if t.get("effect") else "n/a",
                "ENTANGLED" if t.get("entangled") else "no",
            )
            for col, t in tests.items()
        ]
        out.append(
            _table(
                ["column", "test against the label", "statistic", "p", "effect size", "entangled"],
                rows,
            )
        )
        notes = [f"{_e(col)}: {_e(t['note'])}" for col, t in tests.items() if t.get("note")]
        if notes:
            out.append("<p class='note'>Notes: " + "; ".join(notes) + ".</p>")
        for col in confounds.get("entangled") or []:
            out.append(
                f"<p class='warn'>Warning: the label is associated with {_e(col)} in this cohort. A model "
                f"can reach high accuracy by recognising {_e(col)}; "
                + (
                    "compare leave-one-site-out results and the site probe below."
                    if col == confounds.get("site_column")
                    else f"check the bias audit's per-{_e(col)} results and whether {_e(col)} alone predicts "
                    "the label."
                )
                + "</p>"
            )
    probe = (metrics or {}).get("site_probe")
    if probe and probe.get("balanced_accuracy") is not None:
        cnn, base = (metrics or {}).get("cnn") or {}, (metrics or {}).get("baseline") or {}
        rows = [
            (
                "site (probe on region means)",
                _num(probe["balanced_accuracy"]),
                _ci(probe.get("ci")),
                _num(probe.get("chance")),
                probe.get("scheme", ""),
            )
        ]
        after = probe.get("after_combat")
        if after and after.get("balanced_accuracy") is not None:
            rows.append(
                (
                    "site after ComBat inside folds",
                    _num(after["balanced_accuracy"]),
                    _ci(after.get("ci")),
                    _num(after.get("chance")),
                    after.get("scheme", ""),
                )
            )
        cnn_probe = probe.get("cnn") or {}
        harmonized = bool(((metrics or {}).get("harmonization") or {}).get("cnn_inputs"))
        inputs = cnn_probe.get("inputs") or {}
        if inputs.get("balanced_accuracy") is not None:
            rows.append(
                (
                    "site (probe on region means of the CNN's harmonized inputs)",
                    _num(inputs["balanced_accuracy"]),
                    _ci(inputs.get("ci")),
                    _num(inputs.get("chance")),
                    inputs.get("scheme", ""),
                )
            )
        if cnn_probe.get("balanced_accuracy") is not None:
            rows.append(
                (
                    "site (probe on the CNN's penultimate features"
                    + (", harmonized inputs)" if harmonized else ")"),
                    _num(cnn_probe["balanced_accuracy"]),
                    _ci(cnn_probe.get("ci")),
                    _num(cnn_probe.get("chance")),
                    cnn_probe.get("scheme", ""),
                )
            )
        chance = (metrics or {}).get("chance_balanced_accuracy")
        rows.append(
            (
                "diagnosis (CNN)",
                _num(cnn.get("balanced_accuracy")),
                _ci((cnn.get("ci") or {}).get("balanced_accuracy")),
                _num(chance),
                "the run's folds",
            )
        )
        if base.get("balanced_accuracy") is not None:
            rows.append(
                (
                    "diagnosis (baseline)",
                    _num(base.get("balanced_accuracy")),
                    _ci((base.get("ci") or {}).get("balanced_accuracy")),
                    _num(chance),
                    "the run's folds",
                )
            )
        out.append("<h3>Site probe beside diagnosis accuracy</h3>")
        out.append(_table(["predicted", "balanced accuracy", "95% CI", "chance", "folds"], rows))
        ci = probe.get("ci") or [None]
        if isinstance(ci[0], (int, float)) and ci[0] > probe.get("chance", 1):
            out.append(
                "<p class='warn'>The site can be read from the inputs above chance: a network can "
                "learn it too.</p>"
            )
    out.extend(_harmonization(metrics))
    return "\n".join(out)


def _harmonization(metrics):
    """Harmonization against none: the plain and ComBat baselines, the CNN (on harmonized
    inputs when the run harmonized them) and the site probe of each one's inputs."""
    metrics = metrics or {}
    harm, info = metrics.get("baseline_harmonized"), metrics.get("harmonization") or {}
    if not harm and not info:
        return []
    out = ["<h3>Harmonization against none</h3>"]
    if harm and "error" in harm:
        out.append(f"<p class='warn'>Harmonized baseline not computed: {_e(harm['error'])}</p>")
        harm = None
    probe = metrics.get("site_probe") or {}
    cnn_probe = probe.get("cnn") or {}

    def site(p):
        p = p or {}
        return (
            f"{_num(p.get('balanced_accuracy'))} {_ci(p.get('ci'))}"
            if p.get("balanced_accuracy") is not None
            else "n/a"
        )

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
            _num(m.get("balanced_accuracy")),
            _ci((m.get("ci") or {}).get("balanced_accuracy")),
            _num(m.get("auc_macro")),
            _ci((m.get("ci") or {}).get("auc_macro")),
            site(p_in),
            site(p_net) if p_net is not None else "",
        )
        for name, m, p_in, p_net in entries
        if m
    ]
    if rows:
        out.append(
            _table(
                [
                    "model",
                    "balanced accuracy",
                    "95% CI",
                    "AUC",
                    "95% CI",
                    "site probe on its inputs [95% CI]",
                    "site probe on CNN features [95% CI]",
                ],
                rows,
            )
        )
    if harm:
        out.append(
            f"<p class='note'>{_e(harm.get('model'))}; covariates kept: "
            f"{_e(', '.join(harm.get('covariates_kept') or []) or 'none')}. ComBat is fitted on each "
            "fold's training participants only and applied to its test participants.</p>"
        )
    if info.get("cnn_inputs"):
        voxels = sorted(
            {f.get("voxels") for f in info.get("folds") or [] if f.get("voxels") is not None}
        )
        unseen = {
            f["fold"]: f["unseen_sites"] for f in info.get("folds") or [] if f.get("unseen_sites")
        }
        out.append(
            "<p class='note'>This run's CNN was trained and evaluated on harmonized inputs: per fold, "
            f"voxel-wise ComBat ({_e(info.get('voxels'))}, {_e(', '.join(map(str, voxels)) or 'n/a')} "
            f"voxels; covariates kept: {_e(', '.join(info.get('covariates_kept') or []) or 'none')}) was "
            f"fitted on {_e(info.get('cnn_fitted_on'))} and applied to its training, validation and test "
            "participants; the parameters are saved in each fold folder (combat.npz) and applied by "
            "predict and attribute. The same run without harmonize gives the CNN's unharmonized "
            "figures; the site probe on its inputs reads the region means of the harmonized volumes.</p>"
        )
        if unseen:
            out.append(
                "<p class='warn'>Sites not estimated from a fold's training participants were left "
                "unharmonized for that fold: "
                + _e("; ".join(f"fold {k}: {', '.join(v)}" for k, v in unseen.items()))
                + "</p>"
            )
    return out


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
                sens = "; ".join(
                    f"{c} {_num(v)} {_ci((ci.get('sensitivity') or {}).get(c))}"
                    for c, v in (m.get("sensitivity") or {}).items()
                )
                spec = "; ".join(
                    f"{c} {_num(v)} {_ci((ci.get('specificity') or {}).get(c))}"
                    for c, v in (m.get("specificity") or {}).items()
                )
                rows.append(
                    (
                        attr,
                        g,
                        m.get("n"),
                        _num(m.get("balanced_accuracy")),
                        _ci(ci.get("balanced_accuracy")),
                        _num(m.get("auc_macro")),
                        _ci(ci.get("auc_macro")),
                        sens,
                        spec,
                    )
                )
        out.append(f"<h3>{_e('CNN' if name == 'cnn' else name)}</h3>")
        if not rows:
            out.append("<p class='na'>No sex, age or site column in participants.tsv.</p>")
            continue
        out.append(
            _table(
                [
                    "attribute",
                    "group",
                    "n",
                    "balanced accuracy",
                    "95% CI",
                    "AUC",
                    "95% CI",
                    "sensitivity [95% CI]",
                    "specificity [95% CI]",
                ],
                rows,
                numeric=(2,),
            )
        )
        gap = audit.get("largest_gap")
        if gap:
            sep = gap.get("intervals_separate")
            out.append(
                f"<p class='warn'><strong>Largest gap</strong>: {_e(gap['metric'])} differs by "
                f"{_e(_num(gap['value']))} across {_e(gap['attribute'])} ({_e(gap['best'])} "
                f"{_e(_num(gap['best_value']))} vs {_e(gap['worst'])} {_e(_num(gap['worst_value']))}); the "
                f"95% intervals {'do not overlap' if sep else 'overlap'}.</p>"
            )
        else:
            out.append(
                f"<p class='na'>No two groups of at least {_e(audit.get('min_group_size'))} participants "
                "with both classes to compare.</p>"
            )
    return "\n".join(out)


def _model_card(run_dir):
    from neuroml.errors import NeuromlError
    from neuroml.reports.model_card import model_card_text

    try:
        text = model_card_text(run_dir)
    except NeuromlError as exc:
        log.warning("report: model card not made: %s", exc)
        return (
            f"<h2 id='model-card'>Model card</h2><p class='warn'>Model card not made: {_e(exc)}</p>"
        )
    try:  # refreshed beside the report; a read-only run folder fails the report itself with one clear line
        write_text_atomic(Path(run_dir) / "model_card.md", text)
    except OSError as exc:
        log.debug("model card not written: %s", exc)
    return (
        "<h2 id='model-card'>Model card</h2><p class='note'>model_card.md of this run (Markdown).</p>"
        f"<pre style='white-space:pre-wrap'>{_e(text)}</pre>"
    )


def sections(run_dir, metrics, confounds):
    """The HTML of the trust sections, in order."""
    return [_confounds(metrics, confounds), _audit(metrics), _model_card(run_dir)]
