"""Bias audit, confound tests, site probe, ComBat (fitted inside folds only), privacy helpers,
model card and their report sections, on tiny seeded data (no preprocessing)."""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroml.errors import ConfigError, InputError
from neuroml.io.privacy import (
    clean_sidecar,
    deidentify_bids,
    find_strings,
    load_key,
    pseudonym,
    scrub_nifti,
)
from neuroml.io.templates import target_grid
from neuroml.training import make_splits
from neuroml.training.baseline import baseline_cv
from neuroml.trust import checks as trust_module
from neuroml.trust import harmonize as harmonize_module
from neuroml.trust.audit import age_bands, subgroup_audit
from neuroml.trust.confounds import association_tests, site_probe
from neuroml.trust.harmonize import ComBat
from neuroml.workflows import train_run

RES = 8.0
FAST = dict(epochs=1, folds=2, batch_size=4, show_progress=False, n_bootstrap=50)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_site_cohort(root, n=16, entangled=True, seed=0, extra=None):
    """Derivatives on the 8 mm grid where the site adds a brightness offset and (when
    ``entangled``) decides the diagnosis; the diagnosis itself leaves no trace."""
    raw, deriv = root / "raw", root / "deriv"
    raw.mkdir(parents=True)
    affine, shape = target_grid(RES)
    rng = np.random.default_rng(seed)
    rows = ["participant_id\tdiagnosis\tsite\tage\tsex" + ("\tgroup" if extra else "")]
    for i in range(n):
        pid = f"sub-{i + 1:02d}"
        dx = ("control", "MDD")[i % 2]
        site = ("A", "B")[i % 2] if entangled else ("A", "B")[(i // 2) % 2]
        vol = rng.normal(0, 1, shape).astype(np.float32) + (1.5 if site == "B" else 0.0)
        folder = deriv / pid / "anat"
        folder.mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(vol, affine),
            str(folder / f"{pid}_space-MNI152NLin2009aSym_res-{RES:g}_desc-preproc_T1w.nii.gz"),
        )
        row = f"{pid}\t{dx}\t{site}\t{20 + 3 * i}\t{'MF'[(i // 4) % 2]}"
        rows.append(row + (f"\t{extra[i % len(extra)]}" if extra else ""))
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


# ---------------------------------------------------------------- audit


def test_age_bands_and_subgroup_metrics_by_hand():
    assert age_bands([18, 44.9, 45, 80, None]) == ["18-29", "30-44", "45-59", "60+", "n/a"]
    y = np.array([0, 1] * 6)
    # group S: all right; group T: every prediction wrong; group U: 2 rows (too small to compare)
    pred = np.r_[y[:6], 1 - y[6:10], y[10:]]
    proba = np.eye(2)[pred] * 0.8 + 0.1
    groups = {"site": ["S"] * 6 + ["T"] * 4 + ["U"] * 2, "sex": ["F", "M"] * 6}
    out = subgroup_audit(y, proba, ["c", "d"], groups, n_bootstrap=100, seed=0)
    s, t = out["attributes"]["site"]["groups"]["S"], out["attributes"]["site"]["groups"]["T"]
    assert s["balanced_accuracy"] == 1.0 and t["balanced_accuracy"] == 0.0
    assert s["n"] == 6 and s["n_per_class"] == {"c": 3, "d": 3}
    assert t["sensitivity"] == {"c": 0.0, "d": 0.0} and s["specificity"] == {"c": 1.0, "d": 1.0}
    assert s["ci"]["balanced_accuracy"] == [1.0, 1.0] and t["ci"]["sensitivity"]["d"] == [0.0, 0.0]
    gap = out["largest_gap"]
    assert (
        gap["attribute"] == "site"
        and gap["best"] == "S"
        and gap["worst"] == "T"
        and gap["value"] == 1.0
    )
    assert gap["intervals_separate"] is True
    # sex F holds only class c and M only class d: no balanced accuracy gap to compare
    assert out["attributes"]["sex"]["gap"] is None


# ---------------------------------------------------------------- confounds


def test_association_tests_flag_entangled_columns_only():
    rng = np.random.default_rng(0)
    labels = ["a"] * 20 + ["b"] * 20
    out = association_tests(
        labels,
        {
            "site": ["S"] * 18 + ["T"] * 2 + ["T"] * 18 + ["S"] * 2,
            "sex": ["M", "F"] * 20,
            "age": np.r_[rng.normal(30, 3, 20), rng.normal(50, 3, 20)],
            "scanner": ["n/a"] * 40,
        },
    )
    assert (
        out["site"]["entangled"]
        and out["site"]["test"] == "chi-square"
        and out["site"]["p_value"] < 1e-4
    )
    assert out["site"]["table"] == {"a": {"S": 18, "T": 2}, "b": {"S": 2, "T": 18}}
    assert not out["sex"]["entangled"] and out["sex"]["effect_size"] == 0.0
    assert (
        out["age"]["test"] == "Kruskal-Wallis"
        and out["age"]["entangled"]
        and out["age"]["effect_size"] > 0.8
    )
    assert out["scanner"]["test"] is None and not out["scanner"]["entangled"]


def test_a_stray_entry_in_an_age_column_is_left_out_not_a_category():
    """One "unknown" among 40 ages used to make the column categorical (one level per age, a
    chi-square flagging an association that is not there)."""
    from neuroml.reports.model_card import _confounds

    rng = np.random.default_rng(1)
    labels = ["a"] * 20 + ["b"] * 20
    ages = [f"{v:.1f}" for v in rng.normal(40, 8, 40)]  # no association with the labels
    ages[3] = "unknown"
    out = association_tests(labels, {"age": ages})["age"]
    assert out["test"] == "Kruskal-Wallis" and out["n"] == 39 and not out["entangled"]
    assert out["note"] == "1 value(s) that are not numbers left out of the test: ['unknown']"
    assert (
        "Notes: age: 1 value(s) that are not numbers left out of the test: ['unknown']."
        in _confounds({"tests": {"age": out}}, {})
    )
    from neuroml.reports.trust_sections import _confounds as report_confounds

    html = report_confounds(
        {}, {"tests": {"age": {**out, "note": out["note"].replace("unknown", "<b>x</b>")}}}
    )
    assert (
        "Notes: age: 1 value(s) that are not numbers left out of the test: "
        "[&#x27;&lt;b&gt;x&lt;/b&gt;&#x27;]."
    ) in html
    # numbers in one class only (the other's ages all unknown): no per-age chi-square either
    lopsided = (
        [f"{v:.1f}" for v in rng.normal(40, 8, 20)]
        + ["unknown"] * 2
        + [f"{v:.1f}" for v in rng.normal(40, 8, 18)]
    )
    out = association_tests(["a"] * 20 + ["b"] * 2 + ["a"] * 18, {"age": lopsided})["age"]
    assert (
        out["test"] is None
        and not out["entangled"]
        and "all belong to one class (a)" in out["note"]
    )
    # a column that is mostly words stays categorical
    words = ["young", "old"] * 19 + ["31", "45"]
    assert association_tests(labels, {"age": words})["age"]["test"] == "chi-square"


def test_sites_coded_as_numbers_are_categories(tmp_path):
    """Sites 1..8 that decide the diagnosis are entangled (chi-square), not a weak numeric trend."""
    labels = ["MDD", "HC"] * 16
    sites = [
        str(1 + (i % 2) + 2 * ((i // 2) % 4)) for i in range(32)
    ]  # MDD at 1, 3, 5, 7; HC at 2, 4, 6, 8
    assert (
        association_tests(labels, {"site": sites})["site"]["test"] == "Kruskal-Wallis"
    )  # what it looks like
    out = association_tests(labels, {"site": sites}, categorical=["site"])["site"]
    assert out["test"] == "chi-square" and out["effect_size"] == 1.0 and out["entangled"]
    # a run's confound check always treats its site column as categorical
    from neuroml.data import load_cohort

    deriv = make_site_cohort(tmp_path)
    table = tmp_path / "raw" / "participants.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    for i, row in enumerate(rows[1:]):
        row[2] = str(1 + (i % 2) + 2 * ((i // 2) % 4))
    table.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    check = trust_module.confound_check(load_cohort(deriv), "site", ())
    assert check["tests"]["site"]["test"] == "chi-square" and check["entangled"] == ["site"]


def test_missing_values_are_missing_and_a_missing_site_is_no_site(tmp_path):
    """NA/NaN cells are missing (not a class or a site called "nan"): the probe leaves those rows
    out, ComBat refuses them by name."""
    from neuroml.data import load_cohort

    deriv = make_site_cohort(tmp_path, n=20)
    table = tmp_path / "raw" / "participants.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    rows[1][1] = "NA"  # sub-01 has no label
    rows[2][2], rows[3][2], rows[4][3] = (
        "n/a",
        "NaN",
        "NA",
    )  # sub-02 and sub-03 have no site, sub-04 no age
    table.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    cohort = load_cohort(deriv)
    assert "sub-01" not in cohort.participant_ids and cohort.classes == ["control", "MDD"]
    check = trust_module.confound_check(cohort, "site", ())
    assert check["tests"]["site"]["n"] == 17 and check["tests"]["age"]["test"] == "Kruskal-Wallis"
    x = np.random.default_rng(0).normal(size=(len(cohort.participant_ids), 4))
    sites = cohort.column("site")
    probe = site_probe(x, sites, cohort.participant_ids, seed=0, n_bootstrap=0)
    assert probe["sites"] == ["A", "B"] and probe["n_without_site"] == 2 and probe["n"] == 17
    with pytest.raises(
        InputError,
        match=r"participants.tsv.*'site' of every participant; it is missing for 2: "
        r"sub-02, sub-03",
    ):
        train_run(deriv, tmp_path / "run", harmonize="combat", **FAST)


def test_site_probe_reads_a_site_offset_and_not_noise():
    rng = np.random.default_rng(1)
    sites = np.array(["A", "B"] * 15)
    pids = [f"sub-{i}" for i in range(30)]
    x = rng.normal(size=(30, 6))
    shifted = site_probe(x + (sites == "B")[:, None] * 2.0, sites, pids, seed=0, n_bootstrap=50)
    assert shifted["balanced_accuracy"] > 0.9 and shifted["chance"] == 0.5
    assert site_probe(x, sites, pids, seed=0, n_bootstrap=0)["balanced_accuracy"] < 0.8
    after = site_probe(
        x + (sites == "B")[:, None] * 2.0, sites, pids, seed=0, n_bootstrap=0, harmonizer=ComBat
    )
    assert after["balanced_accuracy"] < 0.8


# ---------------------------------------------------------------- ComBat


def test_combat_removes_site_location_and_scale_and_keeps_covariates():
    rng = np.random.default_rng(0)
    n = 60
    site = np.array(["A", "B", "C"] * 20)
    age = rng.uniform(20, 70, n)
    noise = rng.normal(size=(n, 8))
    noise[site == "C"] *= 2.5
    x = noise + 0.1 * age[:, None] + 3.0 * (site == "B")[:, None]
    out = ComBat().fit(x, site, age[:, None]).transform(x, site, age[:, None])
    resid = out - 0.1 * age[:, None]
    means = [resid[site == s].mean() for s in "ABC"]
    sds = [resid[site == s].std(0).mean() for s in "ABC"]
    before = [noise[site == s].std(0).mean() for s in "ABC"]
    assert np.ptp(means) < 0.5 and max(sds) / min(sds) < 1.3 < max(before) / min(before)
    slope = np.polyfit(age, out.mean(1), 1)[0]
    assert abs(slope - 0.1) < 0.03  # the age effect survives
    plain = ComBat(empirical_bayes=False).fit_transform(x, site, age[:, None])
    assert np.allclose(
        [(plain - 0.1 * age[:, None])[site == s].mean() for s in "ABC"], np.mean(means), atol=0.3
    )


def test_combat_errors_and_unseen_site(neuroml_log):
    caplog = neuroml_log
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ConfigError, match="at least two rows of some site"):
        ComBat().fit(x[:2], ["A", "B"])
    with caplog.at_level(logging.WARNING, logger="neuroml"):
        lone = ComBat().fit(x, ["A"] * 9 + ["B"])
    assert lone.sites_ == ["A"] and lone.n_fit_ == 9 and "single training row" in caplog.text
    np.testing.assert_allclose(lone.transform(x[9:], ["B"]), x[9:])
    with pytest.raises(ConfigError, match="not fitted"):
        ComBat().transform(x, ["A"] * 10)
    est = ComBat().fit(x, ["A", "B"] * 5)
    with pytest.raises(ConfigError, match="fitted on 3 features"):
        est.transform(x[:, :2], ["A"] * 10)
    with pytest.raises(ConfigError, match="covariate"):
        est.transform(x, ["A"] * 10, np.ones((10, 1)))
    with caplog.at_level(logging.WARNING, logger="neuroml"):
        out = est.transform(x, ["C"] * 10)
    np.testing.assert_allclose(out, x)
    assert est.unseen_sites_ == ["C"] and "not in the training rows" in caplog.text


class SpyComBat(ComBat):
    """Records the rows (as tuples) every instance sees in fit."""

    seen = []

    def fit(self, X, batch, covariates=None):
        SpyComBat.seen.append({tuple(np.round(r, 9)) for r in np.asarray(X)})
        return super().fit(X, batch, covariates)


def test_harmonizer_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    pids = [f"sub-{i:02d}" for i in range(24)]
    y = np.array([0, 1] * 12)
    sites = np.array(["A", "A", "B", "B"] * 6)
    x = rng.normal(size=(24, 5)) + (sites == "B")[:, None]
    splits = make_splits(pids, y, folds=3, seed=0)
    SpyComBat.seen = []
    proba, fold = baseline_cv(x, pids, y, splits, 2, harmonizer=SpyComBat, sites=sites)
    assert len(SpyComBat.seen) == 3 and (fold >= 0).all()
    row = {tuple(np.round(r, 9)): p for r, p in zip(x, pids)}
    for f, seen in zip(splits, SpyComBat.seen):
        who = {row[r] for r in seen}
        assert who == set(f["train"]) | set(f["val"])
        assert not who & set(f["test"])


def test_train_run_fits_combat_inside_folds_and_reports_it(tmp_path, monkeypatch, neuroml_log):
    caplog = neuroml_log
    deriv = make_site_cohort(tmp_path, extra=["<b>x</b>", "y", "z"])
    stash = {}
    original = trust_module.region_features

    def spy_features(cohort, src, src_rows):
        stash["x"], stash["pids"] = original(cohort, src, src_rows), list(cohort.participant_ids)
        return stash["x"]

    SpyComBat.seen = []
    monkeypatch.setattr(trust_module, "region_features", spy_features)
    monkeypatch.setattr(harmonize_module, "ComBat", SpyComBat)
    with caplog.at_level(logging.WARNING, logger="neuroml"):
        train_run(deriv, tmp_path / "run", harmonize="combat", audit_columns=["group"], **FAST)
    assert "diagnosis is associated with site" in caplog.text
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"]
    row = {tuple(np.round(r, 9)): p for r, p in zip(stash["x"], stash["pids"])}
    training_sets = [set(f["train"]) | set(f["val"]) for f in splits]
    width = stash["x"].shape[1]
    regions = [seen for seen in SpyComBat.seen if len(next(iter(seen))) == width]
    voxels = [seen for seen in SpyComBat.seen if len(next(iter(seen))) != width]
    assert len(regions) == 2 * len(splits)  # harmonized baseline + site probe after ComBat
    for seen in regions:
        assert {row[r] for r in seen} in training_sets
    # the CNN's inputs: one voxel-wise fit per fold, on its training scans only (not validation)
    assert sorted(len(seen) for seen in voxels) == sorted(len(f["train"]) for f in splits)

    run = tmp_path / "run"
    conf = json.loads((run / "confounds.json").read_text())
    assert conf["entangled"] == ["site"] and conf["tests"]["site"]["effect_size"] == 1.0
    assert (
        conf["demographics"]["MDD"]["site"] == {"B": 8}
        and conf["demographics"]["control"]["n"] == 8
    )
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["audit"]["cnn"]["attributes"]) == {"sex", "age_band", "site", "group"}
    assert "baseline" in m["audit"] and m["site_probe"]["balanced_accuracy"] > 0.9
    assert m["baseline_harmonized"]["n"] == 16 and m["confounds"]["entangled"] == ["site"]
    assert (
        0.0 <= m["site_probe"]["cnn"]["balanced_accuracy"] <= 1.0
        and m["site_probe"]["cnn"]["n"] == 16
    )
    card = (run / "model_card.md").read_text()
    for heading in (
        "## Intended use",
        "## Not intended for",
        "## Training data",
        "## Performance per subgroup",
        "## Attribution trust checks",
        "## Known limits",
        "entangled with site",
    ):
        assert heading in card
    from neuroml.reports import build_report

    html = build_report(run).read_text()
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "Largest gap" in html and "Site probe beside diagnosis accuracy" in html
    assert "Harmonization against none" in html and "id='model-card'" in html
    assert "## Intended use" in html  # the model card, inside <pre>


def test_pooled_against_leave_one_site_out_on_an_entangled_cohort(tmp_path):
    deriv = make_site_cohort(tmp_path)
    pooled = train_run(deriv, tmp_path / "pooled", **FAST)
    loso = train_run(deriv, tmp_path / "loso", site_column="site", **FAST)
    assert pooled["baseline_balanced_accuracy"] >= 0.9  # the site offset gives the label away
    assert loso["baseline_balanced_accuracy"] <= 0.5  # a site never seen: nothing to go on
    m = json.loads((tmp_path / "loso" / "metrics.json").read_text())
    assert (
        m["site_probe"]["balanced_accuracy"] > 0.9
        and "stratified group" in m["site_probe"]["scheme"]
    )
    assert (
        m["site_probe"]["cnn"]["balanced_accuracy"] is None
        and "leave-one-site-out" in m["site_probe"]["cnn"]["note"]
    )


def test_penultimate_features_are_the_last_linear_layers_input():
    from neuroml.models.factory import build_model
    from neuroml.trust.checks import penultimate_features

    shape = (17, 18, 19)
    model = build_model("compact", 2, spatial_shape=shape)
    vols = np.random.default_rng(0).normal(size=(5, *shape)).astype(np.float32)
    feats = penultimate_features(model, vols, np.array([4, 0, 2]), batch_size=2)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        logits = model(torch.from_numpy(vols[[4, 0, 2]][:, None]))
        again = last(torch.from_numpy(feats).float())
    np.testing.assert_allclose(again.numpy(), logits.numpy(), rtol=1e-4, atol=1e-5)
    assert not model._forward_hooks and not last._forward_hooks  # the hook is removed


def test_train_run_option_errors(tmp_path):
    deriv = make_site_cohort(tmp_path)
    with pytest.raises(ConfigError, match="Did you mean 'combat'"):
        train_run(deriv, tmp_path / "r1", harmonize="combta", **FAST)
    with pytest.raises(InputError, match="audit column 'nope'"):
        train_run(deriv, tmp_path / "r2", audit_columns=["nope"], **FAST)


# ---------------------------------------------------------------- privacy


def test_scrub_and_clean_and_pseudonyms(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), np.eye(4))
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        img.header[field] = b"JaneDoe"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"JaneDoe"))
    clean = scrub_nifti(img)
    nib.save(clean, tmp_path / "x.nii.gz")
    assert find_strings(tmp_path, ["janedoe"]) == {}
    nib.save(img, tmp_path / "y.nii.gz")
    assert find_strings(tmp_path, ["JANEDOE"]) == {"y.nii.gz": ["JANEDOE"]}
    assert clean_sidecar(
        {"PatientName": "a", "PatientFoo": 1, "EchoTime": 0.1, "AcquisitionDateTime": "x"}
    ) == {"EchoTime": 0.1}
    key = b"0123456789abcdef"
    assert pseudonym("sub-01", key) == pseudonym("01", key) != pseudonym("sub-01", key + b"x")
    assert len(pseudonym("02", key)) == 4 + 12


def test_load_key_and_deidentify_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROML_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_key()
    monkeypatch.setenv("NEUROML_PSEUDONYM_KEY", "x" * 20)
    assert load_key() == b"x" * 20
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "d", "BIDSVersion": "1.9.0"}')
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="inside out_dir"):
        deidentify_bids(bids, out, key_file=out / "key.txt")
    with pytest.raises(InputError, match="not a BIDS dataset"):
        deidentify_bids(tmp_path, tmp_path / "o2")


