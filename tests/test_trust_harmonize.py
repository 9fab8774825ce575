"""ComBat on the CNN's inputs (``train_run(harmonize="combat")``): fitted on each fold's training
scans only, saved per fold, applied by predict and attribute, resumable. Tiny 8 mm cohorts."""

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neuroml.data import VolumeDataset, build_cache
from neuroml.errors import ConfigError, InputError
from neuroml.io.templates import brain_mask_on_grid, target_grid
from neuroml.runs import load_checkpoint, load_run
from neuroml.training.trainer import evaluate
from neuroml.trust.harmonize import FOLD_FILE, VolumeComBat, covariate_matrix
from neuroml.workflows import predict_run, train_run
from neuroml.workflows import train as run_module

RES = 8.0
FAST = dict(
    epochs=2,
    folds=2,
    batch_size=4,
    show_progress=False,
    n_bootstrap=20,
    baseline=False,
    val_fraction=0.5,
)  # 3 of the 6 training participants per class validate (>= 2 needed)
SITE_OFFSET = {"A": 0.0, "B": 2.0, "C": -2.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mask():
    return np.asarray(brain_mask_on_grid(RES).dataobj) > 0


def make_cohort(root, n=24, prefix="", seed=0, changed=(), sites=None, drop_age=()):
    """Derivatives on the 8 mm grid, zero outside the template brain (as preprocessing leaves
    them): the site adds an offset inside the brain, the class a blob; sites balanced over classes.
    ``changed``: participants whose volume gets an extra offset (all else equal)."""
    raw, deriv = root / "raw", root / "deriv"
    raw.mkdir(parents=True)
    affine, shape = target_grid(RES)
    mask = _mask()
    grid = np.indices(shape)
    blob = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, (9, 11, 10))) / 6.0)
    rng = np.random.default_rng(seed)
    rows = ["participant_id\tdiagnosis\tsite\tage\tsex"]
    for i in range(n):
        pid = f"sub-{prefix}{i + 1:02d}"
        dx = ("control", "MDD")[i % 2]
        site = sites[i % len(sites)] if sites else ("A", "B")[(i // 2) % 2]
        vol = rng.normal(0, 1, shape) + SITE_OFFSET[site] + (1.5 * blob if dx == "MDD" else 0.0)
        if pid in changed:
            vol = (
                vol + 3.0 + np.random.default_rng([seed, i, 99]).normal(0, 1, shape)
            )  # the cohort's rng untouched
        vol = (vol * mask).astype(np.float32)
        folder = deriv / pid / "anat"
        folder.mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(vol, affine),
            str(folder / f"{pid}_space-MNI152NLin2009aSym_res-{RES:g}_desc-preproc_T1w.nii.gz"),
        )
        age = "n/a" if pid in drop_age else str(20 + 3 * i)
        rows.append(f"{pid}\t{dx}\t{site}\t{age}\t{'MF'[(i // 4) % 2]}")
    (raw / "participants.tsv").write_text("\n".join(rows) + "\n")
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "d",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neuroml"}],
                "SourceDatasets": [{"URL": raw.resolve().as_uri()}],
            }
        )
    )
    return deriv


@pytest.fixture(scope="module")
def harmonized(tmp_path_factory, one_torch_thread):
    """One harmonized run, with the training sets its CNNs were given (spied on ``fit``)."""
    root = tmp_path_factory.mktemp("harm")
    deriv = make_cohort(root)
    seen = {}
    real_fit = run_module.fit

    def spy(net, train_ds, val_ds, *args, **kwargs):
        k = int(kwargs["desc"].split()[1].split("/")[0]) - 1
        seen[k] = (
            np.stack([np.asarray(train_ds.volumes[r]) for r in train_ds.rows]),
            None
            if val_ds is None
            else np.stack([np.asarray(val_ds.volumes[r]) for r in val_ds.rows]),
        )
        return real_fit(net, train_ds, val_ds, *args, **kwargs)

    run_module.fit = spy
    try:
        train_run(deriv, root / "run", harmonize="combat", **FAST)
    finally:
        run_module.fit = real_fit
    return deriv, root / "run", seen


def _cohort_arrays(deriv, run):
    """Raw volumes, participant ids, sites and covariates of the run's cohort, in cache order."""
    cache = build_cache(deriv)
    index = cache.index
    table = pd.read_csv(deriv.parent / "raw" / "participants.tsv", sep="\t", dtype=str).set_index(
        "participant_id"
    )
    pids = index["participant_id"].tolist()
    spec = run.config["harmonized_inputs"]
    cov = covariate_matrix(table, pids, spec["covariates"], spec["sex_levels"])
    return (
        cache.load(index["row"].to_numpy()),
        np.array(pids, dtype=object),
        table.loc[pids, "site"].to_numpy(),
        cov,
    )


