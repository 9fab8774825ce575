"""Tests of the synthetic cohort generator (neuroml.synth); tiny cohorts, coarse voxels."""

import csv
import gzip
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from neuroml.errors import ConfigError, InputError
from neuroml.io.groundtruth import load_subject_transform, planted_mask_path, true_scanner_coords
from neuroml.io.templates import brain_mask_on_grid, mni_brain_mask, template_on_grid
from neuroml.synth import DEFAULT_PLANTED, make_cohort
from neuroml.synth.cohort import _assign

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples"
TINY = dict(n_subjects=4, voxel_scale=3.0)


def _digests(root):
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _participants(root):
    with open(Path(root) / "participants.tsv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = make_cohort(out, seed=1, **TINY)
    return out, summary


@pytest.fixture(scope="module")
def brain_points():
    """Brain points of the 4 mm grid (mm) and the template's intensity there."""
    tpl = template_on_grid(4.0)
    idx = np.argwhere(np.asarray(brain_mask_on_grid(4.0).dataobj) > 0)
    return nib.affines.apply_affine(tpl.affine, idx), np.asarray(tpl.dataobj)[tuple(idx.T)]


def _sample(root, pid, pts):
    img = nib.load(str(Path(root) / pid / "anat" / f"{pid}_T1w.nii.gz"))
    data = np.asarray(img.dataobj, dtype=np.float32)
    xyz = true_scanner_coords(Path(root) / "derivatives" / "groundtruth", pid, pts)
    vox = nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)
    return map_coordinates(data, vox.T, order=1), vox, data.shape


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(cohort, tmp_path):
    out, _ = cohort
    again = make_cohort(tmp_path / "b", seed=1, n_jobs=2, **TINY)  # parallel too
    assert again["n_generated"] == 4
    a, b = _digests(out), _digests(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_gives_different_data(cohort, tmp_path):
    out, _ = cohort
    make_cohort(tmp_path / "c", seed=2, **TINY)
    a, c = _digests(out), _digests(tmp_path / "c")
    for name in a:
        if name.endswith(("_T1w.nii.gz", "_xfm.nii.gz", "_xfm.json")):
            assert a[name] != c[name], name


def test_gzip_headers_are_reproducible(cohort):
    out, _ = cohort
    for p in out.rglob("*.nii.gz"):
        head = p.read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b"
        assert head[4:8] == b"\x00\x00\x00\x00", f"{p} embeds a modification time"
        assert not head[3] & 0x08, f"{p} embeds a file name"
        assert gzip.decompress(p.read_bytes())[344:348] == b"n+1\x00"


def test_subject_does_not_depend_on_cohort_size(cohort, tmp_path):
    out, _ = cohort
    make_cohort(tmp_path / "small", seed=1, n_subjects=2, voxel_scale=3.0)
    a, s = _digests(out), _digests(tmp_path / "small")
    for name in s:
        if name.startswith(("sub-001", "sub-002", "derivatives/groundtruth/sub-00")):
            assert a[name] == s[name], name


# --------------------------------------------------------------------------- BIDS content


def test_participants_and_balance(cohort):
    out, summary = cohort
    rows = _participants(out)
    assert list(rows[0]) == ["participant_id", "diagnosis", "site", "age", "sex"]
    assert [r["participant_id"] for r in rows] == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert [r["diagnosis"] for r in rows] == ["control", "MDD", "SCZ", "control"]
    assert len({r["site"] for r in rows}) == 3
    assert all(18 <= int(r["age"]) <= 65 and r["sex"] in ("M", "F") for r in rows)
    assert [p["participant_id"] for p in summary["participants"]] == [
        r["participant_id"] for r in rows
    ]
    meta = json.loads((out / "participants.json").read_text())
    assert set(meta) == {"participant_id", "diagnosis", "site", "age", "sex"}
    for pid in ("sub-001", "sub-004"):
        assert (out / pid / "anat" / f"{pid}_T1w.nii.gz").exists()


@pytest.mark.parametrize("n, n_sites", [(30, 3), (12, 3), (24, 2), (9, 1)])
def test_diagnosis_and_site_are_not_entangled(n, n_sites):
    classes = ("control", "MDD", "SCZ")
    sites = [f"site{i}" for i in range(n_sites)]
    pairs = _assign(n, classes, sites)
    counts = {c: sum(d == c for d, _ in pairs) for c in classes}
    assert max(counts.values()) - min(counts.values()) <= 1
    for c in classes:
        per_site = [sum(d == c and s == site for d, s in pairs) for site in sites]
        assert max(per_site) - min(per_site) <= 1, (c, per_site)
    per_site = [sum(s == site for _, s in pairs) for site in sites]
    assert max(per_site) - min(per_site) <= 1


def test_dataset_files(cohort):
    out, _ = cohort
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.8.0" and desc["DatasetType"] == "raw"
    assert desc["License"] and desc["Authors"] and desc["GeneratedBy"][0]["Name"] == "neuroml"
    assert (out / "README").read_text().strip() and (out / "CHANGES").read_text().strip()
    gdesc = json.loads((out / "derivatives/groundtruth/dataset_description.json").read_text())
    assert gdesc["DatasetType"] == "derivative" and gdesc["GeneratedBy"][0]["Name"] == "neuroml"


def test_scans_are_int16_with_site_geometry(cohort):
    out, _ = cohort
    expected = {
        "siteA": (("R", "A", "S"), (3.0, 3.0, 3.0)),
        "siteB": (("L", "A", "S"), (3.6, 3.0, 3.0)),
        "siteC": (("P", "I", "R"), (3.0, 3.0, 3.6)),
    }
    for row in _participants(out):
        pid = row["participant_id"]
        img = nib.load(str(out / pid / "anat" / f"{pid}_T1w.nii.gz"))
        assert img.get_data_dtype() == np.int16
        slope = float(img.dataobj.slope)
        assert slope > 0 and slope != 1.0
        axcodes, zooms = expected[row["site"]]
        assert nib.aff2axcodes(img.affine) == axcodes
        assert np.allclose(img.header.get_zooms(), zooms)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and data.max() > 50 * slope
        side = json.loads((out / pid / "anat" / f"{pid}_T1w.json").read_text())
        assert side["Manufacturer"] == "synthetic" and side["InstitutionName"] == row["site"]


# --------------------------------------------------------------------------- ground truth


def test_planted_masks(cohort):
    out, _ = cohort
    gt = out / "derivatives" / "groundtruth"
    brain = np.asarray(mni_brain_mask().dataobj) > 0
    for c in ("MDD", "SCZ"):
        img = nib.load(str(planted_mask_path(gt, c)))
        assert img.get_data_dtype() == np.uint8 and img.shape == brain.shape
        assert np.allclose(img.affine, mni_brain_mask().affine)
        m = np.asarray(img.dataobj) > 0
        assert m.sum() > 5000
        assert (m & brain).sum() / m.sum() > 0.95
    with pytest.raises(InputError, match="control"):
        planted_mask_path(gt, "control")
    rec = json.loads((gt / "planted_regions.json").read_text())
    assert rec["status"] == "complete" and rec["atlas"] == "aal"
    assert rec["planted"] == DEFAULT_PLANTED
    assert rec["effect_size"] == 0.35 and rec["seed"] == 1
    assert rec["parameters"]["n_subjects"] == 4 and rec["parameters"]["voxel_scale"] == 3.0
    assert rec["healthy_class"] == "control"


def test_transform_records(cohort):
    out, _ = cohort
    gt = out / "derivatives" / "groundtruth"
    for row in _participants(out):
        pid = row["participant_id"]
        rec = json.loads((gt / pid / f"{pid}_xfm.json").read_text())
        assert rec["site"] == row["site"] and rec["diagnosis"] == row["diagnosis"]
        a = np.asarray(rec["affine_mni_to_scanner"])
        assert a.shape == (4, 4) and np.allclose(a[3], [0, 0, 0, 1])
        assert 0.9 < abs(np.linalg.det(a[:3, :3])) < 1.2
        warp = nib.load(str(gt / pid / rec["warp"]["file"]))
        assert warp.ndim == 4 and warp.shape[3] == 3 and warp.get_data_dtype() == np.float32
        assert 0.3 < rec["warp"]["max_displacement_brain_mm"] <= 1.5 + 1e-6
        if row["diagnosis"] == "control":
            assert rec["effect"]["atrophy"] == 0
        else:
            assert 0.1 < rec["effect"]["atrophy"] < 0.7
            assert rec["effect"]["regions"] == DEFAULT_PLANTED[row["diagnosis"]]
        xfm = load_subject_transform(out, pid[4:])  # root folder and bare label accepted
        assert np.allclose(xfm["affine"], a)


def test_true_coords_match_the_scans(cohort, brain_points):
    out, _ = cohort
    pts, tvals = brain_points
    gt = out / "derivatives" / "groundtruth"
    centre = np.array([[0.0, -17.0, 5.0]])
    for row in _participants(out):
        pid = row["participant_id"]
        vals, vox, shape = _sample(out, pid, pts)
        # the whole brain, and its centre, lie inside the field of view
        assert np.all((vox >= 0) & (vox <= np.asarray(shape) - 1))
        cvox = nib.affines.apply_affine(
            np.linalg.inv(nib.load(str(out / pid / "anat" / f"{pid}_T1w.nii.gz")).affine),
            true_scanner_coords(gt, pid, centre),
        )
        assert np.all(np.abs(cvox - (np.asarray(shape) - 1) / 2) < np.asarray(shape) / 4)
        r = np.corrcoef(vals, tvals)[0, 1]
        if row["diagnosis"] == "control":
            assert r > 0.8, (pid, r)
        # a wrong mapping (ignoring the subject's transform) does much worse
        img = nib.load(str(out / pid / "anat" / f"{pid}_T1w.nii.gz"))
        wrong = map_coordinates(
            np.asarray(img.dataobj, dtype=np.float32),
            nib.affines.apply_affine(np.linalg.inv(img.affine), pts).T,
            order=1,
        )
        assert np.corrcoef(wrong, tvals)[0, 1] < r - 0.2


def test_true_coords_input_checks(cohort):
    out, _ = cohort
    gt = out / "derivatives" / "groundtruth"
    one = true_scanner_coords(gt, "sub-001", [0.0, 0.0, 0.0])
    assert one.shape == (1, 3)
    with pytest.raises(InputError, match="shape"):
        true_scanner_coords(gt, "sub-001", np.zeros((4, 2)))
    with pytest.raises(InputError):
        true_scanner_coords(gt, "sub-999", one)
    with pytest.raises(InputError):
        true_scanner_coords(gt, "sub 1", one)


def test_patients_are_darker_in_their_planted_regions(tmp_path, brain_points):
    out = tmp_path / "d"
    make_cohort(out, seed=5, n_subjects=6, voxel_scale=3.0)
    pts, _ = brain_points
    gt = out / "derivatives" / "groundtruth"
    masks = {}
    for c in ("MDD", "SCZ"):
        img = nib.load(str(planted_mask_path(gt, c)))
        vox = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), pts)).astype(int)
        masks[c] = np.asarray(img.dataobj)[tuple(vox.T)] > 0
    means = {c: {} for c in masks}
    for row in _participants(out):
        vals, _, _ = _sample(out, row["participant_id"], pts)
        vals = vals / np.median(vals)
        for c, m in masks.items():
            means[c].setdefault(row["diagnosis"], []).append(vals[m].mean())
    for c in masks:
        patient, control = np.mean(means[c][c]), np.mean(means[c]["control"])
        other = "SCZ" if c == "MDD" else "MDD"
        assert patient < control - 0.08, (c, means[c])
        assert patient < np.mean(means[c][other]) - 0.08, (c, means[c])


