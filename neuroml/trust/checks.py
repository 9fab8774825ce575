"""The trust checks of a training run, called by :func:`~neuroml.workflows.train_run`.

Before training, :func:`confound_check` summarises the cohort per class and tests
diagnosis against site, age and sex (``RUN/confounds.json``, with a logged warning when
they are entangled). After training, :func:`trust_metrics` adds to ``metrics.json`` the
bias audit of the CNN and the baseline, the site probe, and (when asked) the baseline
with ComBat harmonization fitted inside each fold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroml._utils.options import look_up_option
from neuroml.errors import InputError, NeuromlError
from neuroml.runs.folder import out_of_fold_table, table_arrays
from neuroml.trust.audit import audit_groups, subgroup_audit
from neuroml.trust.confounds import ALPHA, association_tests, is_missing, site_probe

__all__ = [
    "HARMONIZERS",
    "confound_check",
    "trust_metrics",
    "demographics",
    "site_column_of",
    "site_of_everyone",
]

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

    from neuroml.data.dataset import Cohort

log = logging.getLogger("neuroml")

#: Harmonization methods of ``train_run(harmonize=...)``.
HARMONIZERS = ("combat",)


def site_column_of(
    table: pd.DataFrame, site_column: str | None = None, site_info_column: str | None = "site"
) -> str | None:
    """The participants column holding the site: the leave-one-site-out column, else
    ``site_info_column`` when present, else None."""
    if site_column:
        return site_column
    return site_info_column if site_info_column and site_info_column in table.columns else None


def site_of_everyone(cohort: Cohort, site_column: str, purpose: str) -> list[Any]:
    """Every participant's value in ``site_column``; InputError naming the participants file and the
    participants without one (``purpose`` says what needs it)."""
    sites = cohort.column(site_column)
    unknown = sorted({p for p, s in zip(cohort.participant_ids, sites) if is_missing(s)})
    if unknown:
        raise InputError(
            f"{purpose} needs the {site_column!r} of every participant; it is missing for "
            f"{len(unknown)}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
            cohort.participants_path,
        )
    return sites


def _participant_rows(cohort):
    """One row per participant: (participant_id, label)."""
    seen = {}
    for p, lab in zip(cohort.participant_ids, cohort.labels):
        seen.setdefault(p, lab)
    return list(seen), [seen[p] for p in seen]


def demographics(
    table: pd.DataFrame,
    pids: list[str],
    labels: Sequence[Any],
    classes: Sequence[str],
    site_col: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per class: n, sex counts, age (mean, sd, min, max) and site counts (plain dict)."""
    out = {}
    lab = np.asarray(labels, dtype=object)
    sub = table.reindex(pids)
    for c in classes:
        sel = sub[lab == c]
        entry: dict[str, Any] = {"n": int(len(sel))}
        if "sex" in sub.columns:
            entry["sex"] = {
                str(k): int(v)
                for k, v in sel["sex"].fillna("n/a").astype(str).value_counts().sort_index().items()
            }
        if "age" in sub.columns:
            age = pd.to_numeric(sel["age"], errors="coerce").dropna()
            if len(age):
                entry["age"] = {
                    "mean": round(float(age.mean()), 2),
                    "sd": round(float(age.std(ddof=1)), 2) if len(age) > 1 else None,
                    "min": float(age.min()),
                    "max": float(age.max()),
                }
        if site_col and site_col in sub.columns:
            entry["site"] = {
                str(k): int(v)
                for k, v in sel[site_col]
                .fillna("n/a")
                .astype(str)
                .value_counts()
                .sort_index()
                .items()
            }
        out[str(c)] = entry
    return out


