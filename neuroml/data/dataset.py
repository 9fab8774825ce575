"""The labelled cohort (cache rows joined with ``participants.tsv``) and the torch Dataset over it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from neuroml._utils.fileio import read_json
from neuroml._utils.types import PathLike
from neuroml.errors import ConfigError, InputError
from neuroml.io.bids import read_participants

if TYPE_CHECKING:
    from neuroml.data.augment import BatchAugmentation
    from neuroml.data.cache import TensorCache

__all__ = [
    "Cohort",
    "load_cohort",
    "participants_file",
    "VolumeDataset",
    "Augmentation",
    "make_augmentation",
]

log = logging.getLogger("neuroml")


def participants_file(deriv_dir: PathLike, participants: PathLike | None = None) -> Path:
    """Locate the ``participants.tsv`` holding the labels of a derivatives folder.

    Parameters
    ----------
    deriv_dir : str or Path
    participants : str or Path, optional
        Explicit ``participants.tsv`` (or the folder holding it). By default, the raw
        dataset named by ``SourceDatasets[0]["URL"]`` (``file://...``) in
        ``deriv_dir/dataset_description.json``.

    Raises
    ------
    InputError
        If the description or the file is missing.
    """
    if participants is not None:
        path = Path(participants)
        path = path / "participants.tsv" if path.is_dir() else path
        if not path.is_file():
            raise InputError("participants file not found", path)
        return path
    desc_path = Path(deriv_dir) / "dataset_description.json"
    hint = "; pass participants=<path to participants.tsv>"
    if not desc_path.is_file():
        raise InputError(
            f"dataset_description.json missing, cannot locate the raw dataset's participants.tsv{hint}",
            Path(deriv_dir),
        )
    desc = read_json(desc_path)
    sources = desc.get("SourceDatasets") or []
    url = sources[0].get("URL") if sources and isinstance(sources[0], dict) else None
    if not url:
        raise InputError(f"no SourceDatasets[0].URL naming the raw dataset{hint}", desc_path)
    parsed = urlparse(url)
    if parsed.scheme not in ("file", ""):
        raise InputError(f"SourceDatasets URL {url!r} is not a local file:// path{hint}", desc_path)
    raw = Path(unquote(parsed.path if parsed.scheme else url))
    if not raw.is_absolute():
        raw = (desc_path.parent / raw).resolve()
    path = raw / "participants.tsv"
    if not path.is_file():
        raise InputError(
            f"participants.tsv of the raw dataset (from {desc_path.name}) not found{hint}", path
        )
    return path


@dataclasses.dataclass
class Cohort:
    """Cached volumes that have a label, one entry per volume (scan).

    Attributes
    ----------
    cache : TensorCache
    rows : ndarray of int
        Row of each volume in ``cache.data``.
    participant_ids, sessions : list of str (sessions may hold None)
    labels : list of str
        Label of each volume (its participant's).
    y : ndarray of int
        ``classes.index(label)``.
    classes : list of str
    label_column : str
    participants_path : Path
    table : pandas.DataFrame
        ``participants.tsv`` indexed by participant_id.
    unlabeled : list of str
        Participants with images but no label (skipped).
    without_images : list of str
        Labelled participants with no preprocessed image.
    """

    cache: TensorCache
    rows: npt.NDArray[np.integer[Any]]
    participant_ids: list[str]
    sessions: list[str | None]
    labels: list[str]
    y: npt.NDArray[np.integer[Any]]
    classes: list[str]
    label_column: str
    participants_path: Path
    table: pd.DataFrame
    unlabeled: list[str]
    without_images: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def in_channels(self) -> int:
        """Number of input channels (inputs stacked by :func:`~neuroml.data.stack.open_inputs`)."""
        return int(getattr(self.cache, "n_channels", 1))

    @property
    def digest(self) -> str:
        """SHA-256 over the volumes' checksums and labels: identifies the training data."""
        import hashlib

        h = hashlib.sha256()
        sha = self.cache.index["sha256"].to_numpy()
        for r, lab in zip(self.rows, self.labels):
            h.update(f"{sha[r]}\t{lab}\n".encode())
        return h.hexdigest()

    def column(self, name: str) -> list[Any]:
        """Values of a ``participants.tsv`` column for each volume (e.g. the site)."""
        if name not in self.table.columns:
            raise InputError(
                f"column {name!r} not found (columns: {list(self.table.columns)})",
                self.participants_path,
            )
        return self.table[name].reindex(self.participant_ids).tolist()


def _order_classes(values):
    """Distinct values sorted numerically when all are numbers, else case-insensitively."""
    values = list(dict.fromkeys(values))
    try:
        return [v for _, v in sorted((float(v), v) for v in values)]
    except ValueError:
        return sorted(values, key=lambda v: (v.lower(), v))


def load_cohort(
    deriv_dir: PathLike,
    label_column: str = "diagnosis",
    participants: PathLike | None = None,
    resolution: float | str | None = None,
    classes: Sequence[str] | None = None,
    show_progress: bool = False,
    inputs: Sequence[str] | None = None,
) -> Cohort:
    """Build the tensor cache and join it with the labels of ``participants.tsv``.

    Parameters
    ----------
    deriv_dir : str or Path
    label_column : str, default="diagnosis"
    participants : str or Path, optional
        See :func:`participants_file`.
    resolution : float or str, optional
    classes : sequence of str, optional
        Class order; by default the sorted labels (case-insensitive; numbers numerically).
    show_progress : bool, default=False
    inputs : list of str, optional
        Inputs stacked as channels: ``"T1w"`` and/or desc labels of BOLD maps (``"alff"``,
        ``"falff"``, ``"reho"``, ``"mean"``, ``"conn<name>"``); default the T1w alone
        (see :func:`neuroml.data.stack.open_inputs`).

    Returns
    -------
    Cohort

    Raises
    ------
    InputError
        No images, no participants file, missing label column (listing those available),
        no labelled image, or fewer than two classes.
    """
    from neuroml.data.stack import open_inputs

    cache = open_inputs(
        deriv_dir, resolution=resolution, inputs=inputs, show_progress=show_progress
    )
    path = participants_file(deriv_dir, participants)
    table = read_participants(path)
    labels = _label_series(table, label_column, path)
    index = cache.index
    mapped = index["participant_id"].map(labels)
    unlabeled = sorted(set(index.loc[mapped.isna(), "participant_id"]))
    without = sorted(set(labels.index) - set(index["participant_id"]))
    keep = index[mapped.notna()]
    if keep.empty:
        raise InputError(
            f"no preprocessed image has a {label_column!r} label (image participants: "
            f"{sorted(set(index['participant_id']))[:5]}..., labelled: {list(labels.index[:5])}...)",
            path,
        )
    _log_unmatched(unlabeled, without, label_column, path, cache.resolution)
    lab = mapped[mapped.notna()].tolist()
    classes = _class_order(lab, classes, label_column, path)
    return Cohort(
        cache=cache,
        rows=keep["row"].to_numpy(dtype=np.int64),
        participant_ids=keep["participant_id"].tolist(),
        sessions=keep["session"].tolist(),
        labels=lab,
        y=np.array([classes.index(v) for v in lab], dtype=np.int64),
        classes=list(classes),
        label_column=label_column,
        participants_path=path,
        table=table,
        unlabeled=unlabeled,
        without_images=without,
    )


def _label_series(table, label_column, path):
    """The non-empty labels of ``label_column`` (stripped text), indexed by participant_id.

    Raises
    ------
    InputError
        If the participants table has no such column (listing those it has).
    """
    if label_column not in table.columns:
        raise InputError(
            f"label column {label_column!r} not found; available columns: {list(table.columns)}",
            path,
        )
    labels = table[label_column].dropna().astype(str).str.strip()
    return labels[labels != ""]


def _log_unmatched(unlabeled, without, label_column, path, resolution):
    """Warn about participants with images but no label, and labelled ones without images."""
    if unlabeled:
        log.warning(
            "%d participant(s) have images but no %r label in %s and are skipped: %s",
            len(unlabeled),
            label_column,
            path,
            ", ".join(unlabeled[:20]) + (" ..." if len(unlabeled) > 20 else ""),
        )
    if without:
        log.warning(
            "%d participant(s) labelled in %s have no preprocessed image at res-%s: %s",
            len(without),
            path,
            resolution,
            ", ".join(without[:20]) + (" ..." if len(without) > 20 else ""),
        )


def _class_order(lab, classes, label_column, path):
    """The class names in order: ``classes`` (as text), or the sorted labels (see
    :func:`_order_classes`).

    Raises
    ------
    ConfigError
        If a label is not in ``classes``.
    InputError
        If the labels hold fewer than two classes.
    """
    if classes is None:
        classes = _order_classes(lab)
    else:
        classes = [str(c) for c in classes]
        unknown = sorted(set(lab) - set(classes))
        if unknown:
            raise ConfigError(
                f"labels {unknown} of column {label_column!r} are not in classes={classes}"
            )
    if len(set(lab)) < 2:
        raise InputError(
            f"column {label_column!r} has a single class {sorted(set(lab))} among the imaged "
            "participants; classification needs at least two",
            path,
        )
    return classes


class Augmentation:
    """A MONAI ``Compose`` of random transforms returning plain tensors, with a seedable state."""

    def __init__(self, transforms: Sequence[Callable[..., Any]], seed: int = 0) -> None:
        from monai.transforms import Compose

        self.compose = Compose(transforms)
        self.set_random_state(seed)

    def set_random_state(self, seed: int) -> Augmentation:
        """Reseed every random transform; returns self."""
        self.compose.set_random_state(seed=int(seed) % (2**32))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compose(x)
        return out.as_tensor() if hasattr(out, "as_tensor") else out

    def __repr__(self):
        return f"Augmentation({[type(t).__name__ for t in self.compose.transforms]})"


def make_augmentation(
    seed: int = 0,
    rotate_deg: float = 3.0,
    translate_vox: float = 2.0,
    scale: float = 0.03,
    intensity: float = 0.1,
    noise_std: float = 0.05,
    flip: bool = False,
    prob: float = 0.5,
    batched: bool = True,
) -> BatchAugmentation | Augmentation:
    """Small random augmentations for channel-first 3D tensors, with their own seeded random state.

    A random affine (rotation, translation, scaling), intensity scaling and shift, and
    Gaussian noise, each applied with probability ``prob``. No left-right flip unless
    ``flip=True``: brain asymmetry may carry the signal.

    Parameters
    ----------
    seed : int
    rotate_deg, translate_vox, scale : float
        Largest rotation about each axis (degrees), translation (voxels) and relative
        scaling per axis.
    intensity : float
        Largest relative intensity scaling and largest intensity shift.
    noise_std : float
        Largest standard deviation of the Gaussian noise (drawn from ``U(0, noise_std)``).
    flip : bool, default=False
    prob : float, default=0.5
    batched : bool, default=True
        A :class:`~neuroml.data.augment.BatchAugmentation`, which :func:`~neuroml.training.fit`
        applies to whole batches on the training device (the same MONAI parameter
        distributions and affine matrices, one resampling per batch); False: the MONAI
        transforms themselves (``RandAffine``, ``RandScaleIntensity``, ``RandShiftIntensity``,
        ``RandGaussianNoise``, ``RandFlip``) in an :class:`Augmentation`, per item.

    Returns
    -------
    BatchAugmentation or Augmentation
        Call it on a ``(C, X, Y, Z)`` tensor; reseed with ``.set_random_state(seed)``.

    Examples
    --------
    >>> aug = make_augmentation(seed=0)
    >>> aug(torch.zeros(1, 7, 8, 9)).shape
    torch.Size([1, 7, 8, 9])
    >>> aug.apply_batch(torch.zeros(4, 1, 7, 8, 9)).shape
    torch.Size([4, 1, 7, 8, 9])
    """
    if batched:
        from neuroml.data.augment import BatchAugmentation

        return BatchAugmentation(
            seed=seed,
            rotate_deg=rotate_deg,
            translate_vox=translate_vox,
            scale=scale,
            intensity=intensity,
            noise_std=noise_std,
            flip=flip,
            prob=prob,
        )
    from monai.transforms import (
        RandAffine,
        RandFlip,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    rot = float(np.deg2rad(rotate_deg))
    steps = [
        RandAffine(
            prob=prob,
            rotate_range=(rot, rot, rot),
            translate_range=(translate_vox,) * 3,
            scale_range=(scale,) * 3,
            mode="bilinear",
            padding_mode="border",
        ),
        RandScaleIntensity(factors=intensity, prob=prob),
        RandShiftIntensity(offsets=intensity, prob=prob),
        RandGaussianNoise(prob=prob, std=noise_std),
    ]
    if flip:
        steps.append(RandFlip(prob=0.5, spatial_axis=0))
    return Augmentation(steps, seed=seed)


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes of an array (memory-mapped cache or RAM) as float32 tensors ``(C, X, Y, Z)``.

    Parameters
    ----------
    volumes : array-like of shape (N, X, Y, Z) or (N, C, X, Y, Z)
        E.g. ``TensorCache.data`` (float16 memmap) or a float32 array in RAM.
    labels : array-like of int, optional
        Class index of each item (aligned with ``rows``); items are ``(x, y)`` when given.
    rows : array-like of int, optional
        Rows of ``volumes`` forming the dataset (default all).
    transform : callable, optional
        Applied to each ``(C, X, Y, Z)`` tensor, e.g. :func:`make_augmentation`. One with an
        ``apply_batch`` method (:class:`~neuroml.data.augment.BatchAugmentation`) is applied by
        :func:`~neuroml.training.fit` to whole training batches instead.
    in_memory : bool, default=False
        Copy the selected rows into RAM as float32 once (fast path for small cohorts).
    """

    def __init__(
        self,
        volumes: npt.NDArray[Any],
        labels: npt.ArrayLike | None = None,
        rows: npt.ArrayLike | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        in_memory: bool = False,
    ) -> None:
        if volumes.ndim not in (4, 5):
            raise InputError(
                f"expected volumes of shape (N, X, Y, Z) or (N, C, X, Y, Z), got {tuple(volumes.shape)}"
            )
        rows = np.arange(len(volumes)) if rows is None else np.asarray(rows, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) != len(rows):
                raise InputError(f"{len(labels)} labels for {len(rows)} volumes")
        if in_memory:
            volumes = (
                np.stack([np.asarray(volumes[r], dtype=np.float32) for r in rows])
                if len(rows)
                else np.zeros((0, *volumes.shape[1:]), np.float32)
            )
            rows = np.arange(len(rows))
        self.volumes, self.rows, self.labels, self.transform = volumes, rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def set_seed(self, seed: int) -> None:
        """Reseed the random transform (called by the trainer every epoch and in each worker)."""
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(seed) % (2**32))

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        arr = np.asarray(self.volumes[self.rows[i]], dtype=np.float32)
        if self.transform is not None and np.shares_memory(arr, self.volumes):
            arr = arr.copy()  # a transform must never alter the volumes held in RAM
        x = torch.from_numpy(arr if arr.ndim == 4 else arr[None])
        if self.transform is not None:
            x = self.transform(x)
        if self.labels is None:
            return x
        return x, torch.as_tensor(self.labels[i])
