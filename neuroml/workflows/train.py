"""Cross-validated training of a MONAI network on a derivatives folder (:func:`train_run`), and
reading a run folder back (:func:`load_run`). The run-folder layout is in ``docs/layout.md``."""

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuroml._version import __version__
from neuroml._utils.fileio import (
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from neuroml._utils.options import check_in_range, look_up_option
from neuroml.errors import ConfigError, InputError, LeakageError, NeuromlError
from neuroml.models.factory import (
    COMPACT_ACTIVATION,
    MODELS,
    build_model,
    check_input,
    resolve_input_pool,
)
from neuroml.runs import outputs
from neuroml.runs.checkpoint import load_checkpoint, plain, save_checkpoint
from neuroml.runs.folder import (
    PREDICTION_DTYPES,
    Run,
    load_splits,
    predictions_table,
    save_splits,
)
from neuroml.runs.sources import source_identity
from neuroml.training import distributed as dist
from neuroml.training.metrics import balanced_accuracy, classification_report
from neuroml.training.splits import check_splits, make_splits
from neuroml.training.trainer import (
    TrainSettings,
    class_weights,
    evaluate,
    fit,
    resolve_channels_last,
    seed_for,
)
from neuroml.trust import checks as trust
from neuroml.trust.harmonize import FOLD_FILE

__all__ = ["train_run"]

log = logging.getLogger("neuroml")

#: Config keys outside a run's identity (a run may continue with other values; of "runtime", the
#: precision and the number of processes must still match: `_numerics`).
_RUNTIME_KEYS = ("runtime", "deriv_dir", "participants", "neuroml_version")
#: Cohorts up to this size (float32) are read into RAM once; larger ones stay memory-mapped.
IN_MEMORY_BYTES = 2 * 1024**3


def _identity(config):
    return {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}


def _check_existing(run_dir, config, resume, splits=None):
    path = run_dir / "config.json"
    if not path.is_file():
        if resume:
            log.info("nothing to resume in %s: starting a new run", run_dir)
        return
    saved = read_json(path)
    old = _identity(saved)
    new = _identity(plain(config))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff if k != "grid")[
            :600
        ]
        raise ConfigError(
            f"{run_dir} already holds a run with other settings or data ({detail}); "
            "choose a new run_dir or delete the old one"
        )
    was, now = _numerics(saved.get("runtime") or {}), _numerics(config["runtime"])
    if was != now:  # the kept folds would have been trained otherwise than the rest
        raise ConfigError(
            f"{run_dir} was trained in {was['precision']} on {was['world_size']} process(es); this "
            f"run would train in {now['precision']} on {now['world_size']}, so its folds would not be "
            "comparable: rerun with the same --precision and number of processes, or choose a new "
            "run_dir"
        )
    if (
        splits is not None
        and (run_dir / "splits.json").is_file()
        and plain(load_splits(run_dir / "splits.json")) != plain(splits)
    ):  # e.g. another scikit-learn
        raise ConfigError(
            f"{run_dir}: the folds computed now differ from the run's splits.json, so kept folds "
            "may have trained on participants now in their test set; choose a new run_dir"
        )
    if str((saved.get("runtime") or {}).get("device")) != str(config["runtime"]["device"]):
        log.warning(
            "continuing the run in %s on %s (it ran on %s): floating-point results may differ slightly",
            run_dir,
            config["runtime"]["device"],
            (saved.get("runtime") or {}).get("device"),
        )
    log.info("continuing the run in %s (completed folds are kept)", run_dir)


def _check_one_id_per_scan(participant_ids, shas):
    """Refuse a cohort holding one raw scan under two participant IDs (``shas``: the
    ``SourceSHA256`` of each scan's preprocessing sidecar, None when unknown): grouped folds
    could put its copies in training and test."""
    owners = {}
    for p, sha in zip(participant_ids, shas):
        if sha:
            owners.setdefault(sha, set()).add(p)
    twins = sorted(sorted(v) for v in owners.values() if len(v) > 1)
    if twins:
        raise LeakageError(
            f"{len(twins)} raw scan(s) appear under several participant IDs, e.g. "
            f"{', '.join(' and '.join(t) for t in twins[:3])} (same SourceSHA256 in their sidecars): "
            "cross-validation could train and test on the same scan; keep one copy (or one ID)"
        )