def confound_message(label_column, column, test, site_column=None):
    """The warning for one entangled column (``test``: an :func:`association_tests` entry).

    Examples
    --------
    >>> confound_message("diagnosis", "sex", {"test": "chi-square", "p_value": 0.223, "effect": "Cramér's V",
    ...                                       "effect_size": 0.5})[:65]
    'confound: diagnosis is associated with sex (chi-square, p = 0.223'
    """
    why = (
        ""
        if test["p_value"] < ALPHA
        else "; not significant at this sample size, but an effect this large is flagged whatever its p-value"
    )
    return (
        f"confound: {label_column} is associated with {column} ({test['test']}, p = {test['p_value']:.3g}, "
        f"{test['effect']} = {test['effect_size']:.2f}{why}); a model may learn {column} instead of the "
        f"{label_column} (see confounds.json and "
        + (
            "the site probe)"
            if column == site_column
            else f"the bias audit's per-{column} results)"
        )
    )


def confound_check(
    cohort: Cohort, site_col: str | None = None, extra_columns: Sequence[str] = ()
) -> dict[str, Any]:
    """Association of the diagnosis with site, age, sex (and ``extra_columns``), before training.

    Returns
    -------
    dict
        ``{"label_column", "site_column", "tests": {column: ...}, "entangled": [columns],
        "demographics": {class: ...}}``; a warning is logged for each entangled column.
    """
    pids, labels = _participant_rows(cohort)
    table = cohort.table
    missing = [c for c in extra_columns if c not in table.columns]
    if missing:  # before training, not after it
        from neuroml.errors import InputError

        raise InputError(
            f"audit column {missing[0]!r} not found (columns: {list(table.columns)})",
            cohort.participants_path,
        )
    columns = {}
    for col in [site_col, "age", "sex", *extra_columns]:
        if col and col in table.columns and col != cohort.label_column and col not in columns:
            columns[col] = table[col].reindex(pids).tolist()
    tests = association_tests(labels, columns, categorical=[c for c in (site_col, "sex") if c])
    entangled = [c for c, t in tests.items() if t.get("entangled")]
    for c in entangled:
        t = tests[c]
        log.warning("%s", confound_message(cohort.label_column, c, t, site_col))
    return {
        "label_column": cohort.label_column,
        "site_column": site_col,
        "n_participants": len(pids),
        "tests": tests,
        "entangled": entangled,
        "demographics": demographics(table, pids, labels, cohort.classes, site_col),
    }


def _covariates(table, pids):
    """Age (standardised) and sex (0/1) per row as ComBat covariates, and their names;
    a column is left out when absent, incomplete or constant."""
    cols, names = [], []
    if "age" in table.columns:
        age = pd.to_numeric(table["age"].reindex(pids), errors="coerce").to_numpy(dtype=float)
        if np.isfinite(age).all() and np.ptp(age) > 0:
            cols.append((age - age.mean()) / age.std())
            names.append("age")
    if "sex" in table.columns:
        sex = (
            table["sex"].reindex(pids).fillna("n/a").astype(str).to_numpy()
        )  # pandas 3 keeps NaN in astype(str)
        levels = sorted(set(sex.tolist()))
        if len(levels) == 2 and "nan" not in levels and "n/a" not in levels:
            cols.append((sex == levels[1]).astype(float))
            names.append("sex")
    return (np.stack(cols, axis=1) if cols else None), names


def _atlas(cohort):
    from neuroml.io.atlases import atlas_on_grid

    try:
        return atlas_on_grid("aal", cohort.cache.affine, cohort.cache.shape)[0]
    except (NeuromlError, OSError) as exc:
        log.warning("site probe on harmonized inputs skipped: %s", exc)
        return None


def region_features(cohort, src, src_rows):
    """AAL region means of every scan (as the baseline uses), or None when the atlas is unavailable."""
    from neuroml.io.atlases import atlas_on_grid

    try:
        atlas, _ = atlas_on_grid("aal", cohort.cache.affine, cohort.cache.shape)
    except (NeuromlError, OSError) as exc:
        log.warning("site probe skipped: %s", exc)
        return None
    return channel_region_means(src, atlas)[src_rows]


