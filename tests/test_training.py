"""Tests of neuroml.training: splits, metrics, the training run, resume, prediction, the estimator."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import CLASSES, make_cohort
from _cohorts import blob_volume as _blob_volume

from neuroml.data import VolumeDataset
from neuroml.errors import ConfigError, InputError, LeakageError
from neuroml.io.templates import target_grid
from neuroml.models import build_model
from neuroml.runs import load_checkpoint, load_run, save_checkpoint
from neuroml.training import (
    NeuroClassifier,
    TrainSettings,
    balanced_accuracy,
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    fit,
    make_splits,
    permutation_pvalue,
    roc_auc_ovr,
    sensitivity_specificity,
)
from neuroml.training.splits import check_splits, validation_split
from neuroml.workflows import predict_run, train_run

FAST = dict(epochs=6, folds=3, batch_size=4, show_progress=False, n_bootstrap=200)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """One short 3-fold run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("cohort")
    deriv = make_cohort(root)
    summary = train_run(deriv, root / "run", **FAST)
    return deriv, root / "run", summary


# ---------------------------------------------------------------- splits


def test_splits_group_sessions_stratify_and_are_seeded():
    pids = [f"sub-{i:02d}" for i in range(18)] + ["sub-00", "sub-01", "sub-01"]  # repeated scans
    labels = [CLASSES[i % 3] for i in range(18)] + [CLASSES[0], CLASSES[1], CLASSES[1]]
    splits = make_splits(pids, labels, folds=3, seed=1, val_fraction=0.5)  # 2 of the 4 per class
    assert len(splits) == 3
    tested = [p for f in splits for p in f["test"]]
    assert sorted(tested) == sorted(set(pids))  # each participant tested exactly once
    label_of = dict(zip(pids, labels))
    for f in splits:
        assert not (
            set(f["train"]) & set(f["test"])
            or set(f["val"]) & set(f["test"])
            or set(f["train"]) & set(f["val"])
        )
        assert set(f["train"]) | set(f["val"]) | set(f["test"]) == set(pids)
        assert (
            sorted(label_of[p] for p in f["test"]).count("control") == 2
        )  # stratified: 2 of each class
        assert {label_of[p] for p in f["val"]} == set(CLASSES)
        assert {label_of[p] for p in f["train"]} == set(CLASSES)
    assert make_splits(pids, labels, folds=3, seed=1, val_fraction=0.5) == splits
    assert make_splits(pids, labels, folds=3, seed=2, val_fraction=0.5) != splits
    # 0.2 of 4 per class would hold out one participant per class: too few to early-stop on, so none
    assert all(
        f["val"] == [] and len(f["train"]) == 12 for f in make_splits(pids, labels, folds=3, seed=1)
    )


def test_leave_one_site_out_and_errors():
    pids = [f"sub-{i}" for i in range(8)]
    labels = ["a", "b"] * 4
    sites = ["X", "X", "Y", "Y", "Y", "Y", "Z", "Z"]
    splits = make_splits(pids, labels, sites=sites, seed=0)
    assert [f["test_site"] for f in splits] == ["X", "Y", "Z"]
    assert splits[1]["test"] == ["sub-2", "sub-3", "sub-4", "sub-5"]
    with pytest.raises(ConfigError, match="at least two sites"):
        make_splits(pids, labels, sites=["X"] * 8)
    with pytest.raises(ConfigError, match="folds"):
        make_splits(pids, labels, folds=1)
    with pytest.raises(ConfigError, match=r"fewer participants: \{'b': 3\}; use folds <= 3"):
        make_splits(pids, ["a"] * 5 + ["b"] * 3, folds=4)
    with pytest.raises(
        ConfigError, match=r"\{'b': 1\}; every class needs at least two participants"
    ):
        make_splits(pids, ["a"] * 7 + ["b"], folds=2)  # no "use folds <= 1": folds must be >= 2
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="'val_fraction' parameter must be a finite number"):
            make_splits(pids, labels, val_fraction=bad)
        with pytest.raises(ConfigError, match="'lr' parameter must be a finite number"):
            TrainSettings(lr=bad).validate()
    with pytest.raises(InputError, match="different labels"):
        make_splits(["sub-1", "sub-1", "sub-2", "sub-3"], ["a", "b", "a", "b"])
    with pytest.raises(LeakageError, match="both train and test"):
        check_splits([{"fold": 0, "train": ["sub-1"], "val": [], "test": ["sub-1"]}])
    train, val = validation_split(pids, labels, 0.5, seed=0)
    assert len(val) == 4 and sorted(labels[pids.index(p)] for p in val) == ["a", "a", "b", "b"]
    assert set(train) == set(pids) - set(val)
    assert validation_split(pids, labels, 0.25, seed=0) == (
        pids,
        [],
    )  # one per class: none held out