def _numerics(runtime):
    """What in a run's ``runtime`` changes the trained weights: precision and number of processes."""
    bf16 = bool(runtime.get("amp", True)) and str(runtime.get("device", "cpu")).startswith("cuda")
    return {
        "precision": "bf16" if bf16 else "fp32",
        "world_size": int(runtime.get("world_size") or 1),
    }


def _fold_done(fold_dir, digest, harmonized=False):
    path = fold_dir / "model.pt"
    if not path.is_file():
        return False
    if harmonized and not (fold_dir / FOLD_FILE).is_file():
        log.warning("%s missing; retraining the fold", fold_dir / FOLD_FILE)
        return False
    try:
        meta = load_checkpoint(path, require=("state_dict", "meta"))["meta"]
    except InputError as exc:
        log.warning("%s; retraining the fold", exc)
        return False
    return meta.get("data_sha256") == digest


def train_run(
    deriv_dir,
    run_dir,
    label_column="diagnosis",
    model="compact",
    epochs=20,
    folds=3,
    batch_size=4,
    lr=1e-3,
    weight_decay=1e-4,
    seed=0,
    device="auto",
    participants=None,
    resolution=None,
    augment=True,
    patience=10,
    amp=True,
    channels_last="auto",
    compile=False,
    grad_accum=1,
    schedule="cosine",
    val_fraction=0.2,
    site_column=None,
    classes=None,
    num_workers=0,
    baseline=True,
    n_bootstrap=1000,
    n_permutations=0,
    resume=False,
    show_progress=True,
    site_info_column="site",
    audit_columns=(),
    harmonize=None,
    inputs=None,
    input_pool="auto",
):
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
    params = dict(locals())
    model = look_up_option("model", model, MODELS)
    resolve_input_pool(input_pool, model)  # checked before the cohort is read
    TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        grad_accum=grad_accum,
        schedule=schedule,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        num_workers=num_workers,
        device=device,
        show_progress=show_progress,
    ).validate()
    check_in_range("seed", seed, 0, None, kind=int)
    check_in_range("n_bootstrap", n_bootstrap, 0, None, kind=int)  # before training, not after it
    check_in_range("n_permutations", n_permutations, 0, None, kind=int)
    check_in_range(
        "val_fraction", val_fraction, 0.0, 0.5
    )  # before the cohort is read (make_splits checks again)
    if site_column is None:
        check_in_range("folds", folds, 2, None, kind=int)
    dev, created = dist.init_distributed(device)
    try:
        return _train_run(dev=dev, **params)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train_run(
    deriv_dir,
    run_dir,
    label_column,
    model,
    epochs,
    folds,
    batch_size,
    lr,
    weight_decay,
    seed,
    device,
    participants,
    resolution,
    augment,
    patience,
    amp,
    channels_last,
    compile,
    grad_accum,
    schedule,
    val_fraction,
    site_column,
    classes,
    num_workers,
    baseline,
    n_bootstrap,
    n_permutations,
    resume,
    show_progress,
    site_info_column,
    audit_columns,
    harmonize,
    inputs,
    input_pool,
    dev,
):
    from neuroml.data.dataset import VolumeDataset, load_cohort, make_augmentation
    from neuroml.data.stack import check_inputs

    t_start, start = time.perf_counter(), outputs.now_iso()
    main, distributed = dist.is_main_process(), dist.is_distributed()
    show_progress = show_progress and main
    model = look_up_option("model", model, MODELS)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        grad_accum=grad_accum,
        schedule=schedule,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        num_workers=num_workers,
        device=str(dev),
        show_progress=show_progress,
    ).validate()
    if harmonize is not None:
        harmonize = look_up_option("harmonize", harmonize, trust.HARMONIZERS)
    audit_columns = [audit_columns] if isinstance(audit_columns, str) else list(audit_columns or ())
    run_dir, deriv_dir = Path(run_dir), Path(deriv_dir)
    if distributed and not main:
        dist.barrier()  # rank 0 builds (or checks) the tensor cache first; the others then read it
    cohort = load_cohort(
        deriv_dir, label_column, participants, resolution, classes, show_progress, inputs=inputs
    )
    if distributed and main:
        dist.barrier()
    in_channels = cohort.in_channels
    cache, n_classes = cohort.cache, len(cohort.classes)
    input_pool = check_input(model, cache.shape, input_pool)  # before anything is written
    pids = np.asarray(cohort.participant_ids, dtype=object)
    # where each scan comes from (raw SHA-256s of the sidecars): checked now, recorded in provenance.json
    sources = source_identity(cache.deriv_dir, cache.index["path"].iloc[cohort.rows].tolist())
    _check_one_id_per_scan(cohort.participant_ids, sources[1])
    sites = _loso_sites(cohort, site_column) if site_column else None
    try:
        splits = make_splits(
            cohort.participant_ids,
            cohort.labels,
            folds=folds,
            seed=seed,
            val_fraction=val_fraction,
            sites=sites,
        )
    except (
        ConfigError
    ) as exc:  # a class too small for the folds, too few sites: say which table and column
        column = f"site column {site_column!r}" if site_column else f"label column {label_column!r}"
        raise ConfigError(f"{cohort.participants_path} ({column}): {exc}") from None
    if dist.broadcast_object((splits, cohort.digest)) != (splits, cohort.digest):
        raise NeuromlError(
            f"rank {dist.rank()} sees other data or splits than rank 0 (are all nodes reading "
            f"the same {deriv_dir}?)"
        )
    site_col = trust.site_column_of(cohort.table, site_column, site_info_column)
    confounds = trust.confound_check(cohort, site_col, audit_columns)
    if harmonize and not site_col:
        raise ConfigError(
            f"harmonize={harmonize!r} needs the site: participants.tsv has no {site_info_column!r} "
            "column; name it with site_info_column"
        )
    harm = _input_harmonization(cohort, site_col) if harmonize else None
    # a run of the compact network made before the leaky ReLU became its activation lacks it in
    # config.json (so it is not continued with the other network) and in its checkpoints
    arch = {"activation": COMPACT_ACTIVATION} if model == "compact" else {}
    config = plain(
        {
            "format": 1,
            "neuroml_version": __version__,
            "label_column": label_column,
            "classes": cohort.classes,
            "n_classes": n_classes,
            "model": model,
            "in_channels": in_channels,
            "resolution": cache.resolution,
            "resolution_mm": cache.resolution_mm,
            "grid": {"affine": cache.affine, "shape": cache.shape},
            "seed": seed,
            "cv": "leave-one-site-out" if site_column else "stratified-group-kfold",
            "folds": len(splits),
            "site_column": site_column,
            "val_fraction": val_fraction,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "patience": patience,
            "grad_accum": grad_accum,
            "schedule": settings.schedule,
            "augment": bool(augment),
            # trust options only when set, so runs made before them keep their identity
            **({"harmonize": harmonize, "harmonized_inputs": harm["config"]} if harmonize else {}),
            **({"audit_columns": audit_columns} if audit_columns else {}),
            **({"input_pool": input_pool} if input_pool != 1 else {}),
            **arch,
            "data_sha256": cohort.digest,
            "n_participants": len(set(cohort.participant_ids)),
            "n_scans": len(cohort),
            "deriv_dir": deriv_dir.resolve(),
            "participants": cohort.participants_path.resolve(),
            "runtime": {
                "device": str(dev),
                "amp": amp,
                "channels_last": resolve_channels_last(settings.channels_last, dev),
                "compile": compile,
                "num_workers": num_workers,
                "world_size": dist.world_size(),
            },
            **({"inputs": check_inputs(inputs)} if inputs is not None else {}),
        }
    )
    if main:
        _check_existing(run_dir, config, resume, splits)
        for folder in (run_dir, *sorted(run_dir.glob("fold-*"))):
            remove_stale_temporaries(folder)  # left by a killed run
        write_json_atomic(run_dir / "config.json", config)
        save_splits(
            run_dir / "splits.json",
            splits,
            seed=seed,
            label_column=label_column,
            site_column=site_column,
            val_fraction=val_fraction,
        )
        write_json_atomic(run_dir / "confounds.json", confounds)
    dist.barrier()
    check_splits(splits)

    n_bytes = len(cohort) * int(np.prod(cache.shape)) * 4
    if n_bytes <= IN_MEMORY_BYTES:  # fast path: the whole cohort in RAM once, float32
        src, src_rows = cache.load(cohort.rows), np.arange(len(cohort))
    else:
        src, src_rows = cache.data, cohort.rows
        if harm is not None:
            log.warning(
                "harmonize: each fold's harmonized copy of the cohort (%.1f GB float32) is held in RAM",
                n_bytes / 1e9,
            )
    pos = np.arange(len(cohort))
    oof = np.full((len(cohort), n_classes), np.nan)
    oof_fold = np.full(len(cohort), -1)
    histories, fold_info, harm_info = {}, [], {}
    for split in splits:
        k = split["fold"]
        fold_dir = run_dir / f"fold-{k}"
        part = {name: pos[np.isin(pids, split[name])] for name in ("train", "val", "test")}
        fold_src, fold_rows = src, src_rows
        if dist.broadcast_object(
            _fold_done(fold_dir, config["data_sha256"], harm is not None) if main else None
        ):
            status = "skipped (already trained)"
            log.info("fold %d/%d (fold-%d) already trained: kept", k + 1, len(splits), k)
        else:
            if main and not resume and (fold_dir / "last.pt").is_file():
                (fold_dir / "last.pt").unlink()
            dist.barrier()
            status = "resumed" if (fold_dir / "last.pt").is_file() else "trained"
            if (
                harm is not None
            ):  # fitted on this fold's training scans only, applied to all of them
                fold_src, harm_info[k] = _harmonize_fold(
                    harm, fold_dir, k, src, src_rows, part["train"], fit=True
                )
                fold_rows = pos
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(seed, k, "init"))
                net = build_model(
                    model,
                    n_classes,
                    in_channels=in_channels,
                    spatial_shape=cache.shape,
                    input_pool=input_pool,
                )
            aug = make_augmentation(seed=seed_for(seed, k, "augment")) if augment else None
            train_ds = VolumeDataset(
                fold_src, cohort.y[part["train"]], fold_rows[part["train"]], transform=aug
            )
            val_ds = (
                VolumeDataset(fold_src, cohort.y[part["val"]], fold_rows[part["val"]])
                if len(part["val"])
                else None
            )
            res = fit(
                net,
                train_ds,
                val_ds,
                settings,
                class_weights(cohort.y[part["train"]], n_classes),
                stream=(seed, k),
                checkpoint_path=fold_dir / "last.pt",
                resume=resume,
                desc=f"fold {k + 1}/{len(splits)}",
            )
            meta = {
                "format": 1,
                "fold": k,
                "model": model,
                "n_classes": n_classes,
                "classes": cohort.classes,
                "in_channels": in_channels,
                "spatial_shape": cache.shape,
                "input_pool": input_pool,
                **arch,
                "label_column": label_column,
                "resolution": cache.resolution,
                "best_epoch": res.best_epoch,
                "best_val_balanced_accuracy": res.best_val_balanced_accuracy,
                "best_val_loss": res.best_val_loss,
                "epochs_run": len(res.history),
                "stopped_early": res.stopped_early,
                "seed": seed,
                "n_train": len(part["train"]),
                "n_val": len(part["val"]),
                "n_test": len(part["test"]),
                "data_sha256": config["data_sha256"],
                "device": str(dev),
                **({"harmonized_inputs": FOLD_FILE} if harm is not None else {}),
            }
            if main:
                outputs.write_history(fold_dir / "history.tsv", res.history)
                state = {k_: v.detach().cpu() for k_, v in res.model.state_dict().items()}
                save_checkpoint({"state_dict": state, "meta": plain(meta)}, fold_dir / "model.pt")
                (fold_dir / "last.pt").unlink(missing_ok=True)
            dist.barrier()
        if not main:  # rank 0 evaluates and writes; the others wait for the next fold
            continue
        net = Run(run_dir, config, splits).fold_model(k, dev)
        if (
            harm is not None and fold_src is src
        ):  # a fold kept from an earlier call: its saved parameters
            fold_src, harm_info[k] = _harmonize_fold(
                harm, fold_dir, k, src, src_rows, part["train"], fit=False
            )
            fold_rows = pos
        if len(part["test"]):
            proba, _ = evaluate(
                net,
                VolumeDataset(fold_src, rows=fold_rows[part["test"]]),
                batch_size=batch_size * 2,
                device=dev,
                amp=amp,
            )
            oof[part["test"]], oof_fold[part["test"]] = proba, k
        histories[k] = outputs.read_history(fold_dir / "history.tsv")
        fold_info.append(
            {
                "fold": k,
                "status": status,
                "n_train": len(split["train"]),
                "n_val": len(split["val"]),
                "n_test": len(split["test"]),
                "test_site": split.get("test_site"),
            }
        )
        del net, fold_src

    if not main:
        return dist.broadcast_object(None)
    summary = _finish(
        run_dir,
        deriv_dir,
        config,
        cohort,
        splits,
        oof,
        oof_fold,
        fold_info,
        histories,
        src,
        src_rows,
        seed,
        start,
        dev,
        baseline,
        n_bootstrap,
        n_permutations,
        t_start,
        site_col,
        confounds,
        audit_columns,
        harmonize,
        harm,
        harm_info,
        sources,
    )
    return dist.broadcast_object(summary)


