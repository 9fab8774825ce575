"""Subject-level cross-validation splits: stratified, grouped by participant, seeded.

All sessions and runs of a participant fall in the same part of every fold, so no
subject is ever seen in training and tested in the same fold.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from neuroml._utils.options import check_in_range
from neuroml.errors import ConfigError, InputError, LeakageError

__all__ = ["make_splits", "validation_split", "check_splits"]

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger("neuroml")

_Splits = TypeVar("_Splits", bound=Sequence[Mapping[str, Any]])


def _participant_table(participant_ids, labels, sites=None):
    """Unique participants (sorted) with their label (and site); check they agree across scans."""
    pids = np.asarray(participant_ids, dtype=object)
    labels = np.asarray(labels)
    if len(pids) != len(labels) or (sites is not None and len(sites) != len(pids)):
        raise ConfigError(
            f"participant_ids ({len(pids)}), labels ({len(labels)}) and sites must have the same length"
        )
    table = {}
    for i, p in enumerate(pids):
        entry = (labels[i], None if sites is None else sites[i])
        if table.setdefault(p, entry) != entry:
            raise InputError(
                f"participant {p} has scans with different labels or sites: {table[p]} and {entry}"
            )
    uniq = sorted(table)
    return uniq, np.array([table[p][0] for p in uniq]), [table[p][1] for p in uniq]


#: A validation set with fewer participants than this in some class is not held out: its
#: balanced accuracy moves in steps of 1/n per class, so early stopping on it picks an epoch
#: at random while costing the training set those participants. Training then runs every
#: epoch and keeps the last weights.
MIN_VAL_PER_CLASS = 2


def validation_split(
    participant_ids: Sequence[str],
    labels: npt.ArrayLike,
    val_fraction: float = 0.2,
    seed: int | Sequence[int] = 0,
) -> tuple[list[str], list[str]]:
    """Pick a stratified validation subset of participants (for early stopping).

    In each class, ``round(val_fraction * n)`` participants go to validation (never the
    class's last one, so training keeps every class). When that is fewer than
    :data:`MIN_VAL_PER_CLASS` for some class (small cohorts), nothing is held out.

    Returns
    -------
    train_ids, val_ids : list of str
        Sorted participant ids.

    Examples
    --------
    >>> ids = [f"sub-{i:02d}" for i in range(20)]
    >>> len(validation_split(ids, ["a", "b"] * 10, 0.2)[1])  # 2 per class
    4
    >>> validation_split(ids[:8], ["a", "b"] * 4, 0.2)[1]  # 1 per class would be noise
    []
    """
    uniq, lab, _ = _participant_table(participant_ids, labels)
    if not val_fraction:
        return list(uniq), []
    rng = np.random.default_rng(seed)
    groups = [
        [uniq[i] for i in np.flatnonzero(lab == c)] for c in sorted(set(lab.tolist()), key=str)
    ]
    sizes = [min(int(round(val_fraction * len(m))), len(m) - 1) for m in groups]
    if min(sizes) < MIN_VAL_PER_CLASS:
        return list(uniq), []
    val = []
    for members, n_val in zip(groups, sizes):
        val.extend(rng.permutation(members)[:n_val].tolist())
    val = sorted(val)
    return sorted(set(uniq) - set(val)), val


def make_splits(
    participant_ids: Sequence[str],
    labels: npt.ArrayLike,
    folds: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
    sites: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Subject-level cross-validation folds with a nested validation set.

    Parameters
    ----------
    participant_ids : sequence of str
        One entry per scan (a participant may repeat: sessions and runs).
    labels : sequence
        Label of each scan (constant within a participant).
    folds : int, default=3
        Number of folds (>= 2), for stratified group k-fold
        (:class:`sklearn.model_selection.StratifiedGroupKFold`, shuffled with ``seed``) over
        one row per participant: each participant counts once, whatever its number of scans.
    seed : int, default=0
    val_fraction : float, default=0.2
        Fraction of each fold's training participants held out (stratified) for early stopping;
        none is held out when a class would get fewer than :data:`MIN_VAL_PER_CLASS`
        (see :func:`validation_split`).
    sites : sequence, optional
        Site of each scan: leave-one-site-out instead of k-fold (``folds`` is then ignored).

    Returns
    -------
    list of dict
        Per fold: ``{"fold": k, "train": [...], "val": [...], "test": [...], "test_site": site or None}``
        with sorted participant ids.

    Raises
    ------
    ConfigError
        If ``folds`` < 2, or a class has fewer participants than folds, or fewer than two sites.

    Examples
    --------
    >>> s = make_splits(["sub-1", "sub-2", "sub-3", "sub-4"], ["a", "a", "b", "b"], folds=2)
    >>> sorted(len(f["test"]) for f in s)
    [2, 2]
    """
    from sklearn.model_selection import StratifiedGroupKFold

    check_in_range("val_fraction", val_fraction, 0.0, 0.5)
    uniq, lab, site = _participant_table(participant_ids, labels, sites)
    classes, counts = np.unique(lab.astype(str), return_counts=True)
    out = []
    if sites is not None:
        if any(s is None or (isinstance(s, float) and np.isnan(s)) or str(s) == "" for s in site):
            raise ConfigError("leave-one-site-out needs a site for every participant; some are n/a")
        site = [str(s) for s in site]
        levels = sorted(set(site))
        if len(levels) < 2:
            raise ConfigError(f"leave-one-site-out needs at least two sites, got {levels}")
        tests = [[p for p, s in zip(uniq, site) if s == lev] for lev in levels]
    else:
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ConfigError(
                f"The 'folds' parameter must be an integer >= 2. Got {folds!r} instead."
            )
        small = {str(c): int(n) for c, n in zip(classes, counts) if n < folds}
        if small:
            fix = (
                f"use folds <= {int(min(counts))}"
                if min(counts) >= 2
                else "every class needs at least two participants for cross-validation: add participants, or "
                "leave that class out (classes=...)"
            )
            raise ConfigError(
                f"folds={folds} but some classes have fewer participants: {small}; {fix}"
            )
        # one row per participant, so a participant with many sessions weighs like any other;
        # the groups keep every scan of a participant in the same part
        sgkf = StratifiedGroupKFold(
            n_splits=int(folds), shuffle=True, random_state=int(seed) % (2**32)
        )
        members = np.asarray(uniq, dtype=object)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tests = [
                sorted(members[te])
                for _, te in sgkf.split(np.zeros(len(uniq)), lab.astype(str), groups=members)
            ]
        levels = [None] * len(tests)
    label_of = dict(zip(uniq, lab))
    for k, (test, lev) in enumerate(zip(tests, levels)):
        test_set = set(test)
        rest = [p for p in uniq if p not in test_set]
        rest_lab = [label_of[p] for p in rest]
        missing = sorted(str(c) for c in set(classes) - set(np.asarray(rest_lab).astype(str)))
        if missing:
            log.warning("fold %d: no training participant of class(es) %s", k, missing)
        train, val = validation_split(rest, rest_lab, val_fraction, seed=[int(seed) % (2**32), k])
        out.append({"fold": k, "train": train, "val": val, "test": sorted(test), "test_site": lev})
    check_splits(out)
    return out


def check_splits(splits: _Splits) -> _Splits:
    """Raise :class:`LeakageError` if a participant is in two parts of a fold or tested twice."""
    tested: dict[str, int] = {}
    for f in splits:
        parts = {name: set(f[name]) for name in ("train", "val", "test")}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = parts[a] & parts[b]
            if both:
                raise LeakageError(
                    f"fold {f['fold']}: participants in both {a} and {b}: {sorted(both)[:10]}"
                )
        for p in parts["test"]:
            if p in tested:
                raise LeakageError(
                    f"participant {p} is tested in folds {tested[p]} and {f['fold']}"
                )
            tested[p] = f["fold"]
    return splits
