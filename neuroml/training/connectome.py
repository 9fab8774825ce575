"""Connectome baseline in the folds of a run: atlas time series -> tangent-space connectivity
(nilearn ``ConnectivityMeasure(kind="tangent")``, fitted inside each training fold) ->
standardized logistic regression, the recipe benchmark studies found strongest
(Dadi et al. 2019, NeuroImage 192).

:func:`connectome_cv` works on arrays; :func:`connectome_run` reads the atlas time series
written by ``neuroml preprocess --modality func`` and the splits of a training run, and
writes ``RUN/connectome_predictions.tsv`` and ``RUN/connectome_metrics.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroml._utils.fileio import write_json_atomic, write_text_atomic
from neuroml._utils.options import look_up_option
from neuroml.errors import InputError
from neuroml.io.bids import parse_entities

__all__ = ["KINDS", "find_timeseries", "load_timeseries", "connectome_cv", "connectome_run"]

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger("neuroml")

#: Connectivity kinds of nilearn's ConnectivityMeasure.
KINDS = ("tangent", "correlation", "partial correlation", "covariance", "precision")


def find_timeseries(
    deriv_dir: str | os.PathLike[str], resolution: float | str | None = None, atlas: str = "aal"
) -> pd.DataFrame:
    """Atlas time series TSVs of a derivatives folder, one per participant and session (the first by name).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session``, ``path``.

    Raises
    ------
    InputError
        If there is none (at that resolution).
    """
    from neuroml.data.cache import resolution_key

    deriv_dir = Path(deriv_dir)
    key = resolution_key(resolution)
    pattern = f"*_atlas-{atlas}_timeseries.tsv"
    found = sorted(
        set(deriv_dir.glob(f"sub-*/func/{pattern}"))
        | set(deriv_dir.glob(f"sub-*/ses-*/func/{pattern}"))
    )
    rows, seen = [], set()
    for path in found:
        ent = parse_entities(path.name)[0]
        if key is not None and ent.get("res") != key:
            continue
        k = (f"sub-{ent['sub']}", ent.get("ses"))
        if k in seen:
            continue
        seen.add(k)
        rows.append({"participant_id": k[0], "session": k[1], "path": path, "res": ent.get("res")})
    if not rows:
        raise InputError(
            f"no atlas time series (sub-*/func/{pattern}); run `neuroml preprocess BIDS DERIV "
            "participant --modality func` first",
            deriv_dir,
        )
    df = pd.DataFrame(rows)
    if df["res"].nunique() > 1:
        raise InputError(
            f"atlas time series at several resolutions {sorted(df['res'].unique())}; pass resolution=",
            deriv_dir,
        )
    return df.drop(columns="res")


def load_timeseries(
    paths: Sequence[str | os.PathLike[str]], drop_constant: bool = True
) -> tuple[list[npt.NDArray[np.float64]], list[str]]:
    """Read time series TSVs; keep the regions present in every file.

    With ``drop_constant`` (the default) only the regions with signal in every file are kept.
    :func:`connectome_run` passes ``drop_constant=False`` and lets :func:`connectome_cv` choose
    the regions inside each fold from its training subjects, so that test subjects do not
    decide which regions the model sees.

    Returns
    -------
    series : list of ndarray (T_i, R)
    regions : list of str
    """
    tables = []
    for p in paths:
        try:
            tables.append(pd.read_csv(p, sep="\t"))
        except (
            OSError,
            pd.errors.ParserError,
            pd.errors.EmptyDataError,
            UnicodeDecodeError,
        ) as exc:
            raise InputError(f"unreadable time series ({str(exc).splitlines()[0]})", p) from None
    common = [c for c in tables[0].columns if all(c in t.columns for t in tables)]
    keep = [c for c in common if all(t[c].std() > 0 for t in tables)] if drop_constant else common
    if len(keep) < 2:
        raise InputError(
            f"fewer than 2 regions {'have signal' if drop_constant else 'are present'} in every "
            f"subject ({len(keep)})",
            paths[0],
        )
    if len(keep) < len(tables[0].columns):
        log.info(
            "connectome: %d of %d regions kept (%s in every subject)",
            len(keep),
            len(tables[0].columns),
            "signal" if drop_constant else "present",
        )
    return [t[keep].to_numpy(dtype=np.float64) for t in tables], keep


def connectome_cv(
    series: Sequence[npt.NDArray[Any]],
    participant_ids: Sequence[str],
    y: npt.ArrayLike,
    splits: Sequence[Mapping[str, Any]],
    n_classes: int,
    seed: int = 0,
    kind: str = "tangent",
    C: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_]]:
    """Out-of-fold probabilities of connectivity + logistic regression, fitted on each fold's train + val.

    Parameters
    ----------
    series : list of ndarray (T_i, R)
    participant_ids : sequence of str
    y : ndarray of int
    splits : list of dict
        Folds with ``train``, ``val``, ``test`` participant ids.
    n_classes : int
    seed : int
    kind : str, default="tangent"
        The tangent reference (group mean) is learnt from the training subjects only.
    C : float, default=1.0

    In each fold only the regions with signal (non-zero variance) in every training subject
    are used; a region constant in a test subject then has zero correlation with the others.

    Returns
    -------
    proba : ndarray (n, n_classes)
        NaN for rows in no test fold.
    fold : ndarray of int
    """
    from threadpoolctl import threadpool_limits

    kind = look_up_option("kind", kind, KINDS)
    # small matrices: BLAS threads only contend (eigh of 100 x 100 was 100x slower beside torch's threads)
    with threadpool_limits(limits=1):
        return _connectome_cv(series, participant_ids, y, splits, n_classes, seed, kind, C)


def _connectome_cv(series, participant_ids, y, splits, n_classes, seed, kind, C):
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pids = np.asarray(participant_ids, dtype=object)
    y = np.asarray(y, dtype=int)
    proba = np.full((len(y), n_classes), np.nan)
    fold_of = np.full(len(y), -1)
    signal = np.array([np.asarray(s).std(axis=0) > 0 for s in series])  # subjects x regions
    for f in splits:
        train = np.flatnonzero(np.isin(pids, list(f["train"]) + list(f["val"])))
        test = np.flatnonzero(np.isin(pids, list(f["test"])))
        if not len(test) or len(set(y[train])) < 2:
            continue
        regions = np.flatnonzero(
            signal[train].all(axis=0)
        )  # chosen from the training subjects only
        if len(regions) < 2:
            raise InputError(
                f"fold {f['fold']}: fewer than 2 regions have signal in every training subject "
                f"({len(regions)})"
            )
        if len(regions) < signal.shape[1]:
            log.info(
                "connectome fold %s: %d of %d regions (signal in every training subject)",
                f["fold"],
                len(regions),
                signal.shape[1],
            )
        conn = ConnectivityMeasure(
            cov_estimator=LedoitWolf(store_precision=False),
            kind=kind,
            vectorize=True,
            discard_diagonal=True,
            standardize="zscore_sample",
        )
        x_train = conn.fit_transform([series[i][:, regions] for i in train])
        x_test = conn.transform([series[i][:, regions] for i in test])
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=C, max_iter=5000, class_weight="balanced", random_state=seed),
        )
        clf.fit(x_train, y[train])
        p = np.zeros((len(test), n_classes))
        p[:, clf[-1].classes_] = clf.predict_proba(x_test)
        proba[test] = p
        fold_of[test] = f["fold"]
    return proba, fold_of


def connectome_run(
    run_dir: str | os.PathLike[str],
    deriv_dir: str | os.PathLike[str],
    atlas: str = "aal",
    kind: str = "tangent",
    n_bootstrap: int = 1000,
    n_permutations: int = 0,
) -> dict[str, Any]:
    """The connectome baseline in the folds of a training run; writes its predictions and metrics.

    Parameters
    ----------
    run_dir : str or Path
        A run of ``neuroml train`` (its ``splits.json``, classes, label column and seed are used).
    deriv_dir : str or Path
        Derivatives of ``neuroml preprocess --modality func``.
    atlas : str, default="aal"
    kind : str, default="tangent"
    n_bootstrap, n_permutations : int

    Returns
    -------
    dict
        Metrics (as :func:`neuroml.training.metrics.classification_report`) plus ``model``,
        ``features``, ``n_regions``; also in ``RUN/connectome_metrics.json``.
    """
    from neuroml.data import participants_file
    from neuroml.io.bids import read_participants
    from neuroml.runs.folder import load_run, out_of_fold_table, table_arrays
    from neuroml.training.metrics import classification_report

    run = load_run(run_dir)
    cfg = run.config
    classes = [str(c) for c in run.classes]
    files = find_timeseries(deriv_dir, cfg.get("resolution"), atlas)
    table = read_participants(participants_file(deriv_dir, cfg.get("participants")))
    column = cfg.get("label_column", "diagnosis")
    labels = table[column].reindex(files["participant_id"]).astype(str).str.strip()
    in_run = {p for f in run.splits for part in ("train", "val", "test") for p in f[part]}
    keep = files["participant_id"].isin(in_run).to_numpy() & labels.isin(classes).to_numpy()
    files, labels = files[keep].reset_index(drop=True), labels[keep].tolist()
    if not len(files):
        raise InputError("no participant of the run has atlas time series", deriv_dir)
    series, regions = load_timeseries(
        files["path"].tolist(), drop_constant=False
    )  # regions chosen in each fold
    y = np.array([classes.index(v) for v in labels])
    seed = int(cfg.get("seed", 0))
    proba, fold = connectome_cv(
        series, files["participant_id"].tolist(), y, run.splits, len(classes), seed, kind
    )
    pred = out_of_fold_table(files["participant_id"].tolist(), proba, fold, classes, y)
    write_text_atomic(
        Path(run_dir) / "connectome_predictions.tsv",
        pred.to_csv(sep="\t", index=False, float_format="%.6f"),
    )
    out = classification_report(
        *table_arrays(pred, classes),
        classes,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        seed=seed,
    )
    out.update(
        {
            "model": "StandardScaler + LogisticRegression(C=1, class_weight='balanced')",
            "features": f"{kind} connectivity (nilearn ConnectivityMeasure, LedoitWolf, fitted in each "
            f"training fold) of {len(regions)} {atlas} regions (in each fold those with "
            "signal in every training subject)",
            "kind": kind,
            "atlas": atlas,
            "n_regions": len(regions),
            "n_participants": int((fold >= 0).sum()),
            "folds": "the run's splits.json",
        }
    )
    write_json_atomic(Path(run_dir) / "connectome_metrics.json", out)
    log.info(
        "connectome baseline (%s): balanced accuracy %.3f",
        kind,
        out.get("balanced_accuracy") or float("nan"),
    )
    return out
