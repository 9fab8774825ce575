"""Per-voxel maps of a BOLD series: mean, ALFF, fALFF, ReHo and seed connectivity.

Each map has an array function doing the work on ``(X, Y, Z, T)`` data (tested on small
hand-computed cases) and takes a brain mask; voxels outside the mask are 0.

Definitions
-----------
Amplitude spectrum: ``amp(f) = 2 |FFT(x)(f)| / T`` for the frequencies ``0 < f <= 1 / (2 TR)``
(so a sinusoid of amplitude ``A`` at a frequency of the FFT grid has ``amp = A`` there).

- ALFF (Zang et al. 2007): the mean of ``amp(f)`` over the frequencies in ``band``.
- fALFF (Zou et al. 2008): the sum of ``amp(f)`` in ``band`` over the sum for all
  ``f > 0``.
- ReHo (Zang et al. 2004): Kendall's coefficient of concordance ``W`` of the time series of
  a voxel and its neighbours inside the mask (27-voxel cube by default)::

      W = (12 * sum_t R_t**2 - 3 K**2 T (T + 1)**2) / (K**2 (T**3 - T))

  where ``R_t`` is the sum over the ``K`` voxels of the rank of time point ``t``
  (average ranks for ties, no tie correction).
- Seed connectivity: Fisher ``z = arctanh(r)`` of the Pearson correlation between each
  voxel and the mean time series of the seed voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from neuroml.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_BAND",
    "check_band",
    "amplitude_spectrum",
    "alff_array",
    "falff_array",
    "reho_array",
    "seed_connectivity_array",
    "sphere_mask",
    "zscore_in_mask",
]

log = logging.getLogger("neuroml")

#: Default low-frequency band of ALFF/fALFF (Hz).
DEFAULT_BAND = (0.01, 0.08)


def _check_4d(data, mask):
    data = np.asarray(data)
    if data.ndim != 4:
        raise InputError(f"expected a 4D (X, Y, Z, T) array, got shape {data.shape}")
    if data.shape[3] < 3:
        raise InputError(f"a time series needs at least 3 volumes, got {data.shape[3]}")
    if mask is None:
        mask = np.ones(data.shape[:3], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape[:3]:
        raise InputError(f"mask shape {mask.shape} differs from the image grid {data.shape[:3]}")
    return data, mask


def _check_tr(tr):
    if (
        isinstance(tr, bool)
        or not isinstance(tr, (int, float, np.floating, np.integer))
        or not np.isfinite(tr)
        or tr <= 0
    ):
        raise InputError(f"repetition time must be a positive number of seconds, got {tr!r}")
    return float(tr)


def amplitude_spectrum(
    series: npt.ArrayLike, tr: float
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[Any]]:
    """One-sided amplitude spectrum of time series along the last axis.

    Parameters
    ----------
    series : ndarray of shape (..., T)
    tr : float
        Repetition time (s).

    Returns
    -------
    freqs : ndarray of shape (F,)
        Frequencies ``> 0`` (Hz).
    amp : ndarray of shape (..., F)
        ``2 |FFT| / T``; the linear trend should have been removed beforehand.

    Examples
    --------
    >>> t = np.arange(100) * 2.0
    >>> f, a = amplitude_spectrum(3 * np.sin(2 * np.pi * 0.05 * t), 2.0)
    >>> round(float(a[np.argmin(abs(f - 0.05))]), 6)
    3.0
    """
    tr = _check_tr(tr)
    series = np.asarray(series, dtype=np.float64)
    n = series.shape[-1]
    freqs = np.fft.rfftfreq(n, d=tr)
    amp = 2.0 * np.abs(np.fft.rfft(series, axis=-1)) / n
    if n % 2 == 0:
        amp[..., -1] /= 2.0  # the Nyquist bin appears once
    return freqs[1:], amp[..., 1:]


def check_band(
    band: Sequence[float], tr: float, where: str | None = None, warn: bool = True
) -> tuple[float, float]:
    """The ALFF band ``(low, high)`` checked against the Nyquist frequency ``1 / (2 TR)``.

    Returns ``(low, high)`` with ``high`` cut at the Nyquist frequency (logging a warning,
    naming ``where``, when ``warn``: fALFF is then not comparable with shorter-TR scans).

    Raises
    ------
    ConfigError
        When ``low`` is at or above the Nyquist frequency (no frequency of the band can be
        seen at this TR), naming ``where`` and the TR.

    Examples
    --------
    >>> check_band((0.01, 0.08), 2.0)
    (0.01, 0.08)
    """
    tr = _check_tr(tr)
    lo, hi = (float(b) for b in band)
    if not 0 <= lo < hi:
        raise InputError(f"frequency band must be (low, high) with 0 <= low < high, got {band!r}")
    nyquist = 0.5 / tr
    src = f"{where}: " if where else ""
    if lo >= nyquist:
        raise ConfigError(
            f"{src}the ALFF band {lo:g}-{hi:g} Hz lies above the Nyquist frequency {nyquist:.4g} Hz "
            f"of TR {tr:g} s, so ALFF and fALFF cannot be computed; lower the 'band' parameter"
        )
    if hi > nyquist * (1 + 1e-9):
        if warn:
            log.warning(
                "%sthe ALFF band %g-%g Hz is cut at the Nyquist frequency %.4g Hz of TR %g s: ALFF covers "
                "%g-%.4g Hz only and fALFF is not comparable with shorter-TR scans",
                src,
                lo,
                hi,
                nyquist,
                tr,
                lo,
                nyquist,
            )
        hi = nyquist
    return lo, hi


def _band_sums(data, mask, tr, band):
    lo, hi = check_band(band, tr, warn=False)
    freqs, amp = amplitude_spectrum(data[mask], tr)
    sel = (freqs >= lo) & (freqs <= hi)
    if not sel.any():
        raise InputError(
            f"no frequency of this series ({len(data[0, 0, 0]) if data.size else 0} volumes, "
            f"TR {tr:g} s, resolution {freqs[0]:.4g} Hz) lies in the band {lo:g}-{hi:g} Hz"
        )
    return amp[:, sel], amp


def alff_array(
    data: npt.NDArray[Any],
    tr: float,
    band: Sequence[float] = DEFAULT_BAND,
    mask: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float32]:
    """ALFF: mean amplitude of the spectrum in ``band`` (see the module docstring).

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
        Detrended (and confound-regressed, not band-passed) BOLD.
    tr : float
        Repetition time (s).
    band : (float, float), default=(0.01, 0.08)
    mask : ndarray of bool, shape (X, Y, Z), optional

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)

    Examples
    --------
    >>> t = np.arange(100) * 2.0
    >>> x = np.zeros((2, 3, 4, 100)); x[1, 2, 3] = np.sin(2 * np.pi * 0.05 * t)
    >>> out = alff_array(x, 2.0)
    >>> out.shape, float(out[0, 0, 0])
    ((2, 3, 4), 0.0)
    """
    data, mask = _check_4d(data, mask)
    tr = _check_tr(tr)
    out = np.zeros(mask.shape, dtype=np.float32)
    if mask.any():
        in_band, _ = _band_sums(data, mask, tr, band)
        out[mask] = in_band.mean(axis=1)
    return out


def falff_array(
    data: npt.NDArray[Any],
    tr: float,
    band: Sequence[float] = DEFAULT_BAND,
    mask: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float32]:
    """fALFF: amplitude in ``band`` over amplitude at every frequency > 0 (0 for a flat series).

    Same parameters as :func:`alff_array`; returns float32 in [0, 1].
    """
    data, mask = _check_4d(data, mask)
    tr = _check_tr(tr)
    out = np.zeros(mask.shape, dtype=np.float32)
    if mask.any():
        in_band, amp = _band_sums(data, mask, tr, band)
        total = amp.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[mask] = np.where(
                total > 0, in_band.sum(axis=1) / np.where(total > 0, total, 1), 0.0
            )
    return out


def reho_array(
    data: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None, neighbourhood: int = 27
) -> npt.NDArray[np.float32]:
    """ReHo: Kendall's W of each voxel's time series with its in-mask neighbours.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
    mask : ndarray of bool, shape (X, Y, Z), optional
    neighbourhood : {27, 19, 7}, default=27
        Cube, cube without corners, or faces only.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        0 outside the mask and where fewer than 2 voxels are available.
    """
    from scipy.ndimage import convolve
    from scipy.stats import rankdata

    data, mask = _check_4d(data, mask)
    if neighbourhood not in (7, 19, 27):
        raise InputError(f"ReHo neighbourhood must be 7, 19 or 27 voxels, got {neighbourhood!r}")
    n = data.shape[3]
    kernel = np.ones((3, 3, 3))
    off = np.abs(np.indices((3, 3, 3)) - 1).sum(0)
    if neighbourhood == 19:
        kernel[off == 3] = 0
    elif neighbourhood == 7:
        kernel[off > 1] = 0
    ranks = np.zeros(data.shape, dtype=np.float64)
    ranks[mask] = rankdata(data[mask], axis=1)
    k = convolve(mask.astype(np.float64), kernel, mode="constant")
    sum_sq = np.zeros(mask.shape, dtype=np.float64)
    for t in range(n):
        r_t = convolve(ranks[..., t], kernel, mode="constant")
        sum_sq += r_t**2
    out = np.zeros(mask.shape, dtype=np.float32)
    ok = mask & (k >= 2)
    kk = k[ok]
    w = (12.0 * sum_sq[ok] - 3.0 * kk**2 * n * (n + 1) ** 2) / (kk**2 * (n**3 - n))
    out[ok] = w
    return out


def sphere_mask(
    affine: npt.ArrayLike, shape: Sequence[int], centre_mm: Sequence[float], radius_mm: float
) -> npt.NDArray[np.bool_]:
    """Boolean mask of the voxels within ``radius_mm`` of a point in world mm.

    Examples
    --------
    >>> int(sphere_mask(np.eye(4), (5, 5, 5), (2, 2, 2), 1.0).sum())
    7
    """
    import nibabel as nib

    ijk = np.indices(tuple(shape)).reshape(3, -1).T
    xyz = nib.affines.apply_affine(np.asarray(affine, float), ijk)
    d = np.linalg.norm(xyz - np.asarray(centre_mm, float), axis=1)
    return (d <= float(radius_mm)).reshape(tuple(shape))


def seed_connectivity_array(
    data: npt.NDArray[Any],
    seed_mask: npt.NDArray[np.bool_],
    mask: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float32]:
    """Fisher-z correlation of every voxel with the mean series of ``seed_mask`` voxels.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z, T)
        Cleaned (band-passed) BOLD.
    seed_mask : ndarray of bool, shape (X, Y, Z)
    mask : ndarray of bool, shape (X, Y, Z), optional

    Returns
    -------
    ndarray of float32
        ``arctanh(r)`` with ``r`` clipped to +-0.999999; 0 outside the mask and for flat voxels.

    Raises
    ------
    InputError
        If the seed has no voxel inside the mask or its series is flat.
    """
    data, mask = _check_4d(data, mask)
    seed_mask = np.asarray(seed_mask, dtype=bool) & mask
    if not seed_mask.any():
        raise InputError("the seed has no voxel inside the brain mask")
    seed = data[seed_mask].astype(np.float64).mean(axis=0)
    seed = seed - seed.mean()
    if not np.linalg.norm(seed) > 0:
        raise InputError("the seed's mean time series is flat")
    seed /= np.linalg.norm(seed)
    x = data[mask].astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1)
    r = np.where(norm > 0, (x @ seed) / np.where(norm > 0, norm, 1), 0.0)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[mask] = np.arctanh(np.clip(r, -0.999999, 0.999999))
    return out


def zscore_in_mask(volume: npt.NDArray[Any], mask: npt.NDArray[np.bool_]) -> npt.NDArray[Any]:
    """``(v - mean) / std`` over the mask, 0 outside (unchanged but centred if std is 0)."""
    volume = np.asarray(volume, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(volume.shape, dtype=np.float32)
    values = volume[mask]
    if values.size:
        sd = values.std()
        out[mask] = (values - values.mean()) / (sd if sd > 0 else 1.0)
    return out
