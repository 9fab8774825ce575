"""Quality control of registered T1w images: numbers, a picture, and a group summary.

Per scan (:func:`registration_qc`):

- ``correlation``: Pearson r between the registered subject and the template inside the
  template brain mask, over the part of it the scan covers (normalized cross-correlation);
- ``coverage``: fraction of the template brain mask that falls inside the subject's field
  of view (a partial field of view shows here);
- ``brain_volume_ml``: the template brain mask carried back into the subject's native
  space, i.e. template brain volume x |det| of the affine MNI -> scanner (an estimate of
  the subject's brain size from the registration, in the spirit of FreeSurfer's eTIV);
- ``qc_pass``: r >= ``min_r`` and coverage >= ``min_coverage``.

Per group (:func:`write_group_qc`): a TSV with one row per processed scan and a robust
z-score of r (``(r - median) / (1.4826 MAD)``; ``outlier`` when below -3), and one HTML
page with every QC picture embedded.

BOLD series (:func:`bold_qc_rows`, written by :func:`write_group_qc` as ``group_qc_bold.tsv``
and a section of the same page): brain coverage, registration metric (Mattes mutual
information of the mean volume against the template, more negative is better; only for
series registered by neuroml), volumes dropped by scrubbing, mean framewise displacement
(from the fMRIPrep confounds table). Each gets a robust z-score in its bad direction with
a floor on the scale (:data:`BOLD_MIN_SCALE`: a group where every series has the same
value, e.g. none scrubbed, still flags the one that differs by a meaningful amount);
``outlier`` when one is beyond 3. ``qc_pass`` applies the usual exclusion rules: mean FD
<= 0.5 mm and at most 20 % of the volumes dropped (Power et al. 2012; Parkes et al. 2018).
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from neuroml._utils.fileio import atomic_path, write_text_atomic
from neuroml._utils.types import PathLike
from neuroml.io.templates import brain_mask_on_grid, target_grid, template_on_grid

__all__ = [
    "fov_mask",
    "registration_qc",
    "correlation_in_mask",
    "qc_figure",
    "robust_z",
    "write_group_qc",
    "bold_qc_rows",
]

log = logging.getLogger("neuroml")

#: Robust z-score of r below which a scan is flagged as an outlier of its group.
OUTLIER_Z = -3.0

#: BOLD QC measures: column -> (+1 when larger is worse, -1 when smaller is worse).
BOLD_MEASURES = {
    "coverage": -1,
    "registration_metric": +1,
    "dropped_fraction": +1,
    "mean_fd_mm": +1,
}

#: Smallest scale of each BOLD measure's robust z (a difference this large is one z unit).
BOLD_MIN_SCALE = {
    "coverage": 0.01,
    "registration_metric": 0.02,
    "dropped_fraction": 0.02,
    "mean_fd_mm": 0.02,
}

#: Exclusion rules of ``qc_pass`` for BOLD: largest mean FD (mm), largest share of dropped volumes.
BOLD_MAX_MEAN_FD = 0.5
BOLD_MAX_DROPPED = 0.2


def correlation_in_mask(
    a: npt.NDArray[Any], b: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> float:
    """Pearson correlation of two arrays inside a boolean mask (0.0 if either is constant)."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def fov_mask(
    resolution: float,
    mni_to_scanner_affine: npt.NDArray[Any],
    native_affine: npt.NDArray[Any],
    native_shape: Sequence[int],
) -> npt.NDArray[np.bool_]:
    """Voxels of ``target_grid(resolution)`` that fall inside the subject's field of view.

    Parameters
    ----------
    resolution : float
    mni_to_scanner_affine : ndarray of shape (4, 4)
        Estimated MNI -> scanner mapping (RAS mm).
    native_affine : ndarray of shape (4, 4)
        The subject image's voxel -> scanner affine.
    native_shape : tuple of int

    Returns
    -------
    ndarray of bool, shape of the grid
    """
    affine, shape = target_grid(resolution)
    to_native = np.linalg.inv(native_affine) @ mni_to_scanner_affine @ affine
    lim = np.asarray(native_shape[:3], dtype=np.float64) - 0.5
    out = np.ones(shape, dtype=bool)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    for axis in range(3):
        v = (
            to_native[axis, 0] * i
            + to_native[axis, 1] * j
            + to_native[axis, 2] * k
            + to_native[axis, 3]
        )
        out &= (v >= -0.5) & (v <= lim[axis])
    return out


