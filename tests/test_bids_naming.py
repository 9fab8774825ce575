"""BIDS names of derivatives (entity order) and participant selection."""

import json

import pytest

from neuroml.errors import InputError
from neuroml.io.bids import ENTITY_ORDER, derivative_name, find_scans


def test_entities_follow_the_bids_table_order():
    raw = {
        "sub": "01",
        "ses": "a",
        "task": "rest",
        "run": "1",
        "echo": "2",
        "part": "mag",
        "inv": "1",
        "mt": "on",
        "flip": "1",
        "proc": "norm",
        "ce": "gad",
        "rec": "mag",
        "dir": "AP",
        "acq": "fast",
        "chunk": "1",
    }
    name = derivative_name(
        dict(reversed(list(raw.items()))),
        "bold",
        ".nii.gz",
        space="MNI152NLin2009aSym",
        res="2",
        desc="preproc",
    )
    assert name == (
        "sub-01_ses-a_task-rest_acq-fast_ce-gad_rec-mag_dir-AP_run-1_echo-2_flip-1_inv-1_mt-on_"
        "part-mag_proc-norm_space-MNI152NLin2009aSym_chunk-1_res-2_desc-preproc_bold.nii.gz"
    )
    assert ENTITY_ORDER[-1] == "desc"
    xfm = derivative_name(
        {"sub": "01"}, "xfm", ".txt", res="2", **{"from": "T1w", "to": "MNI", "mode": "image"}
    )
    assert xfm == "sub-01_res-2_from-T1w_to-MNI_mode-image_xfm.txt"


def test_a_participant_named_twice_is_found_once(tmp_path):
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.9.0"})
    )
    for sub in ("01", "02"):
        anat = tmp_path / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{sub}_T1w.nii.gz").write_bytes(b"x")
    scans = find_scans(tmp_path, participant_labels=["01", "sub-01", "01", "02"])
    assert [s.path.name for s in scans] == ["sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"]
    with pytest.raises(InputError, match="sub-03"):
        find_scans(tmp_path, participant_labels=["01", "03"])
