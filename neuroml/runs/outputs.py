"""Run-folder writers: history tables, the training-curve figure, provenance."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from neuroml._utils.fileio import atomic_path, write_json_atomic, write_text_atomic
from neuroml._utils.provenance import package_versions
from neuroml._utils.threads import OPENMP_VARIABLES

if TYPE_CHECKING:
    import torch

__all__ = ["write_history", "read_history", "plot_training_curves", "write_provenance", "now_iso"]

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_balanced_accuracy", "lr", "seconds"]


def now_iso() -> str:
    """The current time, ISO 8601 with the UTC offset."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_history(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]]) -> Path:
    """Write a fit's per-epoch records as ``history.tsv`` (n/a for missing values)."""
    df = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    return write_text_atomic(
        path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    )


def read_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``history.tsv`` into a DataFrame (n/a -> NaN)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def plot_training_curves(
    path: str | os.PathLike[str], histories: Mapping[int, pd.DataFrame]
) -> str | os.PathLike[str]:
    """Per fold: training loss (and validation loss, dashed) and validation balanced accuracy.

    Parameters
    ----------
    path : str or Path
        PNG to write (atomically).
    histories : dict of int to DataFrame
        Fold -> history table.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for k, df in sorted(histories.items()):
        (line,) = ax_loss.plot(df["epoch"], df["train_loss"], label=f"fold {k} train")
        if df["val_loss"].notna().any():
            ax_loss.plot(
                df["epoch"], df["val_loss"], "--", color=line.get_color(), label=f"fold {k} val"
            )
        if df["val_balanced_accuracy"].notna().any():
            ax_acc.plot(
                df["epoch"],
                df["val_balanced_accuracy"],
                color=line.get_color(),
                marker=".",
                label=f"fold {k}",
            )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(
        xlabel="epoch",
        ylabel="balanced accuracy",
        title="Validation balanced accuracy",
        ylim=(-0.02, 1.02),
    )
    if (
        not ax_acc.lines
    ):  # small cohorts hold no validation participants out (splits.MIN_VAL_PER_CLASS)
        ax_acc.text(
            0.5,
            0.5,
            "no validation set:\nevery epoch trained, last weights kept",
            ha="center",
            va="center",
            transform=ax_acc.transAxes,
            color="0.4",
        )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_provenance(
    path: str | os.PathLike[str],
    seed: int,
    start: str,
    device: str | torch.device,
    inputs: Mapping[str, Any],
    folds: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``provenance.json``: versions, command, seed, times, device, input checksums."""
    import torch

    dev = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "openmp_env": {k: os.environ[k] for k in OPENMP_VARIABLES if k in os.environ},
    }  # speed, not results
    if getattr(device, "type", str(device)) == "cuda":
        dev["cuda_device_name"] = torch.cuda.get_device_name(device)
    doc = {
        "packages": package_versions(),
        "command": list(sys.argv),
        "seed": int(seed),
        "start": start,
        "end": now_iso(),
        **dev,
        "inputs": inputs,
        "folds": folds,
    }
    doc.update(extra or {})
    return write_json_atomic(path, doc)
