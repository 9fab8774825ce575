"""End to end, with networking blocked at the socket level: a synthetic cohort whose site
and diagnosis are entangled, with identifying strings planted in its NIfTI headers and
BIDS sidecars, goes through de-identification, preprocessing, training (pooled and
leave-one-site-out), attribution and the report, as a YAML pipeline like pipelines/demo.yaml."""

import gzip
import json
import logging
import socket

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroml.io.privacy import find_strings, pseudonym
from neuroml.workflows.pipeline import load_pipeline, run_pipeline

pytestmark = pytest.mark.slow

KEY = b"e2e-test-key-0123456789abcdef"
PLANTED_HEADER = {
    "descrip": "ZZDESCRIP Doe^Jane 1970-01-01",
    "aux_file": "ZZAUXFILE-JaneDoe",
    "db_name": "ZZDBNAME-4711",
    "intent_name": "ZZINTENT-Jane",
}
PLANTED_SIDECAR = {
    "PatientName": "ZZPATIENT^Jane^Doe",
    "PatientID": "ZZPID-0815-4711",
    "AcquisitionDateTime": "2019-03-04T10:11:12.345",
    "InstitutionName": "ZZ St Elsewhere Hospital",
    "PatientBirthDate": "19700101",
}
PLANTED_EXTENSION = "ZZEXTENSION Jane Doe MRN 99887766"
PLANTED = [*PLANTED_HEADER.values(), *PLANTED_SIDECAR.values(), PLANTED_EXTENSION]


def _plant(bids):
    """Write identifying text into every raw NIfTI header (fields and an extension) and sidecar."""
    for path in sorted(bids.glob("sub-*/anat/*_T1w.nii.gz")):
        img = nib.load(path)
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        for field, text in PLANTED_HEADER.items():
            img.header[field] = text.encode()
        img.header.extensions.append(
            nib.nifti1.Nifti1Extension("comment", PLANTED_EXTENSION.encode())
        )
        nib.save(img, path)
        side = path.with_name(path.name.replace(".nii.gz", ".json"))
        side.write_text(json.dumps({**json.loads(side.read_text()), **PLANTED_SIDECAR}))


PIPELINE = """
name: tiny-demo
vars:
  workdir: ./w
steps:
  - deidentify: {bids_dir: "${bids}", out_dir: "${workdir}/bids", key_file: "${key_file}"}
  - preprocess: {bids_dir: "${workdir}/bids", out_dir: "${workdir}/derivatives", resolution: 8, n_jobs: 1,
                 n4: false, show_progress: false}
  - preprocess_group: {out_dir: "${workdir}/derivatives"}
  - train: {deriv_dir: "${workdir}/derivatives", run_dir: "${workdir}/run", epochs: 1, folds: 2, seed: 0,
            harmonize: combat, n_bootstrap: 100, show_progress: false}
  - train: {deriv_dir: "${workdir}/derivatives", run_dir: "${workdir}/run_loso", epochs: 1, seed: 0,
            site_column: site, n_bootstrap: 100, show_progress: false}
  - attribute: {run_dir: "${workdir}/run", deriv_dir: "${workdir}/derivatives", method: gradcam,
                show_progress: false}
  - report: {run_dir: "${workdir}/run"}
  - report: {run_dir: "${workdir}/run_loso"}
"""


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from neuroml.synth import make_cohort

    root = tmp_path_factory.mktemp("e2e")
    summary = make_cohort(
        root / "raw",
        n_subjects=12,
        seed=3,
        classes=("control", "MDD"),
        sites={"siteA": {"contrast": 0.15}, "siteB": {"contrast": -0.15}},
        voxel_scale=4.0,
        effect_size=0.0,
        site_entanglement=1.0,
    )
    _plant(root / "raw")
    (root / "secret").mkdir()
    (root / "secret" / "key.txt").write_bytes(KEY)
    pipeline = root / "tiny.yaml"
    pipeline.write_text(PIPELINE)
    work = root / "work"
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access blocked by the test")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            blocked(*args)

    records = _Records()
    logger = logging.getLogger("neuroml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logger.addHandler(records)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", NoSocket)
        mp.setattr(socket, "create_connection", blocked)
        mp.setattr(socket, "getaddrinfo", blocked)
        mp.setattr(socket, "socketpair", blocked)
        with pytest.raises(OSError, match="blocked"):
            socket.create_connection(("127.0.0.1", 9))  # the block is in force
        with pytest.raises(OSError, match="blocked"):
            socket.socket()
        attempts.clear()
        try:
            report = run_pipeline(
                pipeline,
                {
                    "workdir": str(work),
                    "bids": str(root / "raw"),
                    "key_file": str(root / "secret" / "key.txt"),
                },
            )
        finally:
            logger.removeHandler(records)
            torch.set_num_threads(threads)
    return {
        "root": root,
        "work": work,
        "report": report,
        "attempts": attempts,
        "warnings": records.messages,
        "participants": summary["participants"],
    }


