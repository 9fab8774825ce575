"""De-identified copies: inherited sidecars, participants.tsv allow-list, nested and DICOM
sidecar fields, session labels, path names in find_strings, and an atomic (rerunnable) copy."""

import json

import nibabel as nib
import numpy as np
import pytest

from neuroml.errors import InputError
from neuroml.functional.bold import repetition_time
from neuroml.io.privacy import clean_sidecar, deidentify_bids, find_strings, pseudonym

KEY = b"a-secret-key-of-enough-bytes"


def _bold(path, tr=2.0):
    img = nib.Nifti1Image(np.zeros((4, 4, 3, 6), np.float32), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0, tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _dataset(root, sessions=("20230115",)):
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "d", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text(
        "participant_id\tfull_name\tbirth_date\tdiagnosis\tage\tsex\tnotes\n"
        "sub-01\tJane Doe\t1970-01-01\tMDD\t53\tF\tcalls back\n"
    )
    # the TR is in the dataset-level sidecar only (BIDS inheritance); the header says 2.0
    (root / "task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": 3.0, "InstitutionName": "ZZ Hospital"})
    )
    (root / "sub-01").mkdir()
    (root / "sub-01" / "sub-01_T1w.json").write_text(
        json.dumps({"EchoTime": 0.003, "StationName": "ZZStation"})
    )
    (root / "key.txt").write_bytes(KEY)
    for ses in sessions:
        func = root / "sub-01" / f"ses-{ses}" / "func"
        _bold(func / f"sub-01_ses-{ses}_task-rest_bold.nii.gz")
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir()
        nib.save(
            nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)),
            anat / f"sub-01_ses-{ses}_T1w.nii.gz",
        )
    return root


def test_clean_sidecar_drops_dicom_fields_at_any_depth():
    removed = set()
    side = {
        "ProcedureStepDescription": "MRT Schaedel Jane",
        "PerformedProcedureStepStartDate": "20230115",
        "PerformedProcedureStepStartTime": "101112.000",
        "DateOfBirth": "19700101",
        "InstitutionAddress": "Str 1",
        "DeviceSerialNumber": "4711",
        "Dcm2bidsConfig": {
            "PatientName": "Doe^Jane",
            "criteria": [{"SeriesDescription": "Jane t1", "AcquisitionTime": "10:11:12", "run": 1}],
        },
        "RepetitionTime": 2.0,
        "EchoTime": 0.03,
        "SliceTiming": [0.0, 1.0],
        "TaskName": "rest",
        "TotalReadoutTime": 0.05,
        "Manufacturer": "Siemens",
    }
    assert clean_sidecar(side, removed) == {
        "Dcm2bidsConfig": {"criteria": [{"run": 1}]},
        "RepetitionTime": 2.0,
        "EchoTime": 0.03,
        "SliceTiming": [0.0, 1.0],
        "TaskName": "rest",
        "TotalReadoutTime": 0.05,
        "Manufacturer": "Siemens",
    }
    assert {
        "Dcm2bidsConfig.PatientName",
        "Dcm2bidsConfig.criteria.AcquisitionTime",
        "DateOfBirth",
    } <= removed


def test_find_strings_searches_file_and_folder_names(tmp_path):
    (tmp_path / "sub-JaneDoe").mkdir()
    (tmp_path / "sub-JaneDoe" / "x.txt").write_text("clean")
    (tmp_path / "scan_20230115.txt").write_text("clean")
    assert find_strings(tmp_path, ["janedoe", "20230115"]) == {
        "scan_20230115.txt": ["20230115"],
        "sub-JaneDoe": ["janedoe"],
        "sub-JaneDoe/x.txt": ["janedoe"],
    }


def test_deidentify_keeps_inherited_sidecars_renames_sessions_and_drops_columns(
    tmp_path, neuroml_log
):
    raw = _dataset(tmp_path / "raw", sessions=("20230115", "20240203"))
    out = tmp_path / "out"
    result = deidentify_bids(raw, out, key_file=raw / "key.txt")
    new = pseudonym("01", KEY)
    # the copy's BOLD has the raw TR (from the scrubbed dataset-level sidecar), not the header's
    raw_bold = (
        raw / "sub-01" / "ses-20230115" / "func" / "sub-01_ses-20230115_task-rest_bold.nii.gz"
    )
    copy_bold = out / new / "ses-1" / "func" / f"{new}_ses-1_task-rest_bold.nii.gz"
    assert (
        repetition_time(nib.load(copy_bold), copy_bold)
        == repetition_time(nib.load(raw_bold), raw_bold)
        == 3.0
    )
    assert json.loads((out / "task-rest_bold.json").read_text()) == {"RepetitionTime": 3.0}
    assert json.loads((out / new / f"{new}_T1w.json").read_text()) == {"EchoTime": 0.003}
    # session labels (scan dates) replaced in order, in folder and file names
    assert sorted(p.name for p in (out / new).iterdir() if p.is_dir()) == ["ses-1", "ses-2"]
    assert (out / new / "ses-2" / "anat" / f"{new}_ses-2_T1w.nii.gz").is_file()
    # participants.tsv: only allow-listed columns
    assert (out / "participants.tsv").read_text().splitlines() == [
        "participant_id\tdiagnosis\tage\tsex",
        f"{new}\tMDD\t53\tF",
    ]
    assert result["dropped_participant_columns"] == ["full_name", "birth_date", "notes"]
    assert "full_name, birth_date, notes" in neuroml_log.text
    assert (
        find_strings(out, ["20230115", "20240203", "Jane", "1970", "ZZ", "sub-01", KEY.decode()])
        == {}
    )


