"""ComBat site harmonization as a scikit-learn style transformer, fitted inside training folds.

Why not a package: neuroHarmonize 2.5.2 (the maintained wrapper) pins ``numpy<2`` and
``pandas<3`` and would downgrade the numpy that torch, MONAI and nilearn use here;
neuroCombat 0.2.12, which it wraps, has no estimator API (one call fits and adjusts the
same data), prints to stdout, and its reference-batch path calls ``np.int``, removed in
numpy 1.24. :class:`ComBat` implements the same model (Johnson, Li and Rabinovic 2007,
*Biostatistics* 8:118; Fortin et al. 2018, *NeuroImage* 167:104) with ``fit`` on training
data and ``transform`` of any data, so validation and test rows never inform the
estimates.

Model, per feature ``j``: ``x_ij = alpha_j + C_i beta_j + gamma_bj + delta_bj * eps_ij``
with ``b`` the site of row ``i`` and ``C`` optional covariates to preserve (e.g. age,
sex; never the diagnosis, which is unknown for test rows). The site shifts ``gamma`` and
scales ``delta`` are shrunk towards their across-feature means with parametric
empirical Bayes; the adjusted data is
``(x - alpha - C beta - gamma*) / delta* * sigma + alpha + C beta``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from neuroml.errors import ConfigError

if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd

    from neuroml.runs.folder import Run

_P = TypeVar("_P", bound="str | os.PathLike[str]")

__all__ = [
    "ComBat",
    "VolumeComBat",
    "InputHarmonization",
    "covariate_spec",
    "covariate_matrix",
    "FOLD_FILE",
]

log = logging.getLogger("neuroml")


def _onehot(batch, levels):
    return (
        np.asarray(batch, dtype=object)[:, None] == np.asarray(levels, dtype=object)[None, :]
    ).astype(float)


def _solve_eb(s, onehot, gamma_hat, delta_hat, conv=1e-4, max_iter=1000):
    """Parametric empirical Bayes estimates of (gamma*, delta*) per site, as in ComBat."""
    gamma_bar = gamma_hat.mean(1)
    t2 = gamma_hat.var(1, ddof=1)
    m, v = delta_hat.mean(1), delta_hat.var(1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (2 * v + m**2) / v
        b = (m * v + m**3) / v
    g_star, d_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
    for k in range(onehot.shape[1]):
        rows = s[onehot[:, k] > 0]
        n = len(rows)
        g_old, d_old = gamma_hat[k].copy(), delta_hat[k].copy()
        if not (np.isfinite(t2[k]) and t2[k] > 0 and np.isfinite(a[k]) and np.isfinite(b[k])):
            g_star[k], d_star[k] = g_old, d_old  # no spread across features: no shrinkage
            continue
        for _ in range(max_iter):
            g_new = (t2[k] * n * gamma_hat[k] + d_old * gamma_bar[k]) / (t2[k] * n + d_old)
            sum2 = ((rows - g_new) ** 2).sum(0)
            d_new = (0.5 * sum2 + b[k]) / (n / 2.0 + a[k] - 1.0)
            change = max(
                np.max(np.abs(g_new - g_old) / np.maximum(np.abs(g_old), 1e-12)),
                np.max(np.abs(d_new - d_old) / np.maximum(np.abs(d_old), 1e-12)),
            )
            g_old, d_old = g_new, d_new
            if change < conv:
                break
        g_star[k], d_star[k] = g_old, d_old
    return g_star, d_star


class ComBat:
    """Remove additive and multiplicative site effects from features (ComBat).

    Parameters
    ----------
    empirical_bayes : bool, default=True
        Shrink the per-site estimates with parametric empirical Bayes (plain per-site
        location/scale adjustment when False).
    mean_only : bool, default=False
        Adjust only the site means (keep each site's variance).

    Attributes
    ----------
    sites_ : list of str
        Sites seen in ``fit``.
    n_fit_ : int
        Rows used in ``fit``.
    alpha_, sigma_ : ndarray of shape (p,)
        Grand mean and pooled standard deviation of each feature.
    beta_ : ndarray of shape (q, p)
        Covariate coefficients.
    gamma_, delta_ : ndarray of shape (n_sites, p)
        Shrunk site shifts and variances (standardised units).

    Notes
    -----
    ``transform`` of a site not seen in ``fit`` (e.g. the held-out site of
    leave-one-site-out) cannot be adjusted from training data: those rows are only
    standardised and put back (left as they are) and the site is recorded in
    ``unseen_sites_``, with a warning.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 5)) + np.repeat([[0.0], [3.0]], 20, axis=0)
    >>> site = ["A"] * 20 + ["B"] * 20
    >>> y = ComBat().fit(x, site).transform(x, site)
    >>> bool(abs(y[:20].mean() - y[20:].mean()) < 0.2)
    True
    """

    def __init__(self, empirical_bayes: bool = True, mean_only: bool = False) -> None:
        self.empirical_bayes = empirical_bayes
        self.mean_only = mean_only

    @staticmethod
    def _check(
        X: npt.ArrayLike,
        batch: Iterable[Any],
        covariates: npt.ArrayLike | None,
        p: int | None = None,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any], npt.NDArray[np.float64] | None]:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ConfigError(
                f"ComBat expects a 2D feature matrix (rows, features). Got shape {X.shape}."
            )
        if p is not None and X.shape[1] != p:
            raise ConfigError(f"ComBat was fitted on {p} features; got {X.shape[1]}.")
        batch = np.asarray([str(b) for b in batch], dtype=object)
        if len(batch) != len(X):
            raise ConfigError(f"ComBat: {len(X)} rows but {len(batch)} site labels.")
        if covariates is not None:
            covariates = np.asarray(covariates, dtype=float).reshape(len(X), -1)
            if not np.isfinite(covariates).all():
                raise ConfigError(
                    "ComBat covariates must be finite numbers (encode or drop missing values)."
                )
        return X, batch, covariates

    def fit(
        self,
        X: npt.ArrayLike,
        batch: Sequence[Any] | npt.NDArray[Any],
        covariates: npt.ArrayLike | None = None,
    ) -> ComBat:
        """Estimate the site effects from training rows.

        Parameters
        ----------
        X : array-like of shape (n, p)
        batch : sequence of str, length n
            Site of each row. A site with a single row cannot be estimated: its row is left
            out of the fit (with a warning) and its rows are left unadjusted by ``transform``.
        covariates : array-like of shape (n, q), optional
            Numeric covariates whose effects are kept.

        Returns
        -------
        self
        """
        X, batch, cov = self._check(X, batch, covariates)
        counts = {s: int(np.sum(batch == s)) for s in sorted(set(batch.tolist()))}
        small = sorted(s for s, c in counts.items() if c < 2)
        if len(small) == len(counts):
            raise ConfigError(f"ComBat needs at least two rows of some site; got {counts}")
        if small:
            log.warning(
                "ComBat: site(s) %s have a single training row: left out of the fit and unadjusted",
                small,
            )
            keep = ~np.isin(batch, small)
            X, batch, cov = X[keep], batch[keep], None if cov is None else cov[keep]
        levels = sorted(set(batch.tolist()))
        onehot = _onehot(batch, levels)
        design = onehot if cov is None else np.hstack([onehot, cov])
        coef = np.linalg.lstsq(design, X, rcond=None)[0]
        k = len(levels)
        alpha = (onehot.sum(0) / len(X)) @ coef[:k]
        beta = coef[k:] if cov is not None else np.zeros((0, X.shape[1]))
        var = ((X - design @ coef) ** 2).mean(0)
        sigma = np.sqrt(np.where(var > 0, var, 1.0))
        s = (X - alpha - (0 if cov is None else cov @ beta)) / sigma
        gamma_hat = np.stack([s[batch == lev].mean(0) for lev in levels])
        delta_hat = np.stack([s[batch == lev].var(0, ddof=1) for lev in levels])
        delta_hat = np.where(delta_hat > 0, delta_hat, 1.0)
        if self.mean_only:
            delta_hat = np.ones_like(delta_hat)
        if self.empirical_bayes:
            gamma, delta = _solve_eb(s, onehot, gamma_hat, delta_hat)
            if self.mean_only:
                delta = np.ones_like(delta)
        else:
            gamma, delta = gamma_hat, delta_hat
        self.sites_, self.n_fit_ = levels, int(len(X))
        self.alpha_, self.sigma_, self.beta_ = alpha, sigma, beta
        self.gamma_, self.delta_ = gamma, delta
        self.unseen_sites_: list[str] = []
        return self

    def transform(
        self,
        X: npt.ArrayLike,
        batch: Sequence[Any] | npt.NDArray[Any],
        covariates: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """Adjust rows with the effects estimated in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, p)
        """
        if not hasattr(self, "gamma_"):
            raise ConfigError("this ComBat is not fitted yet; call fit(X_train, sites_train) first")
        X, batch, cov = self._check(X, batch, covariates, p=len(self.alpha_))
        if (cov is None) != (self.beta_.shape[0] == 0) or (
            cov is not None and cov.shape[1] != self.beta_.shape[0]
        ):
            raise ConfigError(
                f"ComBat was fitted with {self.beta_.shape[0]} covariate(s); transform got "
                f"{0 if cov is None else cov.shape[1]}."
            )
        mean = self.alpha_ + (np.zeros_like(X) if cov is None else cov @ self.beta_)
        s = (X - mean) / self.sigma_
        out = X.copy()
        for lev in sorted(set(batch.tolist())):
            rows = batch == lev
            if lev not in self.sites_:
                if lev not in self.unseen_sites_:
                    self.unseen_sites_.append(lev)
                    log.warning(
                        "ComBat: site %r was not in the training rows; its rows are left unadjusted",
                        lev,
                    )
                continue
            k = self.sites_.index(lev)
            out[rows] = (s[rows] - self.gamma_[k]) / np.sqrt(self.delta_[k]) * self.sigma_ + mean[
                rows
            ]
        return out

    def fit_transform(
        self,
        X: npt.ArrayLike,
        batch: Sequence[Any] | npt.NDArray[Any],
        covariates: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """``fit`` then ``transform`` the same rows (training data only)."""
        return self.fit(X, batch, covariates).transform(X, batch, covariates)


# ---------------------------------------------------------------- volumes (the CNN's inputs)

#: File of a fold's input harmonization in the run folder (``RUN/fold-<k>/combat.npz``).
FOLD_FILE = "combat.npz"
_FILE_FORMAT = 1
_MISSING = ("", "nan", "n/a", "none")


def covariate_spec(table: pd.DataFrame, participant_ids: list[str]) -> tuple[list[str], list[str]]:
    """Which of ``age`` and ``sex`` ComBat keeps for a cohort, and the two sex levels.

    A column is kept when present, complete for every participant and not constant (sex:
    exactly two levels), as :func:`neuroml.trust.checks` does for the baseline.

    Returns
    -------
    names : list of str
    sex_levels : list of str
        Sorted; ``sex`` is coded 1 for the second. Empty when sex is not kept.
    """
    import pandas as pd

    names, sex_levels = [], []
    if "age" in table.columns:
        age = pd.to_numeric(table["age"].reindex(participant_ids), errors="coerce").to_numpy(
            dtype=float
        )
        if np.isfinite(age).all() and np.ptp(age) > 0:
            names.append("age")
    if "sex" in table.columns:
        sex = table["sex"].reindex(participant_ids).fillna("n/a").astype(str).str.strip().to_numpy()
        levels = sorted(set(sex.tolist()))
        if len(levels) == 2 and not set(s.lower() for s in levels) & set(_MISSING):
            names.append("sex")
            sex_levels = levels
    return names, sex_levels


def covariate_matrix(
    table: pd.DataFrame,
    participant_ids: Sequence[str],
    names: Sequence[str],
    sex_levels: Sequence[str] = (),
    where: str | os.PathLike[str] | None = None,
) -> npt.NDArray[np.float64] | None:
    """Covariates of ``participant_ids`` (rows) as ComBat takes them: age in years, sex 0/1.

    Raises
    ------
    InputError
        If a column is missing, or a participant has no row, no age or a sex outside ``sex_levels``.
    """
    import pandas as pd

    from neuroml.errors import InputError

    if not names:
        return None
    pids = list(participant_ids)
    absent = sorted(set(pids) - set(table.index))
    if absent:
        raise InputError(
            f"no row for {absent[:5]}: the run's ComBat harmonization needs their site and "
            f"{', '.join(names)}",
            where,
        )
    cols = []
    for name in names:
        if name not in table.columns:
            raise InputError(
                f"column {name!r} missing: the run's ComBat harmonization keeps {name} as a covariate",
                where,
            )
        values = table[name].reindex(pids)
        if name == "age":
            col = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(col)
        else:
            text = values.astype(str).str.strip().to_numpy()
            bad = ~np.isin(text, list(sex_levels))
            col = (text == sex_levels[-1]).astype(float)
        if bad.any():
            who = sorted({p for p, b in zip(pids, bad) if b})
            raise InputError(
                f"{name} missing or not one of the training values for {who[:5]} (training "
                f"{'levels ' + str(list(sex_levels)) if name == 'sex' else 'ages were numbers'}); the "
                "run's ComBat harmonization needs it",
                where,
            )
        cols.append(col)
    return np.stack(cols, axis=1)


class VolumeComBat:
    """Voxel-wise :class:`ComBat` of volumes inside a mask: fitted on a fold's training scans,
    applied to any scan of a known site (the CNN's inputs with ``harmonize="combat"``).

    Parameters
    ----------
    mask : ndarray of bool, optional
        Voxels to harmonize, shape ``(X, Y, Z)`` (repeated over channels) or the shape of one
        volume. ``fit`` keeps those that vary across the training scans; by default every
        voxel non-zero in every training scan. Other voxels are left as they are.
    site_column : str, default="site"
        ``participants.tsv`` column holding the site (recorded for prediction).
    covariates : sequence of str, default=()
        Covariates kept (``"age"``, ``"sex"``; see :func:`covariate_matrix`).
    sex_levels : sequence of str, default=()
        The two sex values, coded 0 and 1.

    Attributes
    ----------
    mask_ : ndarray of bool
        Voxels harmonized (shape of one volume).
    combat_ : ComBat
        The fitted estimator (its parameters rounded to float32, as saved).
    unseen_sites_ : list of str
        Sites met by ``transform`` but not by ``fit``: left unadjusted, with a warning.
    """

    def __init__(
        self,
        mask: npt.ArrayLike | None = None,
        site_column: str = "site",
        covariates: Sequence[str] = (),
        sex_levels: Sequence[str] = (),
    ) -> None:
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        self.site_column, self.covariates, self.sex_levels = (
            str(site_column),
            list(covariates),
            list(sex_levels),
        )

    def _full_mask(self, vshape):
        if self.mask is None:
            return None
        if self.mask.shape == tuple(vshape):
            return self.mask.copy()
        if self.mask.shape == tuple(vshape[-3:]):
            return np.broadcast_to(self.mask, vshape).copy()
        raise ConfigError(f"ComBat mask has shape {self.mask.shape}; the volumes {tuple(vshape)}")

    def fit(
        self,
        volumes: npt.NDArray[Any],
        rows: Sequence[int] | npt.NDArray[np.integer[Any]],
        sites: Sequence[Any] | npt.NDArray[Any],
        covariates: npt.ArrayLike | None = None,
    ) -> VolumeComBat:
        """Estimate the site effects of every harmonized voxel from ``volumes[rows]`` (training scans only).

        Parameters
        ----------
        volumes : array-like of shape (N, X, Y, Z) or (N, C, X, Y, Z)
        rows : sequence of int
        sites : sequence of str, one per row
        covariates : ndarray of shape (len(rows), q), optional

        Returns
        -------
        self
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) < 2:
            raise ConfigError(f"ComBat needs at least two training scans; got {len(rows)}")
        vshape = tuple(np.shape(volumes)[1:])
        mask = self._full_mask(vshape)
        x = np.stack([np.asarray(volumes[r], dtype=np.float32).reshape(-1) for r in rows])
        if mask is None:
            mask = (x != 0).all(0).reshape(vshape)
        flat = mask.reshape(-1)
        x = x[:, flat]
        keep = x.min(0) < x.max(
            0
        )  # a voxel constant in training (e.g. outside the head) has no site effect
        flat[np.flatnonzero(flat)[~keep]] = False
        if not flat.any():
            raise ConfigError("ComBat: no voxel of the mask varies across the training scans")
        self.combat_ = ComBat().fit(x[:, keep], sites, covariates)
        for name in (
            "alpha_",
            "sigma_",
            "beta_",
            "gamma_",
            "delta_",
        ):  # the precision saved, used alike
            setattr(
                self.combat_,
                name,
                getattr(self.combat_, name).astype(np.float32).astype(np.float64),
            )
        self.mask_ = flat.reshape(vshape)
        self.unseen_sites_: list[str] = []
        return self

    @property
    def n_voxels(self) -> int:
        """Number of voxels harmonized."""
        return int(self.mask_.sum())

    def transform(
        self,
        volumes: npt.NDArray[Any],
        rows: Sequence[int] | npt.NDArray[np.integer[Any]],
        sites: Sequence[Any] | npt.NDArray[Any],
        covariates: npt.ArrayLike | None = None,
        chunk: int = 16,
        label: str = "ComBat",
        warn: bool = True,
    ) -> npt.NDArray[np.float32]:
        """Harmonized float32 copies of ``volumes[rows]`` (voxels outside ``mask_`` as they are).

        Rows of a site not seen in ``fit`` are left unadjusted and the site is named in a
        warning (once per site) and in ``unseen_sites_``.

        Returns
        -------
        ndarray of shape (len(rows), *volume shape), float32
        """
        if not hasattr(self, "mask_"):
            raise ConfigError("this VolumeComBat is not fitted yet; call fit first")
        rows = np.asarray(rows, dtype=np.int64)
        vshape = tuple(np.shape(volumes)[1:])
        if vshape != self.mask_.shape:
            raise ConfigError(
                f"ComBat was fitted on volumes of shape {self.mask_.shape}; got {vshape}"
            )
        sites = np.asarray([str(s) for s in sites], dtype=object)
        if len(sites) != len(rows):
            raise ConfigError(f"ComBat: {len(rows)} volumes but {len(sites)} site labels")
        if not len(rows):  # e.g. no validation participants
            return np.empty((0, *vshape), dtype=np.float32)
        cov = (
            None
            if covariates is None
            else np.asarray(covariates, dtype=float).reshape(len(rows), -1)
        )
        for site in sorted(set(sites.tolist()) - set(self.combat_.sites_)):
            if site not in self.unseen_sites_:
                self.unseen_sites_.append(site)
                if warn:
                    log.warning(
                        "%s: site %r was not estimated from the training scans (none or a single one; "
                        "estimated: %s): its scans are left unharmonized for this model",
                        label,
                        site,
                        ", ".join(self.combat_.sites_),
                    )
        self.combat_.unseen_sites_ = list(self.unseen_sites_)  # warned above, once
        out = np.empty((len(rows), *vshape), dtype=np.float32)
        flat, chunk = self.mask_.reshape(-1), max(1, int(chunk))
        for start in range(0, len(rows), chunk):
            sel = slice(start, start + chunk)
            block = np.stack(
                [np.asarray(volumes[r], dtype=np.float32).reshape(-1) for r in rows[sel]]
            )
            block[:, flat] = self.combat_.transform(
                block[:, flat], sites[sel], None if cov is None else cov[sel]
            )
            out[sel] = block.reshape(-1, *vshape)
        return out

    def save(self, path: _P) -> _P:
        """Write the fitted parameters to ``path`` (``.npz``, atomically)."""
        from neuroml._utils.fileio import atomic_path

        c = self.combat_
        arrays = {
            "format": np.int64(_FILE_FORMAT),
            "mask": self.mask_,
            **{
                k: getattr(c, k + "_").astype(np.float32)
                for k in ("alpha", "sigma", "beta", "gamma", "delta")
            },
            "sites": np.asarray(c.sites_, dtype=str),
            "n_fit": np.int64(c.n_fit_),
            "site_column": np.asarray(self.site_column, dtype=str),
            "covariates": np.asarray(self.covariates, dtype=str).reshape(-1),
            "sex_levels": np.asarray(self.sex_levels, dtype=str).reshape(-1),
        }
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VolumeComBat:
        """Read a file written by :meth:`save` (no pickled objects are accepted).

        Raises
        ------
        InputError
            If the file is missing, unreadable or not a neuroml ComBat file.
        """
        from neuroml.errors import InputError

        path = Path(path)
        if not path.is_file():
            raise InputError(
                "ComBat parameters not found (the fold was trained on harmonized inputs; retrain "
                "it with resume=True)",
                path,
            )
        keys = (
            "format",
            "mask",
            "alpha",
            "sigma",
            "beta",
            "gamma",
            "delta",
            "sites",
            "n_fit",
            "site_column",
            "covariates",
            "sex_levels",
        )
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in keys if k not in npz.files]
                if missing:
                    raise InputError(f"not a neuroml ComBat file (lacks {missing})", path)
                d = {k: npz[k] for k in keys}
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged zip raises BadZipFile, ValueError, OSError, EOFError
            raise InputError(
                f"not a readable ComBat file ({type(exc).__name__}: {str(exc)[:200]})", path
            ) from None
        if int(d["format"]) != _FILE_FORMAT:
            raise InputError(f"ComBat file format {int(d['format'])} is not {_FILE_FORMAT}", path)
        p, k = d["alpha"].shape[0], len(d["sites"])
        if (
            d["mask"].dtype != bool
            or int(d["mask"].sum()) != p
            or d["sigma"].shape != (p,)
            or d["gamma"].shape != (k, p)
            or d["delta"].shape != (k, p)
            or d["beta"].shape[1:] != (p,)
            or d["beta"].shape[0] != len(d["covariates"])
        ):
            raise InputError("inconsistent ComBat file (array shapes do not match)", path)
        self = cls(
            site_column=str(d["site_column"]),
            covariates=[str(s) for s in d["covariates"]],
            sex_levels=[str(s) for s in d["sex_levels"]],
        )
        c = ComBat()
        for name in ("alpha", "sigma", "beta", "gamma", "delta"):
            setattr(c, name + "_", d[name].astype(np.float64))
        c.sites_, c.n_fit_, c.unseen_sites_ = [str(s) for s in d["sites"]], int(d["n_fit"]), []
        self.combat_, self.mask_, self.unseen_sites_ = c, d["mask"], []
        return self


