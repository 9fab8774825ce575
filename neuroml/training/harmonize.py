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

import logging

import numpy as np

from neuroml.errors import ConfigError

__all__ = ["ComBat"]

log = logging.getLogger("neuroml")


def _onehot(batch, levels):
    return (np.asarray(batch, dtype=object)[:, None] == np.asarray(levels, dtype=object)[None, :]).astype(float)


def _solve_eb(s, onehot, gamma_hat, delta_hat, conv=1e-4, max_iter=1000):
    """Parametric empirical Bayes estimates of (gamma*, delta*) per site, as in ComBat."""
    gamma_bar = gamma_hat.mean(1)
    t2 = gamma_hat.var(1, ddof=1)
    m, v = delta_hat.mean(1), delta_hat.var(1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (2 * v + m ** 2) / v
        b = (m * v + m ** 3) / v
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
            change = max(np.max(np.abs(g_new - g_old) / np.maximum(np.abs(g_old), 1e-12)),
                         np.max(np.abs(d_new - d_old) / np.maximum(np.abs(d_old), 1e-12)))
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

    def __init__(self, empirical_bayes=True, mean_only=False):
        self.empirical_bayes = empirical_bayes
        self.mean_only = mean_only

    @staticmethod
    def _check(X, batch, covariates, p=None):
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ConfigError(f"ComBat expects a 2D feature matrix (rows, features). Got shape {X.shape}.")
        if p is not None and X.shape[1] != p:
            raise ConfigError(f"ComBat was fitted on {p} features; got {X.shape[1]}.")
        batch = np.asarray([str(b) for b in batch], dtype=object)
        if len(batch) != len(X):
            raise ConfigError(f"ComBat: {len(X)} rows but {len(batch)} site labels.")
        if covariates is not None:
            covariates = np.asarray(covariates, dtype=float).reshape(len(X), -1)
            if not np.isfinite(covariates).all():
                raise ConfigError("ComBat covariates must be finite numbers (encode or drop missing values).")
        return X, batch, covariates

    def fit(self, X, batch, covariates=None):
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
            log.warning("ComBat: site(s) %s have a single training row: left out of the fit and unadjusted", small)
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
        self.unseen_sites_ = []
        return self

    def transform(self, X, batch, covariates=None):
        """Adjust rows with the effects estimated in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, p)
        """
        if not hasattr(self, "gamma_"):
            raise ConfigError("this ComBat is not fitted yet; call fit(X_train, sites_train) first")
        X, batch, cov = self._check(X, batch, covariates, p=len(self.alpha_))
        if (cov is None) != (self.beta_.shape[0] == 0) or (cov is not None and cov.shape[1] != self.beta_.shape[0]):
            raise ConfigError(f"ComBat was fitted with {self.beta_.shape[0]} covariate(s); transform got "
                              f"{0 if cov is None else cov.shape[1]}.")
        mean = self.alpha_ + (np.zeros_like(X) if cov is None else cov @ self.beta_)
        s = (X - mean) / self.sigma_
        out = X.copy()
        for lev in sorted(set(batch.tolist())):
            rows = batch == lev
            if lev not in self.sites_:
                if lev not in self.unseen_sites_:
                    self.unseen_sites_.append(lev)
                    log.warning("ComBat: site %r was not in the training rows; its rows are left unadjusted", lev)
                continue
            k = self.sites_.index(lev)
            out[rows] = (s[rows] - self.gamma_[k]) / np.sqrt(self.delta_[k]) * self.sigma_ + mean[rows]
        return out

    def fit_transform(self, X, batch, covariates=None):
        """``fit`` then ``transform`` the same rows (training data only)."""
        return self.fit(X, batch, covariates).transform(X, batch, covariates)
