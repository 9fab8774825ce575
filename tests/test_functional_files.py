"""BOLD files: the repetition time (header, BIDS inheritance), SourceFile of a symlinked series,
resuming over a truncated output, group QC over an unreadable map."""

import json
import os
import time

import nibabel as nib
import numpy as np
import pytest

from neuroml._utils.fileio import read_json
from neuroml.errors import InputError
from neuroml.functional import func_output_paths, is_func_complete, preprocess_bold, repetition_time
from neuroml.functional.bold import check_func_params
from neuroml.io.image import check_img
from neuroml.io.templates import TEMPLATE_SPACE, target_grid

RES = 6.0
NAME = f"sub-01_task-rest_space-{TEMPLATE_SPACE}_res-6_desc-preproc_bold.nii.gz"
FAST = {"resolution": RES, "seeds": {}}


def _series(tr=2.5, n=24, seed=0):
    """A BOLD series already on the MNI grid (resampled, not registered: fast), header TR ``tr``."""
    affine, shape = target_grid(RES)
    data = 100 + np.random.default_rng(seed).standard_normal((*shape, n)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((RES, RES, RES, tr))
    return img


def _dataset(root, tr=2.5, sidecars=None):
    """A BIDS dataset with one BOLD series and ``sidecars`` (relative path -> JSON content)."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.9.0"})
    )
    for rel, content in (sidecars or {}).items():
        (root / rel).write_text(json.dumps(content))
    nib.save(_series(tr), str(func / NAME))
    return func / NAME


def test_check_img_keeps_the_repetition_time(tmp_path):
    img = _series(tr=2500.0)
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(tmp_path / "x.nii.gz"))
    out = check_img(tmp_path / "x.nii.gz", ndim=4)  # read from disk: a new header
    assert (
        out.header.get_zooms()[3] == pytest.approx(2.5) and out.header.get_xyzt_units()[1] == "sec"
    )
    assert repetition_time(out) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "header_tr,sidecars,expect",
    [
        (2.5, {"task-rest_bold.json": {"RepetitionTime": 2.5}}, 2.5),  # dataset-level sidecar only
        (2.5, {}, 2.5),  # header only (was 1.0)
        (
            2.0,
            {"task-rest_bold.json": {"RepetitionTime": 2.5}},
            2.5,
        ),  # the sidecar wins over the header
        (
            2.0,
            {
                "task-rest_bold.json": {"RepetitionTime": 3.0},  # the nearest sidecar wins
                "sub-01/sub-01_task-rest_bold.json": {"RepetitionTime": 2.5},
                "task-other_bold.json": {"RepetitionTime": 9.0},
            },
            2.5,
        ),
    ],
)
def test_repetition_time_reaches_the_cleaning(tmp_path, header_tr, sidecars, expect):
    path = _dataset(tmp_path / "bids", header_tr, sidecars)
    paths = preprocess_bold(path, tmp_path / "out", bids_dir=tmp_path / "bids", **FAST)
    side = read_json(paths["sidecar"])
    assert side["RepetitionTime"] == pytest.approx(expect)


def test_unknown_repetition_time_names_the_file(tmp_path):
    path = _dataset(tmp_path / "bids", 2.0, {"task-rest_bold.json": {"RepetitionTime": -1}})
    img = nib.load(str(path))
    img.header.set_zooms((RES, RES, RES, 0.0))
    with pytest.raises(InputError, match="repetition time unknown") as exc:
        repetition_time(img, path)
    assert str(path) in str(exc.value)


def test_symlinked_series_keeps_its_bids_name(tmp_path):
    root = tmp_path / "bids"
    path = _dataset(root)
    annexed = root / ".git" / "annex" / "objects" / "Xx" / "MD5E-s1--abc.nii.gz"
    annexed.parent.mkdir(parents=True)
    os.replace(path, annexed)
    path.symlink_to(os.path.relpath(annexed, path.parent))
    side = read_json(preprocess_bold(path, tmp_path / "out", bids_dir=root, **FAST)["sidecar"])
    assert side["SourceFile"] == f"sub-01/func/{NAME}"
    assert side["Sources"] == [f"bids:raw:sub-01/func/{NAME}"]


def test_truncated_output_is_not_complete_and_group_qc_reports_it(tmp_path, caplog):
    from neuroml.workflows import run_group_level

    root = tmp_path / "bids"
    path = _dataset(root)
    out = tmp_path / "out"
    paths = preprocess_bold(path, out, bids_dir=root, **FAST)
    params = check_func_params(**FAST)
    t0 = time.perf_counter()
    assert is_func_complete(path, out, **params)
    assert time.perf_counter() - t0 < 2.0  # checksums of a few small files
    assert paths == {
        **func_output_paths({"sub": "01", "task": "rest"}, out, params),
        "info": paths["info"],
    }
    mean = paths["map-mean"]
    mean.write_bytes(mean.read_bytes()[: mean.stat().st_size // 2])
    assert not is_func_complete(path, out, **params)
    html = run_group_level(out).read_text()  # the truncated map does not stop the group level
    assert "unreadable" in html and mean.name in html
    assert "unreadable" in caplog.text