# --------------------------------------------------------------------------- resume / overwrite


def test_resume_skip_and_conflict(cohort, tmp_path):
    src, _ = cohort
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = _digests(out)
    again = make_cohort(out, seed=1, **TINY)
    assert again["skipped"] and again["n_generated"] == 0
    assert [p["participant_id"] for p in again["participants"]] == [
        "sub-001",
        "sub-002",
        "sub-003",
        "sub-004",
    ]
    # a lost subject is regenerated, identically
    (out / "sub-003" / "anat" / "sub-003_T1w.nii.gz").unlink()
    resumed = make_cohort(out, seed=1, **TINY)
    assert not resumed["skipped"] and resumed["n_generated"] == 1
    assert _digests(out) == before
    with pytest.raises(ConfigError, match="other parameters.*seed.*choose another folder"):
        make_cohort(out, seed=2, **TINY)
    assert _digests(out) == before
    redone = make_cohort(out, seed=2, n_subjects=2, voxel_scale=3.0, overwrite=True)
    assert redone["n_generated"] == 2
    assert not (out / "sub-003").exists()
    assert (
        json.loads((out / "derivatives/groundtruth/planted_regions.json").read_text())["seed"] == 2
    )


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_cohort(tmp_path, n_subjects=1, voxel_scale=4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_custom_classes_and_sites(tmp_path):
    out = tmp_path / "custom"
    summary = make_cohort(
        out,
        n_subjects=2,
        seed=3,
        classes=("HC", "ADHD"),
        planted={"ADHD": ["Caudate_L", "Caudate_R", "Putamen_L"]},
        sites={"scan1": {"voxel_size": (1.0, 1.0, 1.0), "orientation": "LPS"}},
        voxel_scale=4.0,
    )
    assert [p["diagnosis"] for p in summary["participants"]] == ["HC", "ADHD"]
    assert (out / "derivatives/groundtruth/space-MNI152NLin2009aSym_desc-ADHD_mask.nii.gz").exists()
    img = nib.load(str(out / "sub-002" / "anat" / "sub-002_T1w.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(img.header.get_zooms(), 4.0)


# --------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_subjects=0), "n_subjects"),
        (dict(n_subjects=2.5), "n_subjects"),
        (dict(seed=-1), "seed"),
        (dict(classes=("control",)), "classes"),
        (dict(classes=("control", "MDD", "mdd")), "duplicate"),
        (dict(classes="control"), "classes"),
        (dict(planted={"MDD": ["Hipocampus_L"]}), "Did you mean 'Hippocampus_L'"),
        (dict(planted={"MDD": []}), "MDD"),
        (dict(planted={"control": ["Insula_L"]}), "healthy"),
        (dict(planted={"BPD": ["Insula_L"]}), "planted class"),
        (dict(classes=("control", "ADHD")), "ADHD"),
        (dict(voxel_scale=0.1), "voxel_scale"),
        (dict(voxel_scale="2"), "voxel_scale"),
        (dict(effect_size=1.5), "effect_size"),
        (dict(sites=["siteD"]), "Did you mean"),
        (dict(sites={"x": {"orientation": "RRS"}}), "orientation"),
        (dict(sites={"x": {"voxel_size": (1, 1)}}), "voxel_size"),
        (dict(sites={"x": {"colour": "red"}}), "colour"),
        (dict(n_jobs=0), "n_jobs"),
        (dict(warp_mm=-1.0), "warp_mm"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, match):
    out = tmp_path / "bad"
    params = dict(n_subjects=2, voxel_scale=4.0)
    params.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        make_cohort(out, **params)
    assert not out.exists()


def test_out_dir_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="out_dir"):
        make_cohort(f, n_subjects=1, voxel_scale=4.0)


# --------------------------------------------------------------------------- committed sample


def _sample_params():
    spec = importlib.util.spec_from_file_location(
        "make_sample_data", REPO / "scripts" / "make_sample_data.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SAMPLE_PARAMS


def test_committed_sample_is_complete_and_up_to_date(tmp_path):
    if not (SAMPLE / "participants.tsv").exists():
        pytest.fail("data_samples/ is missing: run python scripts/make_sample_data.py")
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size <= 6e6
    rows = _participants(SAMPLE)
    assert len(rows) == 12
    assert sorted({r["diagnosis"] for r in rows}) == ["MDD", "SCZ", "control"]
    assert all(sum(r["diagnosis"] == c for r in rows) == 4 for c in ("control", "MDD", "SCZ"))
    assert len({r["site"] for r in rows}) == 3
    copy = tmp_path / "sample"
    shutil.copytree(SAMPLE, copy)
    summary = make_cohort(copy, **_sample_params())  # same parameters: nothing to regenerate
    assert summary["skipped"], (
        "data_samples/ is out of date: rerun scripts/make_sample_data.py --overwrite"
    )


# ---------------------------------------------------------------- functional cohorts

FUNC_TINY = dict(n_subjects=2, resolution=8.0, n_volumes=30, seed=0)


def test_func_spikes_need_room_in_the_series(tmp_path):
    from neuroml.synth.func import make_func_cohort

    with pytest.raises(ConfigError, match=r"n_spikes.*at most n_volumes - 16 = 14.*Got 20"):
        make_func_cohort(tmp_path / "a", n_subjects=1, n_volumes=30, n_spikes=20)
    assert not (tmp_path / "a").exists()


def test_an_interrupted_func_cohort_is_generated_again(tmp_path, monkeypatch):
    import neuroml.synth.func as func

    fresh = func.make_func_cohort(tmp_path / "fresh", **FUNC_TINY)
    record = json.loads(
        (tmp_path / "fresh" / "derivatives/groundtruth/planted_regions.json").read_text()
    )
    assert "sqrt(1 - c^2 - c_other^2)" in record["effect_model"]
    real, calls = func._write_nifti_gz, []

    def killed(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(func, "_write_nifti_gz", killed)
    with pytest.raises(KeyboardInterrupt):
        func.make_func_cohort(tmp_path / "out", **FUNC_TINY)
    monkeypatch.setattr(func, "_write_nifti_gz", real)
    again = func.make_func_cohort(tmp_path / "out", **FUNC_TINY)
    assert not again["skipped"] and again["participants"] == fresh["participants"]
    assert _digests(tmp_path / "out") == _digests(tmp_path / "fresh")
    assert func.make_func_cohort(tmp_path / "out", **FUNC_TINY)["skipped"]
    with pytest.raises(ConfigError, match="other parameters.*differing: seed"):
        func.make_func_cohort(tmp_path / "out", **{**FUNC_TINY, "seed": 1})


def test_groundtruth_helpers_on_a_func_cohort(tmp_path):
    from neuroml.io.groundtruth import planted_mask_path
    from neuroml.synth.func import make_func_cohort

    make_func_cohort(tmp_path / "f", **FUNC_TINY)
    mask = nib.load(planted_mask_path(tmp_path / "f", "MDD"))
    assert np.allclose(nib.affines.voxel_sizes(mask.affine), 8.0)  # the cohort's grid, not MNI 1 mm
    for call in (
        lambda: load_subject_transform(tmp_path / "f", "sub-001"),
        lambda: true_scanner_coords(tmp_path / "f", "sub-001", [0.0, 0.0, 0.0]),
    ):
        with pytest.raises(
            InputError,
            match="planted_regions.json: a functional synthetic cohort.*no MNI -> "
            "scanner warp.*scanner_from_mni",
        ):
            call()