def channel_region_means(volumes, atlas):
    """AAL region means of ``(N, X, Y, Z)`` volumes, or of each channel of ``(N, C, X, Y, Z)``
    volumes side by side (as the baseline does)."""
    from neuroml.training.baseline import region_means

    if np.ndim(volumes) == 5:
        return np.concatenate(
            [region_means(volumes[:, c], atlas)[0] for c in range(volumes.shape[1])], axis=1
        )
    return region_means(volumes, atlas)[0]


def _audit(table_pred, cohort, site_col, audit_columns, n_bootstrap, seed):
    classes = cohort.classes
    y, proba = table_arrays(table_pred, classes)
    cols = ("sex", "age") + ((site_col,) if site_col else ())
    groups = audit_groups(
        cohort.table, table_pred["participant_id"].tolist(), cols, tuple(audit_columns)
    )
    return subgroup_audit(y, proba, classes, groups, n_bootstrap=n_bootstrap, seed=seed)


def penultimate_features(model, volumes, rows, batch_size=8, device="cpu"):
    """Inputs of the network's last linear layer (its penultimate features) for ``volumes[rows]``.

    Returns
    -------
    ndarray of shape (len(rows), d)
    """
    import torch

    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise NeuromlError(
            f"{type(model).__name__} has no linear layer to read penultimate features from"
        )
    captured = []
    handle = linear[-1].register_forward_hook(
        lambda mod, inp, out: captured.append(inp[0].detach().float().cpu())
    )
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                block = np.stack(
                    [
                        np.asarray(volumes[r], dtype=np.float32)
                        for r in rows[start : start + batch_size]
                    ]
                )
                model(torch.from_numpy(block if block.ndim == 5 else block[:, None]).to(device))
    finally:
        handle.remove()
    return torch.cat(captured).flatten(1).numpy().astype(np.float64)


