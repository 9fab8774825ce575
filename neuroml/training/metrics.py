"""Classification metrics with bootstrap confidence intervals, vectorised over resamples.

Everything takes integer class indices ``y_true`` (0..C-1) and either predicted indices
or a probability matrix ``proba`` of shape ``(n, C)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "confusion_matrix",
    "balanced_accuracy",
    "sensitivity_specificity",
    "roc_auc_ovr",
    "roc_curves",
    "bootstrap_ci",
    "permutation_pvalue",
    "classification_report",
]


def _n_classes(n_classes, *arrays):
    if n_classes is not None:
        return int(n_classes)
    return int(max(int(np.max(a)) for a in arrays if len(a)) + 1)


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int | None = None
) -> npt.NDArray[np.intp]:
    """Counts ``cm[i, j]`` of true class ``i`` predicted as ``j``.

    Examples
    --------
    >>> confusion_matrix([0, 0, 1], [0, 1, 1]).tolist()
    [[1, 1], [0, 1]]
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    c = _n_classes(n_classes, y_true, y_pred)
    return np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)


def _weighted_recalls(y_true, correct, weights, n_classes):
    """Per-class recall for each row of ``weights`` (B, n): returns (B, C), NaN for absent classes."""
    onehot = np.eye(n_classes)[y_true]
    num = weights @ (onehot * correct[:, None])
    den = weights @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def balanced_accuracy(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int | None = None
) -> float:
    """Mean recall over the classes present in ``y_true``.

    Examples
    --------
    >>> round(balanced_accuracy([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]), 4)
    0.6667
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    c = _n_classes(n_classes, y_true, y_pred)
    rec = _weighted_recalls(y_true, y_true == y_pred, np.ones((1, len(y_true))), c)
    return float(np.nanmean(rec[0]))


def sensitivity_specificity(
    cm: npt.ArrayLike,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-class (one-vs-rest) sensitivity and specificity from a confusion matrix (NaN if undefined)."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def _weighted_auc(scores, positive, weights):
    """Mann-Whitney AUC of ``scores`` for ``positive`` under each row of sample ``weights`` (B, n).

    Ties count one half. O(B n) after one sort: negatives' weight is summed per tie group.
    """
    order = np.argsort(scores, kind="mergesort")
    s, pos, w = scores[order], positive[order], weights[:, order]
    _, starts, groups = np.unique(s, return_index=True, return_inverse=True)
    neg_w = w * ~pos
    per_group = np.add.reduceat(neg_w, starts, axis=1)
    below = np.cumsum(per_group, axis=1) - per_group
    credit = below[:, groups] + 0.5 * per_group[:, groups]
    pos_w = w * pos
    num = (pos_w * credit).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _aucs(y_true, proba, weights):
    """(B, C) one-vs-rest AUCs."""
    return np.stack(
        [_weighted_auc(proba[:, c], y_true == c, weights) for c in range(proba.shape[1])], axis=1
    )


def roc_auc_ovr(
    y_true: npt.ArrayLike, proba: npt.ArrayLike
) -> tuple[float, npt.NDArray[np.float64]]:
    """One-vs-rest ROC AUC per class and their macro mean (over classes with both outcomes).

    Returns
    -------
    macro : float
    per_class : ndarray of shape (C,)
        NaN for a class without positives or negatives.

    Examples
    --------
    >>> macro, per = roc_auc_ovr([0, 0, 1, 1], [[.9, .1], [.6, .4], [.65, .35], [.2, .8]])
    >>> float(per[1])
    0.75
    """
    y_true, proba = np.asarray(y_true, int), np.asarray(proba, float)
    per = _aucs(y_true, proba, np.ones((1, len(y_true))))[0]
    macro = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    return macro, per


def roc_curves(y_true: npt.ArrayLike, proba: npt.ArrayLike) -> list[dict[str, list[float]]]:
    """One-vs-rest ROC curve points per class: list of ``{"fpr": [...], "tpr": [...]}`` (empty if undefined)."""
    from sklearn.metrics import roc_curve

    y_true, proba = np.asarray(y_true, int), np.asarray(proba, float)
    out: list[dict[str, list[float]]] = []
    for c in range(proba.shape[1]):
        pos = y_true == c
        if pos.all() or not pos.any():
            out.append({"fpr": [], "tpr": []})
            continue
        fpr, tpr, _ = roc_curve(pos, proba[:, c])
        out.append({"fpr": np.round(fpr, 6).tolist(), "tpr": np.round(tpr, 6).tolist()})
    return out


def stratified_weights(y_true, n_bootstrap, rng):
    """Bootstrap resampling counts (B, n), resampling within each true class."""
    w = np.zeros((n_bootstrap, len(y_true)))
    for c in np.unique(y_true):
        idx = np.flatnonzero(y_true == c)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_bootstrap)
    return w


def bootstrap_ci(
    y_true: npt.ArrayLike,
    proba: npt.ArrayLike,
    n_bootstrap: int = 1000,
    seed: int | Sequence[int] = 0,
    alpha: float = 0.05,
) -> dict[str, list[float | None]]:
    """Percentile bootstrap confidence intervals (resampling within each class, seeded).

    Returns
    -------
    dict
        ``{"accuracy": [lo, hi], "balanced_accuracy": [lo, hi], "auc_macro": [lo, hi]}``
    """
    y_true, proba = np.asarray(y_true, int), np.asarray(proba, float)
    if n_bootstrap <= 0 or len(y_true) == 0:
        return {}
    w = stratified_weights(y_true, int(n_bootstrap), np.random.default_rng(seed))
    correct = y_true == proba.argmax(1)
    acc = (w @ correct) / w.sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, dropped below
        bacc = np.nanmean(_weighted_recalls(y_true, correct, w, proba.shape[1]), axis=1)
        auc = np.nanmean(_aucs(y_true, proba, w), axis=1)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]

    def ci(v):
        v = v[np.isfinite(v)]
        return np.percentile(v, q).round(6).tolist() if len(v) else [None, None]

    return {"accuracy": ci(acc), "balanced_accuracy": ci(bacc), "auc_macro": ci(auc)}


def permutation_pvalue(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    n_permutations: int = 1000,
    seed: int | Sequence[int] = 0,
    n_classes: int | None = None,
) -> float:
    """P-value of the balanced accuracy against label permutations (predictions kept fixed).

    ``p = (1 + #{permuted >= observed}) / (1 + n_permutations)``. This tests the
    predictions for association with the labels; it does not retrain the model.
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    c = _n_classes(n_classes, y_true, y_pred)
    observed = balanced_accuracy(y_true, y_pred, c)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(y_true, (int(n_permutations), 1)), axis=1)
    present = np.unique(y_true)
    counts = np.bincount(y_true, minlength=c)[present]
    hits = np.stack([((perms == k) & (y_pred == k)).sum(1) for k in present], axis=1)
    null = (hits / counts).mean(1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def classification_report(
    y_true: npt.ArrayLike,
    proba: npt.ArrayLike,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    n_permutations: int = 0,
    seed: int | Sequence[int] = 0,
) -> dict[str, Any]:
    """All metrics of a set of predictions as a JSON-ready dict.

    Parameters
    ----------
    y_true : array-like of int, shape (n,)
    proba : array-like of float, shape (n, C)
    classes : sequence of str
        Class names, in column order.
    n_bootstrap : int, default=1000
        Bootstrap resamples for the 95 % intervals (0: none).
    n_permutations : int, default=0
        Label permutations for a p-value of the balanced accuracy (0: none).
    seed : int, default=0

    Returns
    -------
    dict
        ``n, accuracy, balanced_accuracy, auc_macro, auc_per_class, sensitivity,
        specificity, confusion_matrix, classes, ci, roc`` and ``permutation_p`` when asked.
    """
    y_true, proba = np.asarray(y_true, int), np.asarray(proba, float)
    classes = [str(c) for c in classes]
    y_pred = proba.argmax(1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    sens, spec = sensitivity_specificity(cm)
    macro, per = roc_auc_ovr(y_true, proba)

    def num(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 6)

    out = {
        "n": int(len(y_true)),
        "classes": classes,
        "accuracy": num(np.mean(y_true == y_pred)) if len(y_true) else None,
        "balanced_accuracy": num(balanced_accuracy(y_true, y_pred, len(classes))),
        "auc_macro": num(macro),
        "auc_per_class": {c: num(v) for c, v in zip(classes, per)},
        "sensitivity": {c: num(v) for c, v in zip(classes, sens)},
        "specificity": {c: num(v) for c, v in zip(classes, spec)},
        "confusion_matrix": cm.tolist(),
        "ci": bootstrap_ci(y_true, proba, n_bootstrap, seed),
        "roc": {c: r for c, r in zip(classes, roc_curves(y_true, proba))},
    }
    if n_permutations:
        out["permutation_p"] = permutation_pvalue(
            y_true, y_pred, n_permutations, seed, len(classes)
        )
        out["n_permutations"] = int(n_permutations)
    return out
