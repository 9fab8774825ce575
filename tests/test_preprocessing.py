"""T1w preprocessing: registration accuracy, grids, normalization, files, resume, failures.

Inputs are tiny: the MNI template at 4 mm, moved by a known affine into a scanner grid
with another orientation and unequal sides; outputs on the 4 mm grid.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from neuroml._utils.fileio import sha256_file
from neuroml.errors import ConfigError, InputError
from neuroml.io.templates import (
    TEMPLATE_SPACE,
    brain_mask_on_grid,
    mni_brain_mask,
    mni_template,
    target_grid,
)
from neuroml.preprocessing import (
    T1wPreprocessor,
    is_complete,
    mni_to_scanner,
    normalize_array,
    output_paths,
    preprocess_scan,
    preprocess_t1w,
    read_transform,
)
from neuroml.preprocessing.anat import check_plausible_t1w
from neuroml.preprocessing.qc import robust_z
from neuroml.workflows import read_failures, run_group_level, run_participant_level

RES = 4.0
#: Batch tests are about files and bookkeeping: they skip N4 (2 s a scan even at 4 mm).
FAST = {"resolution": RES, "n4": False, "show_progress": False}
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


# --------------------------------------------------------------------------- tiny subjects
def _true_affine(seed):
    """A known MNI -> scanner affine: rotation, anisotropic scaling, shift."""
    rng = np.random.default_rng(seed)
    lin = Rotation.from_euler("xyz", rng.uniform(-10, 10, 3), degrees=True).as_matrix()
    lin = lin @ np.diag(rng.uniform(0.92, 1.08, 3))
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = rng.uniform(-12, 12, 3) + np.array([4.0, 25.0, 30.0])
    return a


def make_subject(seed=0, vox=(4.0, 3.5, 4.5), shape=(50, 66, 46), noise=0.02):
    """The template seen by a scanner: known affine, LPS-like axes, bias field, noise.

    Returns the image and the true MNI -> scanner affine.
    """
    rng = np.random.default_rng(seed + 100)
    mni2scan = _true_affine(seed)
    # scanner grid in 'LIP'-like order (axes permuted and flipped) around the head
    scan_affine = np.array(
        [[-vox[0], 0, 0, 0], [0, 0, -vox[2], 0], [0, -vox[1], 0, 0], [0, 0, 0, 1.0]]
    )
    centre = mni2scan[:3, :3] @ [0, -18, 10] + mni2scan[:3, 3]
    scan_affine[:3, 3] = centre - scan_affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    tpl = mni_template()
    data = np.asarray(tpl.dataobj)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    to_tpl = np.linalg.inv(tpl.affine) @ np.linalg.inv(mni2scan) @ scan_affine
    coords = to_tpl[:3, :3] @ ijk + to_tpl[:3, 3:4]
    out = map_coordinates(data, coords, order=1, cval=0.0).reshape(shape)
    world = (scan_affine[:3, :3] @ ijk + scan_affine[:3, 3:4]).T.reshape(shape + (3,))
    bias = np.exp(0.002 * (world[..., 0] - world[..., 1] + 0.5 * world[..., 2]))
    out = out * bias * 800 + np.abs(rng.normal(0, noise * 800, shape))
    return nib.Nifti1Image(out.astype(np.float32), scan_affine), mni2scan


def brain_points(step=7):
    mask = mni_brain_mask()
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)[::step]
    return idx @ mask.affine[:3, :3].T + mask.affine[:3, 3]


def mean_error(transform, mni2scan):
    pts = brain_points()
    true = pts @ mni2scan[:3, :3].T + mni2scan[:3, 3]
    return float(np.linalg.norm(mni_to_scanner(transform, pts) - true, axis=1).mean())


def write_bids(root, scans):
    """A BIDS dataset: ``scans`` maps relative paths to images (or bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    subs = sorted({p.split("/")[0] for p in scans})
    (root / "participants.tsv").write_text(
        "participant_id\tdiagnosis\n" + "".join(f"{s}\tcontrol\n" for s in subs)
    )
    for rel, content in scans.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, Path):
            shutil.copy(content, path)
        else:
            nib.save(content, str(path))
    return root


