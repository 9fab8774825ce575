"""``RUN/model_card.md``: what a trained run is for, what it was trained on, how well it does
overall and per subgroup, what the trust checks found, and its known limits.

Written at the end of :func:`~neuroml.workflows.train_run` and refreshed by
:func:`~neuroml.reports.build_report` (so attribution checks made later are included).
It names no participant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from neuroml._utils.fileio import write_text_atomic
from neuroml._version import __version__
from neuroml.errors import InputError
from neuroml.reports._common import ci_text, inputs_text, load_json
from neuroml.reports.checks import check_lines, current_sanity

__all__ = ["write_model_card", "model_card_text"]

log = logging.getLogger("neuroml")


def _md(value):
    """A value for a Markdown table cell (pipes and line breaks neutralised)."""
    return str("n/a" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _f(v, digits=3):
    """A number with ``digits`` decimals, or ``n/a`` when not a number."""
    return "n/a" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.{digits}f}"


def _md_table(headers, rows):
    """A Markdown table."""
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(path):
    """The JSON object at ``path``; None (with a warning naming the file) when absent, unreadable
    or not an object."""
    return load_json(path, reader="model card")


def _performance(metrics, classes):
    """The out-of-fold metrics of the CNN and the baselines, and the permutation test."""
    rows = []
    cnn = (
        "CNN, ComBat-harmonized inputs"
        if ((metrics or {}).get("cnn") or {}).get("harmonized_inputs")
        else "CNN"
    )
    for name, key in (
        (cnn, "cnn"),
        ("baseline (AAL region means)", "baseline"),
        ("baseline, ComBat inside folds", "baseline_harmonized"),
    ):
        m = (metrics or {}).get(key)
        if not isinstance(m, dict) or "balanced_accuracy" not in m:
            continue
        ci = m.get("ci") or {}
        sens = ", ".join(f"{c} {_f((m.get('sensitivity') or {}).get(c))}" for c in classes)
        spec = ", ".join(f"{c} {_f((m.get('specificity') or {}).get(c))}" for c in classes)
        rows.append(
            (
                name,
                m.get("n"),
                _f(m.get("balanced_accuracy")),
                ci_text(ci.get("balanced_accuracy")),
                _f(m.get("auc_macro")),
                ci_text(ci.get("auc_macro")),
                sens,
                spec,
            )
        )
    if not rows:
        return "No metrics in this run."
    table = _md_table(
        [
            "model",
            "n",
            "balanced accuracy",
            "95% CI",
            "AUC (macro)",
            "95% CI",
            "sensitivity",
            "specificity",
        ],
        rows,
    )
    return table + "\n\n" + _permutation_line(metrics, cnn)


def _permutation_line(metrics, cnn):
    """The permutation p of each model tested, or how to run the test."""
    tested = [
        (name, m)
        for name, m in (
            (cnn, metrics.get("cnn")),
            ("baseline", metrics.get("baseline")),
            ("baseline, ComBat inside folds", metrics.get("baseline_harmonized")),
        )
        if isinstance(m, dict) and isinstance(m.get("permutation_p"), (int, float))
    ]
    if not tested:
        return (
            "No permutation test in this run (`neuroml train --n-permutations 1000`, or "
            "`n_permutations` in Python and YAML)."
        )
    n = tested[0][1].get("n_permutations")
    ps = "; ".join(f"{_md(name)} p = {_f(m['permutation_p'], 4)}" for name, m in tested)
    return (
        f"Permutation test of the balanced accuracy ({_md(n)} label permutations of the "
        f"out-of-fold predictions, the models not retrained): {ps}."
    )


def _subgroups(audit):
    """The CNN's metrics per subgroup and the largest gap between two of them."""
    if not audit:
        return "No bias audit in this run."
    rows = []
    for attr, info in audit.get("attributes", {}).items():
        for g, m in info.get("groups", {}).items():
            ci = m.get("ci") or {}
            rows.append(
                (
                    attr,
                    g,
                    m.get("n"),
                    _f(m.get("balanced_accuracy")),
                    ci_text(ci.get("balanced_accuracy")),
                    _f(m.get("auc_macro")),
                    ci_text(ci.get("auc_macro")),
                )
            )
    text = (
        _md_table(["attribute", "group", "n", "balanced accuracy", "95% CI", "AUC", "95% CI"], rows)
        if rows
        else "No subgroup attributes (sex, age, site) in participants.tsv."
    )
    gap = audit.get("largest_gap")
    if gap:
        text += (
            f"\n\n**Largest gap**: {_md(gap['metric'])} differs by {_f(gap['value'])} across "
            f"{_md(gap['attribute'])} ({_md(gap['best'])} {_f(gap['best_value'])} vs "
            f"{_md(gap['worst'])} {_f(gap['worst_value'])}); the 95% intervals "
            f"{'do not overlap' if gap.get('intervals_separate') else 'overlap'}."
        )
    return text