def registration_qc(
    registered: npt.NDArray[Any],
    resolution: float,
    mni_to_scanner_affine: npt.NDArray[Any],
    fov: npt.NDArray[np.bool_] | None = None,
    min_r: float = 0.6,
    min_coverage: float = 0.8,
) -> dict[str, Any]:
    """Quality figures of one registered scan.

    Parameters
    ----------
    registered : ndarray
        The subject on ``target_grid(resolution)`` (before or after normalization: r is
        invariant to it).
    resolution : float
        Target grid voxel size (mm).
    mni_to_scanner_affine : ndarray of shape (4, 4)
        Estimated MNI -> scanner mapping (RAS mm).
    fov : ndarray of bool, optional
        Grid voxels inside the subject's field of view (:func:`fov_mask`); default all.
    min_r, min_coverage : float
        Thresholds of ``qc_pass``.

    Returns
    -------
    dict
        ``correlation``, ``coverage``, ``brain_volume_ml``, ``brain_volume_method``,
        ``qc_pass``, ``reasons`` (list of str), ``thresholds``.
    """
    mask = np.asarray(brain_mask_on_grid(resolution).dataobj) > 0
    template = np.asarray(template_on_grid(resolution).dataobj)
    seen = mask if fov is None else mask & np.asarray(fov, dtype=bool)
    coverage = float(seen.sum() / mask.sum()) if mask.any() else 0.0
    # r over the part of the brain the scan covers (coverage reports the rest)
    r = correlation_in_mask(registered, template, seen) if seen.sum() > 10 else 0.0
    det = abs(float(np.linalg.det(mni_to_scanner_affine[:3, :3])))
    volume = float(mask.sum() * float(resolution) ** 3 * det / 1000.0)
    reasons = []
    if not r >= min_r:
        reasons.append(f"correlation with the template {r:.2f} < {min_r:g}")
    if not coverage >= min_coverage:
        reasons.append(
            f"only {coverage:.0%} of the template brain lies in the field of view "
            f"(< {min_coverage:.0%})"
        )
    return {
        "correlation": round(r, 4),
        "coverage": round(coverage, 4),
        "brain_volume_ml": round(volume, 1),
        "brain_volume_method": "template brain mask mapped to native space "
        "(template brain volume x |det| of the MNI-to-scanner affine)",
        "qc_pass": not reasons,
        "reasons": reasons,
        "thresholds": {"min_r": float(min_r), "min_coverage": float(min_coverage)},
    }


def qc_figure(
    data: npt.NDArray[Any],
    resolution: float,
    path: PathLike,
    title: str = "",
    fov: npt.NDArray[np.bool_] | None = None,
) -> PathLike:
    """Write a PNG of three orthogonal slices of ``data`` with the template's edges overlaid.

    The edges are contour lines of the template: its brain outline and its grey/white
    matter boundary. A good registration puts them on the same edges of the subject.

    Parameters
    ----------
    data : ndarray
        The subject on ``target_grid(resolution)``.
    resolution : float
    path : str or Path
        Output PNG (written atomically).
    title : str
        Title drawn above the slices.
    fov : ndarray of bool, optional
        Grid voxels inside the scan's field of view; the others are drawn black.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.ndimage import gaussian_filter

    data = np.asarray(data, dtype=np.float32)
    mask_img = brain_mask_on_grid(resolution)
    mask = np.asarray(mask_img.dataobj) > 0
    template = gaussian_filter(
        np.asarray(template_on_grid(resolution).dataobj, dtype=np.float32), 0.5
    )
    inside = template[mask]
    wm_level = float(np.percentile(inside, 60)) if inside.size else 0.5  # grey/white boundary
    vals = data[mask]
    lo, hi = np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    shown = np.where(mask if fov is None else mask & np.asarray(fov, dtype=bool), data, lo)
    # slices through the MNI point (0, -18, 18) mm: thalamus, ventricles, cingulate
    centre = np.round(np.linalg.solve(mask_img.affine, [0.0, -18.0, 18.0, 1.0])[:3]).astype(int)
    centre = np.clip(centre, 0, np.asarray(data.shape) - 1)
    take = [
        lambda a: a[centre[0], :, :],
        lambda a: a[:, centre[1], :],
        lambda a: a[:, :, centre[2]],
    ]
    fig = Figure(figsize=(9, 3.4), dpi=80, facecolor="black")
    FigureCanvasAgg(fig)
    for k, (name, cut) in enumerate(zip(("sagittal", "coronal", "axial"), take)):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(
            cut(shown).T, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest"
        )
        ax.contour(cut(mask.astype(np.float32)).T, levels=[0.5], colors="red", linewidths=0.8)
        ax.contour(cut(template).T, levels=[wm_level], colors="orangered", linewidths=0.6)
        ax.set_axis_off()
        ax.set_title(name, color="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.84, wspace=0.02)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="black")
    return path


def robust_z(values: npt.ArrayLike, min_scale: float = 0.0) -> npt.NDArray[np.float64]:
    """Robust z-scores ``(x - median) / (1.4826 MAD)``; 0 where the MAD is 0.

    With ``min_scale > 0`` the scale is ``max(1.4826 MAD, min_scale)``, so values equal
    for most of the group do not hide the one that differs.

    Examples
    --------
    >>> robust_z([1.0, 1.0, 1.0, 0.0]).tolist()
    [0.0, 0.0, 0.0, 0.0]
    >>> np.round(robust_z([1.0, 2.0, 3.0, 4.0, 100.0]), 2).tolist()
    [-1.35, -0.67, 0.0, 0.67, 65.43]
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    med = np.median(x)
    mad = max(1.4826 * np.median(np.abs(x - med)), float(min_scale))
    if not mad > 0:
        return np.zeros_like(x)
    return (x - med) / mad


