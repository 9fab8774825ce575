"""Site and demographic confounds: are diagnosis and site (age, sex) entangled, and can the
site be read from the inputs?

:func:`association_tests` runs before training on one row per participant: chi-square
with Cramér's V for categorical columns (site, sex), Kruskal-Wallis and one-way ANOVA
with eta squared for numeric ones (age). :func:`site_probe` trains a logistic regression
to predict the site from the same features as the baseline, in cross-validation folds,
and reports its balanced accuracy beside chance: a model can learn whatever the probe
can.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from neuroml.io.bids import MISSING_VALUES as MISSING
from neuroml.training.metrics import balanced_accuracy, bootstrap_ci

__all__ = [
    "association_tests",
    "cramers_v",
    "is_missing",
    "site_probe",
    "ALPHA",
    "MISSING",
    "STRONG_V",
]

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger("neuroml")

#: Significance level of the association tests.
ALPHA = 0.05
#: Cramér's V (or eta squared's square root) from which an association is called entangled
#: whatever its p-value (small cohorts lack power).
STRONG_V = 0.5


def cramers_v(table: npt.ArrayLike) -> float:
    """Cramér's V of a contingency table (0: independent, 1: one determines the other).

    Examples
    --------
    >>> round(cramers_v([[10, 0], [0, 10]]), 3)
    1.0
    >>> round(cramers_v([[5, 5], [5, 5]]), 3)
    0.0
    """
    from scipy.stats import chi2_contingency

    t = np.asarray(table, dtype=float)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0]
    if min(t.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(t, correction=False)[0]
    return float(np.sqrt(chi2 / (t.sum() * (min(t.shape) - 1))))


def _numeric(values):
    """``(numbers, ok)`` for a numeric column (more than 5 distinct finite numbers, at least 90 % of
    the values), ``ok`` marking the values that are numbers; ``(None, None)`` for any other column.

    A few stray entries ("unknown", "45y") in an age column leave those rows out of the test
    instead of making the column categorical (one level per age, a misleading association).
    """
    import pandas as pd

    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(
        dtype=float
    )
    ok = np.isfinite(arr)
    if ok.sum() < max(3, 0.9 * len(arr)) or len(np.unique(arr[ok])) <= 5:
        return None, None
    return arr, ok


def is_missing(v: object) -> bool:
    """Whether a participants-table value is missing (None, NaN or one of ``MISSING``).

    Examples
    --------
    >>> [bool(is_missing(v)) for v in (None, float("nan"), "n/a", " NA ", "S1", 0, "None")]
    [True, True, True, True, False, False, False]
    """
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() in MISSING


def association_tests(
    labels: Iterable[Any],
    columns: Mapping[str, Iterable[Any]],
    alpha: float = ALPHA,
    strong: float = STRONG_V,
    categorical: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Test each column for association with the labels (one row per participant).

    Parameters
    ----------
    labels : sequence of str
        Diagnosis of each participant.
    columns : dict of str to sequence
        Column name -> value of each participant (e.g. site, age, sex); missing values are dropped.
        A column whose values are all numbers with more than five distinct values is tested as
        numeric, any other as categorical.
    alpha : float, default=0.05
    strong : float, default=0.5
        Effect size (Cramér's V, or sqrt of eta squared) called entangled at any p-value.
    categorical : sequence of str, default=()
        Columns always tested as categorical, whatever their values (a site coded 1, 2, ... 8).

    Returns
    -------
    dict
        Column -> ``{"test", "statistic", "p_value", "effect_size", "effect", "n",
        "entangled", "table" (counts per label for categorical columns) or "by_label"
        (median per label for numeric ones)}``.

    Examples
    --------
    >>> out = association_tests(["a"] * 10 + ["b"] * 10, {"site": ["S"] * 10 + ["T"] * 10})
    >>> out["site"]["entangled"], out["site"]["effect_size"]
    (True, 1.0)
    """
    labels = np.asarray([str(v) for v in labels], dtype=object)
    out = {}
    for name, values in columns.items():
        values = list(values)
        keep = np.array([not is_missing(v) for v in values])
        lab = labels[keep]
        vals = [values[i] for i in np.flatnonzero(keep)]
        if len(vals) < 3 or len(set(lab.tolist())) < 2:
            out[name] = _untested(len(vals), "too few participants or classes")
            continue
        num, ok = (None, None) if name in categorical else _numeric(vals)
        if num is not None:
            out[name], strength = _numeric_test(num, ok, lab, vals)
        else:
            out[name], strength = _categorical_test(vals, lab)
        if strength is not None:
            out[name]["entangled"] = bool(out[name]["p_value"] < alpha or strength >= strong)
    return out