def test_deidentify_command_renames_scrubs_and_never_writes_the_key(tmp_path, img_3d, neuroml_log):
    from neuroml.cli import build_parser, main

    bids = tmp_path / "bids"
    (bids / "sub-01" / "ses-a" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        '{"Name": "d", "BIDSVersion": "1.9.0", "Authors": ["Dr X"]}'
    )
    (bids / "participants.tsv").write_text("participant_id\tdiagnosis\nsub-01\tMDD\n")
    img = nib.Nifti1Image(np.asarray(img_3d.dataobj), img_3d.affine)
    img.header["descrip"] = b"ZZ Jane Doe"
    nib.save(img, bids / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_T1w.nii.gz")
    (bids / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_T1w.json").write_text(
        json.dumps({"PatientName": "ZZ Jane Doe", "EchoTime": 0.003})
    )
    (bids / "sub-01" / "ses-a" / "func").mkdir()
    bold = nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.float32), np.eye(4))
    bold.header["aux_file"] = b"ZZ Jane"
    nib.save(bold, bids / "sub-01" / "ses-a" / "func" / "sub-01_ses-a_task-rest_bold.nii.gz")
    (bids / "sub-01" / "ses-a" / "func" / "sub-01_ses-a_task-rest_bold.json").write_text(
        json.dumps(
            {"InstitutionName": "ZZ Jane Hospital", "RepetitionTime": 2.0, "TaskName": "rest"}
        )
    )
    (bids / "sub-01" / "ses-a" / "func" / "sub-01_ses-a_task-rest_events.tsv").write_text(
        "onset\nZZ Jane\n"
    )
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(b"a-secret-key-of-enough-bytes")
    assert (
        main(["-q", "deidentify", str(bids), str(tmp_path / "out"), "--key-file", str(key_file)])
        == 0
    )
    new = pseudonym("01", b"a-secret-key-of-enough-bytes")
    scan = tmp_path / "out" / new / "ses-1" / "anat" / f"{new}_ses-1_T1w.nii.gz"
    assert scan.is_file() and nib.load(scan).header["descrip"].item() == b""
    np.testing.assert_array_equal(np.asarray(nib.load(scan).dataobj), np.asarray(img_3d.dataobj))
    side = json.loads(scan.with_name(f"{new}_ses-1_T1w.json").read_text())
    assert side == {"EchoTime": 0.003}
    func = tmp_path / "out" / new / "ses-1" / "func"
    assert sorted(p.name for p in func.iterdir()) == [
        f"{new}_ses-1_task-rest_bold.json",
        f"{new}_ses-1_task-rest_bold.nii.gz",
    ]  # events left out
    assert nib.load(func / f"{new}_ses-1_task-rest_bold.nii.gz").shape == (4, 4, 3, 5)
    assert json.loads((func / f"{new}_ses-1_task-rest_bold.json").read_text()) == {
        "RepetitionTime": 2.0,
        "TaskName": "rest",
    }
    assert (tmp_path / "out" / "participants.tsv").read_text().splitlines()[1] == f"{new}\tMDD"
    assert find_strings(tmp_path / "out", ["ZZ Jane", "sub-01", "a-secret-key", "Dr X"]) == {}
    args = build_parser().parse_args(
        ["train", "d", "--run-dir", "r", "--leave-one-site-out", "--harmonize", "combat"]
    )
    assert args.leave_one_site_out == "site" and args.harmonize == "combat"
    assert (
        build_parser()
        .parse_args(
            [
                "train",
                "d",
                "--run-dir",
                "r",
                "--leave-one-site-out",
                "scanner",
            ]
        )
        .leave_one_site_out
        == "scanner"
    )