def _site_gap(volumes, sites, mask):
    inside = volumes[:, mask]
    return abs(float(inside[sites == "A"].mean() - inside[sites == "B"].mean()))


# ---------------------------------------------------------------- (a) leakage


def test_input_combat_is_fitted_on_each_folds_training_scans_only(tmp_path, harmonized):
    """Changing a test or validation scan of fold 0 leaves fold 0's saved ComBat unchanged;
    changing one of its training scans changes it."""
    _, ref_dir, _ = harmonized
    fold0 = load_run(ref_dir).splits[0]
    held_out = [fold0["test"][0], fold0["val"][0]]
    trained = [fold0["train"][0]]
    ref = np.load(ref_dir / "fold-0" / FOLD_FILE)
    for name, changed, same in (("heldout", held_out, True), ("trained", trained, False)):
        deriv = make_cohort(tmp_path / name, changed=changed)
        train_run(deriv, tmp_path / name / "run", harmonize="combat", **{**FAST, "epochs": 1})
        assert load_run(tmp_path / name / "run").splits[0] == fold0  # the same folds
        got = np.load(tmp_path / name / "run" / "fold-0" / FOLD_FILE)
        assert sorted(got.files) == sorted(ref.files)
        equal = all(np.array_equal(got[k], ref[k]) for k in ref.files)
        assert equal is same, (
            f"changing {changed} {'changed' if not same else 'kept'} fold 0's ComBat"
        )


# ---------------------------------------------------------------- (b) the CNN sees harmonized inputs


def test_cnn_trains_on_harmonized_inputs_with_a_smaller_site_gap(harmonized):
    deriv, run_dir, seen = harmonized
    run = load_run(run_dir)
    vols, pids, sites, cov = _cohort_arrays(deriv, run)
    mask = _mask()
    for split in run.splits:
        k = split["fold"]
        hv = VolumeComBat.load(run_dir / f"fold-{k}" / FOLD_FILE)
        assert (
            hv.n_voxels == int(mask.sum())
            and hv.covariates == ["age", "sex"]
            and hv.site_column == "site"
        )
        train = np.isin(pids, split["train"])
        manual = hv.transform(vols, np.flatnonzero(train), sites[train], cov[train])
        np.testing.assert_array_equal(
            seen[k][0], manual
        )  # exactly what the fold's CNN was trained on
        raw_gap, harm_gap = (
            _site_gap(vols[train], sites[train], mask),
            _site_gap(manual, sites[train], mask),
        )
        assert raw_gap > 1.5 and harm_gap < 0.1 * raw_gap
        val = np.isin(pids, split["val"])  # validation scans: harmonized with the training fit
        np.testing.assert_array_equal(
            seen[k][1], hv.transform(vols, np.flatnonzero(val), sites[val], cov[val])
        )
        assert np.array_equal(
            manual[:, ~mask], vols[train][:, ~mask]
        )  # outside the brain: untouched
        meta = load_checkpoint(run_dir / f"fold-{k}" / "model.pt")["meta"]
        assert meta["harmonized_inputs"] == FOLD_FILE
        test = np.isin(
            pids, split["test"]
        )  # out-of-fold predictions: the fold model on harmonized test scans
        x = hv.transform(vols, np.flatnonzero(test), sites[test], cov[test])
        manual = evaluate(dict(run.fold_models())[k], VolumeDataset(x))[0]
        oof = (
            pd.read_csv(run_dir / "predictions.tsv", sep="\t")
            .set_index("participant_id")
            .loc[pids[test]]
        )
        np.testing.assert_allclose(oof.filter(like="prob_").to_numpy(), manual, atol=2e-6)

    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["harmonize"] == "combat"
        and config["harmonized_inputs"]["voxels"] == "template brain mask"
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["cnn"]["harmonized_inputs"] == "combat" and m["harmonization"]["cnn_inputs"] is True
    assert [f["voxels"] for f in m["harmonization"]["folds"]] == [int(mask.sum())] * 2
    assert m["harmonization"]["folds"][0]["training_scans"] == len(run.splits[0]["train"])
    assert "inputs" in m["site_probe"]["cnn"] and m["site_probe"]["cnn"]["inputs"]["n"] == len(pids)
    assert m["site_probe"]["balanced_accuracy"] > 0.9  # raw region means give the site away
    from neuroml.reports import build_report

    html = build_report(run_dir).read_text()
    assert (
        "CNN, ComBat on input voxels inside folds" in html
        and "region means of the CNN&#x27;s harmonized" in html
    )


# ---------------------------------------------------------------- (c) predict and attribute


