"""Every command of the ``neuroml`` console script, end to end, on a tiny synthetic cohort.

The commands run as a user runs them (``python -m neuroml ...`` in a subprocess) and each
stage reads only what the previous one wrote to disk.
"""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def neuroml(*args, ok=True):
    proc = subprocess.run(
        [sys.executable, "-m", "neuroml", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if ok and proc.returncode != 0:
        raise AssertionError(
            f"neuroml {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}"
        )
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    bids, deriv, run = root / "bids", root / "deriv", root / "run"
    out = neuroml(
        "synth", bids, "--n-subjects", 12, "--seed", 3, "--voxel-scale", 2.0, "--n-jobs", 2
    )
    assert out.stdout.strip() == str(bids)
    neuroml("preprocess", bids, deriv, "participant", "--resolution", 4, "--n-jobs", 2)
    parts = pd.read_csv(bids / "participants.tsv", sep="\t")
    new = parts.iloc[9:]  # three subjects (one per class) kept out of training
    parts.iloc[:9].to_csv(root / "train.tsv", sep="\t", index=False)
    neuroml(
        "train",
        deriv,
        "--run-dir",
        run,
        "--participants",
        root / "train.tsv",
        "--epochs",
        2,
        "--folds",
        3,
        "--batch-size",
        3,
        "--device",
        "cpu",
        "--n-permutations",
        200,
        "--n-bootstrap",
        100,
    )
    return dict(
        root=root,
        bids=bids,
        deriv=deriv,
        run=run,
        new=list(new["participant_id"]),
        train=list(parts["participant_id"][:9]),
        parts=parts,
    )


def test_synth_writes_bids_with_ground_truth(flow):
    bids = flow["bids"]
    assert json.loads((bids / "dataset_description.json").read_text())["BIDSVersion"]
    assert set(flow["parts"]["diagnosis"]) == {"control", "MDD", "SCZ"}
    assert {"site", "age"} <= set(flow["parts"].columns)
    assert len(list(bids.glob("sub-*/anat/*_T1w.nii.gz"))) == 12
    assert any((bids / "derivatives" / "groundtruth").rglob("*mask*.nii.gz"))


def test_preprocess_puts_every_subject_on_one_mni_grid(flow):
    deriv = flow["deriv"]
    imgs = sorted(deriv.glob("sub-*/anat/*_space-MNI152NLin2009aSym_res-4_desc-preproc_T1w.nii.gz"))
    assert len(imgs) == 12
    shapes = {nib.load(p).shape for p in imgs}
    affines = [nib.load(p).affine for p in imgs]
    assert len(shapes) == 1
    assert all(np.allclose(a, affines[0]) for a in affines)
    assert np.allclose(np.abs(np.diag(affines[0])[:3]), 4.0)
    sidecar = json.loads(imgs[0].with_name(imgs[0].name.replace(".nii.gz", ".json")).read_text())
    assert (
        "Sources" in sidecar or "SourceFile" in sidecar or "source" in json.dumps(sidecar).lower()
    )
    # A rerun skips every finished subject.
    again = neuroml("preprocess", flow["bids"], deriv, "participant", "--resolution", 4)
    assert "0 processed, 12 already done, 0 failed" in again.stdout
    group = neuroml("preprocess", flow["bids"], deriv, "group")
    assert group.stdout.strip().endswith(".html")


def test_train_writes_a_complete_run_folder(flow):
    run = flow["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "cnn" in json.dumps(metrics).lower() or "balanced_accuracy" in json.dumps(metrics)
    preds = pd.read_csv(run / "predictions.tsv", sep="\t")
    assert sorted(preds["participant_id"]) == sorted(
        flow["train"]
    )  # out-of-fold, training subjects only
    assert {"prob_control", "prob_MDD", "prob_SCZ"} <= set(preds.columns)
    assert np.allclose(preds[["prob_control", "prob_MDD", "prob_SCZ"]].sum(axis=1), 1, atol=1e-4)
    assert len(list(run.rglob("*.pt"))) >= 3
    for model in ("cnn", "baseline"):  # --n-permutations and --n-bootstrap reached the metrics
        assert metrics[model]["n_permutations"] == 200
        assert 1 / 201 <= metrics[model]["permutation_p"] <= 1
    assert (
        "Permutation test of the balanced accuracy (200 label permutations"
        in (run / "model_card.md").read_text()
    )


def test_predict_refuses_training_subjects_and_predicts_new_ones(flow):
    refused = neuroml("predict", flow["run"], flow["deriv"], ok=False)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "train" in refused.stderr

    out = flow["root"] / "new_predictions.tsv"
    proc = neuroml(
        "predict", flow["run"], flow["deriv"], "--out", out, "--participant-label", *flow["new"]
    )
    assert proc.stdout.strip() == str(out)
    table = pd.read_csv(out, sep="\t")
    assert sorted(table["participant_id"]) == sorted(flow["new"])
    assert set(table["predicted_label"]) <= {"control", "MDD", "SCZ"}
    probs = table[["prob_control", "prob_MDD", "prob_SCZ"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (
        probs.argmax(axis=1) == table["predicted_label"].map({"control": 0, "MDD": 1, "SCZ": 2})
    ).all()


def test_attribute_then_report(flow):
    run, deriv = flow["run"], flow["deriv"]
    proc = neuroml(
        "attribute",
        run,
        deriv,
        "--method",
        "gradcam",
        "--atlas",
        "aal",
        "--participant-label",
        *flow["new"],
    )
    produced = proc.stdout.strip()
    assert produced
    maps = sorted(run.rglob("*gradcam*.nii.gz"))
    assert len(maps) >= 3
    ref = nib.load(sorted(deriv.glob("sub-*/anat/*desc-preproc_T1w.nii.gz"))[0])
    for m in maps:
        img = nib.load(m)
        assert img.shape[:3] == ref.shape
        assert np.allclose(
            img.affine, ref.affine
        )  # overlays on the MNI grid, not an identity affine
    tables = sorted(run.rglob("*regions*.tsv"))
    assert tables
    table = pd.read_csv(tables[0], sep="\t")
    assert len(table) > 50  # AAL has ~116 regions
    report = neuroml("report", run).stdout.strip()
    html = open(report, encoding="utf-8").read()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "data:image/png;base64," in html
    assert "<script src=" not in html and 'href="http' not in html  # self-contained


def test_attribute_on_some_participants_keeps_the_others_and_other_derivatives_go_elsewhere(
    flow, tmp_path
):
    import shutil

    run, deriv, new = flow["run"], flow["deriv"], flow["new"]
    neuroml("attribute", run, deriv, "--method", "gradcam", "--participant-label", *new)
    proc = neuroml(
        "attribute", run, deriv, "--method", "gradcam", "--participant-label", new[0], "--no-sanity"
    )
    doc = json.loads(open(proc.stdout.strip(), encoding="utf-8").read())
    assert sorted(s["participant_id"] for s in doc["subjects"]) == sorted(
        new
    )  # the other two are kept
    assert doc["n_subjects"] == 3 and all(s["skipped"] for s in doc["subjects"])

    other = tmp_path / "deriv2"
    shutil.copytree(deriv, other)
    refused = neuroml(
        "attribute", run, other, "--method", "gradcam", "--participant-label", new[0], ok=False
    )
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert str(deriv.resolve()) in refused.stderr and str(other.resolve()) in refused.stderr
    out = tmp_path / "elsewhere"
    proc = neuroml(
        "attribute",
        run,
        other,
        "--method",
        "gradcam",
        "--participant-label",
        new[0],
        "--out",
        out,
        "--device",
        "auto",
        "--no-sanity",
    )
    assert proc.stdout.strip() == str(out / "attribution.json")
    assert json.loads((out / "attribution.json").read_text())["deriv_dir"] == str(other.resolve())
    kept = json.loads((run / "attribution" / "gradcam" / "attribution.json").read_text())
    assert kept["call_id"] == doc["call_id"] and kept["deriv_dir"] == str(deriv.resolve())
    assert "gradcam" in open(neuroml("report", run).stdout.strip(), encoding="utf-8").read()
    typo = neuroml("attribute", run, deriv, "--atlas", "AAL3", ok=False)
    assert "Did you mean 'aal'" in typo.stderr and len(typo.stderr.strip().splitlines()) == 1


def test_attribute_explains_training_subjects_only_with_their_held_out_fold(flow):
    """A cross-validated subject is explained by the one fold model that never saw it."""
    pid = flow["train"][0]
    proc = neuroml(
        "attribute", flow["run"], flow["deriv"], "--method", "saliency", "--participant-label", pid
    )
    doc = json.loads(open(proc.stdout.strip(), encoding="utf-8").read())
    entry = doc["subjects"][0]
    assert entry["participant_id"] == pid and entry["model_use"] == "out-of-fold"
    splits = json.loads((flow["run"] / "splits.json").read_text())
    folds = splits["folds"] if isinstance(splits, dict) else splits
    held_out = [f["fold"] for f in folds if pid in f.get("test", [])]
    assert entry["folds"] == held_out and len(held_out) == 1


def test_run_pipeline_with_overrides(flow, tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "vars:\n  deriv: none\nsteps:\n  - preprocess_group:\n      out_dir: ${deriv}\n"
    )
    proc = neuroml("run", pipeline, "--set", f"deriv={flow['deriv']}")
    assert proc.stdout.strip().endswith(".html")