def test_confound_warning_says_when_a_large_effect_is_not_significant():
    from neuroml.trust.checks import confound_message

    small = confound_message(
        "diagnosis",
        "sex",
        {"test": "chi-square", "p_value": 0.223, "effect": "Cramér's V", "effect_size": 0.5},
    )
    assert "p = 0.223" in small and "not significant at this sample size" in small
    big = confound_message(
        "diagnosis",
        "site",
        {"test": "chi-square", "p_value": 1e-6, "effect": "Cramér's V", "effect_size": 0.8},
        site_column="site",
    )
    assert "diagnosis is associated with site" in big and "not significant" not in big
    assert big.endswith("(see confounds.json and the site probe)")
    assert small.endswith(
        "instead of the diagnosis (see confounds.json and the bias audit's per-sex results)"
    )


def test_confound_advice_fits_the_column():
    """Leave-one-site-out is advice for an entangled site, not for an entangled sex column."""
    from neuroml.reports.trust_sections import _confounds

    test = {
        "test": "chi-square",
        "statistic": 9.0,
        "p_value": 0.001,
        "effect": "Cramér's V",
        "effect_size": 0.8,
        "entangled": True,
    }
    html = _confounds(
        {},
        {"tests": {"site": test, "sex": test}, "entangled": ["site", "sex"], "site_column": "site"},
    )
    site, sex = html.split("associated with site")[1], html.split("associated with sex")[1]
    assert "compare leave-one-site-out" in site.split("</p>")[0]
    assert (
        "leave-one-site-out" not in sex.split("</p>")[0]
        and "per-sex results" in sex.split("</p>")[0]
    )