def _manual_proba(run, vols, sites, cov, harmonize=True):
    probs = []
    for k, model in run.fold_models():
        x = (
            VolumeComBat.load(run.run_dir / f"fold-{k}" / FOLD_FILE).transform(
                vols, np.arange(len(vols)), sites, cov
            )
            if harmonize
            else vols
        )
        probs.append(evaluate(model, VolumeDataset(x), batch_size=8)[0])
    return np.mean(probs, axis=0)


def test_predict_applies_each_folds_saved_combat(tmp_path, harmonized, neuroml_log):
    _, run_dir, _ = harmonized
    run = load_run(run_dir)
    new = make_cohort(tmp_path / "new", n=6, prefix="new", seed=5, sites=("A", "B", "C"))
    with neuroml_log.at_level(logging.WARNING, logger="neuroml"):
        table = predict_run(run_dir, new, out_path=tmp_path / "p.tsv")
    assert "site 'C' was not estimated" in neuroml_log.text  # an unseen site: warned, left as it is
    vols, pids, sites, cov = _cohort_arrays(new, run)
    assert table["participant_id"].tolist() == list(pids)
    got = table.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(got, _manual_proba(run, vols, sites, cov), atol=2e-6)
    raw = _manual_proba(run, vols, sites, cov, harmonize=False)
    seen_site = sites != "C"
    assert np.abs(got[seen_site] - raw[seen_site]).max() > 1e-3  # harmonization changed the inputs
    np.testing.assert_allclose(got[~seen_site], raw[~seen_site], atol=2e-6)

    # a subject without a participants.tsv row, or without a kept covariate: refused, naming the file
    other = tmp_path / "other.tsv"
    other.write_text("participant_id\tsite\tage\tsex\nsub-new01\tA\t30\tM\n")
    with pytest.raises(InputError, match=r"other\.tsv: no row for \['sub-new02'"):
        predict_run(run_dir, new, participants=other, participant_labels=["new01", "new02"])
    gap = make_cohort(tmp_path / "gap", n=2, prefix="gap", seed=6, drop_age=("sub-gap02",))
    with pytest.raises(InputError, match=r"participants\.tsv: age missing .*sub-gap02"):
        predict_run(run_dir, gap)


def test_attribute_explains_harmonized_inputs(harmonized):
    from neuroml.attribution import attribute_run

    deriv, run_dir, _ = harmonized
    run = load_run(run_dir)
    vols, pids, sites, cov = _cohort_arrays(deriv, run)
    chosen = [run.splits[0]["test"][0], run.splits[1]["test"][0]]
    out = attribute_run(
        run_dir,
        deriv,
        method="saliency",
        participant_labels=chosen,
        show_progress=False,
        n_sanity=2,
    )
    doc = json.loads(out.read_text())
    assert (
        doc["harmonized_inputs"]["method"] == "combat" and doc["trust"]["randomization"] is not None
    )
    models = dict(run.fold_models())
    for s in doc["subjects"]:
        i = list(pids).index(s["participant_id"])
        (k,) = s["folds"]
        hv = VolumeComBat.load(run_dir / f"fold-{k}" / FOLD_FILE)
        x = hv.transform(vols, [i], sites[[i]], cov[[i]])
        manual = evaluate(models[k], VolumeDataset(x))[0][0]
        raw = evaluate(models[k], VolumeDataset(vols[[i]]))[0][0]
        got = np.array([s["probabilities"][c] for c in run.classes])
        np.testing.assert_allclose(got, manual, atol=2e-6)
        assert np.abs(got - raw).max() > 1e-3


# ---------------------------------------------------------------- (d) resume


def test_resume_of_a_harmonized_run_matches_an_uninterrupted_one(
    tmp_path, harmonized, interrupt_fold
):
    deriv, ref_dir, _ = harmonized
    run_dir = tmp_path / "run"
    disarm = interrupt_fold(2, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        train_run(deriv, run_dir, harmonize="combat", **FAST)
    disarm()
    assert (run_dir / "fold-1" / "last.pt").is_file() and (run_dir / "fold-0" / FOLD_FILE).is_file()
    stamp = (run_dir / "fold-0" / FOLD_FILE).stat().st_mtime_ns
    train_run(deriv, run_dir, harmonize="combat", resume=True, **FAST)
    statuses = [f["status"] for f in json.loads((run_dir / "provenance.json").read_text())["folds"]]
    assert statuses[0].startswith("skipped") and statuses[1] == "resumed"
    assert (
        run_dir / "fold-0" / FOLD_FILE
    ).stat().st_mtime_ns == stamp  # a kept fold reads its saved ComBat

    def probs(folder):
        df = pd.read_csv(folder / "predictions.tsv", sep="\t")
        return df["participant_id"].tolist(), df.filter(like="prob_").to_numpy()

    ref_ids, ref = probs(ref_dir)
    ids, got = probs(run_dir)
    assert ids == ref_ids and np.abs(got - ref).max() <= 1e-6
    for k in (0, 1):
        a, b = (
            np.load(ref_dir / f"fold-{k}" / FOLD_FILE),
            np.load(run_dir / f"fold-{k}" / FOLD_FILE),
        )
        assert all(np.array_equal(a[key], b[key]) for key in a.files)

    # a fold whose ComBat file is gone is trained again (its model was made for those inputs)
    (run_dir / "fold-0" / FOLD_FILE).unlink()
    train_run(deriv, run_dir, harmonize="combat", **FAST)
    statuses = [f["status"] for f in json.loads((run_dir / "provenance.json").read_text())["folds"]]
    assert statuses == ["trained", "skipped (already trained)"]
    assert np.abs(probs(run_dir)[1] - ref).max() <= 1e-6

    # a run folder trained without input harmonization is not continued as a harmonized one
    config = json.loads((run_dir / "config.json").read_text())
    del config["harmonized_inputs"]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="harmonized_inputs"):
        train_run(deriv, run_dir, harmonize="combat", **FAST)