def bold_qc_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Robust z-scores, outlier flags and ``qc_pass`` of BOLD QC rows (in place).

    Parameters
    ----------
    rows : list of dict
        One per series: ``coverage``, ``registration_metric``, ``n_volumes``,
        ``volumes_dropped``, ``mean_fd_mm`` (None where unknown).

    Returns
    -------
    list of dict
        The rows, with ``dropped_fraction``, ``z_<measure>`` (None where unknown),
        ``outlier``, ``outlier_reasons``, ``qc_pass`` and ``reasons``.

    Examples
    --------
    >>> rows = [{"coverage": 0.99, "registration_metric": None, "n_volumes": 200, "volumes_dropped": d,
    ...          "mean_fd_mm": 0.1} for d in (0, 0, 0, 0, 60)]
    >>> [r["outlier"] for r in bold_qc_rows(rows)], rows[-1]["qc_pass"]
    ([False, False, False, False, True], False)
    """
    for r in rows:
        n, d = r.get("n_volumes"), r.get("volumes_dropped")
        r["dropped_fraction"] = (
            round(d / n, 4) if isinstance(n, (int, float)) and n and d is not None else None
        )
    for col in BOLD_MEASURES:
        known = [
            i
            for i, r in enumerate(rows)
            if isinstance(r.get(col), (int, float)) and np.isfinite(r[col])
        ]
        z = (
            robust_z([rows[i][col] for i in known], BOLD_MIN_SCALE[col])
            if len(known) >= 3
            else np.zeros(len(known))
        )
        for r in rows:
            r[f"z_{col}"] = None
        for i, zi in zip(known, z):
            rows[i][f"z_{col}"] = round(float(zi), 2)
    for r in rows:
        bad = [
            c
            for c, sign in BOLD_MEASURES.items()
            if r[f"z_{c}"] is not None and sign * r[f"z_{c}"] > -OUTLIER_Z
        ]
        r["outlier"] = bool(bad)
        r["outlier_reasons"] = ", ".join(f"{c} z {r[f'z_{c}']:+.1f}" for c in bad)
        reasons = list(r.get("reasons") or [])
        fd, frac = r.get("mean_fd_mm"), r.get("dropped_fraction")
        if fd is not None and fd > BOLD_MAX_MEAN_FD:
            reasons.append(f"mean framewise displacement {fd:.2f} mm > {BOLD_MAX_MEAN_FD:g} mm")
        if frac is not None and frac > BOLD_MAX_DROPPED:
            reasons.append(
                f"{frac:.0%} of the volumes dropped by scrubbing (> {BOLD_MAX_DROPPED:.0%})"
            )
        r["reasons"] = reasons
        r["qc_pass"] = not reasons
    return rows


_CSS = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; }
tr.bad td { background: #fde2e2; }
.card { display: inline-block; margin: 6px; padding: 6px; border: 3px solid #8c8; background: white; }
.card.bad { border-color: #d33; }
.card p { margin: 2px 0; font-size: 13px; }
"""