@pytest.fixture(scope="module")
def subject():
    return make_subject(0)


@pytest.fixture(scope="module")
def processed(subject):
    img, mni2scan = subject
    return preprocess_scan(img, resolution=RES), mni2scan


# --------------------------------------------------------------------------- in memory
def test_registration_recovers_known_affine(processed):
    result, mni2scan = processed
    err = mean_error(result.transform, mni2scan)
    assert err < 1.0, f"mean error {err:.2f} mm with 4 mm voxels"
    assert result.qc["qc_pass"] and result.qc["correlation"] > 0.8
    assert result.qc["coverage"] > 0.95


def test_partial_fov_slab():
    """A 72 mm slab through the brain still registers, and QC sees the cut."""
    img, mni2scan = make_subject(1, shape=(50, 16, 46))
    result = preprocess_scan(img, resolution=RES)
    assert result.qc["coverage"] < 0.8
    assert not result.qc["qc_pass"]
    assert any("field of view" in r for r in result.qc["reasons"])
    assert mean_error(result.transform, mni2scan) < 4.0


def test_output_on_exact_target_grid(processed):
    result, _ = processed
    affine, shape = target_grid(RES)
    for img in (result.image, result.mask):
        assert img.shape == shape
        np.testing.assert_array_equal(img.affine, affine)
    assert result.image.get_data_dtype() == np.float32


def test_zscore_inside_mask(processed):
    result, _ = processed
    data = np.asarray(result.image.dataobj)
    mask = np.asarray(brain_mask_on_grid(RES).dataobj) > 0
    assert abs(np.median(data[mask])) < 1e-3
    q1, q3 = np.percentile(data[mask], [25, 75])
    assert (q3 - q1) / 1.349 == pytest.approx(1.0, abs=1e-2)
    assert np.all(data[~mask] == 0)


def test_percentile_normalization(subject):
    img, _ = subject
    est = T1wPreprocessor(resolution=RES, normalization="percentile", n4=False).fit(img)
    out = np.asarray(est.transform(img).dataobj)
    mask = np.asarray(brain_mask_on_grid(RES).dataobj) > 0
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~mask] == 0)
    assert 0.3 < np.median(out[mask]) < 0.9


def test_normalize_array_errors():
    data = np.ones((7, 8, 9), dtype=np.float32)
    with pytest.raises(InputError, match="do not vary"):
        normalize_array(data, data > 0)
    with pytest.raises(InputError, match="empty"):
        normalize_array(data, data > 5)
    with pytest.raises(ConfigError, match="Did you mean 'zscore'"):
        normalize_array(data, data > 0, "zscor")


def test_parameters_are_checked(tmp_path, subject):
    with pytest.raises(ConfigError, match="Did you mean 'normalization'"):
        preprocess_scan(subject[0], normalisation="zscore")
    with pytest.raises(ConfigError, match="Did you mean 'identity'"):
        preprocess_scan(subject[0], init=["identiy"])
    with pytest.raises(ConfigError, match="resolution"):
        preprocess_scan(subject[0], resolution=0.1)


def test_estimator_is_fitted_before_transform(subject):
    with pytest.raises(ConfigError, match="not fitted"):
        T1wPreprocessor().transform(subject[0])


def test_same_input_same_output(subject, processed):
    """The sampler's seed is fixed: a second run gives bit-identical voxels."""
    again = preprocess_scan(subject[0], resolution=RES)
    np.testing.assert_array_equal(
        np.asarray(again.image.dataobj), np.asarray(processed[0].image.dataobj)
    )