def _fold_probes(feature_sets, splits, sites, participant_ids, seed=0, n_bootstrap=1000):
    """Out-of-fold site probes, one per named feature set, in the run's folds.

    ``feature_sets``: name -> callable ``fold -> features of every row`` (or None to skip the
    fold). For fold ``k``, a logistic regression learns the site from its training and
    validation participants' features and predicts its test participants.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from neuroml.training.metrics import balanced_accuracy, bootstrap_ci

    known = np.array(
        [not is_missing(s) for s in sites], dtype=bool
    )  # rows without a site are not probed
    sites = np.asarray([str(s) for s in sites], dtype=object)
    pids = np.asarray(participant_ids, dtype=object)
    levels = sorted(set(sites[known].tolist()))
    y = np.array([levels.index(s) if k else -1 for s, k in zip(sites, known)])
    proba = {name: np.full((len(y), len(levels)), np.nan) for name in feature_sets}
    for f in splits:
        train = np.isin(pids, list(f["train"]) + list(f["val"])) & known
        test = np.isin(pids, list(f["test"])) & known
        if not test.any() or len(set(y[train])) < 2:
            continue
        for name, features_of in feature_sets.items():
            feats = features_of(f["fold"])
            if feats is None:
                continue
            clf = make_pipeline(
                StandardScaler(),
                LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed),
            )
            clf.fit(feats[train], y[train])
            p = np.zeros((int(test.sum()), len(levels)))
            p[:, clf[-1].classes_] = clf.predict_proba(feats[test])
            proba[name][test] = p
    out = {}
    for name, pr in proba.items():
        done = np.isfinite(pr).all(1)
        if not done.any():
            out[name] = {"balanced_accuracy": None, "note": "no fold could be probed"}
            continue
        out[name] = {
            "balanced_accuracy": round(
                balanced_accuracy(y[done], pr[done].argmax(1), len(levels)), 6
            ),
            "ci": bootstrap_ci(y[done], pr[done], n_bootstrap, seed).get("balanced_accuracy"),
            "chance": round(1.0 / len(levels), 6),
            "n": int(done.sum()),
            "scheme": "the run's folds",
        }
    return out


def cnn_site_probe(
    fold_models,
    splits,
    src,
    src_rows,
    sites,
    participant_ids,
    seed=0,
    n_bootstrap=1000,
    device="cpu",
    fold_inputs=None,
    atlas=None,
):
    """Site probe on each fold model's penultimate features (k-fold runs only).

    For fold ``k``, a logistic regression learns the site from the features that fold's
    model gives its training and validation participants and predicts its test participants.

    Parameters
    ----------
    fold_inputs : callable, optional
        ``fold -> (volumes, rows)``: the inputs fold ``k``'s model was trained on (the run's
        harmonized copies); default ``(src, src_rows)`` for every fold.
    atlas : ndarray of int, optional
        With ``fold_inputs``: also probe the site from the AAL region means of each fold's
        inputs (returned under ``"inputs"``), i.e. what harmonization left in them.

    Returns
    -------
    dict
        The probe (``balanced_accuracy``, ``ci``, ``chance``, ``n``, ``scheme``, ``features``),
        plus ``"inputs"`` when asked.
    """
    if splits and splits[0].get("test_site") is not None:
        return {
            "balanced_accuracy": None,
            "note": "not defined for leave-one-site-out (the test site is unseen)",
        }
    models = dict(fold_models)
    memo = {}

    def inputs(k):
        if k not in memo:
            memo.clear()
            memo[k] = fold_inputs(k) if fold_inputs is not None else (src, src_rows)
        return memo[k]

    def cnn_features(k):
        if k not in models:
            return None
        vols, rows = inputs(k)
        return penultimate_features(models[k], vols, np.asarray(rows), device=device)

    def input_features(k):
        vols, rows = inputs(k)
        return channel_region_means(np.asarray(vols)[np.asarray(rows)], atlas)

    sets = {"cnn": cnn_features}
    if fold_inputs is not None and atlas is not None:
        sets["inputs"] = input_features
    probes = _fold_probes(sets, splits, sites, participant_ids, seed, n_bootstrap)
    out = probes["cnn"]
    if out.get("balanced_accuracy") is not None:
        out["features"] = (
            "penultimate features of each fold's CNN (input of its last linear layer)"
            + (", on the fold's harmonized inputs" if fold_inputs is not None else "")
        )
    if "inputs" in probes:
        out["inputs"] = probes["inputs"]
        out["inputs"]["features"] = (
            "mean intensity of AAL regions of each fold's harmonized CNN inputs"
        )
    return out


def trust_metrics(
    cohort: Cohort,
    predictions: pd.DataFrame,
    splits: Sequence[Mapping[str, Any]],
    src: npt.NDArray[Any],
    src_rows: npt.NDArray[np.integer[Any]],
    seed: int = 0,
    n_bootstrap: int = 1000,
    site_col: str | None = None,
    audit_columns: Sequence[str] = (),
    harmonize: str | None = None,
    baseline_predictions: pd.DataFrame | None = None,
    fold_models: Sequence[tuple[int, torch.nn.Module]] | None = None,
    device: str | torch.device = "cpu",
    fold_inputs: Callable[[int], tuple[npt.NDArray[Any], npt.NDArray[np.integer[Any]]]]
    | None = None,
) -> dict[str, Any]:
    """Bias audit, site probe and harmonized baseline of a trained run (a dict for metrics.json).

    Parameters
    ----------
    cohort : neuroml.data.Cohort
    predictions : pandas.DataFrame
        Out-of-fold CNN predictions (``predictions.tsv``).
    splits : list of dict
    src, src_rows
        Volumes and the row of each cohort scan in them.
    seed, n_bootstrap : int
    site_col : str, optional
        Participants column holding the site.
    audit_columns : sequence of str
        More participants columns to audit.
    harmonize : {None, "combat"}
        Also evaluate the baseline with the features harmonized inside each fold.
    baseline_predictions : pandas.DataFrame, optional
        Out-of-fold baseline predictions, audited too.
    fold_models : list of (int, torch.nn.Module), optional
        The run's fold models: the site is also probed from their penultimate features
        (``site_probe["cnn"]``, k-fold runs only).
    device : str or torch.device, default="cpu"
    fold_inputs : callable, optional
        ``fold -> (volumes, rows)``: each fold model's (harmonized) inputs, for the CNN site
        probe; the site is then also probed from the region means of those inputs
        (``site_probe["cnn"]["inputs"]``).

    Returns
    -------
    dict
        ``{"audit": {"cnn": ..., "baseline": ...}, "site_probe": {...}, "baseline_harmonized": {...}}``
        (keys present when computed).
    """
    out = {
        "audit": {"cnn": _audit(predictions, cohort, site_col, audit_columns, n_bootstrap, seed)}
    }
    if baseline_predictions is not None:
        out["audit"]["baseline"] = _audit(
            baseline_predictions, cohort, site_col, audit_columns, n_bootstrap, seed
        )
    if harmonize is not None:
        harmonize = look_up_option("harmonize", harmonize, HARMONIZERS)
        if not site_col:
            raise NeuromlError(
                "harmonize='combat' needs a site column in participants.tsv "
                "(site_info_column or site_column)"
            )
    if not site_col:
        return out
    features = region_features(cohort, src, src_rows)
    if features is None:
        return out
    sites = [
        None if is_missing(s) else str(s) for s in cohort.column(site_col)
    ]  # None: left out of the probes
    probe = site_probe(
        features, sites, cohort.participant_ids, splits, seed=seed, n_bootstrap=n_bootstrap
    )
    probe["features"] = f"mean intensity of {features.shape[1]} AAL regions"
    cov, cov_names = _covariates(cohort.table, cohort.participant_ids)
    if harmonize == "combat":
        try:
            out["baseline_harmonized"], probe["after_combat"] = _harmonized(
                cohort,
                features,
                sites,
                cov,
                cov_names,
                splits,
                seed,
                n_bootstrap,
                probe["features"],
            )
        except NeuromlError as exc:  # a harmonization failure must not lose the trained run
            log.warning("harmonized baseline skipped: %s", exc)
            out["baseline_harmonized"] = {"error": str(exc)}
    if fold_models:
        try:
            probe["cnn"] = cnn_site_probe(
                fold_models,
                splits,
                src,
                src_rows,
                sites,
                cohort.participant_ids,
                seed,
                n_bootstrap,
                device,
                fold_inputs,
                _atlas(cohort) if fold_inputs else None,
            )
        except (NeuromlError, RuntimeError) as exc:
            log.warning("CNN site probe skipped: %s", exc)
            probe["cnn"] = {"balanced_accuracy": None, "note": str(exc)[:200]}
    out["site_probe"] = probe
    return out


def _harmonized(cohort, features, sites, cov, cov_names, splits, seed, n_bootstrap, feature_text):
    """Baseline and site probe with ComBat fitted inside each fold's training rows."""
    from neuroml.training.baseline import baseline_cv
    from neuroml.training.metrics import classification_report
    from neuroml.trust.harmonize import ComBat

    after = site_probe(
        features,
        sites,
        cohort.participant_ids,
        splits,
        seed=seed,
        n_bootstrap=n_bootstrap,
        harmonizer=ComBat,
        covariates=cov,
    )
    proba, fold = baseline_cv(
        features,
        cohort.participant_ids,
        cohort.y,
        splits,
        len(cohort.classes),
        seed,
        harmonizer=ComBat,
        sites=sites,
        covariates=cov,
    )
    table = out_of_fold_table(cohort.participant_ids, proba, fold, cohort.classes, cohort.y)
    rep = classification_report(
        *table_arrays(table, cohort.classes), cohort.classes, n_bootstrap=n_bootstrap, seed=seed
    )
    rep["model"] = (
        "ComBat (fitted on each fold's training rows) + StandardScaler + LogisticRegression"
    )
    rep["covariates_kept"] = cov_names
    rep["features"] = feature_text
    return rep, after