BOLD_COLUMNS = [
    "participant_id",
    "file",
    "n_volumes",
    "volumes_dropped",
    "dropped_fraction",
    "mean_fd_mm",
    "coverage",
    "registered",
    "registration_metric",
    "qc_pass",
    "z_coverage",
    "z_registration_metric",
    "z_dropped_fraction",
    "z_mean_fd_mm",
    "outlier",
    "outlier_reasons",
]


T1W_COLUMNS = [
    "participant_id",
    "file",
    "correlation",
    "coverage",
    "brain_volume_ml",
    "qc_pass",
    "robust_z",
    "outlier",
]


def write_group_qc(
    rows: list[dict[str, Any]],
    out_dir: Path,
    failures: Iterable[Mapping[str, Any]] = (),
    bold_rows: Sequence[dict[str, Any]] = (),
) -> tuple[Path | None, Path]:
    """Write ``group_qc.tsv`` (T1w), ``group_qc_bold.tsv`` (BOLD) and ``group_qc.html`` in ``out_dir``.

    Parameters
    ----------
    rows : list of dict
        One per T1w scan: ``participant_id``, ``file``, ``correlation``, ``coverage``,
        ``brain_volume_ml``, ``qc_pass``, ``figure`` (path of the PNG or None), and optionally
        ``resolution``: robust z-scores are computed within each resolution.
    out_dir : Path
    failures : list of dict
        Rows of ``failures.tsv`` (``participant_id``, ``file``, ``reason``), listed too.
    bold_rows : list of dict
        One per BOLD series: ``participant_id``, ``file``, ``n_volumes``, ``volumes_dropped``,
        ``mean_fd_mm``, ``coverage``, ``registered``, ``registration_metric``, ``figure``
        (see :func:`bold_qc_rows`, applied here).

    Returns
    -------
    (Path or None, Path)
        The T1w TSV (None without T1w rows) and the HTML.
    """
    _t1w_qc_rows(rows)
    tsv = None
    if rows:
        tsv = _write_tsv(out_dir / "group_qc.tsv", rows, T1W_COLUMNS)
    bold_rows = bold_qc_rows(list(bold_rows))
    if bold_rows:
        _write_tsv(out_dir / "group_qc_bold.tsv", bold_rows, BOLD_COLUMNS)
    out = out_dir / "group_qc.html"
    write_text_atomic(out, _group_qc_page(rows, bold_rows, failures))
    return tsv, out


def _t1w_qc_rows(rows):
    """Robust z-scores of the template correlation and outlier flags of T1w QC rows (in place).

    The template correlation depends on the grid: the rows of each ``resolution`` are their
    own reference group.

    Parameters
    ----------
    rows : list of dict
        One per scan: ``correlation`` and optionally ``resolution``.

    Returns
    -------
    list of dict
        The rows, with ``robust_z`` and ``outlier`` (robust z below :data:`OUTLIER_Z`).
    """
    groups = {}
    for row in rows:
        groups.setdefault(row.get("resolution"), []).append(row)
    for group in groups.values():
        for row, zi in zip(group, robust_z([r["correlation"] for r in group])):
            row["robust_z"] = round(float(zi), 2)
            row["outlier"] = bool(zi < OUTLIER_Z)
    return rows


def _write_tsv(path, rows, columns):
    """Write ``columns`` of ``rows`` as a TSV (atomically; missing values as ``n/a``)."""
    import pandas as pd

    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    write_text_atomic(path, df.to_csv(sep="\t", index=False, na_rep="n/a"))
    return path