def _finish(
    run_dir,
    deriv_dir,
    config,
    cohort,
    splits,
    oof,
    oof_fold,
    fold_info,
    histories,
    src,
    src_rows,
    seed,
    start,
    dev,
    baseline,
    n_bootstrap,
    n_permutations,
    t_start,
    site_col,
    confounds,
    audit_columns,
    harmonize,
    harm=None,
    harm_info=None,
    sources=([], []),
):
    """Rank 0: metrics, the baseline, the bias audit and every run-level file; returns the summary."""
    from neuroml.reports.model_card import write_model_card

    cache, n_classes, label_column = cohort.cache, len(cohort.classes), cohort.label_column
    pids = np.asarray(cohort.participant_ids, dtype=object)
    tested = oof_fold >= 0
    table = predictions_table(
        pids[tested], oof[tested], cohort.classes, cohort.y[tested], oof_fold[tested]
    )
    metrics = {
        "classes": cohort.classes,
        "label_column": label_column,
        "chance_balanced_accuracy": 1.0 / n_classes,
        "cnn": _report(
            table, cohort.classes, fold_info, histories, n_bootstrap, n_permutations, seed
        ),
    }
    if baseline:
        metrics["baseline"] = _baseline(
            cohort, src, src_rows, splits, seed, n_bootstrap, n_permutations, run_dir
        )
    base_table = None
    if baseline and (run_dir / "baseline_predictions.tsv").is_file():
        base_table = pd.read_csv(
            run_dir / "baseline_predictions.tsv", sep="\t", dtype=PREDICTION_DTYPES
        )
    metrics["confounds"] = {"site_column": site_col, "entangled": confounds["entangled"]}
    fold_inputs = None
    if harm is not None:
        metrics["cnn"]["harmonized_inputs"] = harmonize
        metrics["harmonization"] = _harmonization_summary(harm, harm_info, splits)
        fold_inputs = _saved_fold_inputs(harm, run_dir, splits, pids, src, src_rows)
    metrics.update(
        trust.trust_metrics(
            cohort,
            table,
            splits,
            src,
            src_rows,
            seed,
            n_bootstrap,
            site_col,
            audit_columns,
            harmonize,
            base_table,
            Run(run_dir, config, splits).fold_models(dev) if site_col else None,
            dev,
            fold_inputs=fold_inputs,
        )
    )
    write_text_atomic(
        run_dir / "predictions.tsv", table.to_csv(sep="\t", index=False, float_format="%.6f")
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_model_card(run_dir)
    outputs.plot_training_curves(run_dir / "training_curve.png", histories)
    urls, raw_shas = sources
    by_participant = {}
    for p, sha in zip(cohort.participant_ids, raw_shas):
        by_participant.setdefault(p, set()).update([sha] if sha else [])
    inputs = {
        "deriv_dir": str(deriv_dir.resolve()),
        "participants": str(cohort.participants_path.resolve()),
        # what predict and attribute compare new scans with (a training scan under another ID)
        "source_datasets": urls,
        "source_sha256": {p: sorted(v) for p, v in sorted(by_participant.items())},
        "participants_sha256": sha256_file(cohort.participants_path),
        "volumes_sha256": {
            p: cache.index["sha256"].iloc[r]
            for p, r in zip(cache.index["path"].iloc[cohort.rows], cohort.rows)
        },
        "skipped_without_label": cohort.unlabeled,
        "labelled_without_image": cohort.without_images,
    }
    outputs.write_provenance(
        run_dir / "provenance.json",
        seed,
        start,
        dev,
        inputs,
        fold_info,
        extra={"data_sha256": config["data_sha256"], "world_size": dist.world_size()},
    )
    cnn, base = metrics["cnn"], metrics.get("baseline", {})
    summary = {
        "run_dir": str(run_dir),
        "classes": cohort.classes,
        "n_participants": config["n_participants"],
        "balanced_accuracy": cnn["balanced_accuracy"],
        "balanced_accuracy_ci": cnn["ci"].get("balanced_accuracy"),
        "auc_macro": cnn["auc_macro"],
        "baseline_balanced_accuracy": base.get("balanced_accuracy"),
        "folds": cnn["per_fold"],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    bacc, base_bacc = summary["balanced_accuracy"], summary["baseline_balanced_accuracy"]
    log.info(
        "run %s: balanced accuracy %s (baseline %s) over %d participants",
        run_dir,
        "n/a" if bacc is None else f"{bacc:.3f}",
        "n/a" if base_bacc is None else f"{base_bacc:.3f}",
        summary["n_participants"],
    )
    return summary


def _site_of_everyone(cohort, site_column, purpose):
    """Every participant's value in ``site_column``; InputError naming the participants file and the
    participants without one (``purpose`` says what needs it)."""
    from neuroml.trust.confounds import is_missing

    sites = cohort.column(site_column)
    unknown = sorted({p for p, s in zip(cohort.participant_ids, sites) if is_missing(s)})
    if unknown:
        raise InputError(
            f"{purpose} needs the {site_column!r} of every participant; it is missing for "
            f"{len(unknown)}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
            cohort.participants_path,
        )
    return sites


def _loso_sites(cohort, site_column):
    """Each participant's site for leave-one-site-out folds; InputError naming the file when one is missing
    or there is a single site."""
    sites = _site_of_everyone(cohort, site_column, "leave-one-site-out")
    levels = sorted({str(s) for s in sites})
    if len(levels) < 2:
        raise InputError(
            f"leave-one-site-out needs at least two sites in column {site_column!r}, got {levels}",
            cohort.participants_path,
        )
    return sites


def _input_mask(cache):
    """The template brain mask on the cache's grid, or None when the grid is not a standard one."""
    from neuroml.io.templates import brain_mask_on_grid

    try:
        img = brain_mask_on_grid(float(cache.resolution_mm))
    except (TypeError, ValueError, NeuromlError):
        return None
    if tuple(img.shape) != tuple(cache.shape) or not np.allclose(
        img.affine, cache.affine, atol=1e-3
    ):
        return None
    return np.asarray(img.dataobj) > 0


def _input_harmonization(cohort, site_col):
    """What the fold loop needs to harmonize the CNN's inputs, and its record for config.json."""
    from neuroml.trust.harmonize import covariate_matrix, covariate_spec

    sites = _site_of_everyone(cohort, site_col, "harmonize='combat'")
    names, levels = covariate_spec(cohort.table, cohort.participant_ids)
    mask = _input_mask(cohort.cache)
    return {
        "config": {
            "method": "combat",
            "site_column": site_col,
            "covariates": names,
            "sex_levels": levels,
            "fitted_on": "each fold's training participants (not validation, not test)",
            "voxels": "template brain mask"
            if mask is not None
            else "non-zero in every training scan",
            "file": f"fold-<k>/{FOLD_FILE}",
        },
        "sites": np.asarray([str(s) for s in sites], dtype=object),
        "cov": covariate_matrix(
            cohort.table, cohort.participant_ids, names, levels, cohort.participants_path
        ),
        "mask": mask,
        "site_column": site_col,
        "covariates": names,
        "sex_levels": levels,
    }


def _harmonize_fold(harm, fold_dir, k, src, src_rows, train_pos, fit, quiet=False):
    """Every cohort scan harmonized for fold ``k`` (float32, in cohort order) and a summary.

    ``fit``: estimate ComBat on the fold's training scans (``train_pos``) and save it as
    ``fold_dir/combat.npz`` (rank 0; the other ranks read it); otherwise read that file.
    """
    from neuroml.trust.harmonize import VolumeComBat

    path = fold_dir / FOLD_FILE
    if fit:
        if dist.is_main_process():
            cov = harm["cov"]
            hv = VolumeComBat(
                harm["mask"], harm["site_column"], harm["covariates"], harm["sex_levels"]
            ).fit(
                src,
                src_rows[train_pos],
                harm["sites"][train_pos],
                None if cov is None else cov[train_pos],
            )
            hv.save(path)
        dist.barrier()
        if not dist.is_main_process():
            hv = VolumeComBat.load(path)
    else:
        hv = VolumeComBat.load(path)
    out = hv.transform(
        src, src_rows, harm["sites"], harm["cov"], label=f"fold {k} input ComBat", warn=not quiet
    )
    return out, {
        "file": f"fold-{k}/{FOLD_FILE}",
        "voxels": hv.n_voxels,
        "training_scans": hv.combat_.n_fit_,
        "sites": list(hv.combat_.sites_),
        "unseen_sites": list(hv.unseen_sites_),
    }


def _saved_fold_inputs(harm, run_dir, splits, pids, src, src_rows):
    """``fold -> (volumes, rows)``: every scan harmonized with the fold's saved ComBat."""
    pos = np.arange(len(pids))

    def inputs(k):
        train = next(f for f in splits if f["fold"] == k)["train"]
        return _harmonize_fold(
            harm,
            run_dir / f"fold-{k}",
            k,
            src,
            src_rows,
            pos[np.isin(pids, train)],
            fit=False,
            quiet=True,
        )[0], pos

    return inputs


def _harmonization_summary(harm, harm_info, splits):
    """``metrics.json["harmonization"]``: what was harmonized, where it was fitted, per fold."""
    return {
        "method": harm["config"]["method"],
        "cnn_inputs": True,
        "baseline_features": True,
        "site_column": harm["site_column"],
        "covariates_kept": harm["covariates"],
        "cnn_fitted_on": harm["config"]["fitted_on"],
        "voxels": harm["config"]["voxels"],
        "baseline_fitted_on": "each fold's training and validation participants (region means)",
        "unseen_sites": "left unharmonized for that fold's model, with a warning",
        "folds": [{"fold": f["fold"], **(harm_info or {}).get(f["fold"], {})} for f in splits],
    }


def _report(table, classes, fold_info, histories, n_bootstrap, n_permutations, seed):
    y = table["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    proba = table[[f"prob_{c}" for c in classes]].to_numpy()
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


def _baseline(cohort, src, src_rows, splits, seed, n_bootstrap, n_permutations, run_dir):
    from neuroml.io.atlases import atlas_on_grid
    from neuroml.training.baseline import baseline_cv, region_means

    try:
        atlas, _ = atlas_on_grid("aal", cohort.cache.affine, cohort.cache.shape)
    except (NeuromlError, OSError) as exc:
        log.warning("baseline skipped: %s", exc)
        return {"error": str(exc)}
    if np.ndim(src) == 5:  # channels: the region means of each, side by side
        parts = [region_means(src[:, c], atlas) for c in range(src.shape[1])]
        features, regions = (
            np.concatenate([p[0] for p in parts], axis=1),
            np.concatenate([p[1] for p in parts]),
        )
    else:
        features, regions = region_means(src, atlas)
    features = features[src_rows]
    proba, fold = baseline_cv(
        features, cohort.participant_ids, cohort.y, splits, len(cohort.classes), seed
    )
    tested = fold >= 0
    table = predictions_table(
        np.asarray(cohort.participant_ids, dtype=object)[tested],
        proba[tested],
        cohort.classes,
        cohort.y[tested],
        fold[tested],
    )
    if run_dir is not None:
        write_text_atomic(
            Path(run_dir) / "baseline_predictions.tsv",
            table.to_csv(sep="\t", index=False, float_format="%.6f"),
        )
    y = table["true_label"].map({c: i for i, c in enumerate(cohort.classes)}).to_numpy()
    out = classification_report(
        y,
        table[[f"prob_{c}" for c in cohort.classes]].to_numpy(),
        cohort.classes,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        seed=seed,
    )
    out["model"] = "StandardScaler + LogisticRegression(C=1, class_weight='balanced')"
    out["features"] = f"mean intensity of {len(regions)} AAL regions"
    return out
