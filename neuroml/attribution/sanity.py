"""Trust checks of attribution maps: is a map about the model, faithful, stable, and right?

=========================  ===============================================================
check                      what is measured (pass rule)
=========================  ===============================================================
model randomization        Spearman rho, over brain voxels, between the map of the trained
                           model and the map of the same network with re-initialised
                           weights (Adebayo et al., 2018, "Sanity checks for saliency
                           maps"), same input and target. Passes when the median of |rho|
                           over subjects is below :data:`RANDOMIZATION_RHO` (0.2).
faithfulness (deletion)    class probability as the subject's top-ranked atlas regions
                           are replaced by the baseline, against random region orders
                           (Samek et al., 2017). Area under the curve over the fraction
                           of the removal steps. Passes when the mean area of the
                           attribution order is below that of the random orders.
stability                  Spearman rho of region scores (mean attribution per atlas
                           region of a class's group map) between the models of
                           different folds, each on its own test subjects, and the
                           share of their top-10 regions in common. Passes when the
                           median rho is >= :data:`STABILITY_RHO` (0.5) or the median
                           top-10 overlap is above chance (hypergeometric tail
                           p < :data:`STABILITY_OVERLAP_P`, 0.01: 4 of 10 regions in
                           common among AAL's 116): with a sparse effect the ~100
                           regions that score near zero rank at random and pull rho
                           down although the folds agree on the leading regions.
ground truth (synthetic)   on a ``neuroml synth`` cohort: relevance mass accuracy (share
                           of the positive attribution inside the planted regions, Arras
                           et al., 2022), its ratio to the planted share of brain volume
                           (pass: >= :data:`MASS_ENRICHMENT` = 10), voxel-wise ROC AUC of
                           the map against the planted mask, and the atlas ranks of the
                           planted regions (pass: the top :data:`TOP_K` regions are all
                           planted ones).
=========================  ===============================================================

Every function here works on arrays; :func:`neuroml.attribution.attribute_run` calls them
and writes ``sanity.json`` beside the maps.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch

from neuroml._utils.types import PathLike
from neuroml.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RANDOMIZATION_RHO",
    "STABILITY_RHO",
    "STABILITY_OVERLAP_P",
    "MASS_ENRICHMENT",
    "TOP_K",
    "DELETION_STEPS",
    "randomize_weights",
    "randomization_summary",
    "spearman",
    "model_randomization",
    "deletion_curve",
    "region_scores",
    "fold_stability",
    "ground_truth_scores",
    "planted_ground_truth",
]

#: Largest median |Spearman rho| (trained vs randomized maps) for a method to pass.
RANDOMIZATION_RHO = 0.2
#: Smallest median Spearman rho of region scores across folds called stable.
STABILITY_RHO = 0.5
#: Largest chance probability (hypergeometric tail) of the folds' median top-region overlap called stable.
STABILITY_OVERLAP_P = 0.01
#: Smallest ratio of relevance mass accuracy to the planted share of brain volume.
MASS_ENRICHMENT = 10.0
#: Number of top regions that must all be planted regions.
TOP_K = 5
#: Numbers of regions removed at the points of a deletion curve (capped at the atlas size).
DELETION_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)


def randomize_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every parameter re-initialised (the original is untouched).

    Each module with ``reset_parameters`` (convolutions, linear layers, norms, PReLU) is
    reset with its own default initialisation under a fixed seed; running statistics of
    batch norms are reset too.

    Parameters
    ----------
    model : torch.nn.Module
    seed : int, default=0

    Returns
    -------
    torch.nn.Module
    """
    work = copy.deepcopy(model)
    devices = [p.device.index or 0 for p in work.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        # a seed derived from ``seed``: torch.manual_seed(seed) then the same default init would
        # reproduce the weights of a model built right after seeding with ``seed``
        torch.manual_seed(int(np.random.SeedSequence([int(seed), 0x5A17]).generate_state(1)[0]))
        for mod in work.modules():
            if hasattr(mod, "reset_running_stats"):
                mod.reset_running_stats()  # type: ignore[operator]
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()  # type: ignore[operator]
    return work


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation of two flat arrays (0 when either is constant).

    Examples
    --------
    >>> round(spearman([1, 2, 3, 4], [10, 20, 40, 30]), 3)
    0.8
    """
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"cannot correlate arrays of {a.size} and {b.size} values")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _mask(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask) > 0
    if mask.shape != tuple(shape):
        raise InputError(f"mask shape {mask.shape} differs from the maps' {tuple(shape)}")
    return mask


def model_randomization(
    explain: Callable[[torch.nn.Module, npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[Any]],
    model: torch.nn.Module,
    x: npt.NDArray[Any],
    maps: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]],
    mask: npt.NDArray[np.bool_] | None = None,
    seed: int = 0,
    threshold: float = RANDOMIZATION_RHO,
) -> dict[str, Any]:
    """Model-parameter randomization test (Adebayo et al., 2018).

    Parameters
    ----------
    explain : callable
        ``explain(model, x, targets) -> maps (N, X, Y, Z)``, the method under test.
    model : torch.nn.Module
        The trained model (not modified).
    x : ndarray, shape (N, X, Y, Z) or (N, C, X, Y, Z)
    maps : ndarray, shape (N, X, Y, Z)
        The trained model's maps of ``x`` for ``targets``.
    targets : array of int, shape (N,)
    mask : ndarray, shape (X, Y, Z), optional
        Voxels compared (the brain); default all.
    seed : int, default=0
    threshold : float, default=RANDOMIZATION_RHO

    Returns
    -------
    dict
        ``rho`` (per subject; None where the trained map is constant), ``median_abs_rho``,
        ``threshold``, ``passed`` (median |rho| < threshold; None when every map is constant),
        ``n_constant`` and ``rule``.
    """
    maps = np.asarray(maps)
    keep = _mask(mask, maps.shape[1:])
    random_maps = explain(randomize_weights(model, seed), x, np.asarray(targets))
    # a constant trained map has no ranking to lose: its rho is undefined (None), not 0
    rho = [
        None if np.ptp(a[keep]) == 0 else round(spearman(a[keep], b[keep]), 4)
        for a, b in zip(maps, random_maps)
    ]
    return {
        "rho": rho,
        **randomization_summary(rho, threshold),
        "seed": int(seed),
        "rule": f"median |Spearman rho| (trained vs randomized-weights maps, brain voxels) < {threshold}; "
        "subjects whose trained map is constant are left out",
    }


def randomization_summary(
    rho: Sequence[float | None], threshold: float = RANDOMIZATION_RHO
) -> dict[str, Any]:
    """``median_abs_rho``, ``threshold``, ``passed`` and ``n_constant`` of per-subject rhos.

    ``None`` entries (a constant trained map: the method found nothing to randomize away) are
    left out; when every map is constant the check is undecided (``passed`` None), not passed.

    Examples
    --------
    >>> randomization_summary([0.1, -0.3, None])["median_abs_rho"], randomization_summary([None])["passed"]
    (0.2, None)
    """
    defined = [abs(r) for r in rho if r is not None]
    med = float(np.median(defined)) if defined else None
    out: dict[str, Any] = {
        "median_abs_rho": None if med is None else round(med, 4),
        "threshold": threshold,
        "passed": None if med is None else bool(med < threshold),
        "n_constant": len(rho) - len(defined),
    }
    if med is None:
        out["note"] = (
            "every trained map is constant over the brain: the method found no signal to test"
        )
    return out


def region_scores(
    maps: npt.NDArray[Any],
    labels: npt.NDArray[np.integer[Any]],
    ids: Sequence[int] | npt.NDArray[Any],
) -> npt.NDArray[np.float64]:
    """Mean of each map over each region: ``(N, len(ids))``."""
    maps = np.asarray(maps, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    n_bins = max(int(labels.max(initial=0)), int(max(ids, default=0))) + 1
    counts = np.bincount(labels.ravel(), minlength=n_bins)[ids]
    flat = maps.reshape(maps.shape[0], -1)
    sums = np.stack([np.bincount(labels.ravel(), weights=m, minlength=n_bins)[ids] for m in flat])
    return sums / np.maximum(counts, 1)


def _auc(y, x):
    """Trapezoid area of curves ``y[..., k]`` over ``x[k]`` (last axis)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return np.sum((y[..., 1:] + y[..., :-1]) * np.diff(x) / 2, axis=-1)


def deletion_curve(
    model: torch.nn.Module,
    x: npt.NDArray[Any],
    maps: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]],
    labels: npt.NDArray[np.integer[Any]],
    steps: Sequence[int] = DELETION_STEPS,
    n_random: int = 3,
    baseline: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Faithfulness: target probability as the top-ranked regions are removed, against random orders.

    For each subject the atlas regions are ordered by their mean attribution (highest
    first); after removing the first ``k`` regions (set to ``baseline``) the model's
    softmax probability of the target is recorded. The same is done for ``n_random``
    seeded random orders. The area under each curve is taken over ``k / max(k)``
    (trapezoids), so it is the mean probability over the removal: lower is more faithful.

    Parameters
    ----------
    model : torch.nn.Module
    x : ndarray, shape (N, X, Y, Z) or (N, C, X, Y, Z)
        Inputs; with several channels a removed region is removed from all of them.
    maps : ndarray, shape (N, X, Y, Z)
    targets : array of int, shape (N,)
    labels : ndarray of int, shape (X, Y, Z)
        Atlas labels, 0 = background (never removed).
    steps : sequence of int
        Numbers of regions removed; capped at the number of regions.
    n_random : int, default=3
    baseline : float, default=0.0
    seed : int, default=0
    batch_size : int, default=8

    Returns
    -------
    dict
        ``steps``, ``fraction_removed`` (mean share of brain-atlas voxels removed at each
        step, attribution order), ``probability`` and ``probability_random`` (mean curves),
        ``auc``, ``auc_random``, ``auc_per_subject``, ``auc_random_per_subject``,
        ``passed`` (``auc < auc_random``) and ``rule``.
    """
    x, maps, labels, ids = _deletion_inputs(x, maps, labels)
    steps = sorted({min(int(k), len(ids)) for k in steps} | {0})
    counts = np.bincount(labels.ravel(), minlength=int(ids.max()) + 1)[ids]
    rng = np.random.default_rng(seed)
    orders = np.array(  # (N, 1 + n_random, n_regions): attribution order, then random ones
        [
            [np.argsort(-s, kind="stable")] + [rng.permutation(len(ids)) for _ in range(n_random)]
            for s in region_scores(maps, labels, ids)
        ],
        dtype=np.int64,
    ).reshape(len(x), 1 + n_random, len(ids))
    probs = _deletion_probabilities(
        model, x, targets, labels, ids, orders, steps, baseline, batch_size
    )
    frac = np.array(
        [[counts[orders[i][0][:k]].sum() / counts.sum() for k in steps] for i in range(len(x))]
    )
    return _deletion_result(probs, frac, steps, n_random)


def _deletion_inputs(x, maps, labels):
    """``x`` as ``(N, C, X, Y, Z)`` float32, ``maps``, ``labels`` as int64 and the region ids,
    after checking their shapes agree and the atlas holds a region."""
    x = np.asarray(x, dtype=np.float32)
    maps = np.asarray(maps)
    labels = np.asarray(labels).astype(np.int64)
    if x.ndim == maps.ndim:  # one channel: (N, X, Y, Z)
        x = x[:, None]
    if x.ndim != 5 or x.shape[:1] + x.shape[2:] != maps.shape or maps.shape[1:] != labels.shape:
        raise InputError(
            f"deletion curve: x {x.shape}, maps {maps.shape} and labels {labels.shape} must agree"
        )
    ids = np.array(sorted(set(np.unique(labels).tolist()) - {0}), dtype=np.int64)
    if not len(ids):
        raise InputError("deletion curve: the atlas labels hold no region")
    return x, maps, labels, ids


def _deletion_probabilities(model, x, targets, labels, ids, orders, steps, baseline, batch_size):
    """``(N, n_orders, n_steps)`` target probabilities with the first ``steps[k]`` regions of
    each order of each subject (``orders``: region positions, ``(N, n_orders, n_regions)``) set
    to ``baseline`` (in every channel)."""
    from neuroml.attribution.methods import _working_copy

    device = (
        next(model.parameters()).device
        if any(True for _ in model.parameters())
        else torch.device("cpu")
    )
    work = _working_copy(model)
    # region position per voxel (valid where labels > 0)
    pos = np.searchsorted(ids, np.clip(labels, ids[0], ids[-1]))
    inside = np.isin(labels, ids)
    n_orders = orders.shape[1]
    jobs = [(i, o, k) for i in range(len(x)) for o in range(n_orders) for k in range(len(steps))]
    probs = np.zeros((len(x), n_orders, len(steps)))
    for start in range(0, len(jobs), batch_size):
        part = jobs[start : start + batch_size]
        batch = np.empty((len(part), *x.shape[1:]), dtype=np.float32)
        for j, (i, o, k) in enumerate(part):
            rank = np.empty(len(ids), dtype=np.int64)
            rank[orders[i][o]] = np.arange(len(ids))
            removed = inside & (rank[pos] < steps[k])
            batch[j] = np.where(removed, np.float32(baseline), x[i])  # every channel of a region
        with torch.no_grad():
            p = torch.softmax(work(torch.as_tensor(batch, device=device)), 1).float().cpu().numpy()
        for j, (i, o, k) in enumerate(part):
            probs[i, o, k] = p[j, int(targets[i])]
    return probs


def _deletion_result(probs, frac, steps, n_random):
    """The result of :func:`deletion_curve` from its probabilities and removed fractions."""
    n = len(probs)
    xs = np.asarray(steps, dtype=np.float64) / max(steps[-1], 1)
    auc_subj = _auc(probs[:, 0], xs)
    auc_rand = _auc(probs[:, 1:], xs).mean(1) if n_random else np.full(n, np.nan)
    auc, auc_r = float(np.mean(auc_subj)), float(np.mean(auc_rand))
    return {
        "steps": steps,
        "fraction_removed": np.round(frac.mean(0), 4).tolist(),
        "probability": np.round(probs[:, 0].mean(0), 4).tolist(),
        "probability_random": np.round(probs[:, 1:].mean((0, 1)), 4).tolist() if n_random else None,
        "auc": round(auc, 4),
        "auc_random": round(auc_r, 4),
        "auc_per_subject": np.round(auc_subj, 4).tolist(),
        "auc_random_per_subject": np.round(auc_rand, 4).tolist(),
        "n_random": int(n_random),
        "passed": bool(auc < auc_r),
        "rule": "area under the target-probability deletion curve (top-ranked regions removed first) "
        "below the area for random region orders",
    }


def fold_stability(
    scores_by_fold: Mapping[Any, npt.NDArray[Any]],
    threshold: float = STABILITY_RHO,
    top_k: int = 10,
    overlap_p: float = STABILITY_OVERLAP_P,
) -> dict[str, Any]:
    """Agreement of region scores between the models of different folds.

    Two figures for every pair of folds: the Spearman rho of all region scores, and the share
    of their top-``top_k`` regions in common. The folds agree (``passed``) when the median rho
    is at least ``threshold``, or when the median number of shared top regions would be
    unlikely by chance: its hypergeometric tail probability (``top_k`` of ``n`` regions drawn
    twice at random) is below ``overlap_p``. A sparse effect (a few regions, the rest near zero)
    leaves the other regions' order to noise: rho stays low while the leading regions agree.

    Parameters
    ----------
    scores_by_fold : dict
        ``{fold: ndarray (n_regions,)}``, the same regions in the same order.
    threshold : float, default=STABILITY_RHO
    top_k : int, default=10
        Size of the top-region sets compared.
    overlap_p : float, default=STABILITY_OVERLAP_P

    Returns
    -------
    dict
        ``pairs`` (``[fold_a, fold_b, rho, shared top_k regions / top_k]``), ``median_rho``,
        ``median_top_overlap``, ``chance_top_overlap`` (``top_k / n``) and ``top_overlap_p``
        (None under 2 folds), ``passed``, ``passed_by`` (``"rho"``, ``"top_overlap"`` or
        None) and ``rule``.

    Examples
    --------
    Four leading regions shared by three folds, 116 regions otherwise in random order:

    >>> rng = np.random.default_rng(0)
    >>> folds = {f: np.r_[[9.0, 8, 7, 6], rng.uniform(0, 1e-3, 112)] for f in range(3)}
    >>> out = fold_stability(folds)
    >>> out["median_rho"] < 0.5, out["median_top_overlap"] >= 0.4, out["passed"], out["passed_by"]
    (True, True, True, 'top_overlap')
    """
    from scipy.stats import hypergeom

    folds = list(scores_by_fold)
    n = min((len(v) for v in scores_by_fold.values()), default=0)
    k = max(1, min(int(top_k), n))
    top = {f: _top_regions(v, k) for f, v in scores_by_fold.items()}
    counts = {(a, b): len(top[a] & top[b]) for i, a in enumerate(folds) for b in folds[i + 1 :]}
    pairs = [
        [str(a), str(b), round(spearman(scores_by_fold[a], scores_by_fold[b]), 4), round(c / k, 4)]
        for (a, b), c in counts.items()
    ]
    med = float(np.median([p[2] for p in pairs])) if pairs else None
    median_shared = float(np.median(list(counts.values()))) if pairs else None
    overlap = None if median_shared is None else round(median_shared / k, 4)
    p_overlap = None
    if pairs and n > k:  # with every region in the top set any overlap is certain
        shared = int(
            np.floor(cast(float, median_shared))
        )  # the median of an even number of pairs may be x.5: rounded down
        p_overlap = float(hypergeom.sf(shared - 1, n, k, k)) if shared > 0 else 1.0
    by_rho = med is not None and med >= threshold
    by_overlap = p_overlap is not None and p_overlap < overlap_p
    return {
        "pairs": pairs,
        "median_rho": None if med is None else round(med, 4),
        "median_top_overlap": overlap,
        "top_k": k,
        "n_regions": int(n),
        "chance_top_overlap": None if not n else round(k / n, 4),
        "top_overlap_p": None if p_overlap is None else float(f"{p_overlap:.4g}"),
        "threshold": threshold,
        "overlap_p_threshold": overlap_p,
        "passed": None if med is None else bool(by_rho or by_overlap),
        "passed_by": "rho" if by_rho else ("top_overlap" if by_overlap else None),
        "rule": f"median Spearman rho of region scores between folds >= {threshold}, or a median top-{k} "
        f"overlap above chance (hypergeometric p < {overlap_p})",
    }


def _top_regions(scores, k):
    """Indices of the ``k`` highest finite scores, without the regions tied with the next one.

    A region tied with the (k+1)-th score is not in the set (it could as well be left out), so a
    constant or NaN map, or one with fewer than ``k`` regions above the rest, has a smaller set
    (an empty one when constant): ties broken by index would look the same in every fold.
    """
    v = np.asarray(scores, dtype=float)
    v = np.where(np.isfinite(v), v, -np.inf)
    order = np.argsort(-v, kind="stable")
    if len(v) <= k:
        return set(order.tolist())
    return {int(i) for i in order[:k] if v[i] > v[order[k]]}


def ground_truth_scores(
    attribution: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_],
    brain: npt.NDArray[np.bool_] | None = None,
    region_table: pd.DataFrame | None = None,
    planted_regions: Sequence[str] = (),
    top_k: int = TOP_K,
    enrichment: float = MASS_ENRICHMENT,
) -> dict[str, Any]:
    """Score one map against a planted (true) mask.

    Parameters
    ----------
    attribution : ndarray, shape (X, Y, Z)
    mask : ndarray of bool, shape (X, Y, Z)
        Where the effect was planted.
    brain : ndarray of bool, shape (X, Y, Z), optional
        Voxels considered (default all).
    region_table : pandas.DataFrame, optional
        :func:`~neuroml.attribution.region_table` of the map, for the planted regions' ranks.
    planted_regions : sequence of str
        Atlas names of the planted regions.
    top_k : int, default=TOP_K
    enrichment : float, default=MASS_ENRICHMENT

    Returns
    -------
    dict
        ``mass_accuracy`` (positive attribution inside the mask / positive attribution in
        the brain), ``planted_share`` (mask voxels / brain voxels), ``mass_enrichment``
        (their ratio), ``roc_auc`` (map value as score of "planted" over brain voxels),
        ``planted_ranks``, ``top_k_planted`` (how many of the top ``top_k`` regions are
        planted) and ``passed`` (enrichment >= ``enrichment`` and the top ``top_k``
        regions all planted).
    """
    from sklearn.metrics import roc_auc_score

    a = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    keep = _mask(brain, a.shape)
    m = _mask(mask, a.shape) & keep
    pos = np.clip(a[keep], 0, None)
    total = float(pos.sum())
    mass = float(np.clip(a[m], 0, None).sum() / total) if total > 0 else 0.0
    share = float(m.sum() / max(keep.sum(), 1))
    y = m[keep]
    auc = float(roc_auc_score(y, a[keep])) if 0 < y.sum() < y.size else None
    out: dict[str, Any] = {
        "mass_accuracy": round(mass, 4),
        "planted_share": round(share, 4),
        "mass_enrichment": round(mass / share, 3) if share > 0 else None,
        "roc_auc": None if auc is None else round(auc, 4),
    }
    ok = out["mass_enrichment"] is not None and out["mass_enrichment"] >= enrichment
    if region_table is not None and len(planted_regions):
        names = list(region_table["region"])
        ranks = {
            r: (int(region_table["rank"].iloc[names.index(r)]) if r in names else None)
            for r in planted_regions
        }
        top = names[:top_k]
        out.update(
            planted_ranks=ranks,
            top_regions=top,
            top_k=int(top_k),
            top_k_planted=int(sum(r in set(planted_regions) for r in top)),
        )
        ok = ok and out["top_k_planted"] == min(top_k, len(planted_regions))
    out["passed"] = bool(ok)
    return out


def planted_ground_truth(
    deriv_dir: PathLike, affine: npt.ArrayLike, shape: Sequence[int]
) -> dict[str, dict[str, Any]] | None:
    """The planted-region masks of a ``neuroml synth`` cohort, on a grid.

    Parameters
    ----------
    deriv_dir : str or Path
        Derivatives folder whose raw dataset (``SourceDatasets``) is a synthetic cohort.
    affine, shape
        The grid.

    Returns
    -------
    dict or None
        ``{class: {"mask": bool ndarray, "regions": [names]}}``; None when the raw
        dataset has no ground truth (not a synthetic cohort).
    """
    import nibabel as nib
    from nilearn.image import resample_img

    from neuroml._utils.fileio import read_json
    from neuroml.data import participants_file
    from neuroml.io.groundtruth import GROUNDTRUTH_SUBDIR, planted_mask_path

    try:
        raw = participants_file(deriv_dir).parent
    except InputError:
        return None
    gt = raw / GROUNDTRUTH_SUBDIR
    if not (gt / "planted_regions.json").is_file():
        return None
    rec = read_json(gt / "planted_regions.json")
    out = {}
    for cls, regions in (rec.get("planted") or {}).items():
        img = cast(nib.Nifti1Image, nib.load(str(planted_mask_path(gt, cls))))
        img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        with warnings.catch_warnings():  # a 0/1 mask on purpose: linear, then >= 0.5
            warnings.filterwarnings("ignore", message="Resampling binary images")
            res = resample_img(
                img,
                target_affine=np.asarray(affine),
                target_shape=tuple(shape),
                interpolation="linear",
                force_resample=True,
                copy_header=True,
            )
        out[str(cls)] = {
            "mask": np.asarray(res.dataobj) >= 0.5,
            "regions": [str(r) for r in regions],
        }
    return out