class InputHarmonization:
    """The per-fold input ComBat of a run trained with ``harmonize="combat"``, applied to the
    scans of given participants (prediction, attribution).

    Each fold model gets its scans harmonized with the parameters fitted on that fold's
    training participants (``RUN/fold-<k>/combat.npz``). The site and the covariates come
    from ``participants.tsv``; a participant without a row there, or without a kept
    covariate, is refused (:class:`~neuroml.errors.InputError`); a site the fold's
    training participants did not hold is left unharmonized for that fold's model, with
    a warning (as training does for the held-out site of leave-one-site-out).

    Parameters
    ----------
    run : neuroml.runs.Run
    participant_ids : sequence of str
    deriv_dir : str or Path
        Derivatives of the scans (their raw dataset's ``participants.tsv`` is the default).
    participants : str or Path, optional
        ``participants.tsv`` holding the participants' site (and age, sex).
    """

    def __init__(
        self,
        run: Run,
        participant_ids: Sequence[str],
        deriv_dir: str | os.PathLike[str] | None = None,
        participants: str | os.PathLike[str] | None = None,
    ) -> None:
        from neuroml.data import participants_file
        from neuroml.errors import InputError
        from neuroml.io.bids import read_participants

        self.run, self.spec = run, dict(run.config["harmonized_inputs"])
        pids = list(dict.fromkeys(participant_ids))
        if participants is not None:
            path = participants_file(cast("str | os.PathLike[str]", deriv_dir), participants)
            table = read_participants(path)
        else:  # the data's own participants.tsv, else the training one: the first listing every subject
            found, error = [], None
            try:
                found.append(participants_file(cast("str | os.PathLike[str]", deriv_dir)))
            except InputError as exc:
                error = exc
            trained = run.config.get("participants")
            if trained and Path(trained).is_file() and Path(trained) not in found:
                found.append(Path(trained))
            if not found:
                raise cast(InputError, error)
            tables = [(p, read_participants(p)) for p in found]
            path, table = next(((p, t) for p, t in tables if set(pids) <= set(t.index)), tables[0])
        column = self.spec["site_column"]
        if column not in table.columns:
            raise InputError(
                f"column {column!r} missing: the run was trained on ComBat-harmonized inputs and needs "
                "each subject's site (another file: --participants TSV, or participants=... in "
                "Python)",
                path,
            )
        absent = sorted(set(pids) - set(table.index))
        if absent:
            raise InputError(
                f"no row for {absent[:5]}: the run was trained on ComBat-harmonized inputs and needs "
                "each subject's site"
                + (f" and {', '.join(self.spec['covariates'])}" if self.spec["covariates"] else ""),
                path,
            )
        from neuroml.trust.confounds import is_missing

        unknown = [p for p in pids if is_missing(table.at[p, column])]
        if unknown:
            raise InputError(
                f"{column!r} is missing for {unknown[:5]}: the run was trained on ComBat-harmonized "
                "inputs and needs each subject's site",
                path,
            )
        cov = covariate_matrix(table, pids, self.spec["covariates"], self.spec["sex_levels"], path)
        self.path = path
        self.site = {p: str(table.at[p, column]) for p in pids}
        self.cov: dict[str, Any] = {p: None if cov is None else cov[i] for i, p in enumerate(pids)}
        self._folds: dict[int, VolumeComBat] = {}

    def fold(self, k: int) -> VolumeComBat:
        """The fold's :class:`VolumeComBat` (read once)."""
        if k not in self._folds:
            self._folds[k] = VolumeComBat.load(self.run.run_dir / f"fold-{k}" / FOLD_FILE)
        return self._folds[k]

    def apply(
        self,
        k: int,
        volumes: npt.NDArray[Any],
        rows: Sequence[int] | npt.NDArray[np.integer[Any]],
        participant_ids: Sequence[str],
    ) -> npt.NDArray[np.float32]:
        """``volumes[rows]`` (scans of ``participant_ids``) harmonized for fold ``k``'s model (float32)."""
        cov = (
            None
            if not self.spec["covariates"]
            else np.stack([self.cov[p] for p in participant_ids])
        )
        return self.fold(k).transform(
            volumes,
            rows,
            [self.site[p] for p in participant_ids],
            cov,
            label=f"fold {k} input ComBat",
        )