def test_covariates_leave_out_a_sex_column_with_missing_values():
    """A participants.tsv with an n/a sex (read as NaN) crashed the run's site probe after training (pandas 3's
    astype(str) keeps NaN, and sorting NaN with strings fails); sex is left out of the covariates instead."""
    import pandas as pd

    pids = ["sub-1", "sub-2", "sub-3", "sub-4"]
    table = pd.DataFrame({"age": [30, 40, 50, 60], "sex": ["F", np.nan, "M", "F"]}, index=pids)
    cov, names = trust_module._covariates(table, pids)
    assert names == ["age"] and cov.shape == (4, 1)
    assert harmonize_module.covariate_spec(table, pids) == (["age"], [])
    complete = table.assign(sex=["F", "M", "M", "F"])
    assert trust_module._covariates(complete, pids)[1] == ["age", "sex"]
    assert harmonize_module.covariate_spec(complete, pids) == (["age", "sex"], ["F", "M"])


def test_demographics_count_participants_without_sex_or_site():
    """Missing sex or site is counted as n/a, so each class's counts add up to its participants (NaN was dropped)."""
    import pandas as pd

    pids = ["sub-1", "sub-2", "sub-3", "sub-4"]
    table = pd.DataFrame(
        {"sex": ["F", np.nan, "M", "F"], "site": ["A", "B", np.nan, "A"]}, index=pids
    )
    demo = trust_module.demographics(table, pids, ["x", "x", "y", "y"], ["x", "y"], site_col="site")
    for c in ("x", "y"):
        assert sum(demo[c]["sex"].values()) == sum(demo[c]["site"].values()) == demo[c]["n"] == 2
    assert demo["x"]["sex"] == {"F": 1, "n/a": 1} and demo["y"]["site"] == {"A": 1, "n/a": 1}