def test_leave_one_site_out_names_a_class_missing_from_training(neuroml_log):
    """The warning names the class as written ('P'), not as a numpy repr (np.str_('P'))."""
    pids = [f"sub-{i}" for i in range(8)]
    make_splits(
        pids, ["P", "P", "HC", "HC", "HC", "HC", "HC", "HC"], sites=["X"] * 2 + ["Y"] * 6, seed=0
    )
    assert "fold 0: no training participant of class(es) ['P']" in neuroml_log.text
    assert "np.str_" not in neuroml_log.text


# ---------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1 + 0.5) / 3)
    sens, spec = sensitivity_specificity(cm)
    assert sens.tolist() == [0.5, 1.0, 0.5]
    assert spec == pytest.approx([3 / 4, 3 / 4, 1.0])
    # binary AUC: pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4, not 0.35>0.4 -> 3/4
    macro, per = roc_auc_ovr([0, 0, 1, 1], [[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert per.tolist() == [0.75, 0.75] and macro == 0.75
    # a tie counts one half
    assert roc_auc_ovr([0, 1], [[0.5, 0.5], [0.5, 0.5]])[1].tolist() == [0.5, 0.5]
    # three classes, one-vs-rest by hand: class 0 perfect, class 1 3/4 ... see pairs below
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])
    y = [0, 0, 1, 2]
    macro, per = roc_auc_ovr(y, proba)
    # class 1: pos .4 vs negs .1,.3,.2 -> 1; class 2: pos .6 vs .1,.1,.3 -> 1; class 0: pos .8,.6 vs .3,.2 -> 1
    assert per.tolist() == [1.0, 1.0, 1.0]
    proba[3] = [
        0.7,
        0.2,
        0.1,
    ]  # class 0 now: .8 > .3,.7; .6 > .3 not .7 -> 3/4; class 2: .1 vs .1,.1,.3 -> (0.5+0.5)/3
    macro, per = roc_auc_ovr(y, proba)
    assert per == pytest.approx([0.75, 1.0, 1 / 3])
    assert macro == pytest.approx((0.75 + 1 + 1 / 3) / 3)


def test_bootstrap_and_permutation():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    perfect = np.eye(3)[y] * 0.8 + 0.1
    assert bootstrap_ci(y, perfect, 300, seed=0)["balanced_accuracy"] == [1.0, 1.0]
    noisy = rng.dirichlet([1, 1, 1], size=30)
    ci = bootstrap_ci(y, noisy, 500, seed=0)
    point = balanced_accuracy(y, noisy.argmax(1))
    assert ci["balanced_accuracy"][0] < point < ci["balanced_accuracy"][1]
    assert ci == bootstrap_ci(y, noisy, 500, seed=0) and ci != bootstrap_ci(y, noisy, 500, seed=1)
    assert permutation_pvalue(y, y, 999, seed=0) == pytest.approx(1 / 1000)
    unrelated = np.tile([0, 1, 2], 10)  # recall 0.4 in every class, near chance
    assert 0.1 < permutation_pvalue(y, unrelated, 999, seed=0) < 0.9
    report = classification_report(y, perfect, ["a", "b", "c"], n_bootstrap=50, n_permutations=99)
    assert report["balanced_accuracy"] == 1.0 and report["permutation_p"] == pytest.approx(0.01)
    assert report["confusion_matrix"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    assert report["roc"]["a"]["tpr"][-1] == 1.0 and report["sensitivity"]["c"] == 1.0
    json.dumps(report)  # JSON-ready


# ---------------------------------------------------------------- train_run


def test_train_run_writes_the_run_folder(trained):
    deriv, run_dir, summary = trained
    for name in (
        "config.json",
        "provenance.json",
        "splits.json",
        "metrics.json",
        "predictions.tsv",
        "training_curve.png",
        "baseline_predictions.tsv",
    ):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["model"] == "compact"
    assert (
        config["label_column"] == "diagnosis"
        and config["resolution"] == "8"
        and config["seed"] == 0
    )
    assert config["grid"]["shape"] == [19, 23, 20] and np.allclose(
        config["grid"]["affine"], target_grid(8.0)[0]
    )
    assert (
        "input_pool" not in config
    )  # "auto" does not pool the 8 mm grid: the config of earlier runs
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["packages"]["torch"] and prov["seed"] == 0 and prov["device"] == "cpu"
    assert len(prov["inputs"]["volumes_sha256"]) == 13  # 12 participants, one with two sessions
    assert all(len(v) == 64 for v in prov["inputs"]["volumes_sha256"].values())
    assert prov["start"] <= prov["end"]
    splits = json.loads((run_dir / "splits.json").read_text())["folds"]
    assert len(splits) == 3 and sum(len(f["test"]) for f in splits) == 12
    for k in range(3):
        hist = pd.read_csv(run_dir / f"fold-{k}" / "history.tsv", sep="\t")
        assert list(hist.columns) == [
            "epoch",
            "train_loss",
            "val_loss",
            "val_balanced_accuracy",
            "lr",
            "seconds",
        ]
        assert hist["epoch"].tolist() == list(range(1, len(hist) + 1)) and len(hist) >= 1
        assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
        ckpt = load_checkpoint(run_dir / f"fold-{k}" / "model.pt", require=("state_dict", "meta"))
        assert ckpt["meta"]["fold"] == k and ckpt["meta"]["classes"] == list(CLASSES)
        assert ckpt["meta"]["input_pool"] == 1
        assert not (run_dir / f"fold-{k}" / "last.pt").exists()
    pred = pd.read_csv(run_dir / "predictions.tsv", sep="\t")
    assert list(pred.columns) == [
        "participant_id",
        "true_label",
        "predicted_label",
        "prob_control",
        "prob_MDD",
        "prob_SCZ",
        "fold",
    ]
    assert len(pred) == 12 and pred["participant_id"].is_unique
    assert np.allclose(pred.filter(like="prob_").sum(axis=1), 1, atol=1e-5)
    for f in splits:  # every prediction comes from the fold that held the participant out
        assert set(pred.loc[pred["fold"] == f["fold"], "participant_id"]) == set(f["test"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"cnn", "baseline"}
    assert metrics["cnn"]["balanced_accuracy"] == summary["balanced_accuracy"]
    assert metrics["baseline"]["features"].startswith("mean intensity of")
    assert metrics["baseline"]["balanced_accuracy"] > 0.5
    assert len(metrics["cnn"]["per_fold"]) == 3
    png = (run_dir / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_training_curve_says_when_there_is_no_validation_set(tmp_path, monkeypatch):
    """Without validation participants the accuracy panel states why it is empty (it was blank)."""
    from matplotlib.figure import Figure

    from neuroml.runs.outputs import plot_training_curves

    texts = {}
    save = Figure.savefig

    def capture(fig, *args, **kwargs):
        texts[len(texts)] = [t.get_text() for ax in fig.axes for t in ax.texts]
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    nan = float("nan")
    plain = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_loss": [1.0, 0.5],
            "val_loss": [nan, nan],
            "val_balanced_accuracy": [nan, nan],
        }
    )
    plot_training_curves(tmp_path / "a.png", {0: plain})
    plot_training_curves(
        tmp_path / "b.png", {0: plain.assign(val_loss=[0.9, 0.8], val_balanced_accuracy=[0.5, 0.6])}
    )
    assert any("no validation set" in t for t in texts[0]) and not any(
        "no validation" in t for t in texts[1]
    )


def test_train_run_learns_the_easy_task(trained):
    _, run_dir, summary = trained
    assert summary["balanced_accuracy"] > 0.6  # chance is 1/3
    assert summary["auc_macro"] > 0.75
    pred = pd.read_csv(run_dir / "predictions.tsv", sep="\t")
    assert (pred["true_label"] == pred["predicted_label"]).mean() > 0.6


def test_rerun_keeps_completed_folds_and_refuses_other_settings(trained, tmp_path, neuroml_log):
    deriv, run_dir, summary = trained
    again = train_run(deriv, run_dir, **FAST)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert all(f["status"].startswith("skipped") for f in prov["folds"])
    # numbered as the progress bars and the resume message number folds ("fold 1/3"), with the folder
    assert "fold 1/3 (fold-0) already trained: kept" in neuroml_log.text
    assert again["balanced_accuracy"] == summary["balanced_accuracy"]
    with pytest.raises(ConfigError, match="already holds a run.*lr"):
        train_run(deriv, run_dir, **{**FAST, "lr": 0.01})


def test_a_finished_run_gains_a_permutation_test_without_retraining(trained, tmp_path):
    deriv, run_dir, summary = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert "permutation_p" not in json.loads((copy / "metrics.json").read_text())["cnn"]
    weights = {p: p.read_bytes() for p in copy.rglob("*.pt")}
    again = train_run(deriv, copy, **{**FAST, "n_permutations": 50})
    assert all(
        f["status"].startswith("skipped")
        for f in json.loads((copy / "provenance.json").read_text())["folds"]
    )
    assert {p: p.read_bytes() for p in copy.rglob("*.pt")} == weights  # nothing retrained
    metrics = json.loads((copy / "metrics.json").read_text())
    for model in ("cnn", "baseline"):
        assert (
            metrics[model]["n_permutations"] == 50
            and 1 / 51 <= metrics[model]["permutation_p"] <= 1
        )
    assert again["balanced_accuracy"] == summary["balanced_accuracy"]
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="n_permutations"):
            train_run(deriv, tmp_path / "other", **{**FAST, "n_permutations": bad})
    assert not (tmp_path / "other").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="n_bootstrap"):
        train_run(deriv, tmp_path / "other", **{**FAST, "n_bootstrap": -5})


