"""What :func:`~neuroml.workflows.train_run` settles before its first fold: the validated options
(:class:`TrainConfig`), the cohort and its folds (:class:`TrainingData`), the run's
``config.json`` and whether an existing run folder may be continued."""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from neuroml._utils.fileio import read_json, remove_stale_temporaries, write_json_atomic
from neuroml._utils.options import check_in_range, look_up_option
from neuroml._version import __version__
from neuroml.errors import ConfigError, InputError, LeakageError, NeuromlError
from neuroml.models.factory import COMPACT_ACTIVATION, MODELS, check_input, resolve_input_pool
from neuroml.runs import outputs
from neuroml.runs.checkpoint import load_checkpoint, plain
from neuroml.runs.folder import load_splits, save_splits
from neuroml.runs.sources import source_identity
from neuroml.training import distributed as dist
from neuroml.training.splits import make_splits
from neuroml.training.trainer import TrainSettings, resolve_channels_last
from neuroml.trust import checks as trust
from neuroml.trust.harmonize import FOLD_FILE
from neuroml.workflows._train_harmonize import plan_harmonization

log = logging.getLogger("neuroml")

#: Config keys outside a run's identity (a run may continue with other values; of "runtime", the
#: precision and the number of processes must still match: `_numerics`).
_RUNTIME_KEYS = ("runtime", "deriv_dir", "participants", "neuroml_version")
#: Cohorts up to this size (float32) are read into RAM once; larger ones stay memory-mapped.
IN_MEMORY_BYTES = 2 * 1024**3


@dataclasses.dataclass
class TrainConfig:
    """The options of one :func:`~neuroml.workflows.train_run` (documented there).

    :meth:`validate` checks them all once, before the cohort is read, and normalises ``model``,
    ``schedule``, ``harmonize`` and ``audit_columns``.
    """

    label_column: str = "diagnosis"
    model: str = "compact"
    epochs: int = 20
    folds: int = 3
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    participants: object = None
    resolution: object = None
    augment: bool = True
    patience: int | None = 10
    amp: bool = True
    channels_last: object = "auto"
    compile: bool = False
    grad_accum: int = 1
    schedule: str = "cosine"
    val_fraction: float = 0.2
    site_column: str | None = None
    classes: object = None
    num_workers: int = 0
    baseline: bool = True
    n_bootstrap: int = 1000
    n_permutations: int = 0
    resume: bool = False
    show_progress: bool = True
    site_info_column: str = "site"
    audit_columns: object = ()
    harmonize: str | None = None
    inputs: object = None
    input_pool: object = "auto"

    def settings(self, device=None, show_progress=None):
        """The :class:`~neuroml.training.trainer.TrainSettings` of every fold's fit (unvalidated).

        ``device`` and ``show_progress`` default to the options'.
        """
        return TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            grad_accum=self.grad_accum,
            schedule=self.schedule,
            amp=self.amp,
            channels_last=self.channels_last,
            compile=self.compile,
            num_workers=self.num_workers,
            device=self.device if device is None else device,
            show_progress=self.show_progress if show_progress is None else show_progress,
        )

    def validate(self):
        """Check every option; return self. Raises :class:`~neuroml.errors.ConfigError`."""
        self.model = look_up_option("model", self.model, MODELS)
        resolve_input_pool(self.input_pool, self.model)
        self.schedule = self.settings().validate().schedule
        check_in_range("seed", self.seed, 0, None, kind=int)
        check_in_range("n_bootstrap", self.n_bootstrap, 0, None, kind=int)
        check_in_range("n_permutations", self.n_permutations, 0, None, kind=int)
        check_in_range("val_fraction", self.val_fraction, 0.0, 0.5)  # make_splits checks again
        if self.site_column is None:
            check_in_range("folds", self.folds, 2, None, kind=int)
        if self.harmonize is not None:
            self.harmonize = look_up_option("harmonize", self.harmonize, trust.HARMONIZERS)
        columns = self.audit_columns
        self.audit_columns = [columns] if isinstance(columns, str) else list(columns or ())
        return self