def _untested(n, note):
    """The record of a column that could not be tested."""
    return {"test": None, "n": n, "entangled": False, "note": note}


def _numeric_test(num, ok, lab, vals):
    """Kruskal-Wallis (and one-way ANOVA) of a numeric column across the labels.

    ``num``: the column as floats, ``ok``: the rows that are numbers, ``lab``: each row's label,
    ``vals``: the raw values. Returns ``(record, strength)``, ``strength`` (the square root of eta
    squared) None when the column cannot be tested.
    """
    from scipy import stats

    if len(set(lab[ok].tolist())) < 2:  # not a category per number either
        note = (
            f"the numbers all belong to one class ({sorted(set(lab[ok].tolist()))[0]}); "
            f"{int((~ok).sum())} value(s) that are not numbers"
        )
        return _untested(int(ok.sum()), note), None
    dropped = sorted({str(vals[i]) for i in np.flatnonzero(~ok)})
    num, lab = num[ok], lab[ok]
    levels = sorted(set(lab.tolist()))
    groups = [num[lab == c] for c in levels]
    groups = [g for g in groups if len(g)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = stats.kruskal(*groups)
        anova = stats.f_oneway(*groups)
    grand = num.mean()
    ss_between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
    ss_total = float(((num - grand) ** 2).sum())
    eta2 = float(ss_between / ss_total) if ss_total > 0 else 0.0
    record = {
        "test": "Kruskal-Wallis",
        "statistic": round(float(kw.statistic), 6),
        "p_value": float(kw.pvalue) if np.isfinite(kw.pvalue) else 1.0,
        "anova_F": None if not np.isfinite(anova.statistic) else round(float(anova.statistic), 6),
        "anova_p": None if not np.isfinite(anova.pvalue) else float(anova.pvalue),
        "effect": "eta squared",
        "effect_size": round(eta2, 6),
        "n": int(len(num)),
        "by_label": {c: float(np.median(num[lab == c])) for c in levels if np.any(lab == c)},
    }
    if dropped:
        record["note"] = (
            f"{int((~ok).sum())} value(s) that are not numbers left out of the test: {dropped[:5]}"
        )
    return record, np.sqrt(eta2)


def _categorical_test(vals, lab):
    """Chi-square test (and Cramér's V) of a categorical column against the labels.

    Returns ``(record, strength)``, ``strength`` (Cramér's V) None for a single value.
    """
    from scipy.stats import chi2_contingency

    levels = sorted(set(lab.tolist()))
    vals = np.asarray([str(v) for v in vals], dtype=object)
    cats = sorted(set(vals.tolist()))
    table = np.array([[int(np.sum((lab == c) & (vals == s))) for s in cats] for c in levels])
    if len(cats) < 2:
        return _untested(int(len(vals)), "a single value"), None
    chi2, p, dof, _ = chi2_contingency(table, correction=False)
    v = cramers_v(table)
    record = {
        "test": "chi-square",
        "statistic": round(float(chi2), 6),
        "dof": int(dof),
        "p_value": float(p),
        "effect": "Cramér's V",
        "effect_size": round(v, 6),
        "n": int(len(vals)),
        "table": {c: dict(zip(cats, map(int, row))) for c, row in zip(levels, table)},
    }
    return record, v


def site_probe(
    features: npt.ArrayLike,
    sites: Sequence[Any] | npt.NDArray[Any],
    participant_ids: Sequence[str],
    splits: Sequence[Mapping[str, Any]] | None = None,
    folds: int = 3,
    seed: int = 0,
    n_bootstrap: int = 1000,
    harmonizer: Callable[[], Any] | None = None,
    covariates: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """How well the site can be predicted from ``features``, out of fold.

    A standardised logistic regression (balanced class weights) predicts the site of each
    held-out participant. The folds are ``splits`` (train + val -> test) when they are
    k-fold splits; with leave-one-site-out splits (a held-out site is never seen) or none,
    stratified group k-fold on the site with ``folds`` folds.

    Parameters
    ----------
    features : ndarray of shape (n, p)
        One row per scan (e.g. atlas region means).
    sites : sequence of str
        Rows with a missing site (:func:`is_missing`) are left out of the probe.
    participant_ids : sequence of str
    splits : list of dict, optional
    folds, seed, n_bootstrap : int
    harmonizer : callable, optional
        Factory of a site harmonizer (e.g. :class:`~neuroml.trust.harmonize.ComBat`),
        fitted on each fold's training rows only; the probe then measures what is left.
    covariates : ndarray of shape (n, q), optional
        Passed to the harmonizer.

    Returns
    -------
    dict
        ``balanced_accuracy``, ``ci``, ``chance``, ``n_sites``, ``sites``, ``folds``, ``scheme``.
    """
    features = np.asarray(features, dtype=float)
    known = np.array(
        [not is_missing(s) for s in sites], dtype=bool
    )  # a missing site is no site of its own
    sites = cast("npt.NDArray[Any]", np.asarray([str(s) for s in sites], dtype=object)[known])
    pids = np.asarray(participant_ids, dtype=object)[known]
    features = features[known]
    if covariates is not None:
        covariates = np.asarray(covariates, float)[known]
    levels = sorted(set(sites.tolist()))
    if len(levels) < 2:
        return {
            "balanced_accuracy": None,
            "note": "a single site",
            "n_sites": len(levels),
            "sites": levels,
        }
    y = np.array([levels.index(s) for s in sites])
    parts, scheme = _probe_folds(features, y, pids, splits, folds, seed)
    proba = _probe_proba(features, y, sites, parts, len(levels), seed, harmonizer, covariates)
    done = np.isfinite(proba).all(1)
    if not done.any():
        return {
            "balanced_accuracy": None,
            "note": "no fold could be trained",
            "n_sites": len(levels),
            "sites": levels,
        }
    bacc = balanced_accuracy(y[done], proba[done].argmax(1), len(levels))
    return {
        "balanced_accuracy": round(bacc, 6),
        "ci": bootstrap_ci(y[done], proba[done], n_bootstrap, seed).get("balanced_accuracy"),
        "chance": round(1.0 / len(levels), 6),
        "n_sites": len(levels),
        "sites": levels,
        "n": int(done.sum()),
        "n_without_site": int((~known).sum()),
        "folds": len(parts),
        "scheme": scheme,
        "model": "StandardScaler + LogisticRegression(class_weight='balanced')",
    }


def _probe_folds(features, y, pids, splits, folds, seed):
    """``([(train mask, test mask), ...], scheme)``: the site probe's folds (see :func:`site_probe`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if splits and splits[0].get("test_site") is None:
        parts = [
            (np.isin(pids, list(f["train"]) + list(f["val"])), np.isin(pids, list(f["test"])))
            for f in splits
        ]
        return parts, "the run's folds"
    n_f = int(max(2, min(folds, np.bincount(y).min())))
    sgkf = StratifiedGroupKFold(n_splits=n_f, shuffle=True, random_state=int(seed) % (2**32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = [
            (np.isin(np.arange(len(y)), tr), np.isin(np.arange(len(y)), te))
            for tr, te in sgkf.split(features, y, groups=pids)
        ]
    return parts, f"stratified group {n_f}-fold on the site"


def _probe_proba(features, y, sites, parts, n_sites, seed, harmonizer=None, covariates=None):
    """Out-of-fold site probabilities of the probe (NaN rows: in no trained fold's test set)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    proba = np.full((len(y), n_sites), np.nan)
    for train, test in parts:
        if not test.any() or len(set(y[train])) < 2:
            continue
        xtr, xte = features[train], features[test]
        if harmonizer is not None:
            cov = None if covariates is None else np.asarray(covariates, float)
            h = harmonizer().fit(xtr, sites[train], None if cov is None else cov[train])
            xtr = h.transform(xtr, sites[train], None if cov is None else cov[train])
            xte = h.transform(xte, sites[test], None if cov is None else cov[test])
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed),
        )
        clf.fit(xtr, y[train])
        p = np.zeros((int(test.sum()), n_sites))
        p[:, clf[-1].classes_] = clf.predict_proba(xte)
        proba[test] = p
    return proba
