"""The input checker, BIDS reading and naming."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from neuroml.errors import InputError
from neuroml.io import check_img, derivative_name, find_scans, parse_entities, read_participants
from neuroml.io.bids import check_label

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


def test_check_img_path_and_image_round_trip(img_3d, tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(img_3d, path)
    out = check_img(path)
    assert out.shape == (7, 8, 9)
    np.testing.assert_allclose(out.affine, img_3d.affine)
    np.testing.assert_allclose(np.asarray(out.dataobj), np.asarray(img_3d.dataobj), rtol=1e-6)
    again = check_img(out)  # idempotent
    assert again.shape == out.shape
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.asarray(out.dataobj))


def test_check_img_applies_scaling(tmp_path):
    data = np.arange(7 * 8 * 9, dtype=np.int16).reshape(7, 8, 9)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, path)
    out = np.asarray(check_img(path).dataobj)
    np.testing.assert_allclose(out, data * 0.5 + 10.0)


def test_single_volume_4d_is_accepted_as_3d(rng):
    img = nib.Nifti1Image(rng.random((7, 8, 9, 1)).astype(np.float32), np.eye(4))
    assert check_img(img).shape == (7, 8, 9)


@pytest.mark.parametrize(
    "maker, match",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (
            lambda p: p.write_bytes(gzip.compress(b"not an image at all" * 50)),
            "not a readable image",
        ),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, maker, match):
    path = tmp_path / "sub-01_T1w.nii.gz"
    maker(path)
    with pytest.raises(InputError, match=match) as info:
        check_img(path)
    assert "sub-01_T1w.nii.gz" in str(info.value)


def test_missing_file_and_truncated_file(tmp_path, img_3d):
    with pytest.raises(InputError, match="file not found"):
        check_img(tmp_path / "nope.nii.gz")
    path = tmp_path / "trunc.nii.gz"
    nib.save(img_3d, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="trunc.nii.gz"):
        check_img(path)


def test_wrong_dimensionality_message(rng):
    img4 = nib.Nifti1Image(rng.random((7, 8, 9, 3)).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match="expected a 3D image and got a 4D image"):
        check_img(img4, name="bold.nii.gz")
    assert check_img(img4, ndim=4).shape == (7, 8, 9, 3)
    img2 = nib.Nifti1Image(rng.random((7, 8)).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match="got a 2D image"):
        check_img(img2)


def test_non_finite_and_constant_data(rng):
    data = rng.random((7, 8, 9)).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    with pytest.raises(InputError, match="2 of 504 voxels are NaN or infinite"):
        check_img(nib.Nifti1Image(data, np.eye(4)), name="bad.nii")
    with pytest.raises(InputError, match="volume is constant"):
        check_img(nib.Nifti1Image(np.zeros((7, 8, 9), np.float32), np.eye(4)))
    assert check_img(
        nib.Nifti1Image(np.zeros((7, 8, 9), np.float32), np.eye(4)), allow_constant=True
    )


def _patched_sform(tmp_path, name, row, values):
    """Write a NIfTI-1 file whose sform row ``row`` holds ``values`` (a hostile header)."""
    img = nib.Nifti1Image(np.random.default_rng(1).random((7, 8, 9)).astype(np.float32), np.eye(4))
    img.header.set_sform(np.eye(4), code=1)
    img.header.set_qform(None, code=0)
    path = tmp_path / name
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    offset = 280 + 16 * row  # srow_x, srow_y, srow_z: four float32 each from byte 280
    raw[offset : offset + 16] = np.asarray(values, dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "row, values, match",
    [(2, [0, 0, 0, 0], "singular"), (0, [np.nan, 0, 0, 0], "affine contains NaN")],
)
def test_singular_and_non_finite_affine(tmp_path, row, values, match):
    path = _patched_sform(tmp_path, "hostile.nii", row, values)
    with pytest.raises(InputError, match=match) as info:
        check_img(path)
    assert "hostile.nii" in str(info.value)


def test_not_an_image_object():
    with pytest.raises(InputError, match="expected a path or a nibabel image, got list"):
        check_img([1, 2, 3])


@pytest.mark.parametrize(
    "name, outcome",
    [
        ("anatomical.nii", (33, 41, 25)),
        ("minc1_1_scale.mnc", (10, 20, 20)),
        ("minc2_1_scale.mnc", (10, 20, 20)),
        ("functional.nii", "expected a 3D image and got a 4D image"),
        ("example4d.nii.gz", "expected a 3D image and got a 4D image"),
        ("phantom_truncated.PAR", "not a readable image"),
        ("T1.PAR", "not a readable image"),
    ],
)
def test_nibabel_real_files(name, outcome):
    path = os.path.join(NIB_DATA, name)
    if isinstance(outcome, tuple):
        assert check_img(path).shape == outcome
    else:
        with pytest.raises(InputError, match=outcome) as info:
            check_img(path)
        assert name in str(info.value)
        assert "\n" not in str(info.value)


def test_parse_and_build_names():
    ents, suffix, ext = parse_entities("sub-01_ses-pre_run-2_T1w.nii.gz")
    assert ents == {"sub": "01", "ses": "pre", "run": "2"} and suffix == "T1w" and ext == ".nii.gz"
    name = derivative_name(ents, "T1w", space="MNI152NLin2009aSym", res="2", desc="preproc")
    assert name == "sub-01_ses-pre_run-2_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"


@pytest.mark.parametrize("label", ["../etc", "sub-01/..", "a b", "x\\y", ""])
def test_unsafe_participant_labels_are_refused(label):
    with pytest.raises(InputError, match="invalid participant label"):
        check_label(label)


def _bids(tmp_path, img):
    (tmp_path / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    for sub, ses in [("01", None), ("02", "a"), ("02", "b")]:
        folder = tmp_path / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        nib.save(img, folder / f"{stem}_T1w.nii.gz")
        (folder / f"{stem}_T1w.json").write_text("{}")
    return tmp_path


def test_find_scans_sessions_and_labels(tmp_path, img_3d):
    root = _bids(tmp_path, img_3d)
    scans = find_scans(root)
    assert [(s.subject, s.session) for s in scans] == [("01", None), ("02", "a"), ("02", "b")]
    assert [s.subject for s in find_scans(root, participant_labels=["sub-02"])] == ["02", "02"]
    # a single string (a YAML `participant_labels: "02"`) is one label, not the labels '0' and '2'
    assert [s.subject for s in find_scans(root, participant_labels="02")] == ["02", "02"]
    with pytest.raises(InputError, match="participant 'sub-03' not found"):
        find_scans(root, participant_labels=["03"])
    with pytest.raises(InputError, match="invalid participant label"):
        find_scans(root, participant_labels=["../01"])


def test_find_scans_requires_bids(tmp_path):
    with pytest.raises(InputError, match="dataset_description.json is missing"):
        find_scans(tmp_path)


def test_read_participants_errors(tmp_path):
    p = tmp_path / "participants.tsv"
    p.write_text("participant_id\tdiagnosis\nsub-01\tMDD\nsub-02\tcontrol\n")
    df = read_participants(p)
    assert df.loc["sub-02", "diagnosis"] == "control"
    p.write_text("participant_id\tdiagnosis\nsub-01\tMDD\nsub-01\tcontrol\n")
    with pytest.raises(InputError, match="listed more than once"):
        read_participants(p)
    p.write_text("subject\tdiagnosis\n01\tMDD\n")
    with pytest.raises(InputError, match="missing column 'participant_id'"):
        read_participants(p)
    p.write_text("participant_id\tdiagnosis\nsub-../x\tMDD\n")
    with pytest.raises(InputError, match="invalid participant_id"):
        read_participants(p)
    with pytest.raises(InputError, match="participants file not found"):
        read_participants(tmp_path / "missing.tsv")
