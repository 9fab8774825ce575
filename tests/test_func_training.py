"""Training on BOLD maps (alone or stacked), attribution on them, and the connectome baseline."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroml.errors import ConfigError, InputError
from neuroml.training.connectome import connectome_cv, load_timeseries

RES = 6.0


@pytest.fixture(scope="module")
def func_deriv(tmp_path_factory):
    from neuroml.synth.func import make_func_cohort
    from neuroml.workflows import run_participant_level

    base = tmp_path_factory.mktemp("functrain")
    make_func_cohort(
        base / "bids", n_subjects=12, resolution=RES, n_volumes=60, seed=3, amplitude_effect=2.0
    )
    r = run_participant_level(
        base / "bids",
        base / "deriv",
        resolution=RES,
        modality="func",
        show_progress=False,
        func_params={"seeds": {}, "networks": {"salience": ["Insula_L", "Insula_R"]}},
    )
    assert r.n_done == 12 and not r.failures
    return base


def _train(deriv, run_dir, inputs):
    from neuroml.workflows import train_run

    return train_run(
        deriv,
        run_dir,
        inputs=inputs,
        epochs=2,
        folds=2,
        batch_size=4,
        n_bootstrap=20,
        augment=False,
        patience=None,
        show_progress=False,
        device="cpu",
    )


@pytest.mark.slow
def test_train_on_one_map_and_attribute_it(func_deriv):
    from neuroml.attribution import attribute_run

    run = func_deriv / "run_alff"
    summary = _train(func_deriv / "deriv", run, ["alff"])
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["inputs"] == ["alff"]
        and cfg["in_channels"] == 1
        and cfg["grid"]["shape"] == [25, 31, 26]
    )
    assert summary["n_participants"] == 12 and 0 <= summary["balanced_accuracy"] <= 1
    assert (func_deriv / "deriv" / "cache" / "res-6_desc-alff_boldmap.npy").is_file()
    doc = json.loads(
        attribute_run(run, func_deriv / "deriv", method="saliency", show_progress=False).read_text()
    )
    assert doc["n_subjects"] == 12 and all(s["model_use"] == "out-of-fold" for s in doc["subjects"])
    m = nib.load(run / "attribution" / "saliency" / doc["subjects"][0]["map"])
    assert m.shape == (25, 31, 26) and np.asarray(m.dataobj).std() > 0
    assert len(doc["subjects"][0]["top_regions"]) == 5
    from neuroml.reports import build_report

    html = build_report(run)
    assert html.is_file() and html.stat().st_size > 10_000


@pytest.mark.slow
def test_train_on_stacked_maps_uses_channels(func_deriv):
    from neuroml.attribution import attribute_run
    from neuroml.workflows import predict_run

    run = func_deriv / "run_stack"
    _train(func_deriv / "deriv", run, ["alff", "reho", "connsalience"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["in_channels"] == 3 and cfg["inputs"] == ["alff", "reho", "connsalience"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        "3 channels" in metrics["baseline"]["features"]
        or metrics["baseline"]["balanced_accuracy"] is not None
    )
    doc = json.loads(
        attribute_run(run, func_deriv / "deriv", method="gradcam", show_progress=False).read_text()
    )
    m = nib.load(run / "attribution" / "gradcam" / doc["subjects"][0]["map"])
    assert m.shape == (25, 31, 26)
    table = predict_run(run, func_deriv / "deriv", force=True)
    assert len(table) == 12


def test_inputs_are_checked(func_deriv):
    from neuroml.data import open_inputs

    with pytest.raises(InputError, match="--modality func"):
        open_inputs(func_deriv / "deriv", inputs=["vmhc"])
    with pytest.raises(ConfigError, match="inputs"):
        open_inputs(func_deriv / "deriv", inputs=["al-ff"])
    with pytest.raises(ConfigError, match="distinct"):
        open_inputs(func_deriv / "deriv", inputs=["alff", "alff"])
    with pytest.raises(InputError, match="no preprocessed images"):
        open_inputs(func_deriv / "deriv", inputs=["T1w", "alff"])  # no T1w here


def test_stacking_aligns_participants_across_inputs(tmp_path):
    from neuroml.data import open_inputs
    from neuroml.io.templates import TEMPLATE_SPACE

    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    rng = np.random.default_rng(0)
    for i, (anat, func) in enumerate([(True, True), (True, False), (True, True), (False, True)]):
        pid = f"sub-0{i + 1}"
        if anat:
            p = (
                tmp_path
                / pid
                / "anat"
                / f"{pid}_space-{TEMPLATE_SPACE}_res-8_desc-preproc_T1w.nii.gz"
            )
            p.parent.mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32) + i * 10, affine), p
            )
        if func:
            p = (
                tmp_path
                / pid
                / "func"
                / f"{pid}_task-rest_space-{TEMPLATE_SPACE}_res-8_desc-alff_boldmap.nii.gz"
            )
            p.parent.mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32) - i * 10, affine), p
            )
    cache = open_inputs(tmp_path, inputs=["T1w", "alff"])
    assert (tmp_path / "cache" / "res-8_T1w.npy").is_file()  # the T1w cache keeps its name
    assert (tmp_path / "cache" / "res-8_desc-alff_boldmap.npy").is_file()
    assert open_inputs(tmp_path).index["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    assert len(open_inputs(tmp_path, inputs="alff")) == 3  # one input: its own cache, no stacking
    assert cache.n_channels == 2 and cache.index["participant_id"].tolist() == ["sub-01", "sub-03"]
    x = cache.load()
    assert x.shape == (2, 2, 7, 8, 9)
    assert (
        abs(x[1, 0].mean() - 20) < 1 and abs(x[1, 1].mean() + 20) < 1
    )  # sub-03: T1w +20, alff -20


def test_connectome_cv_separates_classes_differing_in_connectivity():
    rng = np.random.default_rng(0)
    series, y, pids = [], [], []
    for i in range(24):
        cls = i % 2
        latent = rng.normal(size=(80, 1))
        x = rng.normal(size=(80, 8))
        x[:, :4] += latent * (1.5 if cls == 0 else 0.0)  # controls: regions 0-3 coupled
        x[:, 4:] += rng.normal(size=(80, 1)) * 1.0
        series.append(x)
        y.append(cls)
        pids.append(f"sub-{i:02d}")
    splits = [
        {
            "fold": k,
            "train": [p for j, p in enumerate(pids) if j % 3 != k],
            "val": [],
            "test": [p for j, p in enumerate(pids) if j % 3 == k],
        }
        for k in range(3)
    ]
    proba, fold = connectome_cv(series, pids, np.array(y), splits, 2)
    assert (fold >= 0).all()
    assert (proba.argmax(1) == np.array(y)).mean() >= 0.9
    with pytest.raises(ConfigError, match="kind"):
        connectome_cv(series, pids, np.array(y), splits, 2, kind="tangents")


@pytest.mark.slow
def test_connectome_run_in_the_folds_of_a_run(func_deriv):
    run = func_deriv / "run_alff"
    if not (run / "splits.json").is_file():
        _train(func_deriv / "deriv", run, ["alff"])
    from neuroml.cli import main

    assert main(["-q", "connectome", str(run), str(func_deriv / "deriv")]) == 0
    out = json.loads((run / "connectome_metrics.json").read_text())
    assert (
        out["n_participants"] == 12
        and 0 <= out["balanced_accuracy"] <= 1
        and "tangent" in out["features"]
    )
    assert out["kind"] == "tangent" and out["atlas"] == "aal" and out["n_regions"] > 50
    pred = pd.read_csv(run / "connectome_predictions.tsv", sep="\t")
    splits = json.loads((run / "splits.json").read_text())
    folds = splits["folds"] if isinstance(splits, dict) else splits
    test_of = {p: f["fold"] for f in folds for p in f["test"]}
    assert all(test_of[p] == f for p, f in zip(pred["participant_id"], pred["fold"]))
    from neuroml.reports import build_report

    text = build_report(
        run, func_deriv / "report_alff.html"
    ).read_text()  # the report shows the baseline
    assert "connectome baseline" in text and "kind tangent, atlas aal" in text
    assert f"Balanced accuracy {out['balanced_accuracy']:.3f}" in text
    assert "CNN inputs: alff (1 channel)" in text


def test_load_timeseries_drops_regions_without_signal(tmp_path):
    a = pd.DataFrame({"A": [1.0, 2, 3], "B": [0.0, 0, 0], "C": [3.0, 1, 2]})
    b = pd.DataFrame({"A": [1.0, 0, 3], "B": [1.0, 2, 0], "C": [3.0, 1, 5]})
    for name, df in (("a", a), ("b", b)):
        df.to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
    series, regions = load_timeseries([tmp_path / "a.tsv", tmp_path / "b.tsv"])
    assert regions == ["A", "C"] and series[0].shape == (3, 2)


def test_connectome_regions_are_chosen_in_each_fold_from_training_subjects(tmp_path):
    rng = np.random.default_rng(1)
    pids = [f"sub-{i:02d}" for i in range(12)]
    y = np.array([i % 2 for i in range(12)])
    series = [rng.normal(size=(60, 5)) for _ in pids]
    for i, p in enumerate(pids):
        pd.DataFrame(series[i], columns=list("ABCDE")).to_csv(
            tmp_path / f"{p}.tsv", sep="\t", index=False
        )
    splits = [
        {
            "fold": k,
            "train": [p for j, p in enumerate(pids) if j % 3 != k],
            "val": [],
            "test": [p for j, p in enumerate(pids) if j % 3 == k],
        }
        for k in range(3)
    ]
    loaded, _ = load_timeseries([tmp_path / f"{p}.tsv" for p in pids])
    base, _ = connectome_cv(loaded, pids, y, splits, 2)
    # region C has no signal in one test subject of fold 0 (sub-00): the predictions of the other
    # test subjects of fold 0 must not change (old behaviour: C dropped for every subject and fold)
    flat = pd.DataFrame(series[0], columns=list("ABCDE")).assign(C=0.0)
    flat.to_csv(tmp_path / "sub-00.tsv", sep="\t", index=False)
    paths = [tmp_path / f"{p}.tsv" for p in pids]
    kept, regions = load_timeseries(paths, drop_constant=False)
    assert regions == list("ABCDE")
    proba, fold = connectome_cv(kept, pids, y, splits, 2)
    assert np.isfinite(proba).all() and (fold >= 0).all()
    others = [3, 6, 9]
    np.testing.assert_allclose(proba[others], base[others], rtol=1e-6, atol=1e-9)
    assert load_timeseries(paths)[1] == list("ABDE")  # the array helper still drops it when asked
