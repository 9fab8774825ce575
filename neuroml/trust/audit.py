"""Bias audit: performance per subgroup of participants (sex, age band, site, any column).

A model that is accurate on average can fail one group of patients. :func:`subgroup_audit`
computes, for each attribute and each of its groups, the balanced accuracy, the macro
AUC and the per-class sensitivity and specificity of out-of-fold predictions, with
stratified bootstrap intervals, and the largest gap between two groups.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroml.training.metrics import bootstrap_ci, classification_report, stratified_weights
from neuroml.trust.confounds import is_missing

__all__ = ["age_bands", "subgroup_audit", "audit_groups", "DEFAULT_AGE_EDGES"]

if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd

log = logging.getLogger("neuroml")

#: Lower edges of the default age bands (years): 18-29, 30-44, 45-59, 60+ (below 18: "<18").
DEFAULT_AGE_EDGES = (18, 30, 45, 60)

#: Groups smaller than this are listed but take no part in the largest gap.
MIN_GROUP_SIZE = 4


def age_bands(ages: Iterable[Any], edges: Sequence[float] = DEFAULT_AGE_EDGES) -> list[str]:
    """Label each age with its band ("18-29", "60+"); missing or unreadable ages give "n/a".

    Examples
    --------
    >>> age_bands([17, 18, 29.5, 30, 61, "n/a"])
    ['<18', '18-29', '18-29', '30-44', '60+', 'n/a']
    """
    edges = [float(e) for e in edges]
    out = []
    for a in ages:
        try:
            a = float(a)
        except (TypeError, ValueError):
            out.append("n/a")
            continue
        if not np.isfinite(a):
            out.append("n/a")
        elif a < edges[0]:
            out.append(f"<{edges[0]:g}")
        elif a >= edges[-1]:
            out.append(f"{edges[-1]:g}+")
        else:
            k = int(np.searchsorted(edges, a, side="right")) - 1
            out.append(f"{edges[k]:g}-{edges[k + 1] - 1:g}")
    return out


def audit_groups(
    table: pd.DataFrame,
    participant_ids: Sequence[str],
    columns: Sequence[str] = ("sex", "age", "site"),
    extra_columns: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Subgroup labels of each prediction row from a participants table.

    Parameters
    ----------
    table : pandas.DataFrame
        Participants table indexed by ``participant_id``.
    participant_ids : sequence of str
        Participant of each prediction row.
    columns : sequence of str
        Standard attributes, used when present; ``age`` is cut into :func:`age_bands`.
    extra_columns : sequence of str
        Columns the user names; each must exist.

    Returns
    -------
    dict of str to list of str
        Attribute (``age`` becomes ``age_band``) -> group label of each row.

    Raises
    ------
    InputError
        If a column of ``extra_columns`` is not in the table.
    """
    from neuroml.errors import InputError

    out = {}
    for col in list(columns) + [c for c in extra_columns if c not in columns]:
        if col not in table.columns:
            if col in extra_columns:
                raise InputError(
                    f"audit column {col!r} not found in participants.tsv "
                    f"(columns: {list(table.columns)})"
                )
            continue
        values = table[col].reindex(list(participant_ids)).tolist()
        if col == "age":
            out["age_band"] = age_bands(values)
        else:
            out[col] = ["n/a" if is_missing(v) else str(v) for v in values]
    return out


def _sens_spec_ci(y_true, y_pred, n_classes, n_bootstrap, seed, alpha=0.05):
    """Bootstrap intervals of per-class sensitivity and specificity (resampling within classes)."""
    if n_bootstrap <= 0 or len(y_true) == 0:
        return {}, {}
    w = stratified_weights(y_true, int(n_bootstrap), np.random.default_rng(seed))
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    sens, spec = {}, {}
    for c in range(n_classes):
        pos, hit = y_true == c, y_pred == c
        with np.errstate(invalid="ignore", divide="ignore"):
            s = (w @ (pos & hit)) / (w @ pos)
            t = (w @ (~pos & ~hit)) / (w @ ~pos)
        for store, v in ((sens, s), (spec, t)):
            v = v[np.isfinite(v)]
            store[c] = np.percentile(v, q).round(6).tolist() if len(v) else [None, None]
    return sens, spec