@dataclasses.dataclass
class TrainJob:
    """One call of :func:`~neuroml.workflows.train_run` in this process.

    ``settings``: the fits' settings on this process's device (progress bars on rank 0 only);
    ``main``: whether this process is rank 0 (it writes every file); ``start``/``t_start``: when
    the call began (ISO time for the provenance, ``time.perf_counter()`` for the summary).
    """

    cfg: TrainConfig
    deriv_dir: Path
    run_dir: Path
    dev: torch.device
    settings: TrainSettings | None = None
    main: bool = True
    start: str = dataclasses.field(default_factory=outputs.now_iso)
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def begin(cls, cfg, deriv_dir, run_dir, dev):
        """The job of this process, its clock started now."""
        t_start, start = time.perf_counter(), outputs.now_iso()
        main = dist.is_main_process()
        settings = cfg.settings(str(dev), cfg.show_progress and main).validate()
        return cls(cfg, Path(deriv_dir), Path(run_dir), dev, settings, main, start, t_start)


@dataclasses.dataclass
class Volumes:
    """The cohort's input volumes and, per cohort scan (in cohort order), its row in them."""

    volumes: object
    rows: np.ndarray


@dataclasses.dataclass
class TrainingData:
    """The cohort of a run and everything settled about it before training.

    ``input_pool``: the resolved input pooling; ``sources``: ``(source dataset URLs, raw SHA-256
    of each scan)``; ``site_col``: the participants column holding the site, or None;
    ``confounds``: ``confounds.json``; ``plan``: the input harmonization
    (:class:`~neuroml.workflows._train_harmonize.HarmonizationPlan`) or None; ``config``: the
    run's ``config.json``.
    """

    cohort: object
    input_pool: int
    sources: tuple
    splits: list
    site_col: str | None
    confounds: dict
    plan: object = None
    config: dict | None = None


def load_training_data(job):
    """Read the cohort, check it, compute its folds and the run's config (every rank).

    Rank 0 builds (or checks) the tensor cache first; the other ranks then read it.
    """
    from neuroml.data.dataset import load_cohort

    cfg, distributed = job.cfg, dist.is_distributed()
    if distributed and not job.main:
        dist.barrier()
    cohort = load_cohort(
        job.deriv_dir,
        cfg.label_column,
        cfg.participants,
        cfg.resolution,
        cfg.classes,
        job.settings.show_progress,
        inputs=cfg.inputs,
    )
    if distributed and job.main:
        dist.barrier()
    cache = cohort.cache
    input_pool = check_input(cfg.model, cache.shape, cfg.input_pool)  # before anything is written
    # where each scan comes from (raw SHA-256s of the sidecars): checked now, recorded in provenance.json
    sources = source_identity(cache.deriv_dir, cache.index["path"].iloc[cohort.rows].tolist())
    _check_one_id_per_scan(cohort.participant_ids, sources[1])
    splits = _cohort_splits(cohort, cfg, job.deriv_dir)
    site_col = trust.site_column_of(cohort.table, cfg.site_column, cfg.site_info_column)
    confounds = trust.confound_check(cohort, site_col, cfg.audit_columns)
    if cfg.harmonize and not site_col:
        raise ConfigError(
            f"harmonize={cfg.harmonize!r} needs the site: participants.tsv has no "
            f"{cfg.site_info_column!r} column; name it with site_info_column"
        )
    plan = plan_harmonization(cohort, site_col) if cfg.harmonize else None
    data = TrainingData(cohort, input_pool, sources, splits, site_col, confounds, plan)
    data.config = run_config(job, data)
    return data


def _cohort_splits(cohort, cfg, deriv_dir):
    """The run's folds; ConfigError naming the table and column when they cannot be made, and
    NeuromlError when another rank sees other data or splits."""
    sites = _loso_sites(cohort, cfg.site_column) if cfg.site_column else None
    try:
        splits = make_splits(
            cohort.participant_ids,
            cohort.labels,
            folds=cfg.folds,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            sites=sites,
        )
    except ConfigError as exc:  # a class too small for the folds, too few sites
        column = (
            f"site column {cfg.site_column!r}"
            if cfg.site_column
            else f"label column {cfg.label_column!r}"
        )
        raise ConfigError(f"{cohort.participants_path} ({column}): {exc}") from None
    if dist.broadcast_object((splits, cohort.digest)) != (splits, cohort.digest):
        raise NeuromlError(
            f"rank {dist.rank()} sees other data or splits than rank 0 (are all nodes reading "
            f"the same {deriv_dir}?)"
        )
    return splits


def architecture(model):
    """The architecture options of ``model`` recorded in ``config.json`` and every checkpoint: the
    compact network's activation."""
    return {"activation": COMPACT_ACTIVATION} if model == "compact" else {}


