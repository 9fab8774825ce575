"""BOLD pipeline: confound strategies, scrubbing, plain BOLD, registration, real nibabel 4D files, batch."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroml._utils.fileio import read_json
from neuroml.errors import ConfigError, InputError
from neuroml.functional import (
    check_func_params,
    compute_maps,
    find_bold_scans,
    load_confounds,
    map_names,
    preprocess_bold,
    preprocess_bold_scan,
    repetition_time,
)
from neuroml.io.templates import target_grid
from neuroml.synth.func import make_func_cohort

RES = 6.0
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("func") / "bids"
    make_func_cohort(root, n_subjects=4, resolution=RES, n_volumes=60, seed=1, amplitude_effect=2.0)
    return root


def _bold(root, pid):
    return next((root / pid / "func").glob("*_bold.nii.gz"))


def _truth(root, pid):
    return read_json(root / "derivatives" / "groundtruth" / pid / f"{pid}_task-rest_truth.json")


@pytest.mark.parametrize(
    "strategy,expect",
    [("simple", "trans_x"), ("scrubbing", "csf_power2"), ("compcor", "a_comp_cor_00")],
)
def test_confound_strategies_read_the_fmriprep_table(cohort, strategy, expect):
    conf, kept, info = load_confounds(_bold(cohort, "sub-001"), strategy)
    assert len(conf) == 60 and expect in conf.columns
    assert info["strategy"] == strategy and info["n_regressors"] == conf.shape[1]
    if strategy == "compcor":
        assert "csf" not in conf.columns
    if strategy == "scrubbing":
        spikes = _truth(cohort, "sub-001")["spike_volumes"]
        assert set(spikes) <= set(info["dropped_volumes"])
        assert sorted(set(range(60)) - set(kept.tolist())) == info["dropped_volumes"]
    else:
        assert kept is None and info["dropped_volumes"] == []


def test_confound_errors_name_the_file(cohort, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'scrubbing'"):
        load_confounds(_bold(cohort, "sub-001"), "scrubing")
    lone = tmp_path / "sub-09_task-rest_space-MNI152NLin2009aSym_desc-preproc_bold.nii.gz"
    lone.write_bytes(_bold(cohort, "sub-001").read_bytes())
    with pytest.raises(InputError, match=r"sub-09.*no fMRIPrep confounds table"):
        load_confounds(lone, "simple")
    with pytest.raises(InputError, match=r"sub-09.*needs an fMRIPrep confounds table"):
        preprocess_bold_scan(lone, resolution=RES, confounds="scrubbing")


def test_preprocess_bold_writes_maps_on_the_t1w_grid_with_scrubbing(cohort, tmp_path):
    out = tmp_path / "deriv"
    paths = preprocess_bold(
        _bold(cohort, "sub-002"), out, bids_dir=cohort, resolution=RES, confounds="scrubbing"
    )
    affine, shape = target_grid(RES)
    for name in map_names(check_func_params()):
        img = nib.load(paths[f"map-{name}"])
        assert img.shape == shape and np.allclose(img.affine, affine)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.std() > 0
    side = read_json(paths["sidecar"])
    spikes = _truth(cohort, "sub-002")["spike_volumes"]
    assert set(spikes) <= set(side["DroppedVolumes"]) and side["NumberOfVolumesKept"] == 60 - len(
        side["DroppedVolumes"]
    )
    assert side["Cleaning"]["Confounds"]["strategy"] == "scrubbing"
    assert side["ConfoundsFile"] == "sub-002_task-rest_desc-confounds_timeseries.tsv"
    assert len(side["SourceSHA256"]) == 64 and len(side["ConfoundsSHA256"]) == 64
    assert side["Parameters"]["band"] == [0.01, 0.08] and side["Registered"] is False
    ts = pd.read_csv(paths["timeseries"], sep="\t")
    assert len(ts) == side["NumberOfVolumesKept"] and "Insula_L" in ts.columns
    assert not any(
        p.name.startswith(".") for p in paths["sidecar"].parent.iterdir()
    )  # no temporaries left


def test_plain_bold_only_detrends_and_filters_and_says_so(cohort, tmp_path):
    raw = tmp_path / "sub-05_task-rest_bold.nii.gz"
    img = nib.load(_bold(cohort, "sub-001"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine), raw)
    res = preprocess_bold_scan(
        raw,
        resolution=RES,
        tr=2.0,
        seeds={},
        entities={"sub": "05", "task": "rest", "space": "MNI152NLin2009aSym"},
    )
    conf = res.info["confounds"]
    assert (
        conf["strategy"] == "none"
        and "plain BOLD" in conf["description"]
        and "only detrending" in conf["description"]
    )
    assert res.info["dropped_volumes"] == []
    assert set(res.maps) == {"mean", "alff", "falff", "reho"}


def test_planted_regions_raise_alff_in_patients(cohort):
    from neuroml.io.atlases import atlas_on_grid

    affine, shape = target_grid(RES)
    labels, names = atlas_on_grid("aal", affine, shape)
    planted = np.isin(
        labels,
        [
            k
            for k, v in names.items()
            if v in ("Insula_L", "Insula_R", "Cingulate_Ant_L", "Cingulate_Ant_R")
        ],
    )
    values = {}
    for pid in ("sub-001", "sub-002", "sub-003", "sub-004"):
        res = preprocess_bold_scan(_bold(cohort, pid), resolution=RES, confounds="simple", seeds={})
        values[pid] = float(np.asarray(res.maps["alff"].dataobj)[planted].mean())
    controls, patients = (
        [values["sub-001"], values["sub-003"]],
        [values["sub-002"], values["sub-004"]],
    )
    assert min(patients) > max(controls)


def test_repetition_time_sources(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 3, 4, 5), np.float32), np.eye(4))
    img.header.set_zooms((1, 1, 1, 2500.0))
    img.header.set_xyzt_units("mm", "msec")
    assert repetition_time(img) == pytest.approx(2.5)
    path = tmp_path / "sub-01_task-rest_bold.nii.gz"
    (tmp_path / "sub-01_task-rest_bold.json").write_text('{"RepetitionTime": 0.8}')
    assert repetition_time(img, path) == pytest.approx(0.8)
    assert repetition_time(img, path, override=1.5) == 1.5
    img.header.set_zooms((1, 1, 1, 0.0))
    with pytest.raises(InputError, match="repetition time unknown"):
        repetition_time(img, tmp_path / "x_bold.nii.gz")


def test_a_corrupt_sidecar_is_named_not_skipped(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 3, 4, 5), np.float32), np.eye(4))
    img.header.set_zooms((1, 1, 1, 2.0))
    (tmp_path / "task-rest_bold.json").write_text('{"RepetitionTime": 3.0}')
    sub = tmp_path / "sub-01" / "func"
    sub.mkdir(parents=True)
    path = sub / "sub-01_task-rest_bold.nii.gz"
    assert repetition_time(img, path) == 3.0  # inherited from the dataset level
    (sub / "sub-01_task-rest_bold.json").write_text('{"RepetitionTime": 0.8,')  # truncated
    with pytest.raises(
        InputError,
        match=r"sub-01_task-rest_bold\.json: not valid JSON.*applies to "
        r"sub-01_task-rest_bold\.nii\.gz",
    ) as exc:
        repetition_time(img, path)
    assert "\n" not in str(exc.value)
    (sub / "sub-01_task-rest_bold.json").write_text("[0.8]")
    with pytest.raises(
        InputError, match=r"sub-01_task-rest_bold\.json: sidecar is not a JSON object"
    ):
        repetition_time(img, path)
    assert repetition_time(img, path, override=1.5) == 1.5


def test_alff_band_above_nyquist_is_refused_and_a_cut_band_is_logged(tmp_path, neuroml_log):
    from neuroml.functional.maps import check_band

    assert check_band([0.01, 0.08], 2.0) == (0.01, 0.08)
    assert check_band([0.01, 0.08], 8.0) == (0.01, 0.0625)
    assert "cut at the Nyquist frequency 0.0625 Hz of TR 8 s" in neuroml_log.text
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(
        rng.normal(100, 1, (6, 6, 6, 40)).astype(np.float32), np.eye(4) * [6, 6, 6, 1]
    )
    img.header.set_zooms((6, 6, 6, 12.0))  # Nyquist 0.0417 Hz: the band is cut
    path = tmp_path / "sub-01_task-rest_bold.nii.gz"
    nib.save(img, path)
    with pytest.raises(
        ConfigError,
        match=r"sub-01_task-rest_bold\.nii\.gz: the ALFF band 0\.05-0\.08 Hz lies above "
        r"the Nyquist frequency 0\.04167 Hz of TR 12 s",
    ):
        preprocess_bold_scan(path, resolution=RES, band=[0.05, 0.08], confounds="none")
    data = rng.normal(size=(3, 3, 3, 30)).astype(np.float32)
    mask = np.ones((3, 3, 3), bool)
    neuroml_log.clear()
    _, _, info = compute_maps(
        data,
        mask,
        np.eye(4) * [6, 6, 6, 1],
        10.0,
        seeds={},
        smoothing_fwhm=0.0,
        confounds="none",
        high_pass=None,
        low_pass=None,
    )
    assert (
        info["alff_band_hz"] == [0.01, 0.05]
        and "cut at the Nyquist frequency 0.05 Hz" in neuroml_log.text
    )


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'confounds'"):
        check_func_params(confound="simple")
    with pytest.raises(ConfigError, match="high_pass"):
        check_func_params(high_pass=0.2, low_pass=0.1)
    with pytest.raises(InputError, match="BIDS labels"):
        check_func_params(seeds={"p c c": [0, 0, 0]})


# --------------------------------------------------------------------------- nibabel's real 4D files
def test_nibabel_example4d_gives_a_one_line_reason():
    with pytest.raises(InputError) as exc:
        preprocess_bold_scan(NIB_DATA / "example4d.nii.gz", resolution=RES)
    msg = str(exc.value)
    assert "example4d.nii.gz" in msg and "only 2 volumes" in msg and "\n" not in msg


def test_nibabel_functional_loads_cleans_and_gives_native_maps_or_a_reason():
    path = NIB_DATA / "functional.nii"
    img = nib.load(path)
    assert repetition_time(img, path) == pytest.approx(2.0)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = data.mean(axis=3) > np.percentile(data.mean(axis=3), 30)
    maps, ts, info = compute_maps(
        data,
        mask,
        img.affine,
        2.0,
        seeds={"centre": [32.0, 40.0, 8.0]},
        seed_radius_mm=10.0,
        smoothing_fwhm=0.0,
    )
    assert info["n_volumes"] == 20
    for name in ("mean", "alff", "falff", "reho", "conncentre"):
        assert (
            maps[name].shape == (17, 21, 3)
            and np.isfinite(maps[name]).all()
            and maps[name][mask].std() > 0
        )
    assert (maps["alff"][~mask] == 0).all()
    # on the MNI grid it cannot go: three 8 mm slices cannot be registered, and it says why in one line
    with pytest.raises(InputError) as exc:
        preprocess_bold_scan(path, resolution=RES)
    assert (
        "functional.nii" in str(exc.value)
        and "cannot register" in str(exc.value)
        and "\n" not in str(exc.value)
    )


# --------------------------------------------------------------------------- batch and command line
def test_batch_modality_func_is_resumable_and_records_failures(cohort, tmp_path):
    import shutil

    from neuroml.workflows import read_failures, run_participant_level

    bids = tmp_path / "bids"
    shutil.copytree(
        cohort, bids, ignore=shutil.ignore_patterns("sub-003", "sub-004", "derivatives")
    )
    bad = (
        bids
        / "sub-002"
        / "func"
        / "sub-002_task-rest_space-MNI152NLin2009aSym_res-6_desc-preproc_bold.nii.gz"
    )
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "deriv"
    r1 = run_participant_level(bids, out, resolution=RES, modality="func", show_progress=False)
    assert (r1.n_done, r1.n_skipped, len(r1.failures)) == (1, 0, 1)
    rows = read_failures(out)
    assert rows[0]["participant_id"] == "sub-002" and "not a readable image" in rows[0]["reason"]
    assert not list((out / "sub-002").rglob("*.nii.gz"))
    r2 = run_participant_level(bids, out, resolution=RES, modality="func", show_progress=False)
    assert (r2.n_done, r2.n_skipped) == (0, 1)
    r3 = run_participant_level(
        bids,
        out,
        resolution=RES,
        modality="func",
        show_progress=False,
        func_params={"confounds": "compcor"},
    )
    assert r3.n_done == 1  # other parameters: redone
    with pytest.raises(InputError, match="no BOLD series"):
        run_participant_level(
            _empty_bids(tmp_path), tmp_path / "o2", modality="func", show_progress=False
        )


def _empty_bids(tmp_path):
    root = tmp_path / "empty"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    return root


def test_find_bold_scans_prefers_preproc_mni(tmp_path):
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "dataset_description.json").write_text("{}")
    for name in (
        "sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz",
        "sub-01_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz",
        "sub-01_task-rest_space-MNI152NLin6Asym_desc-brain_mask.nii.gz",
        "sub-01_task-rest_run-2_bold.nii.gz",
    ):
        (func / name).write_bytes(b"x")
    found = [s.path.name for s in find_bold_scans(tmp_path)]
    assert found == [
        "sub-01_task-rest_run-2_bold.nii.gz",
        "sub-01_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz",
    ]


def test_cli_synth_and_preprocess_func(tmp_path, capsys):
    from neuroml.cli import main

    assert (
        main(
            [
                "-q",
                "preprocess",
                str(tmp_path / "nope"),
                str(tmp_path / "o"),
                "participant",
                "--modality",
                "func",
            ]
        )
        == 2
    )
    assert "BIDS folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "preprocess",
                str(tmp_path / "nope"),
                str(tmp_path / "o"),
                "participant",
                "--modality",
                "fun",
            ]
        )
    assert exc.value.code == 2
    bids = tmp_path / "bids"
    assert (
        main(["-q", "synth", str(tmp_path / "x"), "--modality", "func", "--voxel-scale", "2"]) == 2
    )
    assert "--modality anat only" in capsys.readouterr().err
    assert (
        main(
            [
                "-q",
                "synth",
                str(bids),
                "--modality",
                "func",
                "--n-subjects",
                "2",
                "--n-volumes",
                "60",
            ]
        )
        == 0
    )
    assert (bids / "sub-002" / "func" / "sub-002_task-rest_desc-confounds_timeseries.tsv").is_file()
    assert nib.load(next((bids / "sub-001" / "func").glob("*_bold.nii.gz"))).shape[3] == 60
    assert (
        read_json(bids / "derivatives" / "groundtruth" / "planted_regions.json")["modality"]
        == "func"
    )
    out = tmp_path / "deriv"
    assert (
        main(["-q", "preprocess", str(bids), str(out), "participant", "--confounds", "scrubbing"])
        == 2
    )
    assert (
        "apply to BOLD series: use modality 'func' or 'both'" in capsys.readouterr().err
    )  # not ignored
    assert not out.exists()
    assert (
        main(
            [
                "-q",
                "preprocess",
                str(bids),
                str(out),
                "participant",
                "--modality",
                "func",
                "--resolution",
                "6",
                "--confounds",
                "scrubbing",
            ]
        )
        == 0
    )
    assert "2 processed" in capsys.readouterr().out
    side = read_json(next(out.glob("sub-001/func/*_desc-maps_bold.json")))
    assert side["Cleaning"]["Confounds"]["strategy"] == "scrubbing" and side["DroppedVolumes"]


def test_plain_bold_off_mni_is_registered_through_its_mean(tmp_path):
    from neuroml.preprocessing.registration import mni_to_scanner, read_transform

    root = tmp_path / "raw"
    make_func_cohort(
        root, n_subjects=1, resolution=RES, n_volumes=40, seed=2, layout="raw", n_spikes=0
    )
    bold = root / "sub-001" / "func" / "sub-001_task-rest_bold.nii.gz"
    assert not (
        root / "sub-001" / "func" / "sub-001_task-rest_desc-confounds_timeseries.tsv"
    ).exists()
    paths = preprocess_bold(bold, tmp_path / "deriv", bids_dir=root, resolution=RES)
    side = read_json(paths["sidecar"])
    assert side["Registered"] is True and "registered to MNI" in side["SpaceHandling"]
    assert side["Cleaning"]["Confounds"]["strategy"] == "none" and side["ConfoundsFile"] is None
    truth = np.asarray(_truth(root, "sub-001")["scanner_from_mni"])
    pts = np.array(
        [[0.0, -20.0, 10.0], [30.0, 10.0, 20.0], [-30.0, -60.0, 0.0], [0.0, 40.0, -10.0]]
    )
    est = mni_to_scanner(read_transform(paths["xfm"]), pts)
    true = pts @ truth[:3, :3].T + truth[:3, 3]
    assert np.linalg.norm(est - true, axis=1).max() < RES  # within a voxel of the 6 mm grid


@pytest.mark.slow
def test_batch_modality_both_puts_t1w_and_bold_maps_on_one_grid(cohort, tmp_path):
    """A participant with a T1w (data_samples) and a BOLD series: both processed, one grid, stackable."""
    import shutil

    from neuroml.data import open_inputs
    from neuroml.workflows import run_participant_level

    sample = Path(__file__).resolve().parents[1] / "data_samples"
    bids = tmp_path / "bids"
    shutil.copytree(
        cohort, bids, ignore=shutil.ignore_patterns("sub-002", "sub-003", "sub-004", "derivatives")
    )
    shutil.copytree(sample / "sub-001" / "anat", bids / "sub-001" / "anat")
    out = tmp_path / "deriv"
    res = run_participant_level(
        bids, out, resolution=RES, modality="both", show_progress=False, func_params={"seeds": {}}
    )
    assert (res.n_done, len(res.failures)) == (2, 0)
    t1 = next(out.glob("sub-001/anat/*_desc-preproc_T1w.nii.gz"))
    alff = next(out.glob("sub-001/func/*_desc-alff_boldmap.nii.gz"))
    a, b = nib.load(t1), nib.load(alff)
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)
    stacked = open_inputs(out, inputs=["T1w", "alff"])
    assert stacked.load().shape == (1, 2, *a.shape)
    again = run_participant_level(
        bids, out, resolution=RES, modality="both", show_progress=False, func_params={"seeds": {}}
    )
    assert (again.n_done, again.n_skipped) == (0, 2)


# --------------------------------------------------------------------------- group-level QC of BOLD
def test_group_level_qc_includes_bold_series(cohort, tmp_path):
    """Coverage, volumes, mean FD and robust-z flags per BOLD series; a high-motion series is flagged."""
    import shutil

    from neuroml.cli import main
    from neuroml.workflows import run_participant_level

    bids = tmp_path / "bids"
    shutil.copytree(cohort, bids, ignore=shutil.ignore_patterns("derivatives"))
    table = bids / "sub-004" / "func" / "sub-004_task-rest_desc-confounds_timeseries.tsv"
    conf = pd.read_csv(table, sep="\t", na_values=["n/a"])
    conf["framewise_displacement"] *= 8  # sub-004 moves a lot
    conf.to_csv(table, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "deriv"
    res = run_participant_level(
        bids, out, resolution=RES, modality="func", show_progress=False, func_params={"seeds": {}}
    )
    assert res.n_done == 4
    side = read_json(next(out.glob("sub-004/func/*_desc-maps_bold.json")))
    assert side["FramewiseDisplacement"]["mean_fd_mm"] == pytest.approx(
        conf["framewise_displacement"].mean(), abs=1e-3
    )
    fd1 = read_json(next(out.glob("sub-001/func/*_desc-maps_bold.json")))["FramewiseDisplacement"][
        "mean_fd_mm"
    ]
    with open(out / "failures.tsv", "w") as fh:  # a hostile reason must come out escaped
        fh.write("participant_id\tfile\treason\nsub-99\tx<b>.nii\t<script>alert(1)</script>\n")
    assert main(["-q", "preprocess", str(bids), str(out), "group"]) == 0

    qc = pd.read_csv(out / "group_qc_bold.tsv", sep="\t", na_values=["n/a"]).set_index(
        "participant_id"
    )
    assert list(qc.index) == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert qc.loc["sub-001", "mean_fd_mm"] == pytest.approx(fd1)
    assert (qc["n_volumes"] == 60).all() and (qc["volumes_dropped"] == 0).all()
    assert (qc["coverage"] > 0.5).all() and qc[
        "registration_metric"
    ].isna().all()  # already in MNI space
    assert qc.loc["sub-004", "z_mean_fd_mm"] > 3 and bool(qc.loc["sub-004", "outlier"])
    assert not qc.loc["sub-004", "qc_pass"] and "mean_fd_mm" in qc.loc["sub-004", "outlier_reasons"]
    assert not qc.drop("sub-004")["outlier"].any() and qc.drop("sub-004")["qc_pass"].all()
    assert not (out / "group_qc.tsv").exists()  # no T1w in this folder
    text = (out / "group_qc.html").read_text()
    assert "Resting-state BOLD" in text and "<script>" not in text and "&lt;script&gt;" in text
    assert text.count("data:image/png;base64,") == 4  # one mean-BOLD picture per series
    assert "mean framewise displacement" in text and "OUTLIER (mean_fd_mm z" in text


def test_bold_qc_rows_flag_the_series_that_differs():
    from neuroml.preprocessing.qc import bold_qc_rows

    def row(**kw):
        return {
            "coverage": 0.98,
            "registration_metric": None,
            "n_volumes": 200,
            "volumes_dropped": 0,
            "mean_fd_mm": 0.1,
            **kw,
        }

    rows = bold_qc_rows(
        [row(), row(), row(), row(coverage=0.97), row(volumes_dropped=50), row(coverage=0.70)]
    )
    assert [r["outlier"] for r in rows] == [False, False, False, False, True, True]
    assert rows[4]["z_dropped_fraction"] > 3 and "dropped_fraction" in rows[4]["outlier_reasons"]
    assert not rows[4]["qc_pass"] and "25% of the volumes dropped" in rows[4]["reasons"][0]
    assert (
        rows[5]["qc_pass"] and rows[5]["z_coverage"] < -3
    )  # low coverage: an outlier, not an exclusion rule
    assert all(
        r["z_registration_metric"] is None for r in rows
    )  # not registered: no score, no flag
    registered = bold_qc_rows(
        [row(registration_metric=m) for m in (-0.80, -0.82, -0.79, -0.81, -0.30)]
    )
    assert [r["outlier"] for r in registered] == [False] * 4 + [True]  # a worse (higher) metric
    two = bold_qc_rows([row(mean_fd_mm=0.1), row(mean_fd_mm=2.0)])  # too few series for a robust z
    assert not any(r["outlier"] for r in two) and not two[1]["qc_pass"]
