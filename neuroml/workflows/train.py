"""Cross-validated training of a MONAI network on a derivatives folder (:func:`train_run`).

The run folder it writes (layout in ``docs/layout.md``) is read back by
:func:`~neuroml.runs.load_run`. The options are checked once (:class:`TrainConfig`); the cohort,
its folds and the run's ``config.json`` are settled in :mod:`._train_setup`, the inputs of a
harmonized run in :mod:`._train_harmonize`, the baseline, provenance and summary in
:mod:`._train_outputs`; this module runs the folds and assembles ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from neuroml._utils.fileio import write_json_atomic, write_text_atomic
from neuroml.models.factory import build_model
from neuroml.runs import outputs
from neuroml.runs.checkpoint import plain, save_checkpoint
from neuroml.runs.folder import PREDICTION_DTYPES, Run, out_of_fold_table, table_arrays
from neuroml.training import distributed as dist
from neuroml.training.metrics import balanced_accuracy, classification_report
from neuroml.training.splits import check_splits
from neuroml.training.trainer import class_weights, evaluate, fit, seed_for
from neuroml.trust import checks as trust
from neuroml.trust.harmonize import FOLD_FILE
from neuroml.workflows._train_harmonize import (
    harmonization_summary,
    harmonize_fold,
    saved_fold_inputs,
)
from neuroml.workflows._train_outputs import baseline_metrics, run_summary, write_run_provenance
from neuroml.workflows._train_setup import (
    TrainConfig,
    TrainJob,
    Volumes,
    architecture,
    cohort_volumes,
    fold_done,
    load_training_data,
    prepare_run_dir,
)

__all__ = ["train_run"]

log = logging.getLogger("neuroml")


def train_run(
    deriv_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    label_column: str = "diagnosis",
    model: str = "compact",
    epochs: int = 20,
    folds: int = 3,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    participants: str | os.PathLike[str] | None = None,
    resolution: float | str | None = None,
    augment: bool = True,
    patience: int | None = 10,
    amp: bool = True,
    channels_last: bool | str = "auto",
    compile: bool = False,
    grad_accum: int = 1,
    schedule: str = "cosine",
    val_fraction: float = 0.2,
    site_column: str | None = None,
    classes: Sequence[str] | None = None,
    num_workers: int = 0,
    baseline: bool = True,
    n_bootstrap: int = 1000,
    n_permutations: int = 0,
    resume: bool = False,
    show_progress: bool = True,
    site_info_column: str = "site",
    audit_columns: Sequence[str] = (),
    harmonize: str | None = None,
    inputs: Sequence[str] | None = None,
    input_pool: int | Literal["auto"] = "auto",
) -> dict[str, Any]:
    """Train and evaluate a MONAI network with subject-level cross-validation.

    Every fold trains a fresh network on its training participants, stops early on its
    validation participants and predicts its test participants; the out-of-fold
    predictions give the run's metrics, beside a logistic-regression baseline on atlas
    region means in the same folds. Outputs are listed in ``docs/layout.md``.

    Parameters
    ----------
    deriv_dir : str or Path
        Output of ``neuroml preprocess``.
    run_dir : str or Path
        Run folder to write.
    label_column : str, default="diagnosis"
        Column of ``participants.tsv`` holding the class.
    model : str, default="compact"
        One of :data:`~neuroml.models.MODELS`.
    epochs, folds, batch_size : int
        Epochs per fold (upper bound with early stopping), folds (>= 2), batch size.
    lr, weight_decay : float
        AdamW learning rate (peak of the schedule) and weight decay.
    seed : int, default=0
        Seeds the splits, initialisation, shuffling and augmentation.
    device : str, default="auto"
        "auto" (CUDA when available), "cpu" or "cuda".
    participants : str or Path, optional
        ``participants.tsv``; by default the raw dataset's (from ``dataset_description.json``).
    resolution : float, optional
        Grid resolution of the derivatives (by default the only one present).
    augment : bool, default=True
        Small random affine, intensity and noise augmentation (no left-right flip).
    patience : int or None, default=10
        Epochs without validation improvement before stopping.
    amp : bool, default=True
        bf16 autocast on CUDA (ignored on CPU).
    channels_last : {"auto", True, False}, default="auto"
        Network and batches in channels-last memory; "auto": on CUDA and on the CPU (see
        :func:`~neuroml.training.trainer.resolve_channels_last`).
    compile : bool, default=False
        ``torch.compile`` the network.
    grad_accum : int, default=1
        Batches per optimiser step.
    schedule : {"cosine", "onecycle", "constant"}
    val_fraction : float, default=0.2
        Fraction of each fold's training participants used for early stopping.
    site_column : str, optional
        Leave-one-site-out folds on this ``participants.tsv`` column instead of k-fold.
    classes : sequence of str, optional
        Class order (default: sorted labels).
    num_workers : int, default=0
        DataLoader workers.
    baseline : bool, default=True
        Also evaluate the atlas-region logistic regression.
    n_bootstrap, n_permutations : int
        Bootstrap resamples for confidence intervals; label permutations for a p-value (0: none).
    resume : bool, default=False
        Continue a killed fold from its epoch checkpoint. Completed folds of a run with the
        same settings and data are always kept.
    show_progress : bool, default=True
    site_info_column : str, default="site"
        ``participants.tsv`` column naming the acquisition site (ignored when absent;
        ``site_column`` takes precedence): tested against the label before training
        (``confounds.json``, warning when entangled), predicted by the site probe, audited,
        and used by ``harmonize``.
    audit_columns : sequence of str, default=()
        More ``participants.tsv`` columns for the bias audit (sex, age bands and site always).
    harmonize : {None, "combat"}, default=None
        Harmonize the CNN's inputs: per fold, voxel-wise ComBat (inside the template brain
        mask, age and sex kept) is fitted on the fold's training participants only (not
        validation, not test), applied to all of its scans, and saved as
        ``fold-<k>/combat.npz`` for ``predict``/``attribute``. Also evaluates the baseline on
        region features harmonized inside each fold, reported beside the plain baseline.

    inputs : list of str, optional
        Input channels: ``"T1w"`` and/or desc labels of BOLD maps written by
        ``neuroml preprocess --modality func`` (``"alff"``, ``"falff"``, ``"reho"``, ``"mean"``,
        ``"conn<name>"``), alone or stacked, e.g. ``["alff", "reho"]`` or ``["T1w", "falff"]``.
        Default: the T1w alone.
    input_pool : {"auto", 1, 2, 4}, default="auto"
        ``model="compact"`` only: average-pool the input by this factor before the first
        convolution (:func:`~neuroml.models.build_model`); ``"auto"`` pools the 2 mm grid 2x
        (the network sees ~4 mm; a CPU step ~3.6x cheaper, README Benchmarks), the 1 mm grid 4x,
        and 3 mm or coarser grids not at all (:func:`~neuroml.models.resolve_input_pool`).
        Recorded in ``config.json`` and every fold's ``model.pt``.

    Notes
    -----
    Launched under ``torchrun`` (``WORLD_SIZE`` > 1), every process joins a process group
    (NCCL on ``cuda:LOCAL_RANK``, gloo on CPU) and trains data-parallel (PyTorch DDP): the
    splits and seeds are the same on every rank (rank 0's are broadcast and checked), each
    rank reads its share of every epoch (``DistributedSampler``), ``batch_size`` is per
    process, early stopping follows rank 0's validation score, and only rank 0 builds the
    cache and writes files. Every rank returns the same summary. See
    ``scripts/slurm_train.sh`` for several nodes.

    Returns
    -------
    dict
        Summary: run_dir, classes, n_participants, balanced_accuracy (+ CI), auc_macro,
        baseline_balanced_accuracy, per-fold results, seconds.

    Raises
    ------
    InputError
        For missing or unlabelled data (see :func:`neuroml.data.load_cohort`).
    ConfigError
        For invalid parameters, or a run folder holding a different run.
    """
    options = dict(locals())
    deriv_dir, run_dir = options.pop("deriv_dir"), options.pop("run_dir")
    cfg = TrainConfig(**options).validate()
    dev, created = dist.init_distributed(cfg.device)
    try:
        return _train_run(TrainJob.begin(cfg, deriv_dir, run_dir, dev))
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train_run(job):
    """Every rank: settle the cohort and its folds, train them, and (rank 0) write the run's
    results; every rank returns rank 0's summary."""
    data = load_training_data(job)
    if job.main:
        prepare_run_dir(job, data)
    dist.barrier()
    check_splits(data.splits)
    volumes = cohort_volumes(data.cohort, harmonized=data.plan is not None)
    results = _cross_validate(job, data, volumes)
    if not job.main:
        return dist.broadcast_object(None)
    return dist.broadcast_object(_finish(job, data, volumes, results))


@dataclasses.dataclass
class _Fold:
    """One fold of the run: its index, folder, split and the cohort positions of its
    ``"train"``, ``"val"`` and ``"test"`` scans."""

    k: int
    dir: Path
    split: dict
    part: dict


@dataclasses.dataclass
class FoldResults:
    """What the fold loop hands to the run-level outputs (rank 0).

    ``oof``: the out-of-fold class probabilities of every cohort scan (NaN: in no test set);
    ``oof_fold``: the fold that tested it (-1: none); ``info``: per fold ``{"fold", "status",
    "n_train", "n_val", "n_test", "test_site"}``; ``histories``: fold -> its ``history.tsv``;
    ``harmonization``: fold -> the summary of its input ComBat (harmonized runs).
    """

    oof: np.ndarray
    oof_fold: np.ndarray
    info: list = dataclasses.field(default_factory=list)
    histories: dict = dataclasses.field(default_factory=dict)
    harmonization: dict = dataclasses.field(default_factory=dict)


def _cross_validate(job, data, volumes):
    """Train (or keep) every fold and, on rank 0, predict its test participants."""
    cohort = data.cohort
    pids = np.asarray(cohort.participant_ids, dtype=object)
    pos = np.arange(len(cohort))
    results = FoldResults(
        oof=np.full((len(cohort), len(cohort.classes)), np.nan), oof_fold=np.full(len(cohort), -1)
    )
    for split in data.splits:
        k = split["fold"]
        part = {name: pos[np.isin(pids, split[name])] for name in ("train", "val", "test")}
        _run_fold(job, data, volumes, _Fold(k, job.run_dir / f"fold-{k}", split, part), results)
    return results


def _run_fold(job, data, volumes, fold, results):
    """Train (or keep) one fold and, on rank 0, predict its test participants into ``results``
    (the fold's network and harmonized inputs are released on return)."""
    status, inputs = _train_or_keep(job, data, volumes, fold, results)
    if not job.main:  # rank 0 evaluates and writes; the others go on to the next fold
        return
    net = Run(job.run_dir, data.config, data.splits).fold_model(fold.k, job.dev)
    if data.plan is not None and inputs is None:  # a kept fold: its saved ComBat
        inputs = _harmonized_inputs(data, volumes, fold, results, fit=False)
    _test_fold(job, net, volumes if inputs is None else inputs, fold, status, results)


def _harmonized_inputs(data, volumes, fold, results, fit):
    """Every cohort scan harmonized for ``fold`` (its ComBat fitted now when ``fit``, else read),
    with the fold's ComBat summary recorded in ``results``."""
    out, results.harmonization[fold.k] = harmonize_fold(
        data.plan, fold.dir, fold.k, volumes, fold.part["train"], fit=fit
    )
    return Volumes(out, np.arange(len(data.cohort)))


def _train_or_keep(job, data, volumes, fold, results):
    """Train ``fold`` (continuing its ``last.pt`` with ``resume``) unless its model is already there.

    Returns ``(status, inputs)``: ``inputs`` are the harmonized volumes the fold trained on, None
    when it trained on ``volumes`` or was kept.
    """
    last = fold.dir / "last.pt"
    harmonized = data.plan is not None
    done = fold_done(fold.dir, data.config["data_sha256"], harmonized) if job.main else None
    if dist.broadcast_object(done):
        log.info("fold %d/%d (fold-%d) already trained: kept", fold.k + 1, len(data.splits), fold.k)
        return "skipped (already trained)", None
    if job.main and not job.cfg.resume and last.is_file():
        last.unlink()
    dist.barrier()
    status = "resumed" if last.is_file() else "trained"
    inputs = None
    if data.plan is not None:  # fitted on this fold's training scans only, applied to all of them
        inputs = _harmonized_inputs(data, volumes, fold, results, fit=True)
    _train_fold(job, data, volumes if inputs is None else inputs, fold)
    return status, inputs


def _train_fold(job, data, inputs, fold):
    """Fit a fresh network on the fold's training scans of ``inputs`` (early stopping on its
    validation scans); rank 0 writes its ``history.tsv`` and ``model.pt``."""
    from neuroml.data.dataset import VolumeDataset, make_augmentation

    cfg, cohort, part = job.cfg, data.cohort, fold.part
    n_classes = len(cohort.classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, fold.k, "init"))
        net = build_model(
            cfg.model,
            n_classes,
            in_channels=cohort.in_channels,
            spatial_shape=cohort.cache.shape,
            input_pool=data.input_pool,
        )
    aug = make_augmentation(seed=seed_for(cfg.seed, fold.k, "augment")) if cfg.augment else None
    vols, rows = inputs.volumes, inputs.rows
    train_ds = VolumeDataset(vols, cohort.y[part["train"]], rows[part["train"]], transform=aug)
    val_ds = (
        VolumeDataset(vols, cohort.y[part["val"]], rows[part["val"]]) if len(part["val"]) else None
    )
    res = fit(
        net,
        train_ds,
        val_ds,
        job.settings,
        class_weights(cohort.y[part["train"]], n_classes),
        stream=(cfg.seed, fold.k),
        checkpoint_path=fold.dir / "last.pt",
        resume=cfg.resume,
        desc=f"fold {fold.k + 1}/{len(data.splits)}",
    )
    if job.main:
        outputs.write_history(fold.dir / "history.tsv", res.history)
        state = {name: v.detach().cpu() for name, v in res.model.state_dict().items()}
        meta = plain(_fold_meta(job, data, fold, res))
        save_checkpoint({"state_dict": state, "meta": meta}, fold.dir / "model.pt")
        (fold.dir / "last.pt").unlink(missing_ok=True)
    dist.barrier()


