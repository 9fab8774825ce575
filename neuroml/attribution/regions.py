"""Atlas region tables of attribution maps, and exact region importance by occlusion.

:func:`region_table` summarises a map per atlas region in one pass of
:func:`numpy.bincount` over the label array. :func:`region_occlusion` measures, for every
region, how much the class probability drops when that region is replaced by the
baseline (0, the normalized mean); all masked copies go through the model in batches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from neuroml._utils.fileio import write_text_atomic
from neuroml._utils.types import PathLike
from neuroml.errors import InputError
from neuroml.io.atlases import atlas_on_grid, hemisphere

if TYPE_CHECKING:
    import nibabel as nib
    import torch

__all__ = [
    "REGION_COLUMNS",
    "region_table",
    "region_table_img",
    "region_occlusion",
    "write_region_table",
    "read_region_table",
]

#: Columns of a region table, in order.
REGION_COLUMNS = (
    "index",
    "region",
    "hemisphere",
    "n_voxels",
    "volume_ml",
    "mean_attribution",
    "positive_sum",
    "positive_share",
    "rank",
)


def _check_labels(attribution, labels):
    attribution = np.asarray(attribution, dtype=np.float64)
    labels = np.asarray(labels)
    if attribution.shape != labels.shape:
        raise InputError(
            f"attribution map shape {attribution.shape} differs from the atlas labels' {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"atlas labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError("atlas labels must be >= 0 (0 = background)")
    return attribution, labels.astype(np.int64)


def region_table(
    attribution: npt.NDArray[Any],
    labels: npt.NDArray[np.integer[Any]],
    names: Mapping[int, str],
    voxel_volume_ml: float = 0.008,
) -> pd.DataFrame:
    """Per-region summary of one attribution map.

    Parameters
    ----------
    attribution : ndarray, shape (X, Y, Z)
    labels : ndarray of int, shape (X, Y, Z)
        Atlas labels on the same grid, 0 = background.
    names : dict of int to str
        Region index -> name; regions absent from ``labels`` are left out.
    voxel_volume_ml : float, default=0.008
        Volume of one voxel in ml (0.008 for 2 mm voxels).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`REGION_COLUMNS`, sorted by ``rank`` (1 = highest mean attribution).
        ``positive_share`` is the region's share of the positive attribution of the whole
        map, so the shares add up to at most 1 (the rest lies outside the atlas).

    Examples
    --------
    >>> labels = np.array([[[1, 1, 2, 0]]])
    >>> table = region_table(np.array([[[1.0, 3.0, -1.0, 4.0]]]), labels, {1: "A_L", 2: "B_R"})
    >>> table[["region", "mean_attribution", "positive_share", "rank"]].values.tolist()
    [['A_L', 2.0, 0.5, 1], ['B_R', -1.0, 0.0, 2]]
    """
    attribution, labels = _check_labels(attribution, labels)
    flat = labels.ravel()
    values = np.nan_to_num(attribution.ravel())
    n_bins = max(int(flat.max(initial=0)), max(names, default=0)) + 1
    counts = np.bincount(flat, minlength=n_bins)
    sums = np.bincount(flat, weights=values, minlength=n_bins)
    pos = np.bincount(flat, weights=np.clip(values, 0, None), minlength=n_bins)
    total_pos = float(np.clip(values, 0, None).sum())
    idx = np.array(sorted(k for k in names if k > 0 and counts[k] > 0), dtype=np.int64)
    mean = sums[idx] / np.maximum(counts[idx], 1)
    table = pd.DataFrame(
        {
            "index": idx,
            "region": [names[int(k)] for k in idx],
            "hemisphere": [hemisphere(names[int(k)]) for k in idx],
            "n_voxels": counts[idx].astype(np.int64),
            "volume_ml": counts[idx] * float(voxel_volume_ml),
            "mean_attribution": mean,
            "positive_sum": pos[idx],
            "positive_share": pos[idx] / total_pos if total_pos > 0 else np.zeros(len(idx)),
        }
    )
    order = np.argsort(-mean, kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def region_table_img(img: nib.Nifti1Image, atlas: str = "aal") -> pd.DataFrame:
    """:func:`region_table` of a NIfTI map with an atlas resampled onto its grid.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        A 3D attribution map.
    atlas : str, default="aal"
        Name from :data:`neuroml.io.atlases.ATLASES`.
    """
    labels, names = atlas_on_grid(atlas, img.affine, img.shape[:3])
    volume_ml = abs(float(np.linalg.det(np.asarray(img.affine)[:3, :3]))) / 1000.0
    return region_table(np.asarray(img.dataobj), labels, names, voxel_volume_ml=volume_ml)


def region_occlusion(
    model: torch.nn.Module,
    x: npt.NDArray[Any] | torch.Tensor,
    labels: npt.NDArray[np.integer[Any]],
    names: Mapping[int, str],
    target: str | int | Sequence[int | str] | npt.NDArray[np.integer[Any]] = "predicted",
    classes: Sequence[str] | None = None,
    baseline: float = 0.0,
    batch_size: int = 8,
) -> tuple[pd.DataFrame, npt.NDArray[Any]]:
    """Exact region importance: the drop in class probability when a region is hidden.

    Each region of ``labels`` in turn is set to ``baseline`` in a copy of the input; the
    copies go through the model ``batch_size`` at a time (Captum ``FeatureAblation``
    with the atlas as feature mask, on a copy of the model).

    Parameters
    ----------
    model : torch.nn.Module
    x : ndarray or torch.Tensor, shape (N, X, Y, Z) or (N, C, X, Y, Z)
    labels : ndarray of int, shape (X, Y, Z)
    names : dict of int to str
    target : "predicted", int, str or sequence, default="predicted"
        As in :meth:`~neuroml.attribution.methods.Explainer.attribute`.
    classes : sequence of str, optional
        Class names, to give targets by name.
    baseline : float, default=0.0
        Value a hidden region takes (0 = the normalized mean intensity).
    batch_size : int, default=8

    Returns
    -------
    table : pandas.DataFrame
        ``index, region, hemisphere, n_voxels, probability_drop`` (mean over the N
        inputs) and ``rank`` (1 = largest drop), sorted by rank.
    drops : ndarray, shape (N, n_regions)
        Per-input drops, columns in the order of ``table.index`` before sorting
        (ascending region index).
    """
    from neuroml.attribution.methods import Explainer

    labels = np.asarray(labels).astype(np.int64)
    if tuple(np.shape(x)[-3:]) != labels.shape:
        raise InputError(
            f"atlas labels shape {labels.shape} differs from the input grid {tuple(np.shape(x)[-3:])}"
        )
    counts = np.bincount(labels.ravel(), minlength=max(names, default=0) + 1)
    ids = np.array(
        sorted(k for k in names if 0 < k < len(counts) and counts[k] > 0), dtype=np.int64
    )
    mask = np.where(np.isin(labels, ids), labels, 0)
    explainer = Explainer(
        model,
        "occlusion",
        classes=classes,
        batch_size=batch_size,
        feature_mask=mask,
        baseline=baseline,
    )
    maps = explainer.attribute(x, target=target)
    values, first = np.unique(mask.ravel(), return_index=True)
    first = first[np.searchsorted(values, ids)]
    drops = maps.reshape(maps.shape[0], -1)[:, first]
    table = pd.DataFrame(
        {
            "index": ids,
            "region": [names[int(k)] for k in ids],
            "hemisphere": [hemisphere(names[int(k)]) for k in ids],
            "n_voxels": counts[ids],
            "probability_drop": drops.mean(0),
        }
    )
    table = table.iloc[
        np.argsort(-table["probability_drop"].to_numpy(), kind="stable")
    ].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table, drops


def write_region_table(
    table: pd.DataFrame,
    tsv_path: PathLike,
    json_path: PathLike | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write a region table as TSV (and JSON with ``meta``), atomically.

    Parameters
    ----------
    table : pandas.DataFrame
    tsv_path : str or Path
    json_path : str or Path, optional
    meta : dict, optional
        Stored beside the rows in the JSON file: ``{"meta": ..., "regions": [...]}``.

    Returns
    -------
    list of Path
    """
    paths = [write_text_atomic(tsv_path, table.to_csv(sep="\t", index=False, float_format="%.6g"))]
    if json_path is not None:
        rows = json.loads(table.to_json(orient="records", double_precision=8))
        doc = {"meta": meta or {}, "regions": rows}
        paths.append(write_text_atomic(json_path, json.dumps(doc, indent=2, default=str) + "\n"))
    return paths


def read_region_table(path: PathLike) -> pd.DataFrame:
    """Read a region table TSV written by :func:`write_region_table`."""
    try:
        return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise InputError("region table not found", path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"not a readable TSV ({exc})", path) from None