# --------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, subject):
    """sub-01 (ok), sub-02 (random bytes), sub-03 (4D), sub-04 with session and two runs."""
    root = tmp_path_factory.mktemp("bids")
    img4d = nib.Nifti1Image(
        np.random.default_rng(0).random((9, 10, 11, 3)).astype(np.float32), np.eye(4)
    )
    scans = {
        "sub-01/anat/sub-01_T1w.nii.gz": subject[0],
        "sub-02/anat/sub-02_T1w.nii.gz": np.random.default_rng(1).bytes(3000),
        "sub-03/anat/sub-03_T1w.nii.gz": img4d,
        "sub-04/ses-a/anat/sub-04_ses-a_run-1_T1w.nii.gz": make_subject(2)[0],
        "sub-04/ses-a/anat/sub-04_ses-a_run-2_T1w.nii.gz": make_subject(3)[0],
    }
    return write_bids(root, {k: v for k, v in scans.items()})


@pytest.fixture(scope="module")
def batch(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv")
    result = run_participant_level(dataset, out, **FAST)
    return out, result


def _paths(out, entities):
    return output_paths(entities, out, RES)


def test_batch_counts_and_failures(batch):
    out, result = batch
    assert result.n_done == 3 and result.n_skipped == 0
    assert sorted(f.participant_id for f in result.failures) == ["sub-02", "sub-03"]
    rows = {r["participant_id"]: r for r in read_failures(out)}
    assert set(rows) == {"sub-02", "sub-03"}
    assert rows["sub-02"]["file"] == "sub-02/anat/sub-02_T1w.nii.gz"
    assert "not a readable image" in rows["sub-02"]["reason"]
    assert "4D" in rows["sub-03"]["reason"]
    for r in rows.values():
        assert "\n" not in r["reason"] and "Traceback" not in r["reason"]
    assert "sub-02" in str(result.failures[0])


def test_outputs_and_sidecar(batch, dataset):
    out, _ = batch
    paths = _paths(out, {"sub": "01"})
    for p in paths.values():
        assert p.is_file(), p
    assert paths["preproc"].name == f"sub-01_space-{TEMPLATE_SPACE}_res-4_desc-preproc_T1w.nii.gz"
    assert paths["xfm"].name == f"sub-01_res-4_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.txt"
    assert paths["figure"] == out / "sub-01" / "figures" / "sub-01_res-4_desc-qc_T1w.png"
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    side = json.loads(paths["sidecar"].read_text())
    src = dataset / "sub-01/anat/sub-01_T1w.nii.gz"
    assert side["SourceFile"] == "sub-01/anat/sub-01_T1w.nii.gz"
    assert side["SourceSHA256"] == sha256_file(src)
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert side["Space"] == TEMPLATE_SPACE and side["Resolution"] == RES
    assert side["Normalization"] == "zscore"
    assert side["Parameters"]["resolution"] == RES
    assert set(side["QC"]) >= {"correlation", "brain_volume_ml", "qc_pass", "coverage"}
    assert {"n4", "registration", "resample", "qc"} <= set(side["Timings"]["wall_s"])
    assert side["SoftwareVersions"]["SimpleITK"]
    assert str(dataset) not in json.dumps(side), "no absolute paths in the sidecar"
    # the written transform maps MNI to scanner like the in-memory one
    img = nib.load(str(paths["preproc"]))
    assert img.shape == target_grid(RES)[1] and img.get_data_dtype() == np.float32
    tx = read_transform(paths["xfm"])
    assert mean_error(tx, make_subject(0)[1]) < 1.0
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "neuroml"
    assert desc["SourceDatasets"] == [{"URL": "file://" + str(dataset.resolve())}]


def test_sessions_and_runs_keep_their_entities(batch):
    out, _ = batch
    for run in ("1", "2"):
        paths = _paths(out, {"sub": "04", "ses": "a", "run": run})
        assert paths["preproc"].is_file()
        assert paths["preproc"].parent == out / "sub-04" / "ses-a" / "anat"
        assert f"sub-04_ses-a_run-{run}_space-" in paths["preproc"].name
        assert paths["figure"].name == f"sub-04_ses-a_run-{run}_res-4_desc-qc_T1w.png"


def test_resume_skips_and_redoes(batch, dataset):
    out, _ = batch
    p1 = _paths(out, {"sub": "01"})
    p4 = _paths(out, {"sub": "04", "ses": "a", "run": "1"})
    p5 = _paths(out, {"sub": "04", "ses": "a", "run": "2"})
    before = {k: p.stat().st_mtime_ns for k, p in p1.items()}
    os.unlink(p4["xfm"])  # a deleted output
    p5["sidecar"].write_text("{ not json")  # a corrupt sidecar
    result = run_participant_level(dataset, out, **FAST)
    assert result.n_skipped == 1 and result.n_done == 2
    assert {k: p.stat().st_mtime_ns for k, p in p1.items()} == before
    assert p4["xfm"].is_file() and json.loads(p5["sidecar"].read_text())["QC"]
    # other parameters or another input: the scan is not complete
    scan = dataset / "sub-01/anat/sub-01_T1w.nii.gz"
    assert is_complete(scan, out, resolution=RES, n4=False)
    assert not is_complete(scan, out, resolution=RES, n4=False, qc_min_r=0.5)
    assert not is_complete(scan, out, resolution=RES)
    assert not is_complete(scan, out, resolution=RES, n4=False, sha256="0" * 64)


def test_failures_tsv_is_rewritten_in_parallel_runs(tmp_path, subject):
    root = write_bids(
        tmp_path / "bids",
        {
            "sub-01/anat/sub-01_T1w.nii.gz": b"garbage" * 100,
            "sub-02/anat/sub-02_T1w.nii.gz": subject[0],
        },
    )
    out = tmp_path / "out"
    result = run_participant_level(root, out, n_jobs=2, **FAST)
    assert result.n_done == 1 and [f.participant_id for f in result.failures] == ["sub-01"]
    assert [r["participant_id"] for r in read_failures(out)] == ["sub-01"]
    nib.save(subject[0], str(root / "sub-01/anat/sub-01_T1w.nii.gz"))
    result = run_participant_level(root, out, n_jobs=2, **FAST)
    assert (result.n_done, result.n_skipped) == (1, 1) and not result.failures
    assert not (out / "failures.tsv").exists()
    # a scan replaced by a broken file fails and leaves no stale outputs
    paths = output_paths({"sub": "02"}, out, RES)
    assert all(p.is_file() for p in paths.values())
    (root / "sub-02/anat/sub-02_T1w.nii.gz").write_bytes(b"\x1f\x8b broken")
    result = run_participant_level(root, out, **FAST)
    assert [f.participant_id for f in result.failures] == ["sub-02"]
    assert not any(p.exists() for p in paths.values())


def test_failures_tsv_lists_files_in_order_whatever_the_runs(tmp_path):
    root = write_bids(
        tmp_path / "bids",
        {f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz": b"garbage" * 100 for i in (1, 2, 3)},
    )
    out = tmp_path / "out"
    run_participant_level(root, out, participant_labels=["03"], **FAST)
    run_participant_level(
        root, out, participant_labels=["01"], **FAST
    )  # appended after sub-03's row before
    run_participant_level(root, out, participant_labels=["02"], **FAST)
    assert [r["participant_id"] for r in read_failures(out)] == ["sub-01", "sub-02", "sub-03"]


def test_failure_of_a_renamed_or_deleted_file_is_cleared(tmp_path, subject):
    # a bad file fixed by renaming it (gzip named .nii) or deleting it leaves no stale failures.tsv entry
    root = write_bids(
        tmp_path / "bids",
        {
            "sub-01/anat/sub-01_T1w.nii": b"garbage" * 100,
            "sub-02/anat/sub-02_T1w.nii.gz": b"garbage" * 100,
            "sub-03/anat/sub-03_T1w.nii.gz": b"garbage" * 100,
        },
    )
    out = tmp_path / "out"
    result = run_participant_level(root, out, **FAST)
    assert len(result.failures) == 3 and len(read_failures(out)) == 3
    (root / "sub-01/anat/sub-01_T1w.nii").unlink()
    nib.save(subject[0], str(root / "sub-01/anat/sub-01_T1w.nii.gz"))
    (root / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    (root / "sub-02/anat/sub-02_T1w.nii.gz").symlink_to(
        "missing.nii.gz"
    )  # a broken link stays listed
    result = run_participant_level(root, out, participant_labels=["01"], **FAST)
    assert result.n_done == 1 and not result.failures
    assert sorted(r["file"] for r in read_failures(out)) == [
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz",
    ]
    (root / "sub-03/anat/sub-03_T1w.nii.gz").unlink()
    run_participant_level(root, out, participant_labels=["01"], **FAST)
    assert [r["file"] for r in read_failures(out)] == ["sub-02/anat/sub-02_T1w.nii.gz"]


def test_misnamed_t1w_files_are_failures(tmp_path, subject):
    # a T1w the BIDS search skips (no 'sub-' in its name, lower-case suffix, upper-case extension,
    # another participant's label) is reported in failures.tsv, not ignored in silence
    names = [
        "sub-01/anat/sub01_T1w.nii.gz",
        "sub-02/anat/sub-02_t1w.nii",
        "sub-02/anat/sub-02_T1w.NII.GZ",
        "sub-02/ses-1/anat/sub-03_ses-1_T1w.nii.gz",
        "sub-03_old/anat/sub-03_T1w.nii.gz",
    ]
    root = write_bids(
        tmp_path / "bids",
        {
            **{n: b"x" for n in names},
            "sub-02/anat/sub-02_T1w.json": b"{}",
            "sub-02/anat/sub-02_T2w.nii.gz": b"x",
            "sub-03/anat/sub-03_T1w.nii.gz": subject[0],
        },
    )
    out = tmp_path / "out"
    result = run_participant_level(root, out, participant_labels=["01"], **FAST)
    assert result.n_done == 0 and [f.file for f in result.failures] == [names[0]]
    assert "not BIDS" in result.failures[0].reason
    result = run_participant_level(root, out, **FAST)
    assert result.n_done == 1
    assert sorted(f.file for f in result.failures) == sorted(names)
    assert sorted(r["file"] for r in read_failures(out)) == sorted(names)
    assert {f.participant_id for f in result.failures} == {"sub-01", "sub-02", "sub-03_old"}
    # renamed to a BIDS name: processed, and its entry leaves failures.tsv
    (root / names[0]).rename(root / "sub-01/anat/sub-01_T1w.nii.gz")
    nib.save(subject[0], str(root / "sub-01/anat/sub-01_T1w.nii.gz"))
    result = run_participant_level(root, out, participant_labels=["01"], **FAST)
    assert result.n_done == 1 and not result.failures
    assert names[0] not in {r["file"] for r in read_failures(out)}


def test_stale_temporaries_of_skipped_scans_are_removed(tmp_path, subject):
    # a killed run's temporaries beside a finished (skipped) scan or failures.tsv go; a live writer's stay
    from neuroml._utils.fileio import _OWNER

    root = write_bids(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": subject[0]})
    out = tmp_path / "out"
    assert run_participant_level(root, out, **FAST).n_done == 1
    host = _OWNER.rsplit("-", 1)[0]
    image = output_paths({"sub": "01"}, out, RES)["preproc"]
    dead = [
        image.parent / f".{image.name}.{host}-4194303.x1.tmp.nii.gz",
        out / f".failures.tsv.{host}-4194303.x2.tmp.tsv",
    ]
    live = image.parent / f".{image.name}.{_OWNER}.x3.tmp.nii.gz"
    for path in dead + [live]:
        path.write_bytes(b"partial")
    result = run_participant_level(root, out, **FAST)
    assert result.n_skipped == 1
    assert not any(p.exists() for p in dead) and live.exists()


def test_two_inputs_with_one_output_name_are_failures(tmp_path, subject):
    # sub-01_T1w.nii beside sub-01_T1w.nii.gz would write the same outputs (one at random each run)
    root = write_bids(
        tmp_path / "bids",
        {
            "sub-01/anat/sub-01_T1w.nii.gz": subject[0],
            "sub-01/anat/sub-01_T1w.nii": subject[0],
            "sub-02/anat/sub-02_T1w.nii.gz": subject[0],
        },
    )
    out = tmp_path / "out"
    result = run_participant_level(root, out, n_jobs=2, **FAST)
    dups = ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_T1w.nii.gz"]
    assert result.n_done == 1 and sorted(f.file for f in result.failures) == dups
    assert all("same BIDS name" in f.reason for f in result.failures)
    assert sorted(r["file"] for r in read_failures(out)) == dups
    assert not output_paths({"sub": "01"}, out, RES)["sidecar"].exists()
    (root / dups[0]).unlink()
    result = run_participant_level(root, out, **FAST)
    assert (result.n_done, result.n_skipped) == (1, 1) and not result.failures
    assert not (out / "failures.tsv").exists()


def test_group_level_escapes_html(batch):
    out, _ = batch
    # a hostile reason in failures.tsv must come out escaped
    with open(out / "failures.tsv", "a") as fh:
        fh.write("sub-99\tsub-99/anat/x<script>.nii\t<script>alert(1)</script>\n")
    html_path = run_group_level(out)
    text = html_path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.count("data:image/png;base64,") == 3
    tsv = (out / "group_qc.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == [
        "participant_id",
        "file",
        "correlation",
        "coverage",
        "brain_volume_ml",
        "qc_pass",
        "robust_z",
        "outlier",
    ]
    assert len(tsv) == 4


def test_group_level_without_outputs(tmp_path):
    with pytest.raises(InputError, match="no preprocessed scans"):
        run_group_level(tmp_path)


def test_robust_z_flags_low_r():
    z = robust_z([0.95, 0.96, 0.94, 0.95, 0.97, 0.40])
    assert z[-1] < -3 and np.all(np.abs(z[:-1]) < 3)


def test_group_qc_scores_each_resolution_against_its_own(tmp_path):
    """At 3 mm every r is lower than at 1 mm: pooled, the whole 3 mm group would look like outliers."""
    from neuroml.preprocessing.qc import write_group_qc

    rows = [
        {
            "participant_id": f"sub-{i}",
            "file": f"f{i}",
            "correlation": r,
            "coverage": 1.0,
            "brain_volume_ml": 1200.0,
            "qc_pass": True,
            "figure": None,
            "resolution": res,
        }
        for i, (r, res) in enumerate(
            [
                (0.95, 1.0),
                (0.96, 1.0),
                (0.94, 1.0),
                (0.95, 1.0),
                (0.955, 1.0),
                (0.945, 1.0),
                (0.952, 1.0),
                (0.948, 1.0),
                (0.80, 3.0),
                (0.81, 3.0),
                (0.79, 3.0),
                (0.40, 3.0),
            ]
        )
    ]
    write_group_qc(rows, tmp_path)
    assert [r["outlier"] for r in rows] == [False] * 11 + [True]
    assert max(abs(r["robust_z"]) for r in rows[:11]) < 3


def test_output_folder_of_another_dataset(batch, tmp_path, subject):
    out, _ = batch
    other = write_bids(tmp_path / "other", {"sub-01/anat/sub-01_T1w.nii.gz": subject[0]})
    with pytest.raises(ConfigError, match="another dataset"):
        run_participant_level(other, out, **FAST)


def test_plain_file_needs_a_participant(tmp_path, subject):
    path = tmp_path / "head.nii.gz"
    nib.save(subject[0], str(path))
    with pytest.raises(InputError, match="participant_label"):
        preprocess_t1w(path, tmp_path / "out", resolution=RES)


# --------------------------------------------------------------------------- real files
@pytest.mark.parametrize(
    "name, expected",
    [
        ("anatomical.nii", None),  # a real T1 with a partial field of view: processed, QC flags it
        ("minc1_1_scale.mnc", "too small for a head"),
        ("minc2_1_scale.mnc", "too small for a head"),
        ("tiny.mnc", "too small for a head"),
        ("small.mnc", "too coarse"),
        ("minc1_4d.mnc", "4D"),
        ("minc2_4d.mnc", "4D"),
        ("phantom_EPI_asc_CLEAR_2_1.PAR", "4D"),
        ("functional.nii", "4D"),
        ("example4d.nii.gz", "4D"),
        ("example_nifti2.nii.gz", "4D"),
        ("resampled_anat_moved.nii", "NaN"),
    ],
)
def test_nibabel_files_as_t1w(name, expected):
    path = NIBABEL_DATA / name
    if not path.exists():
        pytest.skip(f"{name} not shipped with this nibabel")
    if expected is None:
        result = preprocess_scan(path, resolution=RES)
        assert result.image.shape == target_grid(RES)[1]
        assert np.isfinite(np.asarray(result.image.dataobj)).all()
        assert result.qc["qc_pass"] or result.qc["reasons"]
        assert not result.qc["qc_pass"]  # about a quarter of the brain is in the slab
    else:
        with pytest.raises(InputError, match=expected) as info:
            preprocess_scan(path, resolution=RES)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_plausibility_check():
    img = nib.Nifti1Image(np.ones((10, 20, 20), np.float32), np.diag([2.0, 2, 2, 1]))
    with pytest.raises(InputError, match=r"field of view 20 x 40 x 40 mm is too small"):
        check_plausible_t1w(img, "x.nii")


# --------------------------------------------------------------------------- kill -9
_BATCH = """
import sys
from neuroml.workflows import run_participant_level
run_participant_level(sys.argv[1], sys.argv[2], resolution=4.0, show_progress=False)
"""


def _voxels(out):
    return {
        p.relative_to(out).as_posix(): np.asarray(nib.load(str(p)).dataobj)
        for p in sorted(out.glob("sub-*/**/*_desc-preproc_T1w.nii.gz"))
    }


@pytest.mark.slow
def test_kill_and_resume_gives_identical_outputs(tmp_path):
    scans = {f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz": make_subject(10 + i)[0] for i in range(1, 4)}
    root = write_bids(tmp_path / "bids", scans)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", _BATCH, str(root), str(killed)], env=env, start_new_session=True
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(killed.glob("sub-*/anat/*_T1w.json"))) >= 1:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # well into the next scan
        assert proc.poll() is None, "the batch finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_before = len(list(killed.glob("sub-*/anat/*_T1w.json")))
    assert 1 <= n_before < 3
    result = run_participant_level(root, killed, resolution=RES, show_progress=False)
    assert result.n_skipped == n_before and result.n_done == 3 - n_before and not result.failures
    assert not list(killed.rglob(".*.tmp*")), "temporary files left behind"
    run_participant_level(root, clean, resolution=RES, show_progress=False)
    a, b = _voxels(killed), _voxels(clean)
    assert list(a) == list(b) and len(a) == 3
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --------------------------------------------------------------------------- outputs that must survive
def test_truncated_output_is_redone(tmp_path, subject):
    root = write_bids(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": subject[0]})
    out = tmp_path / "out"
    assert run_participant_level(root, out, **FAST).n_done == 1
    scan = root / "sub-01/anat/sub-01_T1w.nii.gz"
    t0 = time.perf_counter()
    assert is_complete(scan, out, resolution=RES, n4=False)
    assert time.perf_counter() - t0 < 2.0  # checksums of a few small files stay cheap
    paths = output_paths({"sub": "01"}, out, RES)
    good = paths["preproc"].read_bytes()
    paths["preproc"].write_bytes(good[: len(good) // 2])
    assert not is_complete(scan, out, resolution=RES, n4=False)
    result = run_participant_level(root, out, **FAST)
    assert (result.n_done, result.n_skipped) == (1, 0)
    assert np.asarray(nib.load(str(paths["preproc"])).dataobj).shape == target_grid(RES)[1]


def test_failed_attempt_keeps_the_previous_version(tmp_path, subject, monkeypatch):
    import neuroml.preprocessing.t1w as t1w

    root = write_bids(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": subject[0]})
    out = tmp_path / "out"
    run_participant_level(root, out, **FAST)
    paths = output_paths({"sub": "01"}, out, RES)
    before = {k: p.read_bytes() for k, p in paths.items()}

    def boom(*args, **kwargs):
        raise InputError("registration failed everywhere", "x")

    monkeypatch.setattr(t1w, "preprocess_scan", boom)
    result = run_participant_level(root, out, **{**FAST, "normalization": "percentile"})
    assert [f.participant_id for f in result.failures] == ["sub-01"]
    assert {
        k: p.read_bytes() for k, p in paths.items()
    } == before  # the same input's earlier version stays
    assert is_complete(root / "sub-01/anat/sub-01_T1w.nii.gz", out, resolution=RES, n4=False)
    assert not list(out.rglob(".*.tmp*"))


def test_two_resolutions_in_one_folder_keep_their_own_files(tmp_path, subject):
    root = write_bids(
        tmp_path / "bids",
        {
            "sub-01/anat/sub-01_T1w.nii.gz": subject[0],
            "sub-02/anat/sub-02_T1w.nii.gz": make_subject(2)[0],
        },
    )
    out = tmp_path / "out"
    for res in (4.0, 6.0):
        assert run_participant_level(root, out, **{**FAST, "resolution": res}).n_done == 2
    p4, p6 = output_paths({"sub": "01"}, out, 4.0), output_paths({"sub": "01"}, out, 6.0)
    assert p4["xfm"] != p6["xfm"] and p4["figure"] != p6["figure"]
    assert "res-6" in p6["xfm"].name and "res-6" in p6["figure"].name
    assert all(p.is_file() for p in [*p4.values(), *p6.values()])
    run_group_level(out)
    rows = [r.split("\t") for r in (out / "group_qc.tsv").read_text().splitlines()[1:]]
    assert sorted(r[1] for r in rows) == [
        "sub-01/anat/sub-01_T1w.nii.gz (res-4)",
        "sub-01/anat/sub-01_T1w.nii.gz (res-6)",
        "sub-02/anat/sub-02_T1w.nii.gz (res-4)",
        "sub-02/anat/sub-02_T1w.nii.gz (res-6)",
    ]
    # a failure at one resolution leaves the other's files alone
    (root / "sub-01/anat/sub-01_T1w.nii.gz").write_bytes(b"\x1f\x8b broken")
    result = run_participant_level(root, out, **{**FAST, "resolution": 6.0})
    assert [f.participant_id for f in result.failures] == ["sub-01"]
    assert not any(p.exists() for p in p6.values()) and all(p.is_file() for p in p4.values())


def test_a_dead_worker_fails_only_its_scan(tmp_path, subject, monkeypatch):
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    import neuroml.workflows.bids_app as batch

    root = write_bids(
        tmp_path / "bids", {f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz": subject[0] for i in (1, 2, 3)}
    )
    out = tmp_path / "out"

    def parallel(todo, n_workers, args_of):  # the first scan finishes, then a worker dies
        yield batch._indexed(0, *args_of(todo[0]))
        raise TerminatedWorkerError(
            "A worker process managed by the executor was unexpectedly terminated."
        )

    def dies_on_sub02(i, scan, *args):  # runs in a child process (pickled by value)
        if scan.subject == "02":
            os._exit(9)
        return batch._indexed(i, scan, *args)

    isolated = batch._isolated
    monkeypatch.setattr(batch, "_parallel", parallel)
    monkeypatch.setattr(
        batch, "_isolated", lambda items, n: isolated(items, n, target=dies_on_sub02)
    )
    result = run_participant_level(root, out, n_jobs=2, **FAST)
    assert result.n_done == 2 and [f.participant_id for f in result.failures] == ["sub-02"]
    rows = read_failures(out)
    assert [r["participant_id"] for r in rows] == ["sub-02"] and "worker process died" in rows[0][
        "reason"
    ]
    assert is_complete(root / "sub-03/anat/sub-03_T1w.nii.gz", out, resolution=RES, n4=False)


def test_dataset_description_names_both_modalities(batch):
    out, _ = batch
    name = json.loads((out / "dataset_description.json").read_text())["Name"]
    assert "T1w" in name and "BOLD" in name
