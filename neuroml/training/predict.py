"""Predicting new subjects with a run's fold ensemble, refusing subjects a model was trained on."""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from neuroml._utils.fileio import write_text_atomic
from neuroml.errors import InputError, LeakageError

__all__ = [
    "predict_run",
    "predictions_table",
    "check_grid",
    "source_identity",
    "trained_on",
    "training_twins",
]

log = logging.getLogger("neuroml")


def predictions_table(participant_ids, proba, classes, y_true=None, fold=None):
    """Per-participant predictions: the scans of a participant are averaged.

    Parameters
    ----------
    participant_ids : sequence of str
        One per row of ``proba`` (a participant may repeat).
    proba : ndarray of shape (n, C)
    classes : sequence of str
    y_true : sequence of int, optional
        Adds ``true_label``.
    fold : int or sequence of int, optional
        Adds ``fold``.

    Returns
    -------
    pandas.DataFrame
        ``participant_id, [true_label], predicted_label, prob_<class>..., [fold]``, sorted by participant.
    """
    proba = np.asarray(proba, dtype=float)
    df = pd.DataFrame(proba, columns=[f"prob_{c}" for c in classes])
    df.insert(0, "participant_id", list(participant_ids))
    if y_true is not None:
        df["true_label"] = [classes[int(i)] for i in y_true]
    if fold is not None:
        df["fold"] = fold
    agg = {c: "mean" for c in df.columns if c.startswith("prob_")}
    agg.update({c: "first" for c in ("true_label", "fold") if c in df.columns})
    out = df.groupby("participant_id", sort=True).agg(agg).reset_index()
    probs = out[[f"prob_{c}" for c in classes]].to_numpy()
    out.insert(1, "predicted_label", [classes[i] for i in probs.argmax(1)])
    cols = (
        ["participant_id"]
        + (["true_label"] if y_true is not None else [])
        + ["predicted_label"]
        + [f"prob_{c}" for c in classes]
        + (["fold"] if fold is not None else [])
    )
    return out[cols]


def check_grid(affine, shape, run_config, where):
    """Raise :class:`InputError` if a grid differs from the run's (``config["grid"]``)."""
    grid = run_config["grid"]
    if tuple(shape) != tuple(grid["shape"]) or not np.allclose(affine, grid["affine"], atol=1e-4):
        raise InputError(
            f"volumes are on grid shape {tuple(shape)} affine {np.round(affine, 4)[:3].tolist()} but the run was "
            f"trained on shape {tuple(grid['shape'])} affine {np.round(grid['affine'], 4)[:3].tolist()} "
            f"(res-{run_config['resolution']}); preprocess with --resolution {run_config['resolution_mm']:g}",
            where,
        )


def source_identity(deriv_dir, paths):
    """Where a derivatives folder's scans come from: its source datasets and each scan's raw input.

    Parameters
    ----------
    deriv_dir : str or Path
    paths : sequence of str
        Scan paths relative to ``deriv_dir`` (stacked inputs: joined with ``|``; the first is used).

    Returns
    -------
    (list of str, list of str or None)
        The ``SourceDatasets`` URLs of its ``dataset_description.json`` (empty when unknown) and,
        per path, the ``SourceSHA256`` its JSON sidecar records (None when unknown).
    """
    from neuroml._utils.fileio import read_json

    deriv_dir = Path(deriv_dir)
    try:
        desc = read_json(deriv_dir / "dataset_description.json")
        urls = sorted(
            {
                str(d["URL"])
                for d in desc.get("SourceDatasets") or []
                if isinstance(d, dict) and "URL" in d
            }
        )
    except (InputError, OSError, AttributeError, TypeError):
        urls = []
    shas = []
    for rel in paths:
        first = str(rel).split("|")[0]
        # a BOLD map's record is the series' desc-maps_bold.json; a T1w's sits beside it
        stem = re.sub(
            r"_desc-[A-Za-z0-9]+_boldmap$",
            "_desc-maps_bold",
            first[: -len(".nii.gz")] if first.endswith(".nii.gz") else first.rsplit(".", 1)[0],
        )
        try:
            sha = read_json(deriv_dir / f"{stem}.json").get("SourceSHA256")
        except (InputError, OSError, AttributeError):
            sha = None
        shas.append(sha if isinstance(sha, str) and sha else None)
    return urls, shas


def _training_sources(run):
    """``{participant: raw-scan SHA-256s}`` of a run's training scans (``provenance.json``)."""
    from neuroml._utils.fileio import read_json

    try:
        inputs = read_json(Path(run.run_dir) / "provenance.json").get("inputs") or {}
    except (InputError, OSError, AttributeError):
        inputs = {}
    return {p: set(v) for p, v in (inputs.get("source_sha256") or {}).items()}


def training_twins(run, deriv_dir, participant_ids, paths):
    """``{participant: training participant}`` for scans whose raw input (``SourceSHA256``) is a
    training scan of another ID (the same raw file under another name; a de-identified copy has
    other bytes and is not found)."""
    owner = {sha: p for p, shas in _training_sources(run).items() for sha in shas}
    _, shas = source_identity(deriv_dir, paths)
    return {p: owner[s] for p, s in zip(participant_ids, shas) if s in owner and owner[s] != p}