# ---------------------------------------------------------------- VolumeComBat


def test_volume_combat_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 1:5] = True
    sites = np.array(["A", "B"] * 6)
    vols = (rng.normal(size=(12, 4, 5, 6)) + (sites == "B")[:, None, None, None] * 3.0) * mask
    vols[:, 1, 1, 1] = 7.0  # constant in training: not harmonized
    hv = VolumeComBat(mask).fit(vols.astype(np.float32), np.arange(10), sites[:10])
    assert hv.n_voxels == int(mask.sum()) - 1 and not hv.mask_[1, 1, 1]
    out = hv.transform(vols, np.arange(12), sites, chunk=5)
    assert out.dtype == np.float32 and np.all(out[:, ~mask] == 0) and np.all(out[:, 1, 1, 1] == 7.0)
    assert (
        _site_gap(out[:10], sites[:10], hv.mask_)
        < 0.1
        < 2.5
        < _site_gap(vols[:10], sites[:10], hv.mask_)
    )
    hv.save(tmp_path / "c.npz")
    again = VolumeComBat.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(again.transform(vols, np.arange(12), sites), out)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary left

    # channels share the (X, Y, Z) mask
    two = np.stack([vols, 2 * vols], axis=1)
    out2 = (
        VolumeComBat(mask).fit(two, np.arange(10), sites[:10]).transform(two, np.arange(12), sites)
    )
    assert out2.shape == two.shape and _site_gap(out2[:10, 1], sites[:10], hv.mask_) < 0.2

    with pytest.raises(
        ConfigError, match=r"fitted on volumes of shape \(4, 5, 6\); got \(4, 5, 7\)"
    ):
        hv.transform(np.zeros((1, 4, 5, 7)), [0], ["A"])
    with pytest.raises(ConfigError, match="at least two training scans"):
        VolumeComBat(mask).fit(vols, [0], ["A"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.npz: not a readable ComBat file"):
        VolumeComBat.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match=r"other\.npz: not a neuroml ComBat file"):
        VolumeComBat.load(tmp_path / "other.npz")
    with pytest.raises(InputError, match=r"missing\.npz: ComBat parameters not found"):
        VolumeComBat.load(tmp_path / "missing.npz")


def test_cli_passes_the_participants_file():
    from pathlib import Path

    from neuroml.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["predict", "r", "d", "--participants", "p.tsv"]).participants == Path(
        "p.tsv"
    )
    assert parser.parse_args(
        ["attribute", "r", "d", "--participants", "p.tsv"]
    ).participants == Path("p.tsv")
    assert parser.parse_args(["predict", "r", "d"]).participants is None


def test_site_probe_features_of_multichannel_inputs():
    """Stacked inputs (N, C, X, Y, Z): penultimate features feed every channel, region means
    are taken per channel side by side (the site probes of a harmonized multi-channel run)."""
    from neuroml.models.factory import build_model
    from neuroml.training.baseline import region_means
    from neuroml.trust.checks import channel_region_means, penultimate_features

    shape = (17, 18, 19)
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(4, 2, *shape)).astype(np.float32)
    model = build_model("compact", 2, in_channels=2, spatial_shape=shape)
    feats = penultimate_features(model, vols, np.array([3, 1]), batch_size=1)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        np.testing.assert_allclose(
            last(torch.from_numpy(feats).float()).numpy(),
            model(torch.from_numpy(vols[[3, 1]])).numpy(),
            rtol=1e-4,
            atol=1e-5,
        )
    atlas = rng.integers(0, 4, size=shape)
    both = channel_region_means(vols, atlas)
    np.testing.assert_allclose(
        both, np.concatenate([region_means(vols[:, c], atlas)[0] for c in (0, 1)], axis=1)
    )
    np.testing.assert_allclose(channel_region_means(vols[:, 0], atlas), both[:, :3])
