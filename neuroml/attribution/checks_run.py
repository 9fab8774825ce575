"""The trust checks of a call of :func:`~neuroml.attribution.attribute_run` (``sanity.json``).

Each check of :mod:`neuroml.attribution.sanity` on the maps a call computed: model
randomization and deletion on up to ``n_sanity`` out-of-fold subjects (classes in turn),
each explained again by its fold model; stability of the class maps across folds; and, on
a ``neuroml synth`` cohort, the planted ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroml._utils.types import PathLike
from neuroml.attribution import sanity as checks
from neuroml.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from neuroml.attribution.compute import Explained, ExplainerSpec
    from neuroml.attribution.plan import ModelInputs, Sources

__all__ = ["CheckInputs", "trust_checks"]


@dataclass
class CheckInputs:
    """What the checks look at.

    Attributes
    ----------
    spec : ExplainerSpec
        How the call made its maps.
    src : Sources
    inputs : ModelInputs
    deriv_dir : str or Path
    explained : Explained
        The maps (each labelled scan's map of its true class) and the pool of subjects.
    groups : dict
        ``{class: {"mean", "n", ...}}``: the class group maps.
    tables : dict
        ``{class: region table of its mean map}``.
    """

    spec: ExplainerSpec
    src: Sources
    inputs: ModelInputs
    deriv_dir: PathLike
    explained: Explained
    groups: dict[str, dict[str, Any]]
    tables: dict[str, pd.DataFrame]


def _brain(cache, cfg, atlas_labels):
    """The template brain mask on the cache grid, or the atlas's extent when the grid is not a standard one."""
    from neuroml.io.templates import brain_mask_on_grid

    try:
        img = brain_mask_on_grid(float(cfg.get("resolution_mm") or abs(cache.affine[0, 0])))
        if img.shape == cache.shape and np.allclose(img.affine, cache.affine, atol=1e-3):
            return np.asarray(img.dataobj) > 0
    except (TypeError, ValueError, InputError, ConfigError):
        pass
    return atlas_labels > 0


def _pick(pool, n, seed):
    """Up to ``n`` pool entries, classes in turn, seeded order within each class."""
    rng = np.random.default_rng(seed)
    by_class = {}
    for e in pool:
        by_class.setdefault(e["target"], []).append(e)
    queues = [list(rng.permutation(len(v))) for v in by_class.values()]
    lists = list(by_class.values())
    out = []
    while len(out) < n and any(queues):
        for q, lst in zip(queues, lists):
            if q and len(out) < n:
                out.append(lst[q.pop(0)])
    return out


def _per_fold(chosen, ci):
    """``(fold, x, maps, targets)`` of the chosen subjects of each fold, ``x`` as its model takes it."""
    for fold in dict.fromkeys(e["fold"] for e in chosen):
        part = [e for e in chosen if e["fold"] == fold]
        x = ci.src.cache.load([e["row"] for e in part])
        x = ci.inputs.for_fold(fold, x, [e["participant_id"] for e in part])
        maps = np.stack([ci.explained.maps[e["map"]] for e in part])
        yield fold, x, maps, np.array([e["target"] for e in part])


def _randomization(rand):
    """The model-randomization results of the folds, pooled over every fold's subjects."""
    rho = [r for d in rand for r in d["rho"]]
    return {
        **{k: v for k, v in rand[0].items() if k != "note"},
        "rho": rho,
        **checks.randomization_summary(rho),
    }


def _deletion(dele):
    """The deletion curves of the folds, pooled (mean curves weighted by their subjects)."""
    w = np.array([len(d["auc_per_subject"]) for d in dele], dtype=float)
    curves = {
        k: np.round(np.average([d[k] for d in dele], axis=0, weights=w), 4).tolist()
        for k in ("fraction_removed", "probability", "probability_random")
    }
    auc = [a for d in dele for a in d["auc_per_subject"]]
    auc_r = [a for d in dele for a in d["auc_random_per_subject"]]
    return {
        **dele[0],
        **curves,
        "auc_per_subject": auc,
        "auc_random_per_subject": auc_r,
        "auc": round(float(np.mean(auc)), 4),
        "auc_random": round(float(np.mean(auc_r)), 4),
        "passed": bool(np.mean(auc) < np.mean(auc_r)),
    }


def _explained_again(ci, chosen, brain, seed):
    """``randomization`` and ``deletion`` of ``sanity.json`` for the ``chosen`` subjects (None
    each when there are none)."""
    rand, dele = [], []
    labels = ci.src.atlas_labels
    for fold, x, maps, targets in _per_fold(chosen, ci):
        model = ci.src.fold_models[fold]
        rand.append(
            checks.model_randomization(ci.spec.attribute, model, x, maps, targets, brain, seed=seed)
        )
        dele.append(checks.deletion_curve(model, x, maps, targets, labels, seed=seed))
    if not rand:
        return None, None
    return _randomization(rand), _deletion(dele)


def _stability(ci):
    """``stability`` of ``sanity.json``: per class, agreement of the folds' region scores."""
    labels, pool, maps = ci.src.atlas_labels, ci.explained.pool, ci.explained.maps
    ids = np.array(sorted(set(np.unique(labels).tolist()) - {0}), dtype=np.int64)
    stability = {}
    for c, name in enumerate(ci.src.classes):
        by_fold = {}
        for e in pool:
            if e["target"] == c:
                by_fold.setdefault(e["fold"], []).append(maps[e["map"]])
        scores = {
            f: checks.region_scores(np.mean(m, 0)[None], labels, ids)[0] for f, m in by_fold.items()
        }
        if len(scores) >= 2:
            stability[name] = checks.fold_stability(scores)
    return stability or None


def _ground_truth(ci, brain):
    """``ground_truth`` of ``sanity.json``: on a synthetic cohort, each class map against the
    regions planted in it (None otherwise)."""
    cache, classes, maps = ci.src.cache, ci.src.classes, ci.explained.maps
    truth = checks.planted_ground_truth(ci.deriv_dir, cache.affine, cache.shape)
    gt = {}
    for c, info in (truth or {}).items():
        if c not in ci.groups:
            continue
        entry = checks.ground_truth_scores(
            ci.groups[c]["mean"], info["mask"], brain, ci.tables.get(c), info["regions"]
        )
        members = [maps[e["map"]] for e in ci.explained.pool if classes[e["target"]] == c]
        per = [checks.ground_truth_scores(m, info["mask"], brain) for m in members]
        entry["per_subject_median"] = (
            {
                k: float(np.median([p[k] for p in per if p[k] is not None]))
                for k in ("mass_accuracy", "mass_enrichment", "roc_auc")
            }
            if per
            else None
        )
        entry["planted_regions"] = info["regions"]
        gt[c] = entry
    return gt or None


def trust_checks(ci: CheckInputs, n_sanity: int, seed: int) -> dict[str, Any]:
    """The four trust checks of :mod:`neuroml.attribution.sanity` for one method (``sanity.json``).

    Parameters
    ----------
    ci : CheckInputs
    n_sanity : int
        Subjects of the pool (classes in turn) for the model-randomization and deletion checks.
    seed : int
        Seeds the choice of those subjects, the randomized weights and the random orders.

    Returns
    -------
    dict
    """
    brain = _brain(ci.src.cache, ci.src.cfg, ci.src.atlas_labels)
    pool = ci.explained.pool
    doc = {
        "method": ci.spec.method,
        "target": "true class of each subject",
        "n_subjects_pool": len(pool),
        "thresholds": {
            "randomization_rho": checks.RANDOMIZATION_RHO,
            "stability_rho": checks.STABILITY_RHO,
            "stability_overlap_p": checks.STABILITY_OVERLAP_P,
            "mass_enrichment": checks.MASS_ENRICHMENT,
            "top_k": checks.TOP_K,
        },
    }
    chosen = _pick(pool, int(n_sanity), seed)
    randomization, deletion = _explained_again(ci, chosen, brain, seed)
    doc["subjects"] = [e["participant_id"] for e in chosen]
    doc["randomization"] = randomization
    doc["deletion"] = deletion
    doc["stability"] = _stability(ci)
    doc["ground_truth"] = _ground_truth(ci, brain)
    return doc