def trained_on(run, deriv_dir, participant_ids, paths):
    """Which of these scans' participants a fold model of ``run`` trained or validated on.

    A participant is "trained on" when its ID is a training ID, or when one of its scans has
    the raw input (``SourceSHA256`` of its sidecar) of a training scan, under any ID. An ID is
    never cleared by its checksum: a re-converted or de-identified copy of a training scan has
    other bytes, so only ``force`` predicts another study's ``sub-001``.

    Returns
    -------
    (set of str, set of str)
        The trained-on participants, and those of them found by checksum under a new ID.
    """
    seen_shas = set().union(*_training_sources(run).values())
    _, shas = source_identity(deriv_dir, paths)
    by_content = {p for p, s in zip(participant_ids, shas) if s is not None and s in seen_shas}
    by_id = set(participant_ids) & run.trained_ids()
    return by_content | by_id, by_content - by_id


def predict_run(
    run_dir,
    deriv_dir,
    out_path=None,
    force=False,
    participant_labels=None,
    device="auto",
    batch_size=8,
    participants=None,
):
    """Predict subjects of a derivatives folder with the mean probability of a run's fold models.

    Parameters
    ----------
    run_dir : str or Path
        A folder written by :func:`~neuroml.training.train_run`.
    deriv_dir : str or Path
        Preprocessed derivatives (at the run's resolution) of the subjects to predict.
    out_path : str or Path, optional
        Default ``RUN/predict/predictions.tsv``.
    force : bool, default=False
        Also predict subjects used to train or validate a fold model (their predictions
        are optimistic; a warning is logged).
    participant_labels : sequence of str or str, optional
        Only these participants (``sub-01`` or ``01``); default every participant.
    device : str, default="auto"
    batch_size : int, default=8
    participants : str or Path, optional
        ``participants.tsv`` with the subjects' site (and age, sex) for a run trained with
        ``harmonize="combat"``; default the raw dataset's of ``deriv_dir``. Each fold model
        gets the scans harmonized with its fold's saved ComBat; a site its training
        participants did not hold is left unharmonized for it, with a warning.

    Returns
    -------
    pandas.DataFrame
        ``participant_id, predicted_label, prob_<class>...`` (also written to ``out_path``).

    Raises
    ------
    LeakageError
        If a requested subject was used for training and ``force`` is False (lists them).
    InputError
        If the derivatives' grid differs from the run's, or a requested participant has no image;
        for a harmonized run, if a subject has no ``participants.tsv`` row or lacks a kept covariate.
    """
    from neuroml.data.dataset import VolumeDataset
    from neuroml.data.stack import open_inputs
    from neuroml.training.run import load_run
    from neuroml.training.trainer import evaluate, resolve_device

    run = load_run(run_dir)
    if participants is not None and not Path(participants).is_file():
        raise InputError("participants file not found", participants)
    out_path = (
        Path(out_path) if out_path is not None else Path(run_dir) / "predict" / "predictions.tsv"
    )
    if out_path.is_dir():
        raise InputError(
            "is a folder: give the predictions a file name (e.g. predictions.tsv)", out_path
        )
    cache = open_inputs(
        deriv_dir, resolution=run.config["resolution"], inputs=run.config.get("inputs")
    )
    check_grid(cache.affine, cache.shape, run.config, cache.deriv_dir)
    index = cache.index
    if participant_labels:
        from neuroml.io.bids import checked_labels

        wanted = {f"sub-{label}" for label in checked_labels(participant_labels)}
        missing = sorted(wanted - set(index["participant_id"]))
        if missing:
            raise InputError(f"no preprocessed image for participant(s) {missing}", cache.deriv_dir)
        index = index[index["participant_id"].isin(wanted)]
    leaked, renamed = trained_on(
        run, cache.deriv_dir, index["participant_id"].tolist(), index["path"].tolist()
    )
    leaked = sorted(leaked)
    if leaked:
        msg = (
            f"{len(leaked)} participant(s) were used to train the run's models: {leaked[:20]}"
            f"{' ...' if len(leaked) > 20 else ''}"
            + (
                f" ({', '.join(sorted(renamed)[:10])}: a training scan under another ID)"
                if renamed
                else ""
            )
        )
        if not force:
            raise LeakageError(
                msg + "; their predictions would be optimistic. Predict only new subjects "
                "(--participant-label / participant_labels=...), or, if these IDs name other people "
                "(another study), force it (--force / force=True)"
            )
        log.warning("%s; predicting them anyway (force=True)", msg)
    dev = resolve_device(device)
    amp = bool(
        (run.config.get("runtime") or {}).get("amp", True)
    )  # the run's precision (bf16 on CUDA only)
    rows, pids = index["row"].to_numpy(), index["participant_id"].tolist()
    harmonized = None
    if run.config.get("harmonized_inputs"):
        from neuroml.training.harmonize import InputHarmonization

        harmonized = InputHarmonization(run, pids, deriv_dir, participants)
    probs = []
    for k, model in run.fold_models(device=dev):
        data = (
            VolumeDataset(cache.data, rows=rows)
            if harmonized is None
            else VolumeDataset(harmonized.apply(k, cache.data, rows, pids))
        )
        probs.append(evaluate(model, data, batch_size=batch_size, device=dev, amp=amp)[0])
    table = predictions_table(index["participant_id"].tolist(), np.mean(probs, axis=0), run.classes)
    write_text_atomic(out_path, table.to_csv(sep="\t", index=False, float_format="%.6f"))
    log.info("predictions of %d participant(s) -> %s", len(table), out_path)
    return table