def run_config(job, data):
    """The run's ``config.json`` (plain JSON types).

    The harmonization, audit columns, input pooling and input channels are recorded only when
    set (an input pooling of 1 is not recorded).
    """
    from neuroml.data.stack import check_inputs

    cfg, cohort, plan = job.cfg, data.cohort, data.plan
    cache = cohort.cache
    return plain(
        {
            "format": 1,
            "neuroml_version": __version__,
            "label_column": cfg.label_column,
            "classes": cohort.classes,
            "n_classes": len(cohort.classes),
            "model": cfg.model,
            "in_channels": cohort.in_channels,
            "resolution": cache.resolution,
            "resolution_mm": cache.resolution_mm,
            "grid": {"affine": cache.affine, "shape": cache.shape},
            "seed": cfg.seed,
            "cv": "leave-one-site-out" if cfg.site_column else "stratified-group-kfold",
            "folds": len(data.splits),
            "site_column": cfg.site_column,
            "val_fraction": cfg.val_fraction,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "patience": cfg.patience,
            "grad_accum": cfg.grad_accum,
            "schedule": job.settings.schedule,
            "augment": bool(cfg.augment),
            **(
                {"harmonize": cfg.harmonize, "harmonized_inputs": plan.record()}
                if cfg.harmonize
                else {}
            ),
            **({"audit_columns": cfg.audit_columns} if cfg.audit_columns else {}),
            **({"input_pool": data.input_pool} if data.input_pool != 1 else {}),
            **architecture(cfg.model),
            "data_sha256": cohort.digest,
            "n_participants": len(set(cohort.participant_ids)),
            "n_scans": len(cohort),
            "deriv_dir": job.deriv_dir.resolve(),
            "participants": cohort.participants_path.resolve(),
            "runtime": {
                "device": str(job.dev),
                "amp": cfg.amp,
                "channels_last": resolve_channels_last(job.settings.channels_last, job.dev),
                "compile": cfg.compile,
                "num_workers": cfg.num_workers,
                "world_size": dist.world_size(),
            },
            **({"inputs": check_inputs(cfg.inputs)} if cfg.inputs is not None else {}),
        }
    )


def prepare_run_dir(job, data):
    """Rank 0: check an existing run may be continued, clear what a killed run left, and write
    ``config.json``, ``splits.json`` and ``confounds.json``."""
    cfg, run_dir = job.cfg, job.run_dir
    _check_existing(run_dir, data.config, cfg.resume, data.splits)
    for folder in (run_dir, *sorted(run_dir.glob("fold-*"))):
        remove_stale_temporaries(folder)  # left by a killed run
    write_json_atomic(run_dir / "config.json", data.config)
    save_splits(
        run_dir / "splits.json",
        data.splits,
        seed=cfg.seed,
        label_column=cfg.label_column,
        site_column=cfg.site_column,
        val_fraction=cfg.val_fraction,
    )
    write_json_atomic(run_dir / "confounds.json", data.confounds)


def cohort_volumes(cohort, harmonized=False):
    """The cohort's volumes: in RAM (float32) up to :data:`IN_MEMORY_BYTES`, else memory-mapped.

    ``harmonized``: warn that each fold's harmonized copy of a larger cohort is held in RAM.
    """
    cache = cohort.cache
    n_bytes = len(cohort) * int(np.prod(cache.shape)) * 4
    if n_bytes <= IN_MEMORY_BYTES:  # fast path: the whole cohort in RAM once, float32
        return Volumes(cache.load(cohort.rows), np.arange(len(cohort)))
    if harmonized:
        log.warning(
            "harmonize: each fold's harmonized copy of the cohort (%.1f GB float32) is held in RAM",
            n_bytes / 1e9,
        )
    return Volumes(cache.data, cohort.rows)


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


def fold_done(fold_dir, digest, harmonized=False):
    """Whether ``fold_dir`` holds a model of this data (and, for a harmonized run, its ComBat)."""
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


def _loso_sites(cohort, site_column):
    """Each participant's site for leave-one-site-out folds; InputError naming the file when one is missing
    or there is a single site."""
    sites = trust.site_of_everyone(cohort, site_column, "leave-one-site-out")
    levels = sorted({str(s) for s in sites})
    if len(levels) < 2:
        raise InputError(
            f"leave-one-site-out needs at least two sites in column {site_column!r}, got {levels}",
            cohort.participants_path,
        )
    return sites