def test_a_run_continues_only_in_its_precision_and_process_count(trained, tmp_path, neuroml_log):
    """Folds kept from a bf16 (CUDA) or multi-process run are not mixed with fp32 or one-process ones."""
    deriv, run_dir, summary = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    for runtime, message in (
        ({"device": "cuda:0", "amp": True, "world_size": 1}, "trained in bf16 on 1"),
        ({"device": "cpu", "amp": True, "world_size": 4}, "fp32 on 4 process"),
    ):
        (copy / "config.json").write_text(
            json.dumps({**config, "runtime": {**config["runtime"], **runtime}})
        )
        with pytest.raises(ConfigError, match=message):
            train_run(deriv, copy, resume=True, **FAST)
    # fp32 on the GPU (autocast off) gives the same kind of weights: allowed, with a warning
    (copy / "config.json").write_text(
        json.dumps({**config, "runtime": {**config["runtime"], "device": "cuda:0", "amp": False}})
    )
    import logging

    with neuroml_log.at_level(logging.WARNING, logger="neuroml"):
        again = train_run(deriv, copy, resume=True, **FAST)
    assert (
        "it ran on cuda:0" in neuroml_log.text
        and again["balanced_accuracy"] == summary["balanced_accuracy"]
    )
    # folds recomputed otherwise (e.g. by another scikit-learn) than the kept ones: refused
    doc = json.loads((copy / "splits.json").read_text())
    a, b = doc["folds"][0], doc["folds"][1]
    a["test"][0], b["test"][0] = b["test"][0], a["test"][0]
    (copy / "splits.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="differ from the run's splits.json"):
        train_run(deriv, copy, resume=True, **FAST)


def test_train_run_input_errors(trained, tmp_path):
    deriv, _, _ = trained
    with pytest.raises(
        InputError, match=r"label column 'dx' not found; available columns: \['diagnosis', 'site'\]"
    ):
        train_run(deriv, tmp_path / "r1", label_column="dx", **FAST)
    with pytest.raises(ConfigError, match="Did you mean 'densenet121'"):
        train_run(deriv, tmp_path / "r2", model="densenet", **FAST)
    with pytest.raises(ConfigError, match="epochs"):
        train_run(deriv, tmp_path / "r3", **{**FAST, "epochs": 0})
    with pytest.raises(ConfigError, match="'input_pool' parameter must be 'auto' or one of"):
        train_run(deriv, tmp_path / "r4", input_pool=3, **FAST)
    with pytest.raises(ConfigError, match="compact network only"):
        train_run(deriv, tmp_path / "r5", model="resnet10", input_pool=2, **FAST)
    with pytest.raises(ConfigError, match="after the input pooling by 2"):  # 8 mm: 19 -> 10 voxels
        train_run(deriv, tmp_path / "r6", input_pool=2, **FAST)
    with pytest.raises(
        ConfigError,
        match=r"raw/participants.tsv \(label column 'diagnosis'\): folds=5 but some "
        r"classes have fewer participants: \{'MDD': 4, 'SCZ': 4, 'control': 4\}; "
        r"use folds <= 4",
    ):
        train_run(deriv, tmp_path / "r7", **{**FAST, "folds": 5})
    with pytest.raises(
        ConfigError, match=r"^The 'folds' parameter must be in \[2, None\]. Got 1 instead.$"
    ):
        train_run(
            deriv, tmp_path / "r8", **{**FAST, "folds": 1}
        )  # a parameter error, not the table's
    with pytest.raises(ConfigError, match=r"^The 'val_fraction' parameter must be in \[0.0, 0.5\]"):
        train_run(deriv, tmp_path / "r9", **{**FAST, "val_fraction": 0.9})
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 10))


