"""Harmonizing the CNN's inputs inside each fold of :func:`~neuroml.workflows.train_run`
(``harmonize="combat"``): the plan (:class:`HarmonizationPlan`), each fold's voxel-wise ComBat,
and its summary for ``metrics.json``."""

import dataclasses

import numpy as np

from neuroml.errors import NeuromlError
from neuroml.training import distributed as dist
from neuroml.trust.checks import site_of_everyone
from neuroml.trust.harmonize import FOLD_FILE

#: Where the CNN's input ComBat is fitted (``config.json`` and ``metrics.json``).
FITTED_ON = "each fold's training participants (not validation, not test)"


@dataclasses.dataclass
class HarmonizationPlan:
    """How the fold loop harmonizes the CNN's inputs with voxel-wise ComBat.

    Attributes
    ----------
    site_column : str
        Participants column holding the site.
    covariates : list of str
        Covariates ComBat keeps (``age``, ``sex``: :func:`~neuroml.trust.harmonize.covariate_spec`).
    sex_levels : list of str
        The two sex levels when ``sex`` is kept, else empty.
    sites : ndarray of str
        Each cohort scan's site.
    cov : ndarray or None
        Each cohort scan's covariates.
    mask : ndarray of bool or None
        The template brain mask on the cohort's grid (None: the grid is not a standard one, and
        the voxels non-zero in every training scan are harmonized).
    method : str, default="combat"
    """

    site_column: str
    covariates: list
    sex_levels: list
    sites: np.ndarray
    cov: np.ndarray | None
    mask: np.ndarray | None
    method: str = "combat"

    @property
    def voxels(self):
        """Which voxels are harmonized, in words."""
        return "template brain mask" if self.mask is not None else "non-zero in every training scan"

    def record(self):
        """``config.json["harmonized_inputs"]``."""
        return {
            "method": self.method,
            "site_column": self.site_column,
            "covariates": self.covariates,
            "sex_levels": self.sex_levels,
            "fitted_on": FITTED_ON,
            "voxels": self.voxels,
            "file": f"fold-<k>/{FOLD_FILE}",
        }


def plan_harmonization(cohort, site_col):
    """The :class:`HarmonizationPlan` of a cohort; InputError when a participant has no site."""
    from neuroml.trust.harmonize import covariate_matrix, covariate_spec

    sites = site_of_everyone(cohort, site_col, "harmonize='combat'")
    names, levels = covariate_spec(cohort.table, cohort.participant_ids)
    mask = _input_mask(cohort.cache)
    return HarmonizationPlan(
        site_column=site_col,
        covariates=names,
        sex_levels=levels,
        sites=np.asarray([str(s) for s in sites], dtype=object),
        cov=covariate_matrix(
            cohort.table, cohort.participant_ids, names, levels, cohort.participants_path
        ),
        mask=mask,
    )


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


def harmonize_fold(plan, fold_dir, k, volumes, train_pos, fit, quiet=False):
    """Every cohort scan harmonized for fold ``k`` (float32, in cohort order) and a summary.

    ``volumes``: the cohort's :class:`~neuroml.workflows._train_setup.Volumes`. ``fit``:
    estimate ComBat on the fold's training scans (``train_pos``) and save it as
    ``fold_dir/combat.npz`` (rank 0; the other ranks read it); otherwise read that file.
    """
    from neuroml.trust.harmonize import VolumeComBat

    src, src_rows = volumes.volumes, volumes.rows
    path = fold_dir / FOLD_FILE
    if fit:
        if dist.is_main_process():
            cov = plan.cov
            hv = VolumeComBat(plan.mask, plan.site_column, plan.covariates, plan.sex_levels).fit(
                src,
                src_rows[train_pos],
                plan.sites[train_pos],
                None if cov is None else cov[train_pos],
            )
            hv.save(path)
        dist.barrier()
        if not dist.is_main_process():
            hv = VolumeComBat.load(path)
    else:
        hv = VolumeComBat.load(path)
    out = hv.transform(
        src, src_rows, plan.sites, plan.cov, label=f"fold {k} input ComBat", warn=not quiet
    )
    return out, {
        "file": f"fold-{k}/{FOLD_FILE}",
        "voxels": hv.n_voxels,
        "training_scans": hv.combat_.n_fit_,
        "sites": list(hv.combat_.sites_),
        "unseen_sites": list(hv.unseen_sites_),
    }


def saved_fold_inputs(plan, run_dir, splits, pids, volumes):
    """``fold -> (volumes, rows)``: every scan harmonized with the fold's saved ComBat."""
    pos = np.arange(len(pids))

    def inputs(k):
        train = next(f for f in splits if f["fold"] == k)["train"]
        out, _ = harmonize_fold(
            plan,
            run_dir / f"fold-{k}",
            k,
            volumes,
            pos[np.isin(pids, train)],
            fit=False,
            quiet=True,
        )
        return out, pos

    return inputs


def harmonization_summary(plan, folds, splits):
    """``metrics.json["harmonization"]``: what was harmonized, where it was fitted, per fold
    (``folds``: fold -> the summary :func:`harmonize_fold` returned)."""
    return {
        "method": plan.method,
        "cnn_inputs": True,
        "baseline_features": True,
        "site_column": plan.site_column,
        "covariates_kept": plan.covariates,
        "cnn_fitted_on": FITTED_ON,
        "voxels": plan.voxels,
        "baseline_fitted_on": "each fold's training and validation participants (region means)",
        "unseen_sites": "left unharmonized for that fold's model, with a warning",
        "folds": [{"fold": f["fold"], **(folds or {}).get(f["fold"], {})} for f in splits],
    }
