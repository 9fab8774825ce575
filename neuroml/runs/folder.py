"""The run folder: reading a trained run back (:func:`load_run`), its splits and its
predictions tables. The layout is in ``docs/layout.md``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroml._utils.device import resolve_device
from neuroml._utils.fileio import read_json, write_json_atomic
from neuroml.errors import InputError
from neuroml.models.factory import COMPACT_ACTIVATION, build_model
from neuroml.runs.checkpoint import load_checkpoint

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

__all__ = [
    "Run",
    "load_run",
    "check_run_folder",
    "PREDICTION_DTYPES",
    "predictions_table",
    "out_of_fold_table",
    "table_arrays",
    "check_grid",
    "save_splits",
    "load_splits",
]


#: Columns of a predictions table read back as strings: class names may look like numbers ("0", "1").
PREDICTION_DTYPES: dict[str, type] = {
    "participant_id": str,
    "true_label": str,
    "predicted_label": str,
}


class Run:
    """A trained run folder, read back.

    Attributes
    ----------
    run_dir : Path
    config : dict
        ``config.json``.
    splits : list of dict
        Per fold ``{"fold", "train", "val", "test", "test_site"}`` participant ids.
    classes : list of str
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], config: dict[str, Any], splits: list[dict[str, Any]]
    ) -> None:
        self.run_dir, self.config, self.splits = Path(run_dir), config, splits

    def __repr__(self) -> str:
        return (
            f"Run({str(self.run_dir)!r}, model={self.config['model']!r}, "
            f"classes={self.classes}, folds={len(self.splits)})"
        )

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def grid(self) -> tuple[npt.NDArray[Any], tuple[int, ...]]:
        """``(affine, shape)`` of the grid the run was trained on."""
        return np.asarray(self.config["grid"]["affine"]), tuple(self.config["grid"]["shape"])

    def fold_model(self, fold: int, device: str | torch.device | None = "cpu") -> torch.nn.Module:
        """The model of one fold, with its best weights, in eval mode (loaded with ``weights_only=True``)."""
        path = self.run_dir / f"fold-{int(fold)}" / "model.pt"
        ckpt = load_checkpoint(path, require=("state_dict", "meta"))
        meta = ckpt["meta"]
        model = build_model(
            meta["model"],
            int(meta["n_classes"]),
            in_channels=int(meta.get("in_channels", 1)),
            spatial_shape=meta.get("spatial_shape"),
            input_pool=int(meta.get("input_pool", 1)),
            activation=meta.get("activation", COMPACT_ACTIVATION),
        )
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise InputError(
                f"weights do not fit a {meta['model']!r} network ({str(exc).splitlines()[0]})", path
            ) from None
        return model.to(resolve_device(device)).eval()

    def fold_models(
        self, device: str | torch.device | None = "cpu"
    ) -> list[tuple[int, torch.nn.Module]]:
        """``[(fold, model in eval mode), ...]`` for every fold; raises InputError if a fold is untrained."""
        missing = [
            f["fold"]
            for f in self.splits
            if not (self.run_dir / f"fold-{f['fold']}" / "model.pt").is_file()
        ]
        if missing:
            raise InputError(
                f"run incomplete: fold(s) {missing} have no model.pt; rerun the training command "
                "with --resume (resume=True)",
                self.run_dir,
            )
        return [(f["fold"], self.fold_model(f["fold"], device)) for f in self.splits]

    def trained_ids(self) -> set[str]:
        """Participants used to train or validate a model in any fold."""
        return {p for f in self.splits for part in ("train", "val") for p in f[part]}

    def test_fold_of(self, participant_id: str) -> int | None:
        """The fold whose model never saw ``participant_id`` (it is in that fold's test set), or None."""
        pid = participant_id if str(participant_id).startswith("sub-") else f"sub-{participant_id}"
        return next((f["fold"] for f in self.splits if pid in f["test"]), None)

    def predictions(self) -> pd.DataFrame:
        """The out-of-fold ``predictions.tsv`` as a DataFrame."""
        path = self.run_dir / "predictions.tsv"
        if not path.is_file():
            raise InputError("predictions.tsv missing: the run did not finish", path)
        return pd.read_csv(path, sep="\t", dtype=PREDICTION_DTYPES)