def test_the_tiny_demo_completes_with_sockets_blocked(e2e):
    assert e2e["attempts"] == []
    assert (e2e["work"] / "run" / "report.html").is_file() and (
        e2e["work"] / "run_loso" / "report.html"
    ).is_file()
    assert (e2e["work"] / "run" / "attribution" / "gradcam" / "attribution.json").is_file()
    # the tiny pipeline runs every step the shipped demo runs
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"
    assert {n for n, _ in load_pipeline(demo, {"workdir": "/tmp/x"})} <= {
        n
        for n, _ in load_pipeline(
            e2e["root"] / "tiny.yaml", {"workdir": "/tmp/x", "bids": "/b", "key_file": "/k"}
        )
    }


def test_planted_identifiers_reach_no_output(e2e):
    raw_hits = find_strings(e2e["root"] / "raw", PLANTED)
    assert set().union(*raw_hits.values()) == set(
        PLANTED
    )  # the search does find them where they are
    originals = [p["participant_id"] for p in e2e["participants"]]
    outputs = find_strings(e2e["work"], PLANTED + originals + [KEY.decode()])
    assert outputs == {}
    # and independently of find_strings: raw and gunzipped bytes of every file
    needles = [s.lower().encode() for s in PLANTED]
    files = [p for p in e2e["work"].rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".gz", ".json", ".tsv", ".html", ".png", ".md"} <= kinds
    for path in files:
        data = path.read_bytes()
        blobs = [data, gzip.decompress(data)] if data[:2] == b"\x1f\x8b" else [data]
        for blob in blobs:
            assert not any(n in blob.lower() for n in needles), path


def test_pseudonyms_are_consistent_across_outputs(e2e):
    work = e2e["work"]
    expected = sorted(pseudonym(p["participant_id"], KEY) for p in e2e["participants"])
    table = (work / "run" / "predictions.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in table[1:]) == expected
    assert sorted(p.name for p in (work / "derivatives").glob("sub-*")) == expected
    maps = sorted(
        p.name.split("_")[0]
        for p in (work / "run" / "attribution" / "gradcam").glob("sub-*_map.nii.gz")
    )
    assert maps == expected
    html = (work / "run" / "report.html").read_text()
    assert all(p in html for p in expected)
    assert not (work / "bids" / "key.txt").exists()
    assert "not stored" in (work / "bids" / "deidentification.json").read_text()


def test_derivative_pictures_and_volumes_are_brain_masked(e2e):
    from neuroml.io.templates import brain_mask_on_grid

    mask = np.asarray(brain_mask_on_grid(8.0).dataobj) > 0
    for path in sorted((e2e["work"] / "derivatives").glob("sub-*/anat/*desc-preproc_T1w.nii.gz")):
        img = nib.load(path)
        assert not np.asarray(img.dataobj)[~mask].any(), path
        assert all(
            img.header[f].item() in (b"", b"neuroml 0.1.0 preproc")
            or b"neuroml" in img.header[f].item()
            for f in ("descrip", "aux_file", "db_name", "intent_name")
        )


def test_entangled_site_warns_probes_and_separates_pooled_from_loso(e2e):
    work = e2e["work"]
    assert any("associated with site" in m for m in e2e["warnings"])
    conf = json.loads((work / "run" / "confounds.json").read_text())
    assert conf["entangled"] == ["site"]
    pooled = json.loads((work / "run" / "metrics.json").read_text())
    loso = json.loads((work / "run_loso" / "metrics.json").read_text())
    assert pooled["site_probe"]["balanced_accuracy"] >= 0.8
    assert pooled["baseline"]["balanced_accuracy"] - loso["baseline"]["balanced_accuracy"] >= 0.3
    assert loso["baseline"]["balanced_accuracy"] <= 0.5 and loso["cnn"]["balanced_accuracy"] <= 0.5
    html = (work / "run" / "report.html").read_text()
    assert (
        "the label is associated with site" in html
        and "Site probe beside diagnosis accuracy" in html
    )
