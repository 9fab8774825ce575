"""A classical baseline in the same folds: logistic regression on atlas-region mean intensities."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["region_means", "baseline_cv"]

log = logging.getLogger("neuroml")


def region_means(
    volumes: npt.NDArray[Any], labels: npt.ArrayLike, chunk: int = 64
) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    """Mean intensity of every atlas region in every volume, computed with one sparse product.

    Parameters
    ----------
    volumes : array-like of shape (N, X, Y, Z)
        E.g. the float16 memmap of the tensor cache (read ``chunk`` volumes at a time).
    labels : ndarray of int, shape (X, Y, Z)
        Atlas label array on the same grid (0 = background).
    chunk : int, default=64

    Returns
    -------
    features : ndarray of shape (N, R), float64
    region_ids : ndarray of shape (R,)
        Label value of each column (regions present on the grid).

    Examples
    --------
    >>> vols = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> lab = np.array([0, 1, 1, 2, 2, 2, 0, 0]).reshape(2, 2, 2)
    >>> region_means(vols, lab)[0].tolist()
    [[1.5, 4.0]]
    """
    from scipy import sparse

    labels = np.asarray(labels)
    if labels.shape != tuple(volumes.shape[1:]):
        raise ValueError(
            f"atlas labels of shape {labels.shape} are not on the volumes' grid {tuple(volumes.shape[1:])}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    region_ids, column = np.unique(labels[labels > 0], return_inverse=True)
    counts = np.bincount(column, minlength=len(region_ids)).astype(np.float64)
    voxels = np.flatnonzero(labels > 0)
    indicator = sparse.csr_matrix(
        (np.ones(len(voxels)), (voxels, column)), shape=(labels.size, len(region_ids))
    )
    out = np.empty((len(volumes), len(region_ids)))
    for start in range(0, len(volumes), chunk):
        block = np.asarray(volumes[start : start + chunk], dtype=np.float64).reshape(
            -1, labels.size
        )
        out[start : start + chunk] = np.asarray(indicator.T @ block.T).T / counts
    return out, region_ids


def baseline_cv(
    features: npt.NDArray[Any],
    participant_ids: Sequence[str],
    y: npt.ArrayLike,
    splits: Sequence[Mapping[str, Any]],
    n_classes: int,
    seed: int = 0,
    harmonizer: Callable[[], Any] | None = None,
    sites: Sequence[Any] | None = None,
    covariates: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]]:
    """Out-of-fold probabilities of a standardised logistic regression, trained on each fold's train + val.

    Parameters
    ----------
    features : ndarray of shape (n, R)
        One row per scan (e.g. :func:`region_means`).
    participant_ids : sequence of str
        Participant of each row.
    y : ndarray of int
    splits : list of dict
        Folds of :func:`~neuroml.training.splits.make_splits`.
    n_classes : int
    seed : int
    harmonizer : callable, optional
        Factory of a site harmonizer with ``fit(X, sites, covariates)`` and
        ``transform(X, sites, covariates)`` (e.g. :class:`~neuroml.trust.harmonize.ComBat`):
        a fresh one is fitted on each fold's training rows only, then applied to its
        training and test rows.
    sites : sequence of str, optional
        Site of each row (needed with ``harmonizer``).
    covariates : ndarray of shape (n, q), optional
        Covariates the harmonizer keeps (e.g. age, sex).

    Returns
    -------
    proba : ndarray of shape (n, n_classes)
        NaN for rows not in any test fold.
    fold : ndarray of int
        Test fold of each row (-1 if none).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pids = np.asarray(participant_ids, dtype=object)
    y = np.asarray(y, dtype=int)
    proba = np.full((len(y), n_classes), np.nan)
    fold_of = np.full(len(y), -1)
    for f in splits:
        train = np.isin(pids, list(f["train"]) + list(f["val"]))
        test = np.isin(pids, list(f["test"]))
        if not test.any():
            continue
        x_train, x_test = features[train], features[test]
        if harmonizer is not None:
            site = np.asarray(sites, dtype=object)
            cov = None if covariates is None else np.asarray(covariates, dtype=float)
            h = harmonizer().fit(x_train, site[train], None if cov is None else cov[train])
            x_train = h.transform(x_train, site[train], None if cov is None else cov[train])
            x_test = h.transform(x_test, site[test], None if cov is None else cov[test])
        p = np.zeros((int(test.sum()), n_classes))
        present = np.unique(y[train])
        if len(present) < 2:  # e.g. leave-one-site-out with a site holding a whole class
            log.warning(
                "baseline fold %s: one class in training; it predicts that class", f["fold"]
            )
            p[:, present] = 1.0
        else:
            clf = make_pipeline(
                StandardScaler(),
                LogisticRegression(
                    C=1.0, max_iter=5000, class_weight="balanced", random_state=seed
                ),
            )
            clf.fit(x_train, y[train])
            p[:, clf[-1].classes_] = clf.predict_proba(x_test)
        proba[test] = p
        fold_of[test] = f["fold"]
    return proba, fold_of