def _group_metrics(y, proba, classes, n_bootstrap, seed):
    rep = classification_report(y, proba, classes, n_bootstrap=0, seed=seed)
    pred = proba.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = bootstrap_ci(y, proba, n_bootstrap, seed)
        sens_ci, spec_ci = _sens_spec_ci(y, pred, len(classes), n_bootstrap, seed)
    ci["sensitivity"] = {classes[c]: v for c, v in sens_ci.items()}
    ci["specificity"] = {classes[c]: v for c, v in spec_ci.items()}
    return {
        "n": rep["n"],
        "n_per_class": {c: int(np.sum(y == k)) for k, c in enumerate(classes)},
        "balanced_accuracy": rep["balanced_accuracy"],
        "auc_macro": rep["auc_macro"],
        "sensitivity": rep["sensitivity"],
        "specificity": rep["specificity"],
        "ci": ci,
    }


def _gap(groups, metric, min_size):
    ok = {
        g: m[metric]
        for g, m in groups.items()
        if m["n"] >= min_size
        and m[metric] is not None
        and sum(v > 0 for v in m["n_per_class"].values()) >= 2
    }
    if len(ok) < 2:
        return None
    order = sorted(ok, key=lambda g: (ok[g], g))
    lo, hi = order[0], order[-1]
    ci_lo = (groups[lo]["ci"].get(metric) or [None, None])[1]
    ci_hi = (groups[hi]["ci"].get(metric) or [None, None])[0]
    separate = None if ci_lo is None or ci_hi is None else bool(ci_lo < ci_hi)
    return {
        "metric": metric,
        "value": round(ok[hi] - ok[lo], 6),
        "best": hi,
        "worst": lo,
        "best_value": ok[hi],
        "worst_value": ok[lo],
        "intervals_separate": separate,
    }


def subgroup_audit(
    y_true: npt.ArrayLike,
    proba: npt.ArrayLike,
    classes: Sequence[str],
    groups: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    min_group_size: int = MIN_GROUP_SIZE,
) -> dict[str, Any]:
    """Per-subgroup performance with bootstrap intervals and the largest gap.

    Parameters
    ----------
    y_true : array-like of int, shape (n,)
    proba : array-like of float, shape (n, C)
    classes : sequence of str
    groups : dict of str to sequence
        Attribute -> group label of each row (see :func:`audit_groups`); "n/a" rows are skipped.
    n_bootstrap : int, default=1000
        Resamples for the 95 % intervals (within each class of each group).
    seed : int, default=0
    min_group_size : int, default=4
        Groups smaller than this (or with a single class) are reported but not compared.

    Returns
    -------
    dict
        ``{"attributes": {attr: {"groups": {label: metrics}, "gap": {...} or None}},
        "largest_gap": {"attribute", "metric", "value", "best", "worst", ...} or None,
        "min_group_size": int}``. The gap is measured on balanced accuracy (AUC when
        balanced accuracy cannot be compared).

    Examples
    --------
    >>> y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    >>> p = np.eye(2)[[0, 1, 0, 1, 1, 0, 1, 0]]
    >>> out = subgroup_audit(y, p, ["a", "b"], {"site": ["S"] * 4 + ["T"] * 4}, n_bootstrap=0)
    >>> out["largest_gap"]["attribute"], out["largest_gap"]["value"]
    ('site', 1.0)
    """
    y_true, proba = np.asarray(y_true, int), np.asarray(proba, float)
    classes = [str(c) for c in classes]
    out, best = {}, None
    for attr, labels in groups.items():
        labels = np.asarray([str(v) for v in labels], dtype=object)
        per = {}
        for i, g in enumerate(sorted(set(labels.tolist()) - {"n/a"})):
            sel = labels == g
            per[g] = _group_metrics(
                y_true[sel], proba[sel], classes, n_bootstrap, [int(seed) % (2**32), i]
            )
        gap = _gap(per, "balanced_accuracy", min_group_size) or _gap(
            per, "auc_macro", min_group_size
        )
        out[attr] = {"groups": per, "gap": gap, "n_missing": int(np.sum(labels == "n/a"))}
        if gap and (best is None or gap["value"] > best["value"]):
            best = {"attribute": attr, **gap}
    return {"attributes": out, "largest_gap": best, "min_group_size": int(min_group_size)}
