"""Run-level outputs of :func:`~neuroml.workflows.train_run` (rank 0): the region-mean baseline,
``provenance.json`` and the summary it returns."""

import logging
import time
from pathlib import Path

import numpy as np

from neuroml._utils.fileio import sha256_file, write_text_atomic
from neuroml.errors import NeuromlError
from neuroml.runs import outputs
from neuroml.runs.folder import out_of_fold_table, table_arrays
from neuroml.training import distributed as dist
from neuroml.training.metrics import classification_report

log = logging.getLogger("neuroml")


def baseline_metrics(cohort, volumes, splits, cfg, run_dir):
    """The atlas-region logistic regression in the run's folds: its report for ``metrics.json``
    (``{"error"}`` when the atlas is unavailable), its predictions written to
    ``baseline_predictions.tsv`` when ``run_dir`` is given."""
    from neuroml.io.atlases import atlas_on_grid
    from neuroml.training.baseline import baseline_cv

    try:
        atlas, _ = atlas_on_grid("aal", cohort.cache.affine, cohort.cache.shape)
    except (NeuromlError, OSError) as exc:
        log.warning("baseline skipped: %s", exc)
        return {"error": str(exc)}
    features, regions = _region_features(volumes.volumes, atlas)
    features = features[volumes.rows]
    proba, fold = baseline_cv(
        features, cohort.participant_ids, cohort.y, splits, len(cohort.classes), cfg.seed
    )
    table = out_of_fold_table(cohort.participant_ids, proba, fold, cohort.classes, cohort.y)
    if run_dir is not None:
        write_text_atomic(
            Path(run_dir) / "baseline_predictions.tsv",
            table.to_csv(sep="\t", index=False, float_format="%.6f"),
        )
    out = classification_report(
        *table_arrays(table, cohort.classes),
        cohort.classes,
        n_bootstrap=cfg.n_bootstrap,
        n_permutations=cfg.n_permutations,
        seed=cfg.seed,
    )
    out["model"] = "StandardScaler + LogisticRegression(C=1, class_weight='balanced')"
    out["features"] = f"mean intensity of {len(regions)} AAL regions"
    return out


def _region_features(src, atlas):
    """``(features, regions)``: the atlas-region means of every volume (of each channel, side by
    side)."""
    from neuroml.training.baseline import region_means

    if np.ndim(src) == 5:  # channels: the region means of each, side by side
        parts = [region_means(src[:, c], atlas) for c in range(src.shape[1])]
        return (
            np.concatenate([p[0] for p in parts], axis=1),
            np.concatenate([p[1] for p in parts]),
        )
    return region_means(src, atlas)


def write_run_provenance(job, data, fold_info):
    """Write ``provenance.json``: the inputs (and what predict and attribute compare new scans
    with), the seed, the clock, the device and each fold's status."""
    cohort, cache = data.cohort, data.cohort.cache
    urls, raw_shas = data.sources
    by_participant = {}
    for p, sha in zip(cohort.participant_ids, raw_shas):
        by_participant.setdefault(p, set()).update([sha] if sha else [])
    inputs = {
        "deriv_dir": str(job.deriv_dir.resolve()),
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
        job.run_dir / "provenance.json",
        job.cfg.seed,
        job.start,
        job.dev,
        inputs,
        fold_info,
        extra={"data_sha256": data.config["data_sha256"], "world_size": dist.world_size()},
    )


def run_summary(job, data, metrics):
    """What :func:`~neuroml.workflows.train_run` returns; logs its balanced accuracies."""
    cnn, base = metrics["cnn"], metrics.get("baseline", {})
    summary = {
        "run_dir": str(job.run_dir),
        "classes": data.cohort.classes,
        "n_participants": data.config["n_participants"],
        "balanced_accuracy": cnn["balanced_accuracy"],
        "balanced_accuracy_ci": cnn["ci"].get("balanced_accuracy"),
        "auc_macro": cnn["auc_macro"],
        "baseline_balanced_accuracy": base.get("balanced_accuracy"),
        "folds": cnn["per_fold"],
        "seconds": round(time.perf_counter() - job.t_start, 1),
    }
    bacc, base_bacc = summary["balanced_accuracy"], summary["baseline_balanced_accuracy"]
    log.info(
        "run %s: balanced accuracy %s (baseline %s) over %d participants",
        job.run_dir,
        "n/a" if bacc is None else f"{bacc:.3f}",
        "n/a" if base_bacc is None else f"{base_bacc:.3f}",
        summary["n_participants"],
    )
    return summary