def _demographics(conf, classes):
    """Participants, sex, age and site per class (``confounds.json``)."""
    demo = (conf or {}).get("demographics") or {}
    if not demo:
        return "No demographics recorded (confounds.json missing)."
    rows = []
    for c in classes:
        d = demo.get(c, {})
        age = d.get("age")
        age_txt = (
            f"{age['mean']:.1f} ± {age['sd']:.1f} ({age['min']:g}-{age['max']:g})"
            if age and age.get("sd") is not None
            else (f"{age['mean']:.1f}" if age else "n/a")
        )
        rows.append(
            (
                c,
                d.get("n"),
                ", ".join(f"{k}: {v}" for k, v in (d.get("sex") or {}).items()) or "n/a",
                age_txt,
                ", ".join(f"{k}: {v}" for k, v in (d.get("site") or {}).items()) or "n/a",
            )
        )
    return _md_table(["class", "participants", "sex", "age, mean ± sd (range)", "site"], rows)


def _confounds(conf, metrics):
    """The tests of the label against site, age and sex, and the site probe."""
    parts = []
    tests = (conf or {}).get("tests") or {}
    rows = [
        (
            col,
            t.get("test") or "not tested",
            _f(t.get("statistic")),
            _f(t.get("p_value"), 4),
            f"{t.get('effect')} {_f(t.get('effect_size'))}" if t.get("effect") else "n/a",
            "**yes**" if t.get("entangled") else "no",
        )
        for col, t in tests.items()
    ]
    if rows:
        headers = ["column", "test", "statistic", "p", "effect size", "entangled"]
        parts.append(_md_table(headers, rows))
        notes = [f"{_md(col)}: {_md(t['note'])}" for col, t in tests.items() if t.get("note")]
        if notes:
            parts.append("Notes: " + "; ".join(notes) + ".")
    else:
        parts.append("No site, age or sex column to test.")
    line = _site_probe_line(metrics)
    if line:
        parts.append(line)
    return "\n\n".join(parts)


def _site_probe_line(metrics):
    """The site probe's balanced accuracy beside the diagnosis one, or None without a probe."""
    probe = (metrics or {}).get("site_probe")
    if not probe or probe.get("balanced_accuracy") is None:
        return None
    cnn = (metrics or {}).get("cnn") or {}
    line = (
        f"Site probe: the site is predicted from {_md(probe.get('features'))} with balanced "
        f"accuracy {_f(probe['balanced_accuracy'])} {ci_text(probe.get('ci'))} "
        f"(chance {_f(probe.get('chance'))}), beside a diagnosis balanced accuracy of "
        f"{_f(cnn.get('balanced_accuracy'))} (CNN)."
    )
    cnn_probe = probe.get("cnn") or {}
    if cnn_probe.get("balanced_accuracy") is not None:
        line += (
            f" From the CNN's penultimate features: {_f(cnn_probe['balanced_accuracy'])} "
            f"{ci_text(cnn_probe.get('ci'))}."
        )
    after = probe.get("after_combat")
    if after and after.get("balanced_accuracy") is not None:
        line += (
            f" After ComBat inside folds: {_f(after['balanced_accuracy'])} "
            f"{ci_text(after.get('ci'))}."
        )
    return line


def _attribution(run_dir):
    """One item per attribution method: the models its maps came from and its trust checks."""
    lines = []
    for path in sorted((Path(run_dir) / "attribution").glob("*/attribution.json")):
        doc = _load(path) or {}
        if not isinstance(doc.get("subjects", []), list):  # not a neuroml attribution.json
            log.warning("model card: skipping %s: no list of subjects", path)
            continue
        uses = {}
        for s in [s for s in doc.get("subjects") or [] if isinstance(s, dict)]:
            uses[s.get("model_use", "unknown")] = uses.get(s.get("model_use", "unknown"), 0) + 1
        line = (
            f"- {_md(doc.get('method', path.parent.name))}: maps of {sum(uses.values())} scans, "
            + ", ".join(f"{v} {_md(k)}" for k, v in sorted(uses.items()))
            + "."
        )
        sanity = current_sanity(doc, _load(path.parent / "sanity.json"))
        if isinstance(sanity, dict):  # verdicts only: sanity.json also lists the subjects it used
            line += "\n" + "\n".join(
                f"  - {_md(text)}" for _, text in check_lines(doc.get("method", ""), sanity)
            )
        else:
            why = doc.get("sanity") if isinstance(doc.get("sanity"), dict) else {}
            line += (
                " Attribution trust checks (model randomization, deletion, stability, ground "
                "truth): not computed" + (f" ({_md(why['reason'])})." if why.get("reason") else ".")
            )
        lines.append(line)
    return "\n".join(lines) or "No attribution maps in this run yet (`neuroml attribute`)."


def _harmonization(config):
    """What the run harmonized, in words."""
    method = config.get("harmonize")
    if not method:
        return "none"
    if config.get("harmonized_inputs"):
        return (
            f"{method}: the CNN's input voxels, fitted on each fold's training participants (saved "
            "per fold, applied by predict and attribute); and a second baseline on harmonized "
            "region means"
        )
    return (
        f"{method}: a second baseline on harmonized region means (the CNN's inputs are not "
        "harmonized)"
    )