def _fold_meta(job, data, fold, res):
    """The ``meta`` of a fold's ``model.pt``: how to rebuild its network, and how it trained."""
    cfg, cohort, part = job.cfg, data.cohort, fold.part
    return {
        "format": 1,
        "fold": fold.k,
        "model": cfg.model,
        "n_classes": len(cohort.classes),
        "classes": cohort.classes,
        "in_channels": cohort.in_channels,
        "spatial_shape": cohort.cache.shape,
        "input_pool": data.input_pool,
        **architecture(cfg.model),
        "label_column": cfg.label_column,
        "resolution": cohort.cache.resolution,
        "best_epoch": res.best_epoch,
        "best_val_balanced_accuracy": res.best_val_balanced_accuracy,
        "best_val_loss": res.best_val_loss,
        "epochs_run": len(res.history),
        "stopped_early": res.stopped_early,
        "seed": cfg.seed,
        "n_train": len(part["train"]),
        "n_val": len(part["val"]),
        "n_test": len(part["test"]),
        "data_sha256": data.config["data_sha256"],
        "device": str(job.dev),
        **({"harmonized_inputs": FOLD_FILE} if data.plan is not None else {}),
    }


def _test_fold(job, net, inputs, fold, status, results):
    """Rank 0: predict the fold's test scans with its saved model ``net`` into ``results``, with
    the fold's history and status."""
    from neuroml.data.dataset import VolumeDataset

    part, split = fold.part, fold.split
    if len(part["test"]):
        proba, _ = evaluate(
            net,
            VolumeDataset(inputs.volumes, rows=inputs.rows[part["test"]]),
            batch_size=job.cfg.batch_size * 2,
            device=job.dev,
            amp=job.cfg.amp,
        )
        results.oof[part["test"]], results.oof_fold[part["test"]] = proba, fold.k
    results.histories[fold.k] = outputs.read_history(fold.dir / "history.tsv")
    results.info.append(
        {
            "fold": fold.k,
            "status": status,
            "n_train": len(split["train"]),
            "n_val": len(split["val"]),
            "n_test": len(split["test"]),
            "test_site": split.get("test_site"),
        }
    )