def test_deidentify_keep_columns_and_unknown_column(tmp_path):
    raw = _dataset(tmp_path / "raw")
    deidentify_bids(raw, tmp_path / "out", key_file=raw / "key.txt", keep_columns=["notes"])
    assert (tmp_path / "out" / "participants.tsv").read_text().splitlines()[
        0
    ] == "participant_id\tdiagnosis\tage\tsex\tnotes"
    with pytest.raises(InputError, match=r"participants.tsv.*keep_columns \['nope'\] not found"):
        deidentify_bids(raw, tmp_path / "out2", key_file=raw / "key.txt", keep_columns=["nope"])
    assert not (tmp_path / "out2").exists()


def test_a_failed_copy_leaves_nothing_and_can_be_rerun(tmp_path, monkeypatch):
    import neuroml.io.privacy as privacy

    raw = _dataset(tmp_path / "raw", sessions=("a", "b"))
    out = tmp_path / "out"
    real, calls = privacy.save_nifti_atomic, []

    def failing(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(img, path)

    monkeypatch.setattr(privacy, "save_nifti_atomic", failing)
    with pytest.raises(OSError, match="disk full"):
        deidentify_bids(raw, out, key_file=raw / "key.txt")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    monkeypatch.setattr(privacy, "save_nifti_atomic", real)
    result = deidentify_bids(raw, out, key_file=raw / "key.txt")
    assert result["n_images"] == 4 and (out / "deidentification.json").is_file()
    # an existing empty folder is filled too
    (tmp_path / "empty").mkdir()
    assert deidentify_bids(raw, tmp_path / "empty", key_file=raw / "key.txt")["n_images"] == 4
    # a killed run's partial copy (a dead process of this host) is removed; a live one's is not
    from neuroml._utils.fileio import _OWNER

    host = _OWNER.rsplit("-", 1)[0]
    dead, live = (
        tmp_path / f".again.{host}-4194303.x1.partial",
        tmp_path / f".again.{_OWNER}.x2.partial",
    )
    dead.mkdir()
    live.mkdir()
    deidentify_bids(raw, tmp_path / "again", key_file=raw / "key.txt")
    assert not dead.exists() and live.exists()


def test_the_copy_is_as_readable_as_a_folder_the_user_makes(tmp_path):
    """mkdtemp's 0700 must not reach the shared copy: a new folder follows the umask, an empty
    folder made beforehand keeps its mode."""
    import os
    import stat

    raw = _dataset(tmp_path / "raw")
    old = os.umask(0o022)
    try:
        deidentify_bids(raw, tmp_path / "new", key_file=raw / "key.txt")
        made = tmp_path / "made"
        made.mkdir()
        made.chmod(0o750)
        deidentify_bids(raw, made, key_file=raw / "key.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE(made.stat().st_mode) == 0o750


def test_a_missing_key_names_both_ways_to_give_one(tmp_path, monkeypatch):
    # a first user runs `neuroml deidentify BIDS OUT` with no key: the error must say how to pass the
    # key file it suggests writing, not only the environment variable
    from neuroml.errors import ConfigError
    from neuroml.io.privacy import KEY_ENV, load_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"--key-file") as info:
        load_key()
    assert f"${KEY_ENV}" in str(info.value)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(ConfigError, match="short.key"):
        load_key(short)


def test_the_fmriprep_confounds_table_is_copied_beside_its_bold_series(tmp_path):
    # without it, preprocessing the copy falls back to no confound regression (--confounds auto)
    root = _dataset(tmp_path / "raw")
    func = root / "sub-01" / "ses-20230115" / "func"
    table = "trans_x\ttrans_y\tframewise_displacement\n0.1\t0.0\tn/a\n0.2\t0.1\t0.15\n"
    (func / "sub-01_ses-20230115_task-rest_desc-confounds_timeseries.tsv").write_text(table)
    (func / "sub-01_ses-20230115_task-rest_desc-confounds_timeseries.json").write_text(
        '{"trans_x": {}}'
    )
    (func / "sub-01_ses-20230115_task-rest_events.tsv").write_text("onset\tduration\n0\t1\n")
    out = tmp_path / "deid"
    deidentify_bids(root, out, key_file=root / "key.txt")
    new = pseudonym("sub-01", KEY)
    copied = out / new / "ses-1" / "func" / f"{new}_ses-1_task-rest_desc-confounds_timeseries.tsv"
    assert copied.read_text() == table
    assert copied.with_suffix(".json").is_file()
    assert not list(out.rglob("*_events.tsv"))  # other files are still left out