def test_train_run_with_numeric_class_labels(trained, tmp_path):
    """Class names that look like numbers (0/1/2) stay class names when a predictions table is read back
    (the bias audit of the baseline crashed on them)."""
    deriv, _, _ = trained
    table = pd.read_csv(deriv.parent / "raw" / "participants.tsv", sep="\t")
    table["code"] = table["diagnosis"].map({c: i for i, c in enumerate(CLASSES)})
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    train_run(
        deriv,
        tmp_path / "run",
        label_column="code",
        participants=tmp_path / "participants.tsv",
        **FAST,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == ["0", "1", "2"] and "baseline" in metrics["audit"]
    pred = load_run(tmp_path / "run").predictions()
    assert set(pred["true_label"]) == {"0", "1", "2"} and set(pred["predicted_label"]) <= {
        "0",
        "1",
        "2",
    }


def test_a_balanced_accuracy_of_zero_is_logged_as_zero(trained, tmp_path, monkeypatch, neuroml_log):
    import neuroml.workflows.train as run_module

    deriv, _, _ = trained
    report = run_module._report
    monkeypatch.setattr(
        run_module, "_report", lambda *args: {**report(*args), "balanced_accuracy": 0.0}
    )
    summary = train_run(deriv, tmp_path / "run", **{**FAST, "epochs": 1, "baseline": False})
    assert summary["balanced_accuracy"] == 0.0
    assert "balanced accuracy 0.000 (baseline n/a)" in neuroml_log.text


def test_leave_one_site_out_errors_name_the_participants_file(trained, tmp_path):
    deriv, _, _ = trained
    table = pd.read_csv(deriv.parent / "raw" / "participants.tsv", sep="\t")
    path = tmp_path / "participants.tsv"
    table.assign(site=["n/a"] + list(table["site"][1:])).to_csv(path, sep="\t", index=False)
    with pytest.raises(
        InputError,
        match=r"participants.tsv: leave-one-site-out needs the 'site' of every "
        r"participant; it is missing for 1: sub-01",
    ):
        train_run(deriv, tmp_path / "r1", participants=path, site_column="site", **FAST)
    table.assign(site="A").to_csv(path, sep="\t", index=False)
    with pytest.raises(
        InputError, match=r"participants.tsv: leave-one-site-out needs at least two sites"
    ):
        train_run(deriv, tmp_path / "r2", participants=path, site_column="site", **FAST)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_train_run_input_pool_is_recorded_and_rebuilt(tmp_path):
    deriv = make_cohort(tmp_path, n_per_class=3, res=4.0, two_sessions=())  # 37 x 46 x 39
    run_dir = tmp_path / "run"
    train_run(
        deriv,
        run_dir,
        epochs=2,
        folds=3,
        batch_size=4,
        show_progress=False,
        n_bootstrap=50,
        baseline=False,
        input_pool=2,
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["input_pool"] == 2 and config["grid"]["shape"] == [37, 46, 39]
    assert "input average-pooled 2x, ~8 mm" in (run_dir / "model_card.md").read_text()
    run = load_run(run_dir)
    pred = pd.read_csv(run_dir / "predictions.tsv", sep="\t")
    for fold, model in run.fold_models():
        assert int(model.net.input_pool.factor) == 2
        assert load_checkpoint(run_dir / f"fold-{fold}" / "model.pt")["meta"]["input_pool"] == 2
        test = pred[pred["fold"] == fold]
        vols = np.stack(
            [
                nib.load(next(deriv.glob(f"{p}/anat/*.nii.gz"))).get_fdata(dtype=np.float32)
                for p in test["participant_id"]
            ]
        )
        with torch.no_grad():
            proba = torch.softmax(model(torch.from_numpy(vols[:, None])).double(), 1).numpy()
        assert np.allclose(
            proba, test.filter(like="prob_").to_numpy(), atol=1e-4
        )  # the rebuilt network
    # weights of the pooled network are refused by a network rebuilt without the pooling
    path = run_dir / "fold-0" / "model.pt"
    ckpt = load_checkpoint(path)
    ckpt["meta"]["input_pool"] = 1
    torch.save(ckpt, path)
    with pytest.raises(InputError, match="weights do not fit a 'compact' network"):
        run.fold_model(0)


def test_resume_after_interruption_matches_uninterrupted_run(
    trained, tmp_path, monkeypatch, interrupt_fold
):
    deriv, ref_dir, _ = trained
    disarm = interrupt_fold(2, epoch=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(deriv, tmp_path / "run", **FAST)
    disarm()
    assert (tmp_path / "run" / "fold-0" / "model.pt").is_file()
    last = load_checkpoint(tmp_path / "run" / "fold-1" / "last.pt")  # plain tensors and types only
    assert last["state"]["epoch"] == 3 and "optimizer" in last and "scheduler" in last
    assert not (tmp_path / "run" / "fold-1" / "model.pt").exists()
    from neuroml.training import trainer

    calls = []
    real_epoch = trainer._train_epoch
    monkeypatch.setattr(
        trainer, "_train_epoch", lambda *a, **k: calls.append(1) or real_epoch(*a, **k)
    )
    train_run(deriv, tmp_path / "run", resume=True, **FAST)
    assert (
        len(calls) == (FAST["epochs"] - 3) + FAST["epochs"]
    )  # fold 0 kept, fold 1 continued, fold 2 trained
    statuses = [
        f["status"] for f in json.loads((tmp_path / "run" / "provenance.json").read_text())["folds"]
    ]
    assert (
        statuses[0].startswith("skipped") and statuses[1] == "resumed" and statuses[2] == "trained"
    )
    ref = pd.read_csv(ref_dir / "predictions.tsv", sep="\t")
    got = pd.read_csv(tmp_path / "run" / "predictions.tsv", sep="\t")
    assert got["participant_id"].tolist() == ref["participant_id"].tolist()
    probs = [c for c in ref.columns if c.startswith("prob_")]
    assert np.abs(got[probs].to_numpy() - ref[probs].to_numpy()).max() <= 1e-6
    hist_ref = pd.read_csv(ref_dir / "fold-1" / "history.tsv", sep="\t")
    hist = pd.read_csv(tmp_path / "run" / "fold-1" / "history.tsv", sep="\t")
    assert np.allclose(hist["train_loss"], hist_ref["train_loss"], rtol=1e-5)


@pytest.mark.parametrize("schedule, accum", [("onecycle", 2), ("constant", 1)])
def test_fit_resume_is_exact(schedule, accum, tmp_path):
    rng = np.random.default_rng(0)
    shape = (19, 23, 20)
    y = np.arange(9) % 3
    x = np.stack([_blob_volume(rng, c, shape) for c in y])
    settings = TrainSettings(
        epochs=4,
        batch_size=2,
        grad_accum=accum,
        schedule=schedule,
        patience=None,
        show_progress=False,
    )

    epochs_run = []

    def run(ckpt, stop=None):
        from neuroml.data import make_augmentation

        torch.manual_seed(0)
        model = build_model("compact", 3, spatial_shape=shape)
        epochs_run.clear()

        def cb(epoch, rec):
            epochs_run.append(epoch)
            if epoch == stop:
                raise RuntimeError("killed")

        return fit(
            model,
            VolumeDataset(x, y[:6], np.arange(6), transform=make_augmentation(0)),
            VolumeDataset(x, y[6:], np.arange(6, 9)),
            settings,
            stream=(0, 1),
            checkpoint_path=ckpt,
            resume=True,
            callback=cb,
        )

    whole = run(tmp_path / "a.pt")
    assert epochs_run == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b.pt", stop=2)
    resumed = run(tmp_path / "b.pt")
    assert epochs_run == [3, 4]  # continued, not restarted
    for (k, v), (_, w) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
    assert [h["train_loss"] for h in whole.history] == pytest.approx(
        [h["train_loss"] for h in resumed.history]
    )
    assert whole.history[-1]["lr"] == pytest.approx(resumed.history[-1]["lr"])


def test_fit_refuses_to_resume_a_checkpoint_of_another_network(tmp_path):
    rng = np.random.default_rng(0)
    shape = (19, 23, 20)
    y = np.arange(6) % 3
    x = np.stack([_blob_volume(rng, c, shape) for c in y])
    settings = TrainSettings(epochs=2, batch_size=2, patience=None, show_progress=False)
    ckpt = tmp_path / "last.pt"

    def stop(epoch, rec):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):  # leaves last.pt of the PReLU network
        fit(
            build_model("compact", 3, spatial_shape=shape, activation="prelu"),
            VolumeDataset(x, y),
            None,
            settings,
            checkpoint_path=ckpt,
            resume=True,
            callback=stop,
        )
    with pytest.raises(
        ConfigError, match=r"last.pt holds the weights of another network .*adn.A.weight"
    ):
        fit(
            build_model("compact", 3, spatial_shape=shape),
            VolumeDataset(x, y),
            None,
            settings,
            checkpoint_path=ckpt,
            resume=True,
        )


def test_weights_only_refuses_pickled_objects(trained, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": Payload()}, evil)
    with pytest.raises(InputError, match="refusing to load.*weights_only=True"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()
    # a tampered fold model in a run folder is refused the same way
    import shutil

    _, run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    torch.save({"state_dict": {}, "meta": Payload()}, copy / "fold-0" / "model.pt")
    with pytest.raises(InputError, match="refusing to load"):
        load_run(copy).fold_models()
    assert not (tmp_path / "pwned").exists()
    save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}, "meta": {"a": [1, "x", None]}}, tmp_path / "ok.pt"
    )
    assert load_checkpoint(tmp_path / "ok.pt", require=("state_dict",))["meta"] == {
        "a": [1, "x", None]
    }
    with pytest.raises(InputError, match="lacks"):
        load_checkpoint(tmp_path / "ok.pt", require=("optimizer",))


# ---------------------------------------------------------------- load_run / predict_run


def test_load_run(trained):
    _, run_dir, _ = trained
    run = load_run(run_dir)
    assert run.classes == list(CLASSES) and len(run.splits) == 3
    assert run.trained_ids() == {f"sub-{i:02d}" for i in range(1, 13)}
    fold = run.test_fold_of("sub-05")
    assert "sub-05" in run.splits[fold]["test"] and run.test_fold_of("05") == fold
    assert run.test_fold_of("sub-99") is None
    models = run.fold_models()
    assert [k for k, _ in models] == [0, 1, 2] and not any(m.training for _, m in models)
    assert run.grid[1] == (19, 23, 20)
    with pytest.raises(InputError, match="not a neuroml run folder"):
        load_run(run_dir / "fold-0")


def test_predict_on_an_unfinished_run_says_how_to_finish_it(trained, tmp_path):
    import shutil

    deriv, run_dir, _ = trained
    shutil.copytree(run_dir, tmp_path / "run")
    (tmp_path / "run" / "fold-2" / "model.pt").unlink()
    with pytest.raises(
        InputError,
        match=r"fold\(s\) \[2\] have no model.pt; rerun the training command with --resume",
    ):
        predict_run(tmp_path / "run", deriv, out_path=tmp_path / "p.tsv", force=True)


def test_predict_run_refuses_trained_subjects(trained, tmp_path):
    deriv, run_dir, _ = trained
    with pytest.raises(LeakageError, match=r"12 participant\(s\) were used to train.*sub-01"):
        predict_run(run_dir, deriv)
    out = predict_run(
        run_dir, deriv, out_path=tmp_path / "p.tsv", force=True, participant_labels=["01", "sub-02"]
    )
    assert out["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert (tmp_path / "p.tsv").is_file()
    one = predict_run(
        run_dir, deriv, out_path=tmp_path / "one.tsv", force=True, participant_labels="sub-02"
    )
    assert one["participant_id"].tolist() == ["sub-02"]  # a string is one label, not its characters
    with pytest.raises(InputError, match="invalid participant label"):
        predict_run(
            run_dir, deriv, out_path=tmp_path / "bad.tsv", force=True, participant_labels=["../01"]
        )


def test_predict_run_new_subjects_and_grid_check(trained, tmp_path, monkeypatch):
    from neuroml.training import trainer

    _, run_dir, _ = trained
    new = make_cohort(tmp_path / "new", n_per_class=2, prefix="new", seed=7)
    seen, original = [], trainer.evaluate
    monkeypatch.setattr(
        trainer, "evaluate", lambda *a, **k: seen.append(k.get("amp")) or original(*a, **k)
    )
    table = predict_run(run_dir, new)
    n_folds = len(json.loads((run_dir / "splits.json").read_text())["folds"])
    assert (
        seen == [json.loads((run_dir / "config.json").read_text())["runtime"]["amp"]] * n_folds
    )  # the run's
    assert (run_dir / "predict" / "predictions.tsv").is_file()
    assert list(table.columns) == [
        "participant_id",
        "predicted_label",
        "prob_control",
        "prob_MDD",
        "prob_SCZ",
    ]
    assert len(table) == 6 and np.allclose(table.filter(like="prob_").sum(axis=1), 1, atol=1e-6)
    truth = [CLASSES[i % 3] for i in range(6)]
    assert (table["predicted_label"].to_numpy() == truth).mean() >= 0.5
    other = make_cohort(tmp_path / "other", n_per_class=1, prefix="oth", shape=(19, 23, 21))
    with pytest.raises(InputError, match=r"shape \(19, 23, 21\).*trained on shape \(19, 23, 20\)"):
        predict_run(run_dir, other)


def test_predict_finds_training_scans_by_id_and_by_raw_checksum(tmp_path):
    """Leakage is judged by ID and by raw-scan checksum: a renamed training scan is refused too."""
    import hashlib

    def sha(study):
        return lambda pid, ses: hashlib.sha256(f"{study}/{pid}/{ses}".encode()).hexdigest()

    deriv = make_cohort(tmp_path / "a", n_per_class=3, source_sha=sha("a"))
    train_run(deriv, tmp_path / "run", **{**FAST, "epochs": 1, "folds": 2, "baseline": False})
    inputs = json.loads((tmp_path / "run" / "provenance.json").read_text())["inputs"]
    assert inputs["source_datasets"] == [(tmp_path / "a" / "raw").resolve().as_uri()]
    assert inputs["source_sha256"]["sub-01"] == sorted(
        [sha("a")("sub-01", "1"), sha("a")("sub-01", "2")]
    )
    # training IDs are refused even from another study with other scans (a re-converted or
    # de-identified copy of the training data would look the same); --force predicts them
    other = make_cohort(tmp_path / "b", n_per_class=3, seed=5, source_sha=sha("b"))
    with pytest.raises(LeakageError, match="9 participant.*if these IDs name other people"):
        predict_run(tmp_path / "run", other)
    assert len(predict_run(tmp_path / "run", other, force=True)) == 9
    # a training scan under a new ID, from any folder, is refused by its raw checksum
    renamed = make_cohort(
        tmp_path / "d",
        n_per_class=1,
        prefix="x",
        seed=6,
        source_sha=lambda pid, ses: (
            sha("a")("sub-05", None) if pid == "sub-x02" else sha("d")(pid, ses)
        ),
    )
    with pytest.raises(
        LeakageError, match=r"\['sub-x02'\] \(sub-x02: a training scan under another ID\)"
    ):
        predict_run(tmp_path / "run", renamed)
    # attribute explains the renamed scan with the one fold model that did not train on sub-05
    from neuroml.attribution import attribute_run

    attribute_run(
        tmp_path / "run", renamed, method="saliency", sanity=False, out_dir=tmp_path / "attr"
    )
    doc = json.loads((tmp_path / "attr" / "attribution.json").read_text())
    entry = next(e for e in doc["subjects"] if e["participant_id"] == "sub-x02")
    folds = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"]
    assert (
        entry["folds"] == [f["fold"] for f in folds if "sub-05" in f["test"]]
        and entry["model_use"] == "out-of-fold"
    )
    assert (
        next(e for e in doc["subjects"] if e["participant_id"] == "sub-x01")["model_use"]
        == "not-in-run"
    )
    # one raw scan under two IDs inside a training cohort: refused before any fold is made
    dup = make_cohort(
        tmp_path / "f",
        n_per_class=2,
        seed=8,
        source_sha=lambda pid, ses: sha("f")("sub-02" if pid == "sub-05" else pid, ses),
    )
    with pytest.raises(
        LeakageError,
        match=r"1 raw scan\(s\) appear under several participant IDs, e\.g\. "
        r"sub-02 and sub-05",
    ):
        train_run(dup, tmp_path / "dup-run", **FAST)
    assert not (tmp_path / "dup-run").exists()
    # BOLD maps: the series' desc-maps_bold.json holds the raw checksum
    from neuroml.runs.sources import source_identity

    func = tmp_path / "g" / "sub-01" / "func"
    func.mkdir(parents=True)
    (func / "sub-01_task-rest_space-MNI152NLin2009aSym_res-4_desc-maps_bold.json").write_text(
        json.dumps({"SourceSHA256": "abc"})
    )
    assert source_identity(
        tmp_path / "g",
        ["sub-01/func/sub-01_task-rest_space-MNI152NLin2009aSym_res-4_desc-alff_boldmap.nii.gz"],
    )[1] == ["abc"]
    # mistakes named before any work
    with pytest.raises(InputError, match="nope.tsv: participants file not found"):
        predict_run(tmp_path / "run", other, participants=tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="is a folder: give the predictions a file name"):
        predict_run(tmp_path / "run", other, out_path=tmp_path)


# ---------------------------------------------------------------- NeuroClassifier


def test_neuro_classifier_input_pool():
    from sklearn.base import clone

    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 1, 37, 46, 39)).astype(np.float32)  # the 4 mm grid
    y = ["a", "b"] * 3
    pooled = NeuroClassifier(epochs=1, val_fraction=0, input_pool=2).fit(x, y)
    assert pooled.input_pool_ == 2 and int(pooled.model_.net.input_pool.factor) == 2
    assert pooled.predict_proba(x).shape == (6, 2)
    auto = clone(pooled).set_params(input_pool="auto").fit(x, y)
    assert auto.input_pool_ == 1 and not hasattr(
        auto.model_.net, "input_pool"
    )  # 4 mm is not pooled
    with pytest.raises(ConfigError, match="input_pool"):
        NeuroClassifier(epochs=1, input_pool=3).fit(x, y)