def _group_qc_page(rows, bold_rows, failures):
    """The HTML of ``group_qc.html``: summary, tables, then the picture cards."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>neuroml preprocessing QC</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Preprocessing quality control</h1>",
        _summary_html(rows, bold_rows, failures),
    ]
    if rows:
        parts += _table_html(rows, T1W_COLUMNS, str, heading="<h2>T1w</h2>")
    if bold_rows:
        parts.append(_BOLD_INTRO)
        parts += _table_html(bold_rows, BOLD_COLUMNS, lambda v: "n/a" if v is None else str(v))
    if failures:
        parts += _failures_html(failures)
    parts += _cards_html(rows, bold_rows)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary_html(rows, bold_rows, failures):
    """The counts paragraph at the top of the QC page."""
    bold = (
        f"{len(bold_rows)} BOLD series processed; {sum(not r['qc_pass'] for r in bold_rows)} fail QC; "
        f"{sum(r['outlier'] for r in bold_rows)} outliers; "
        if bold_rows
        else ""
    )
    return (
        f"<p>{len(rows)} T1w scans processed; {sum(not r['qc_pass'] for r in rows)} fail QC; "
        f"{sum(r['outlier'] for r in rows)} outliers (robust z of r &lt; {OUTLIER_Z:g}); "
        + bold
        + f"{len(failures)} could not be processed.</p>"
    )


_BOLD_INTRO = (
    "<h2 id='bold'>Resting-state BOLD</h2>"
    f"<p>Robust z-scores (median, 1.4826 MAD with a floor) in each measure's bad direction; "
    f"outlier beyond {-OUTLIER_Z:g}. QC fails when the mean framewise displacement exceeds "
    f"{BOLD_MAX_MEAN_FD:g} mm or more than {BOLD_MAX_DROPPED:.0%} of the volumes were dropped "
    "by scrubbing. The registration metric (Mattes mutual information, lower is better) exists "
    "only for series neuroml registered; n/a: not known.</p>"
)


def _table_html(rows, columns, text, heading=""):
    """Lines of one QC table; rows that fail QC or are outliers are marked ``bad``.

    ``text`` turns a cell's value (None where missing) into its text, escaped here;
    ``heading`` goes on the line of the table's header.
    """
    e = html.escape
    parts = [heading + "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"]
    for r in rows:
        bad = (not r["qc_pass"]) or r["outlier"]
        parts.append(
            f"<tr class='{'bad' if bad else 'ok'}'>"
            + "".join(f"<td>{e(text(r.get(c)))}</td>" for c in columns)
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _failures_html(failures):
    """Lines of the table of scans that could not be processed."""
    e = html.escape
    keys = ("participant_id", "file", "reason")
    parts = ["<h2>Not processed</h2><table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for f in failures:
        parts.append(
            "<tr class='bad'>" + "".join(f"<td>{e(str(f.get(k, '')))}</td>" for k in keys) + "</tr>"
        )
    parts.append("</table>")
    return parts


def _cards_html(rows, bold_rows):
    """Lines of the picture cards: T1w scans, then BOLD series."""
    parts = []
    if rows:
        parts.append("<h2>Registered T1w scans with the template's edges</h2>")
    for r in rows:
        text = f"r = {r['correlation']:.3f}, coverage {r['coverage']:.0%}, brain {r['brain_volume_ml']:.0f} ml"
        parts.append(_card(r, _flags(r, f"robust z {r['robust_z']:.1f}"), text))
    if bold_rows:
        parts.append("<h2>Mean BOLD volumes on the grid with the template's edges</h2>")
    for r in bold_rows:
        fd = "n/a" if r.get("mean_fd_mm") is None else f"{r['mean_fd_mm']:.3f} mm"
        text = (
            f"coverage {r['coverage']:.0%}, mean FD {fd}, "
            f"{r.get('volumes_dropped') or 0} of {r.get('n_volumes')} volumes dropped"
        )
        parts.append(_card(r, _flags(r, r["outlier_reasons"]), text))
    return parts


def _flags(row, outlier_why):
    """The QC-failure and outlier lines shown on a row's picture card."""
    flags = ["QC FAIL: " + "; ".join(row.get("reasons") or [])] if not row["qc_pass"] else []
    if row["outlier"]:
        flags.append(f"OUTLIER ({outlier_why})")
    return flags


def _card(r, flags, figures_text):
    """One picture card of the QC page (escaped)."""
    e = html.escape
    bad = bool(flags)
    fig = r.get("figure")
    if fig is not None and fig.is_file():
        b64 = base64.b64encode(fig.read_bytes()).decode("ascii")
        img = f"<img alt='{e(fig.name)}' src='data:image/png;base64,{b64}'>"
    else:
        img = "<p>(no picture)</p>"
    return (
        f"<div class='card {'bad' if bad else 'ok'}'>{img}"
        f"<p><b>{e(str(r['participant_id']))}</b> {e(str(r['file']))}</p><p>{e(figures_text)}</p>"
        + "".join(f"<p style='color:#c00'>{e(f)}</p>" for f in flags)
        + "</div>"
    )
