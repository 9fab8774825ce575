"""NeuroClassifier's scikit-learn contract: parameters checked in fit, labels and images named in errors."""

import nibabel as nib
import numpy as np
import pytest

from neuroml.errors import ConfigError, InputError
from neuroml.training import NeuroClassifier

SHAPE = (17, 18, 19)


def _volumes(n=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize(
    "labels",
    [
        ["a", "b", None, "a", "b", "a"],
        [0.0, 1.0, np.nan, 0.0, 1.0, 0.0],
        ["a", "b", " ", "a", "b", "a"],
    ],
)
def test_missing_labels_are_refused_not_made_a_class(labels):
    with pytest.raises(InputError, match=r"1 label\(s\) are missing.*\[2\]"):
        NeuroClassifier(epochs=1, val_fraction=0).fit(_volumes(), labels)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"val_fraction": 2.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"seed": None}, "seed"),
        ({"seed": -1}, "seed"),
    ],
)
def test_parameters_are_checked_in_fit(params, name):
    clf = NeuroClassifier(epochs=1, **params)  # __init__ stores them unchanged
    assert clf.get_params()[name] is params[name]
    with pytest.raises(ConfigError, match=f"'{name}' parameter"):
        clf.fit(_volumes(), ["a", "b"] * 3)


def test_numpy_integer_seed_is_accepted():
    clf = NeuroClassifier(epochs=1, val_fraction=0, augment=False, seed=np.int64(3)).fit(
        _volumes(), [0, 1] * 3
    )
    assert clf.classes_.tolist() == [0, 1]


def test_bad_in_memory_image_is_named_by_its_position():
    x = _volumes()
    imgs = [nib.Nifti1Image(v, np.eye(4)) for v in x]
    imgs[3] = nib.Nifti1Image(np.where(x[3] > 2, np.nan, x[3]), np.eye(4))
    with pytest.raises(InputError, match=r"images\[3\].*NaN"):
        NeuroClassifier(epochs=1, val_fraction=0).fit(imgs, ["a", "b"] * 3)
    imgs[3] = x[3]
    with pytest.raises(InputError, match=r"images\[3\].*got ndarray"):
        NeuroClassifier(epochs=1, val_fraction=0).fit(imgs, ["a", "b"] * 3)


def test_unusable_image_inputs_are_clear_errors():
    with pytest.raises(InputError, match="expected NIfTI paths.*got int"):
        NeuroClassifier(epochs=1).fit(5, ["a"])
    with pytest.raises(InputError, match="no images given"):
        NeuroClassifier(epochs=1).fit(_volumes()[:0], [])


def test_predicting_images_with_another_affine_says_so():
    x = _volumes()
    clf = NeuroClassifier(epochs=1, val_fraction=0, augment=False).fit(
        [nib.Nifti1Image(v, np.eye(4)) for v in x], ["a", "b"] * 3
    )
    shifted = np.eye(4)
    shifted[0, 3] = 10
    with pytest.raises(InputError, match="affine.*another position or voxel size"):
        clf.predict([nib.Nifti1Image(v, shifted) for v in x[:2]])
    assert clf.predict([nib.Nifti1Image(v, np.eye(4)) for v in x[:2]]).shape == (2,)


def test_an_image_loaded_from_a_file_is_named_by_its_file(tmp_path):
    x = _volumes()
    x[3, 0, 0, 0] = np.nan
    paths = [tmp_path / f"img{i}.nii.gz" for i in range(len(x))]
    for v, p in zip(x, paths):
        nib.save(nib.Nifti1Image(v, np.eye(4)), p)
    with pytest.raises(InputError, match=r"img3\.nii\.gz.*NaN") as info:
        NeuroClassifier(epochs=1, val_fraction=0).fit([nib.load(p) for p in paths], ["a", "b"] * 3)
    assert "images[3]" not in str(info.value)


@pytest.mark.parametrize("val_fraction", [np.float32(0.25), np.int64(0)])
def test_numpy_val_fraction_is_accepted(val_fraction):
    clf = NeuroClassifier(epochs=1, val_fraction=val_fraction, augment=False).fit(
        _volumes(), ["a", "b"] * 3
    )
    assert clf.classes_.tolist() == ["a", "b"]


def test_an_in_memory_image_off_the_grid_is_named_by_its_position():
    imgs = [nib.Nifti1Image(v, np.eye(4)) for v in _volumes()]
    imgs[4] = nib.Nifti1Image(_volumes(1)[0][:-1], np.eye(4))
    with pytest.raises(InputError, match=r"^images\[4\]: not on the grid of the first image"):
        NeuroClassifier(epochs=1, val_fraction=0).fit(imgs, ["a", "b"] * 3)
