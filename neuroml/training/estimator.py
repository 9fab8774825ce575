"""A scikit-learn style face of the training loop: :class:`NeuroClassifier`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from neuroml._utils.options import check_in_range
from neuroml.errors import InputError

if TYPE_CHECKING:
    import nibabel as nib
    import numpy.typing as npt

    #: What :meth:`NeuroClassifier.fit` and ``predict`` take: a path or image (3D or 4D), an array
    #: of volumes, or paths or images on one grid.
    _Images: TypeAlias = (
        str
        | os.PathLike[str]
        | nib.spatialimages.SpatialImage
        | npt.NDArray[Any]
        | torch.Tensor
        | Iterable[str | os.PathLike[str] | nib.spatialimages.SpatialImage]
    )

__all__ = ["NeuroClassifier"]


def _filename(img):
    """The file a nibabel image was loaded from (None for one made in memory)."""
    get = getattr(img, "get_filename", None)
    return get() if callable(get) else None


def _as_volumes(images, grid=None):
    """Images -> float32 array (N, C, X, Y, Z) and their grid ``(affine, shape)`` (None for arrays)."""
    import nibabel as nib

    from neuroml.io.image import check_img

    if isinstance(images, (str, os.PathLike, nib.spatialimages.SpatialImage)):
        img = check_img(images, ndim=(3, 4))
        data = np.asarray(img.dataobj, dtype=np.float32)
        data = np.moveaxis(data, -1, 0) if data.ndim == 4 else data[None]
        vols, found = data[:, None], (np.asarray(img.affine), data.shape[1:])
    elif isinstance(images, (np.ndarray, torch.Tensor)):
        vols = np.asarray(images, dtype=np.float32)
        if vols.ndim == 4:
            vols = vols[:, None]
        if vols.ndim != 5:
            raise InputError(
                f"expected an array of shape (N, X, Y, Z) or (N, C, X, Y, Z), got {vols.shape}"
            )
        if not np.isfinite(vols).all():
            raise InputError("images contain NaN or infinite values")
        if not len(vols):
            raise InputError("no images given")
        found = None
    else:
        try:
            images = list(images)
        except TypeError:
            raise InputError(
                f"expected NIfTI paths, nibabel images or an array of volumes, got "
                f"{type(images).__name__}"
            ) from None
        if not images:
            raise InputError("no images given")
        # paths and images loaded from a file are named by the file, in-memory images by their position
        names = [
            im if isinstance(im, (str, os.PathLike)) else _filename(im) or f"images[{i}]"
            for i, im in enumerate(images)
        ]
        imgs = [check_img(im, name=name) for im, name in zip(images, names)]
        affine, shape = np.asarray(imgs[0].affine), imgs[0].shape[:3]
        for i, im in enumerate(imgs):
            if im.shape[:3] != shape or not np.allclose(im.affine, affine, atol=1e-4):
                name = names[i]
                raise InputError(
                    f"not on the grid of the first image (shape {im.shape}, expected {shape})", name
                )
        vols = np.stack([np.asarray(im.dataobj, dtype=np.float32) for im in imgs])[:, None]
        found = (affine, tuple(shape))
    if grid is not None:
        shape = tuple(vols.shape[2:])
        if shape != tuple(grid[1]):
            raise InputError(
                f"images are on grid {shape} but the classifier was fitted on {tuple(grid[1])}"
            )
        if (
            found is not None
            and grid[0] is not None
            and not np.allclose(found[0], grid[0], atol=1e-4)
        ):
            raise InputError(
                f"images have the affine {np.round(found[0][:3], 4).tolist()} but the classifier was "
                f"fitted on images with {np.round(np.asarray(grid[0])[:3], 4).tolist()} (same shape, "
                "another position or voxel size); resample them to the training grid"
            )
    return vols, found


class NeuroClassifier(ClassifierMixin, BaseEstimator):
    """A MONAI 3D CNN classifier with the scikit-learn interface.

    It runs the same training loop as :func:`~neuroml.workflows.train_run` (early stopping
    on a stratified validation split of the training data).

    Parameters
    ----------
    model : str, default="compact"
        One of :data:`~neuroml.models.MODELS`.
    epochs : int, default=20
    batch_size : int, default=4
    lr : float, default=1e-3
    weight_decay : float, default=1e-4
    patience : int or None, default=10
    val_fraction : float, default=0.2
        Fraction of the training images (per class) held out for early stopping, in
        ``[0, 0.5]``; 0 trains on everything for ``epochs`` epochs.
    augment : bool, default=True
    seed : int, default=0
        Seed of the validation split, initialisation, shuffling and augmentation: a refit
        gives the same network.
    device : str, default="auto"
    amp : bool, default=True
    show_progress : bool, default=False
    input_pool : {"auto", 1, 2, 4}, default="auto"
        ``model="compact"``: average-pool the input by this factor (``"auto"``: 2 on the
        2 mm grid; :func:`~neuroml.models.resolve_input_pool`).

    Attributes
    ----------
    classes_ : ndarray
        Class labels (sorted).
    model_ : torch.nn.Module
        The fitted network (eval mode, CPU).
    history_ : list of dict
        Per-epoch records.
    best_epoch_ : int
    grid_ : tuple or None
        ``(affine, shape)`` of the training images (None when fitted on arrays).
    n_channels_, spatial_shape_ : int, tuple
    input_pool_ : int
        The input pooling factor used.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(6, 17, 17, 17)).astype("float32")
    >>> clf = NeuroClassifier(epochs=1, val_fraction=0).fit(X, ["a", "b"] * 3)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    def __init__(
        self,
        model: str = "compact",
        epochs: int = 20,
        batch_size: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int | None = 10,
        val_fraction: float = 0.2,
        augment: bool = True,
        seed: int = 0,
        device: str = "auto",
        amp: bool = True,
        show_progress: bool = False,
        input_pool: int | Literal["auto"] = "auto",
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.augment = augment
        self.seed = seed
        self.device = device
        self.amp = amp
        self.show_progress = show_progress
        self.input_pool = input_pool

    def fit(self, images: _Images, labels: npt.ArrayLike) -> NeuroClassifier:
        """Train on images (paths or images on one grid, a 4D image, or a 4D/5D array) and labels.

        Raises
        ------
        ConfigError
            For a parameter out of range (checked here, not in ``__init__``).
        InputError
            For an unreadable or non-finite image (naming its path, or ``images[i]``), images
            off the first one's grid, as many labels as images missing, a missing label
            (None, NaN, empty), or a single class.
        """
        from neuroml.data.dataset import VolumeDataset, make_augmentation
        from neuroml.models.factory import build_model, resolve_input_pool
        from neuroml.training.splits import validation_split
        from neuroml.training.trainer import TrainSettings, fit, seed_for
        from neuroml.training.trainer import class_weights as _class_weights

        check_in_range(
            "val_fraction", self.val_fraction, 0.0, 0.5, kind=(int, float, np.integer, np.floating)
        )
        seed = int(check_in_range("seed", self.seed, 0, None, kind=(int, np.integer)))
        vols, grid = _as_volumes(images)
        self.input_pool_ = resolve_input_pool(self.input_pool, self.model, vols.shape[2:])
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(vols):
            raise InputError(f"got {len(vols)} images but labels of shape {labels.shape}")
        missing = [
            i
            for i, v in enumerate(labels.tolist())
            if pd.isna(v) or (isinstance(v, str) and not v.strip())
        ]
        if missing:
            raise InputError(
                f"{len(missing)} label(s) are missing (None, NaN or empty) at position(s) "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; label every image or leave "
                "the unlabelled ones out"
            )
        self.classes_, y = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputError(
                f"labels hold a single class {self.classes_.tolist()}; need at least two"
            )
        ids = [f"sub-{i}" for i in range(len(vols))]
        train_ids, val_ids = validation_split(ids, y, self.val_fraction, seed=seed)
        train, val = [int(p[4:]) for p in train_ids], [int(p[4:]) for p in val_ids]
        settings = TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience if val else None,
            amp=self.amp,
            device=self.device,
            show_progress=self.show_progress,
        ).validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(seed, "init"))
            net = build_model(
                self.model,
                len(self.classes_),
                in_channels=vols.shape[1],
                spatial_shape=vols.shape[2:],
                input_pool=self.input_pool_,
            )
        aug = make_augmentation(seed=seed_for(seed, "augment")) if self.augment else None
        result = fit(
            net,
            VolumeDataset(vols, y[train], train, transform=aug),
            VolumeDataset(vols, y[val], val) if val else None,
            settings,
            class_weights=_class_weights(y[train], len(self.classes_)),
            stream=(seed,),
            desc="fit",
        )
        self.model_ = result.model.cpu().eval()
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.grid_ = grid
        self.n_channels_, self.spatial_shape_ = (
            int(vols.shape[1]),
            tuple(int(s) for s in vols.shape[2:]),
        )
        return self

    def predict_proba(self, images: _Images) -> npt.NDArray[np.float64]:
        """Class probabilities, shape ``(n_images, n_classes)``, columns in ``classes_`` order."""
        from sklearn.utils.validation import check_is_fitted

        from neuroml.training.trainer import predict_proba

        check_is_fitted(self, "model_")
        grid = (None if self.grid_ is None else self.grid_[0], self.spatial_shape_)
        vols, _ = _as_volumes(images, grid=grid)
        if vols.shape[1] != self.n_channels_:
            raise InputError(
                f"images have {vols.shape[1]} channel(s), the classifier was fitted on {self.n_channels_}"
            )
        return predict_proba(self.model_, vols, batch_size=max(self.batch_size, 8), device="cpu")

    def predict(self, images: _Images) -> npt.NDArray[Any]:
        """Predicted class labels."""
        proba = self.predict_proba(images)
        return self.classes_[proba.argmax(1)]