def test_neuro_classifier_fit_predict(tmp_path):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    rng = np.random.default_rng(1)
    shape = (19, 23, 20)
    y = np.array([CLASSES[i % 3] for i in range(12)])
    x = np.stack([_blob_volume(rng, i % 3, shape) for i in range(12)])
    clf = NeuroClassifier(epochs=8, seed=0, val_fraction=0.25)
    assert clf.get_params()["epochs"] == 8 and not hasattr(clf, "model_")
    with pytest.raises(NotFittedError):
        clf.predict(x)
    assert clf.fit(x, y) is clf
    assert clf.classes_.tolist() == sorted(CLASSES) and clf.grid_ is None
    assert len(clf.history_) >= 1 and 1 <= clf.best_epoch_ <= 8
    proba = clf.predict_proba(x)
    assert proba.shape == (12, 3) and np.allclose(proba.sum(1), 1)
    test = np.stack([_blob_volume(rng, i % 3, shape) for i in range(6)])
    assert (clf.predict(test) == y[:6]).mean() > 0.5
    assert clone(clf).get_params() == clf.get_params()
    # images on disk: a list of paths, the grid is remembered
    affine = target_grid(8.0)[0]
    paths = []
    for i, vol in enumerate(x[:6]):
        paths.append(tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(vol, affine), str(paths[-1]))
    fitted = NeuroClassifier(epochs=1, val_fraction=0, augment=False).fit(paths, y[:6])
    assert fitted.grid_[1] == shape and fitted.predict(paths[:2]).shape == (2,)
    with pytest.raises(InputError, match="grid"):
        fitted.predict(np.zeros((1, 19, 23, 21), np.float32))
    with pytest.raises(InputError, match="labels"):
        NeuroClassifier(epochs=1).fit(x, y[:5])


def test_region_means_matches_a_loop():
    from neuroml.training.baseline import baseline_cv, region_means

    rng = np.random.default_rng(0)
    vols = rng.normal(size=(5, 7, 8, 9)).astype(np.float16)
    labels = rng.integers(0, 4, size=(7, 8, 9))
    feats, ids = region_means(vols, labels, chunk=2)
    assert ids.tolist() == [1, 2, 3]
    expected = [[vols[i][labels == r].astype(float).mean() for r in ids] for i in range(5)]
    assert np.allclose(feats, expected)
    with pytest.raises(ValueError, match="not on the volumes' grid"):
        region_means(vols, labels[:-1])
    # the baseline predicts only test participants, from a model fitted without them
    y = np.array([0, 1] * 6)
    x = np.c_[y + rng.normal(0, 0.1, 12), rng.normal(size=12)]
    pids = [f"sub-{i}" for i in range(12)]
    splits = make_splits(pids, y, folds=3, seed=0)
    proba, fold = baseline_cv(x, pids, y, splits, 2)
    assert (fold >= 0).all() and (proba.argmax(1) == y).mean() == 1.0
    for f in splits:
        assert {pids[i] for i in np.flatnonzero(fold == f["fold"])} == set(f["test"])