def check_run_folder(
    run_dir: str | os.PathLike[str], names: Sequence[str] = ("config.json", "splits.json")
) -> Path:
    """``run_dir`` as a Path; raises :class:`InputError` if one of the files ``names`` is missing."""
    run_dir = Path(run_dir)
    for name in names:
        if not (run_dir / name).is_file():
            raise InputError(
                f"not a neuroml run folder ({name} missing); train one with `neuroml train`",
                run_dir,
            )
    return run_dir


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run folder written by :func:`~neuroml.workflows.train_run`.

    Raises
    ------
    InputError
        If ``config.json`` or ``splits.json`` is missing.
    """
    run_dir = check_run_folder(run_dir)
    return Run(run_dir, read_json(run_dir / "config.json"), load_splits(run_dir / "splits.json"))


def predictions_table(
    participant_ids: Sequence[str],
    proba: npt.ArrayLike,
    classes: Sequence[str],
    y_true: Sequence[int] | npt.NDArray[Any] | None = None,
    fold: int | Sequence[int] | npt.NDArray[Any] | None = None,
) -> pd.DataFrame:
    """Per-participant predictions: the scans of a participant are averaged.

    Parameters
    ----------
    participant_ids : sequence of str
        One per row of ``proba`` (a participant may repeat).
    proba : ndarray of shape (n, C)
    classes : sequence of str
    y_true : sequence of int, optional
        Adds ``true_label``.
    fold : int or sequence of int, optional
        Adds ``fold``.

    Returns
    -------
    pandas.DataFrame
        ``participant_id, [true_label], predicted_label, prob_<class>..., [fold]``, sorted by participant.
    """
    proba = np.asarray(proba, dtype=float)
    df = pd.DataFrame(proba, columns=[f"prob_{c}" for c in classes])
    df.insert(0, "participant_id", list(participant_ids))
    if y_true is not None:
        df["true_label"] = [classes[int(i)] for i in y_true]
    if fold is not None:
        df["fold"] = fold
    agg = {c: "mean" for c in df.columns if c.startswith("prob_")}
    agg.update({c: "first" for c in ("true_label", "fold") if c in df.columns})
    out = df.groupby("participant_id", sort=True).agg(agg).reset_index()
    probs = out[[f"prob_{c}" for c in classes]].to_numpy()
    out.insert(1, "predicted_label", [classes[i] for i in probs.argmax(1)])
    cols = (
        ["participant_id"]
        + (["true_label"] if y_true is not None else [])
        + ["predicted_label"]
        + [f"prob_{c}" for c in classes]
        + (["fold"] if fold is not None else [])
    )
    return out[cols]


def out_of_fold_table(
    participant_ids: Sequence[str],
    proba: npt.ArrayLike,
    fold: npt.ArrayLike,
    classes: Sequence[str],
    y_true: npt.ArrayLike,
) -> pd.DataFrame:
    """The predictions table of the scans a fold tested (``fold >= 0``; -1 marks scans no fold
    tested), with their true labels and folds (see :func:`predictions_table`)."""
    fold = np.asarray(fold)
    tested = fold >= 0
    return predictions_table(
        np.asarray(participant_ids, dtype=object)[tested].tolist(),
        np.asarray(proba)[tested],
        classes,
        np.asarray(y_true)[tested],
        fold[tested],
    )


def table_arrays(
    table: pd.DataFrame, classes: Sequence[str]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """``(y, proba)`` of a predictions table: class indices of ``true_label`` and the
    ``prob_<class>`` columns in ``classes`` order."""
    y = table["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return y, table[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)


def check_grid(
    affine: npt.NDArray[Any],
    shape: Sequence[int],
    run_config: dict[str, Any],
    where: str | os.PathLike[str] | None,
) -> None:
    """Raise :class:`InputError` if a grid differs from the run's (``config["grid"]``)."""
    grid = run_config["grid"]
    if tuple(shape) != tuple(grid["shape"]) or not np.allclose(affine, grid["affine"], atol=1e-4):
        raise InputError(
            f"volumes are on grid shape {tuple(shape)} affine {np.round(affine, 4)[:3].tolist()} but the run was "
            f"trained on shape {tuple(grid['shape'])} affine {np.round(grid['affine'], 4)[:3].tolist()} "
            f"(res-{run_config['resolution']}); preprocess with --resolution {run_config['resolution_mm']:g}",
            where,
        )


def save_splits(
    path: str | os.PathLike[str], splits: Sequence[dict[str, Any]], **info: Any
) -> Path:
    """Write ``splits.json``: ``{"scheme", ..., "folds": [per-fold dicts]}`` (atomic)."""
    scheme = (
        "leave-one-site-out"
        if splits and splits[0].get("test_site") is not None
        else "stratified-group-kfold"
    )
    return write_json_atomic(path, {"scheme": scheme, **info, "folds": list(splits)})


def load_splits(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the per-fold list written by :func:`save_splits`."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("folds"), list):
        raise InputError("not a neuroml splits file (no 'folds' list)", path)
    return doc["folds"]