def _finish(job, data, volumes, results):
    """Rank 0: metrics, the baseline, the bias audit and every run-level file; returns the summary."""
    from neuroml.reports.model_card import write_model_card

    cohort, run_dir = data.cohort, job.run_dir
    table = out_of_fold_table(
        cohort.participant_ids, results.oof, results.oof_fold, cohort.classes, cohort.y
    )
    metrics = _run_metrics(job, data, volumes, results, table)
    write_text_atomic(
        run_dir / "predictions.tsv", table.to_csv(sep="\t", index=False, float_format="%.6f")
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_model_card(run_dir)
    outputs.plot_training_curves(run_dir / "training_curve.png", results.histories)
    write_run_provenance(job, data, results.info)
    return run_summary(job, data, metrics)


def _run_metrics(job, data, volumes, results, table):
    """``metrics.json``: the CNN's out-of-fold report, the baseline, the confounds, the
    harmonization and the trust checks (:func:`~neuroml.trust.checks.trust_metrics`)."""
    cfg, cohort, run_dir, splits = job.cfg, data.cohort, job.run_dir, data.splits
    metrics = {
        "classes": cohort.classes,
        "label_column": cohort.label_column,
        "chance_balanced_accuracy": 1.0 / len(cohort.classes),
        "cnn": _report(
            table,
            cohort.classes,
            results.info,
            results.histories,
            cfg.n_bootstrap,
            cfg.n_permutations,
            cfg.seed,
        ),
    }
    if cfg.baseline:
        metrics["baseline"] = baseline_metrics(cohort, volumes, splits, cfg, run_dir)
    base_table = None
    if cfg.baseline and (run_dir / "baseline_predictions.tsv").is_file():
        base_table = pd.read_csv(
            run_dir / "baseline_predictions.tsv", sep="\t", dtype=PREDICTION_DTYPES
        )
    metrics["confounds"] = {"site_column": data.site_col, "entangled": data.confounds["entangled"]}
    fold_inputs = None
    if data.plan is not None:
        pids = np.asarray(cohort.participant_ids, dtype=object)
        metrics["cnn"]["harmonized_inputs"] = cfg.harmonize
        metrics["harmonization"] = harmonization_summary(data.plan, results.harmonization, splits)
        fold_inputs = saved_fold_inputs(data.plan, run_dir, splits, pids, volumes)
    fold_models = Run(run_dir, data.config, splits).fold_models(job.dev) if data.site_col else None
    metrics.update(
        trust.trust_metrics(
            cohort,
            table,
            splits,
            volumes.volumes,
            volumes.rows,
            cfg.seed,
            cfg.n_bootstrap,
            data.site_col,
            cfg.audit_columns,
            cfg.harmonize,
            base_table,
            fold_models,
            job.dev,
            fold_inputs=fold_inputs,
        )
    )
    return metrics


def _report(table, classes, fold_info, histories, n_bootstrap, n_permutations, seed):
    y, proba = table_arrays(table, classes)
    out = classification_report(
        y, proba, classes, n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed
    )
    per_fold = []
    for info in fold_info:
        sel = (table["fold"] == info["fold"]).to_numpy()
        hist = histories[info["fold"]]
        best = (
            hist.loc[hist["val_balanced_accuracy"].idxmax()]
            if hist["val_balanced_accuracy"].notna().any()
            else None
        )
        per_fold.append(
            {
                **info,
                "balanced_accuracy": balanced_accuracy(y[sel], proba[sel].argmax(1), len(classes))
                if sel.any()
                else None,
                "epochs_run": int(len(hist)),
                "best_val_balanced_accuracy": None
                if best is None
                else float(best["val_balanced_accuracy"]),
            }
        )
    out["per_fold"] = plain(per_fold)
    return out
