"""Predicting new subjects with a run's fold ensemble, refusing subjects a model was trained on."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuroml._utils.fileio import write_text_atomic
from neuroml.errors import InputError, LeakageError
from neuroml.runs.folder import check_grid, load_run, predictions_table
from neuroml.runs.sources import trained_on

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["predict_run"]

log = logging.getLogger("neuroml")


def predict_run(
    run_dir: str | os.PathLike[str],
    deriv_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    force: bool = False,
    participant_labels: Sequence[str] | str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    participants: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Predict subjects of a derivatives folder with the mean probability of a run's fold models.

    Parameters
    ----------
    run_dir : str or Path
        A folder written by :func:`~neuroml.workflows.train_run`.
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
    from neuroml._utils.device import resolve_device
    from neuroml.data.stack import open_inputs

    run = load_run(run_dir)
    if participants is not None and not Path(participants).is_file():
        raise InputError("participants file not found", participants)
    out_path = _out_path(run_dir, out_path)
    cache = open_inputs(
        deriv_dir, resolution=run.config["resolution"], inputs=run.config.get("inputs")
    )
    check_grid(cache.affine, cache.shape, run.config, cache.deriv_dir)
    index = _selected(cache, participant_labels)
    _refuse_training_subjects(run, cache, index, force)
    dev = resolve_device(device)
    rows, pids = index["row"].to_numpy(), index["participant_id"].tolist()
    harmonized = None
    if run.config.get("harmonized_inputs"):
        from neuroml.trust.harmonize import InputHarmonization

        harmonized = InputHarmonization(run, pids, deriv_dir, participants)
    proba = _ensemble_proba(run, cache, rows, pids, harmonized, dev, batch_size)
    table = predictions_table(index["participant_id"].tolist(), proba, run.classes)
    write_text_atomic(out_path, table.to_csv(sep="\t", index=False, float_format="%.6f"))
    log.info("predictions of %d participant(s) -> %s", len(table), out_path)
    return table


def _out_path(run_dir, out_path):
    """Where the predictions go (default ``RUN/predict/predictions.tsv``); InputError for a folder."""
    out_path = (
        Path(out_path) if out_path is not None else Path(run_dir) / "predict" / "predictions.tsv"
    )
    if out_path.is_dir():
        raise InputError(
            "is a folder: give the predictions a file name (e.g. predictions.tsv)", out_path
        )
    return out_path


def _selected(cache, participant_labels):
    """The rows of the cache's index to predict: every one, or those of ``participant_labels``."""
    index = cache.index
    if participant_labels:
        from neuroml.io.bids import checked_labels

        wanted = {f"sub-{label}" for label in checked_labels(participant_labels)}
        missing = sorted(wanted - set(index["participant_id"]))
        if missing:
            raise InputError(f"no preprocessed image for participant(s) {missing}", cache.deriv_dir)
        index = index[index["participant_id"].isin(wanted)]
    return index


def _refuse_training_subjects(run, cache, index, force):
    """LeakageError listing the subjects of ``index`` a fold model was trained on (a warning with
    ``force``)."""
    leaked, renamed = trained_on(
        run, cache.deriv_dir, index["participant_id"].tolist(), index["path"].tolist()
    )
    leaked = sorted(leaked)
    if not leaked:
        return
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


def _ensemble_proba(run, cache, rows, pids, harmonized, dev, batch_size):
    """The mean class probabilities of the run's fold models for the cache's ``rows``.

    ``harmonized``: an :class:`~neuroml.trust.harmonize.InputHarmonization` giving each fold
    model its scans harmonized with the fold's saved ComBat, or None.
    """
    from neuroml.data.dataset import VolumeDataset
    from neuroml.training.trainer import evaluate

    amp = bool(
        (run.config.get("runtime") or {}).get("amp", True)
    )  # the run's precision (bf16 on CUDA only)
    probs = []
    for k, model in run.fold_models(device=dev):
        data = (
            VolumeDataset(cache.data, rows=rows)
            if harmonized is None
            else VolumeDataset(harmonized.apply(k, cache.data, rows, pids))
        )
        probs.append(evaluate(model, data, batch_size=batch_size, device=dev, amp=amp)[0])
    return np.mean(probs, axis=0)
