"""Confounds of fMRIPrep derivatives and the cleaning of BOLD time series (nilearn).

:func:`load_confounds` reads an fMRIPrep confounds table with one of nilearn's preset
denoising strategies (``simple``, ``scrubbing``, ``compcor``); :func:`clean_series` is the
array function that cleans ``(T, V)`` series twice from one set of inputs:

- ``residual``: detrended, confounds regressed out, *not* band-passed, on every volume
  (scrubbed volumes are fitted without, then filled by linear interpolation in time):
  the input of ALFF and fALFF, which measure the spectrum;
- ``filtered``: detrended, band-passed (Butterworth, ``high_pass``-``low_pass`` Hz),
  confounds regressed out (filtered the same way), standardized, on the kept volumes only:
  the input of ReHo, seed connectivity and atlas time series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from neuroml._utils.options import look_up_option
from neuroml._utils.types import PathLike
from neuroml.errors import InputError
from neuroml.io.bids import derivative_name, parse_entities

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "STRATEGIES",
    "find_confounds_file",
    "load_confounds",
    "clean_series",
    "interpolate_censored",
    "framewise_displacement_summary",
]

log = logging.getLogger("neuroml")

#: Confound strategies: nilearn's presets for fMRIPrep outputs, or none.
STRATEGIES = ("simple", "scrubbing", "compcor", "none")

_DROP_ENTITIES = ("space", "res", "den", "desc", "cohort")


def find_confounds_file(bold_path: PathLike) -> Path | None:
    """The fMRIPrep confounds table beside a BOLD file, or None.

    Looks for ``<sub..run>_desc-confounds_timeseries.tsv`` (or the older ``_regressors.tsv``)
    in the BOLD file's folder; the entities ``space``, ``res``, ``den``, ``desc`` are dropped.

    Examples
    --------
    >>> find_confounds_file("/nowhere/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz") is None
    True
    """
    path = Path(bold_path)
    entities, _, _ = parse_entities(path.name)
    base = {k: v for k, v in entities.items() if k not in _DROP_ENTITIES}
    for suffix in ("timeseries", "regressors"):
        candidate = path.parent / derivative_name(base, suffix, ".tsv", desc="confounds")
        if candidate.is_file():
            return candidate
    return None


def framewise_displacement_summary(table: PathLike) -> dict[str, Any] | None:
    """Mean and largest framewise displacement (mm) of an fMRIPrep confounds table.

    Parameters
    ----------
    table : str or Path
        ``*_desc-confounds_timeseries.tsv`` with a ``framewise_displacement`` column (its
        first value is ``n/a`` in fMRIPrep: no previous volume).

    Returns
    -------
    dict or None
        ``mean_fd_mm``, ``max_fd_mm``, ``n_volumes`` (rows with a value); None when the
        table has no such column or no value in it.
    """
    import pandas as pd

    try:
        fd = pd.read_csv(table, sep="\t", usecols=["framewise_displacement"], na_values=["n/a"])
    except (
        ValueError,
        OSError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ):
        return None
    values = pd.to_numeric(fd["framewise_displacement"], errors="coerce").to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    return {
        "mean_fd_mm": round(float(values.mean()), 4),
        "max_fd_mm": round(float(values.max()), 4),
        "n_volumes": int(values.size),
    }


def load_confounds(
    bold_path: PathLike, strategy: str = "simple", **options: Any
) -> tuple[pd.DataFrame, npt.NDArray[np.integer[Any]] | None, dict[str, Any]]:
    """Confounds and kept volumes of an fMRIPrep BOLD file, with a nilearn preset strategy.

    Parameters
    ----------
    bold_path : str or Path
        fMRIPrep output named ``*_desc-preproc_bold.nii.gz``, with its
        ``*_desc-confounds_timeseries.tsv`` (and ``.json`` for ``compcor``) beside it.
    strategy : {"simple", "scrubbing", "compcor"}, default="simple"
        See :func:`nilearn.interfaces.fmriprep.load_confounds_strategy`.
    **options
        Passed on (e.g. ``fd_threshold=0.3``, ``motion="basic"``, ``n_compcor=5``,
        ``global_signal="basic"``).

    Returns
    -------
    confounds : pandas.DataFrame
        One column per regressor, one row per volume.
    sample_mask : ndarray of int or None
        Indices of the volumes kept (None: all).
    info : dict
        ``strategy``, ``options``, ``file``, ``columns``, ``dropped_volumes`` (list of int).

    Raises
    ------
    InputError
        Naming the BOLD file when the table is missing or lacks the strategy's columns.
    """
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    strategy = look_up_option("confounds", strategy, [s for s in STRATEGIES if s != "none"])
    path = Path(bold_path)
    table = find_confounds_file(path)
    if table is None:
        raise InputError(
            "no fMRIPrep confounds table (*_desc-confounds_timeseries.tsv) beside it", path
        )
    try:
        confounds, sample_mask = load_confounds_strategy(
            str(path), denoise_strategy=strategy, **options
        )
    except (ValueError, KeyError, TypeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"cannot read confounds with strategy {strategy!r} ({first})", path
        ) from None
    n = len(confounds)
    kept = None if sample_mask is None else np.asarray(sample_mask, dtype=np.int64)
    dropped = [] if kept is None else sorted(set(range(n)) - set(kept.tolist()))
    info = {
        "strategy": strategy,
        "options": dict(options),
        "file": table.name,
        "columns": list(confounds.columns),
        "n_regressors": int(confounds.shape[1]),
        "dropped_volumes": dropped,
    }
    return confounds, kept, info


def interpolate_censored(
    series: npt.NDArray[Any], kept: npt.NDArray[np.integer[Any]], n_volumes: int
) -> npt.NDArray[Any]:
    """Fill the volumes missing from ``kept`` by linear interpolation in time.

    Parameters
    ----------
    series : ndarray of shape (len(kept), V)
        Values at the kept volumes (in order).
    kept : ndarray of int
        Indices of the kept volumes (sorted).
    n_volumes : int

    Returns
    -------
    ndarray of shape (n_volumes, V)

    Examples
    --------
    >>> interpolate_censored(np.array([[0.0], [4.0]]), np.array([0, 2]), 4)[:, 0].tolist()
    [0.0, 2.0, 4.0, 4.0]
    """
    series = np.asarray(series)
    kept = np.asarray(kept, dtype=np.int64)
    out = np.empty((int(n_volumes), series.shape[1]), dtype=series.dtype)
    out[kept] = series
    missing = np.setdiff1d(np.arange(int(n_volumes)), kept)
    if missing.size:
        right = np.clip(np.searchsorted(kept, missing), 0, len(kept) - 1)
        left = np.clip(right - 1, 0, len(kept) - 1)
        kl, kr = kept[left], kept[right]
        w = np.where(kr != kl, (missing - kl) / np.where(kr != kl, kr - kl, 1), 0.0)
        w = np.where(missing > kept[-1], 1.0, np.where(missing < kept[0], 0.0, w))[:, None]
        out[missing] = (1 - w) * series[left] + w * series[right]
    return out


def clean_series(
    series: npt.NDArray[Any],
    tr: float,
    confounds: npt.ArrayLike | pd.DataFrame | None = None,
    sample_mask: npt.NDArray[np.integer[Any]] | None = None,
    detrend: bool = True,
    high_pass: float | None = 0.01,
    low_pass: float | None = 0.1,
    standardize: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], str]:
    """Clean ``(T, V)`` time series twice: for spectra (``residual``) and for correlations (``filtered``).

    Parameters
    ----------
    series : ndarray of shape (T, V)
    tr : float
        Repetition time (s).
    confounds : ndarray or DataFrame of shape (T, K), optional
    sample_mask : ndarray of int, optional
        Volumes kept (scrubbing); the others are left out of every fit.
    detrend : bool, default=True
    high_pass, low_pass : float or None, default=0.01, 0.1
        Band-pass of the ``filtered`` output (Hz); None leaves that side open.
    standardize : bool, default=True
        z-score each ``filtered`` series.

    Returns
    -------
    residual : ndarray of float32, shape (T, V)
    filtered : ndarray of float32, shape (len(sample_mask) or T, V)
    filter_used : str
        The band-pass applied (Butterworth; an FFT band-pass for series too short for it).

    Raises
    ------
    InputError
        If too few volumes remain, or the band is above the Nyquist frequency.
    """
    series = np.asarray(series, dtype=np.float64)
    n = series.shape[0]
    confounds = _checked_confounds(confounds, n)
    kept = np.arange(n) if sample_mask is None else np.asarray(sample_mask, dtype=np.int64)
    _check_usable_volumes(len(kept), 0 if confounds is None else confounds.shape[1])
    low_pass = _checked_band(tr, n, high_pass, low_pass)
    fit = _SignalFit(series, float(tr), confounds, None if sample_mask is None else kept, detrend)
    try:
        resid = fit.clean(standardize=None, filter=False)
        filt, used = _band_passed(fit, high_pass, low_pass, standardize)
    except ValueError as exc:
        raise InputError(f"cleaning failed ({str(exc).splitlines()[0]})") from None
    if sample_mask is not None:
        resid = interpolate_censored(resid, kept, n)
    return resid.astype(np.float32), filt.astype(np.float32), used


def _checked_confounds(confounds: Any, n: int) -> npt.NDArray[np.float64] | None:
    """Confounds as a float ``(n, K)`` array with n/a as 0 (None stays None).

    Raises
    ------
    InputError
        If the confounds do not have one row per volume.
    """
    if confounds is None:
        return None
    confounds = np.asarray(confounds, dtype=np.float64)
    if confounds.ndim == 1:
        confounds = confounds[:, None]
    if confounds.shape[0] != n:
        raise InputError(f"confounds have {confounds.shape[0]} rows for {n} volumes")
    return np.nan_to_num(confounds)  # first-row derivatives are n/a in fMRIPrep tables


def _check_usable_volumes(n_kept, n_conf):
    """Raise :class:`InputError` when too few volumes are kept to regress ``n_conf`` confounds."""
    if n_kept < max(10, n_conf + 3):
        raise InputError(
            f"only {n_kept} usable volumes for {n_conf} confounds: too few to clean "
            "(at least 10, and more than the confounds)"
        )


def _checked_band(tr, n, high_pass, low_pass):
    """The low-pass cutoff to apply (None at or above the Nyquist frequency).

    Raises
    ------
    InputError
        If the high-pass cutoff is at or above the Nyquist frequency.
    """
    nyquist = 0.5 / float(tr)
    if high_pass is not None and high_pass >= nyquist:
        raise InputError(
            f"high-pass {high_pass:g} Hz is above the Nyquist frequency {nyquist:g} Hz (TR {tr:g} s)"
        )
    if low_pass is not None and low_pass >= nyquist:
        low_pass = None  # nothing above it to remove
    if high_pass is not None and high_pass <= 1.0 / (n * float(tr)):
        log.debug("high-pass %.4g Hz is below the series' frequency resolution", high_pass)
    return low_pass


@dataclass(frozen=True)
class _SignalFit:
    """What every :func:`nilearn.signal.clean` call of one :func:`clean_series` shares."""

    series: np.ndarray
    tr: float
    confounds: np.ndarray | None
    sample_mask: np.ndarray | None
    detrend: bool

    @property
    def n_kept(self):
        """Number of volumes the fits use."""
        return len(self.series) if self.sample_mask is None else len(self.sample_mask)

    def clean(self, **kwargs):
        """:func:`nilearn.signal.clean` of the series with ``kwargs`` added."""
        from nilearn import signal

        return signal.clean(
            self.series,
            detrend=self.detrend,
            confounds=self.confounds,
            sample_mask=self.sample_mask,
            t_r=self.tr,
            **kwargs,
        )


def _band_passed(fit, high_pass, low_pass, standardize):
    """The ``filtered`` output of :func:`clean_series` and the name of the filter used.

    A Butterworth band-pass (nilearn); an ideal (FFT) band-pass of the residuals for series
    too short for the Butterworth filter's padding.
    """
    do_filter = "butterworth" if (high_pass is not None or low_pass is not None) else False
    try:
        filt = fit.clean(
            standardize="zscore_sample" if standardize else None,
            filter=do_filter,
            high_pass=high_pass,
            low_pass=low_pass,
            butterworth__copy=True,
        )
        return filt, "butterworth (nilearn.signal.clean)" if do_filter else "none"
    except ValueError as exc:
        if "padlen" not in str(exc):
            raise
    used = f"FFT band-pass (series of {fit.n_kept} volumes too short for the Butterworth filter)"
    filt = _fft_bandpass(fit.clean(standardize=None, filter=False), fit.tr, high_pass, low_pass)
    if standardize:
        sd = filt.std(axis=0, ddof=1)
        filt = (filt - filt.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return filt, used


def _fft_bandpass(x, tr, high_pass, low_pass):
    """Zero the Fourier coefficients outside [high_pass, low_pass] Hz along axis 0."""
    n = x.shape[0]
    f = np.fft.rfftfreq(n, float(tr))
    spec = np.fft.rfft(x, axis=0)
    drop = np.zeros(f.shape, dtype=bool)
    if high_pass is not None:
        drop |= f < high_pass
    if low_pass is not None:
        drop |= f > low_pass
    spec[drop] = 0
    return np.fft.irfft(spec, n=n, axis=0)


def check_strategy(strategy):
    """Validate a confound strategy name (``auto`` means: ``simple`` when a table exists)."""
    if strategy == "auto":
        return strategy
    return look_up_option("confounds", strategy, [*STRATEGIES, "auto"])