def _network(config):
    """The network, and the pooling of its input when it has one."""
    pool = int(config.get("input_pool", 1))
    if pool == 1:
        return config.get("model")
    mm = config.get("resolution_mm")
    seen = f", ~{float(mm) * pool:g} mm" if isinstance(mm, (int, float)) else ""
    return f"{config.get('model')} (input average-pooled {pool}x{seen})"


def _modality(config):
    """What the network read, in words: structural MRI (the T1w), resting-state fMRI (BOLD maps),
    or both."""
    inputs = config.get("inputs") or ["T1w"]
    inputs = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
    if inputs == ["T1w"]:
        return "structural MRI"
    return "structural MRI and resting-state fMRI" if "T1w" in inputs else "resting-state fMRI"


def _limits(config, conf):
    """The known limits of the run, the label's entanglement first when there is one."""
    entangled = conf.get("entangled") or []
    limits = [
        "Estimates come from cross-validation within one cohort; performance on other scanners, "
        "sites, populations or acquisition protocols is unknown until tested on them.",
        f"With {config.get('n_participants')} participants the intervals are wide; subgroups are "
        "smaller still and their intervals wider (groups under 4 participants are not compared).",
        "Attribution maps show what the network used, not the biology of a disorder; they can "
        "highlight site or acquisition differences.",
        "Labels are taken as given in participants.tsv; diagnostic error and comorbidity are not "
        "modelled.",
    ]
    if entangled:
        limits.insert(
            0,
            f"**The label is entangled with {', '.join(entangled)} in the training data**: the "
            "model may have learned the site (or age/sex) rather than the diagnosis. Compare "
            "leave-one-site-out results and the site probe before trusting any figure.",
        )
    if config.get("cv", "n/a") == "leave-one-site-out":
        limits.append(
            "Leave-one-site-out: each figure is measured on a site the fold model never saw."
        )
    else:
        limits.append(
            "Pooled k-fold: test participants share sites with training participants; site "
            "effects can inflate these figures (run with leave-one-site-out to check)."
        )
    return limits


def _details(config, classes):
    """The table of the model's details: network, inputs, classes, evaluation, version."""
    return _md_table(
        ["item", "value"],
        [
            ("network", _network(config)),
            ("inputs (channels)", inputs_text(config)),
            ("classes", ", ".join(classes)),
            ("label column", config.get("label_column")),
            ("evaluation", f"{config.get('cv', 'n/a')}, {config.get('folds')} folds"),
            ("grid resolution (mm)", config.get("resolution_mm")),
            ("seed", config.get("seed")),
            ("harmonization", _harmonization(config)),
            ("neuroml version", config.get("neuroml_version", __version__)),
        ],
    )


def _use(config):
    """The intended use and the uses the model is not for, as Markdown lines."""
    return [
        "## Intended use",
        f"Research: studying whether {_modality(config)} carries group-level information about "
        "the classes above, comparing methods, and generating hypotheses about brain regions, on "
        "data like the training data.",
        "",
        "## Not intended for",
        "- Diagnosing, screening or treating any individual, or any decision about a person's "
        "care, insurance, employment or legal situation.",
        "- Data from scanners, sites, age ranges or populations absent from the training data "
        "(see below).",
        "- Claims of causal or mechanistic brain differences between the classes.",
    ]


def model_card_text(run_dir: str | os.PathLike[str]) -> str:
    """The model card of a run folder as Markdown text.

    Parameters
    ----------
    run_dir : str or Path
        Output folder of ``neuroml train``.

    Returns
    -------
    str

    Raises
    ------
    InputError
        If ``run_dir`` has no readable ``config.json`` object.
    """
    run_dir = Path(run_dir)
    config = _load(run_dir / "config.json")
    if not isinstance(config, dict):
        raise InputError("not a neuroml run folder (config.json missing)", run_dir)
    metrics = _load(run_dir / "metrics.json") or {}
    conf = _load(run_dir / "confounds.json") or {}
    classes = [str(c) for c in config.get("classes") or []]
    return "\n".join(
        [
            f"# Model card: {_md(run_dir.resolve().name)}",
            "",
            "## Model details",
            _details(config, classes),
            "",
            *_use(config),
            "",
            "## Training data",
            f"{config.get('n_participants')} participants, {config.get('n_scans')} scans; label "
            f"column '{_md(config.get('label_column'))}'. Demographics per class:",
            "",
            _demographics(conf, classes),
            "",
            "## Confounds checked before training",
            _confounds(conf, metrics),
            "",
            "## Performance (out-of-fold, 95% bootstrap intervals)",
            _performance(metrics, classes),
            "",
            "## Performance per subgroup (CNN)",
            _subgroups((metrics.get("audit") or {}).get("cnn")),
            "",
            "## Attribution trust checks",
            _attribution(run_dir),
            "",
            "## Known limits",
            *[f"- {x}" for x in _limits(config, conf)],
            "",
        ]
    )


def write_model_card(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``RUN/model_card.md`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    return write_text_atomic(path or run_dir / "model_card.md", model_card_text(run_dir))
