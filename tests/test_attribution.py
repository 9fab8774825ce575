"""Attribution: explainers on a tiny MONAI network, region tables, group maps, a run end to end."""

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from neuroml.attribution import (
    METHODS,
    Explainer,
    attribute_run,
    block_mask,
    class_group_maps,
    group_statistics,
    map_name,
    region_occlusion,
    region_table,
    write_group_maps,
    write_region_table,
)
from neuroml.errors import ConfigError, InputError, LeakageError

SHAPE = (16, 20, 18)  # unequal sides: swapped axes fail
BOX = (
    slice(3, 9),
    slice(8, 12),
    slice(6, 9),
)  # on the 6-per-axis occlusion block grid (3 x 4 x 3 blocks)


def tiny_classifier(seed=0):
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    return Classifier((1, *SHAPE), 3, channels=(4, 8), strides=(2, 1), num_res_units=0, dropout=0.1)


class InplaceNet(torch.nn.Module):
    """A plain CNN with in-place ReLUs (which MONAI GradCAM switches off on the model it wraps)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, stride=2, padding=1),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv3d(4, 6, 3, padding=1),
            torch.nn.ReLU(inplace=True),
        )
        self.head = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool3d(1),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(6, 3),
        )

    def forward(self, x):
        return self.head(self.features(x))


class BoxModel(torch.nn.Module):
    """Logits depend only on the mean of the voxels in a box: the known answer for occlusion."""

    def __init__(self, box=BOX):
        super().__init__()
        self.box = box
        self.scale = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        v = x[:, 0, self.box[0], self.box[1], self.box[2]].mean((1, 2, 3))
        return torch.stack([self.scale * v, -self.scale * v, torch.zeros_like(v)], 1)


@pytest.fixture
def x(rng):
    return rng.normal(size=(2, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_maps_have_input_shape_and_are_finite(method, x):
    ex = Explainer(
        tiny_classifier(), method, classes=["a", "b", "c"], batch_size=4, nt_samples=4, n_steps=8
    )
    maps = ex.attribute(x, target="b")
    assert maps.shape == (2, *SHAPE)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert np.abs(maps).max() > 0
    assert ex.targets_.tolist() == [1, 1]
    assert ex.probabilities_.shape == (2, 3)
    np.testing.assert_allclose(ex.probabilities_.sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [tiny_classifier, InplaceNet])
def test_model_is_never_modified(method, make, x):
    model = make().train()  # training mode with dropout: must stay as the user left it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = [getattr(m, "inplace", None) for m in model.modules()]
    ex = Explainer(model, method, batch_size=4, nt_samples=2, n_steps=4)
    ex.attribute(torch.as_tensor(x)[:, None])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [getattr(m, "inplace", None) for m in model.modules()] == inplace
    assert all(
        not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
        for m in model.modules()
    )
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    fresh = make().eval()
    fresh.load_state_dict(before)
    inp = torch.as_tensor(x)[:, None]
    torch.testing.assert_close(model(inp), fresh(inp))


def test_gradcam_uses_default_layer_and_camera_per_target(x):
    model = InplaceNet().eval()
    ex = Explainer(model, "gradcam")
    both = ex.attribute(x, target=[0, 2])
    assert ex.target_layer_ == "features.3"
    one = Explainer(model, "gradcam").attribute(x[1:], target=2)
    np.testing.assert_allclose(both[1], one[0], rtol=1e-5, atol=1e-7)
    assert (both >= 0).all()
    with pytest.raises(ConfigError, match="Did you mean 'features.3'"):
        Explainer(model, "gradcam", target_layer="features.33").attribute(x)


def _inside(box):
    mask = np.zeros(SHAPE, bool)
    mask[box] = True
    return mask


def test_occlusion_finds_the_box():
    x = np.ones((1, *SHAPE), dtype=np.float32)
    maps = Explainer(BoxModel(), "occlusion").attribute(x, target=0)[0]
    inside = _inside(BOX)
    assert np.unravel_index(maps.argmax(), SHAPE) in set(zip(*np.nonzero(inside)))
    assert (maps[inside] > 0).all()
    np.testing.assert_array_equal(maps[~inside], 0)


def test_occlusion_box_off_the_block_grid():
    box = (slice(4, 8), slice(9, 13), slice(7, 10))  # cuts through blocks of 3 x 4 x 3
    x = np.ones((1, *SHAPE), dtype=np.float32)
    maps = Explainer(BoxModel(box), "occlusion").attribute(x, target=0)[0]
    inside = _inside(box)
    near = _inside((slice(3, 9), slice(8, 16), slice(6, 12)))  # the blocks that touch the box
    assert (maps[inside] > 0).all()
    assert maps[inside].mean() > 2 * maps[~inside].mean()
    np.testing.assert_array_equal(maps[~near], 0)


def test_region_occlusion_ranks_the_box_region_first():
    labels = np.full(SHAPE, 2, dtype=np.int32)
    labels[BOX] = 1
    labels[0] = 0
    x = np.ones((2, *SHAPE), dtype=np.float32)
    table, drops = region_occlusion(
        BoxModel(), x, labels, {1: "Box_L", 2: "Rest_R", 3: "Absent"}, target=0, batch_size=2
    )
    assert table["region"].tolist() == ["Box_L", "Rest_R"]
    assert table["rank"].tolist() == [1, 2]
    assert drops.shape == (2, 2)
    p = torch.softmax(torch.tensor([4.0, -4.0, 0.0]), 0)[0] - torch.softmax(torch.zeros(3), 0)[0]
    np.testing.assert_allclose(drops[:, 0], float(p), rtol=1e-5)
    np.testing.assert_allclose(drops[:, 1], 0, atol=1e-7)
    assert table["n_voxels"].tolist() == [int(inside_count()), int((labels == 2).sum())]


def inside_count():
    return np.prod([s.stop - s.start for s in BOX])


def test_targets_and_errors(x):
    model = tiny_classifier().eval()
    ex = Explainer(model, "saliency", classes=["control", "MDD", "SCZ"])
    ex.attribute(x, target="predicted")
    assert ex.targets_.tolist() == ex.probabilities_.argmax(1).tolist()
    ex.attribute(x, target=["SCZ", 0])
    assert ex.targets_.tolist() == [2, 0]
    with pytest.raises(ConfigError, match="Did you mean 'MDD'"):
        ex.attribute(x, target="MDDD")
    with pytest.raises(ConfigError, match="2 inputs"):
        ex.attribute(x, target=[0, 1, 2])
    with pytest.raises(ConfigError, match="outside"):
        ex.attribute(x, target=3)
    with pytest.raises(ConfigError, match="Did you mean 'gradcam'"):
        Explainer(model, "gradcm").attribute(x)
    with pytest.raises(InputError, match="x\\[None\\]"):
        ex.attribute(x[0, 0])


def test_smoothgrad_is_seeded_and_leaves_global_rng_alone(x):
    model = tiny_classifier().eval()
    torch.manual_seed(123)
    a = Explainer(model, "smoothgrad", nt_samples=3, seed=5).attribute(x)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(3)  # what the global generator should give next without any attribution in between
    torch.manual_seed(123)
    b = Explainer(model, "smoothgrad", nt_samples=3, seed=5).attribute(x)
    torch.testing.assert_close(torch.rand(3), after)
    np.testing.assert_array_equal(a, b)
    c = Explainer(model, "smoothgrad", nt_samples=3, seed=6).attribute(x)
    assert not np.array_equal(a, c)


def test_block_mask_tiles_every_voxel():
    m = block_mask((73, 91, 78), 6)
    assert m.shape == (73, 91, 78)
    assert len(np.unique(m)) == 6 * 6 * 6
    assert np.bincount(m.ravel()).min() > 0


def test_region_table_hand_computed():
    labels = np.zeros((2, 3, 4), dtype=np.int16)
    labels[0, :, :2] = 1  # region 1: 6 voxels
    labels[1, 0, :] = 2  # region 2: 4 voxels
    att = np.zeros((2, 3, 4))
    att[0, :, :2] = [[1, 2], [3, 0], [-1, 1]]  # sum 6, positive 7, mean 1
    att[1, 0, :] = [4, 4, -2, 2]  # sum 8, positive 10, mean 2
    att[1, 2, 3] = 3  # background, positive 3
    table = region_table(
        att, labels, {1: "Frontal_L", 2: "Insula_R", 7: "Absent"}, voxel_volume_ml=0.008
    )
    assert table["region"].tolist() == ["Insula_R", "Frontal_L"]
    assert table["hemisphere"].tolist() == ["R", "L"]
    assert table["rank"].tolist() == [1, 2]
    assert table["n_voxels"].tolist() == [4, 6]
    np.testing.assert_allclose(table["volume_ml"], [0.032, 0.048])
    np.testing.assert_allclose(table["mean_attribution"], [2.0, 1.0])
    np.testing.assert_allclose(table["positive_sum"], [10.0, 7.0])
    np.testing.assert_allclose(table["positive_share"], [0.5, 0.35])


def test_region_table_writers_are_readable(tmp_path):
    labels = np.array([[[1, 2, 2]]])
    table = region_table(np.array([[[1.0, 2.0, 4.0]]]), labels, {1: "A_L", 2: "B_R"})
    tsv, js = write_region_table(
        table, tmp_path / "r.tsv", tmp_path / "r.json", meta={"class": "MDD"}
    )
    back = pd.read_csv(tsv, sep="\t")
    assert back["region"].tolist() == ["B_R", "A_L"]
    doc = json.loads(js.read_text())
    assert doc["meta"] == {"class": "MDD"}
    assert doc["regions"][0]["mean_attribution"] == pytest.approx(3.0)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_group_statistics_match_scipy(rng):
    maps = rng.normal(0.3, 1.0, size=(6, 3, 4, 5)).astype(np.float32)
    maps[:, 0, 0, 0] = 2.0  # no variance: t is set to 0
    mean, t = group_statistics(maps, chunk=7)  # several chunks
    ref = np.array(
        [
            stats.ttest_1samp(maps[:, i, j, k], 0.0).statistic if (i, j, k) != (0, 0, 0) else 0.0
            for i, j, k in np.ndindex(3, 4, 5)
        ]
    ).reshape(3, 4, 5)
    np.testing.assert_allclose(t, ref, rtol=1e-5)
    np.testing.assert_allclose(mean, maps.mean(0), rtol=1e-6)
    assert group_statistics(maps[:1])[1] is None


def test_class_group_maps_and_files(tmp_path, rng):
    maps = rng.normal(size=(5, 3, 4, 5)).astype(np.float32)
    groups = class_group_maps(maps, ["a", "b", "a", "a", None], ["a", "b", "c"])
    assert set(groups) == {"a", "b"}
    assert groups["a"]["n"] == 3 and groups["b"]["tstat"] is None
    np.testing.assert_allclose(groups["a"]["mean"], maps[[0, 2, 3]].mean(0), rtol=1e-6)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-72, -106, -70]
    written = write_group_maps(groups, affine, tmp_path, ["a", "b", "c"])
    assert written["a"]["mean"].name == "class-a_desc-mean_map.nii.gz"
    assert written["a"]["tstat"].name == "class-a_desc-tstat_map.nii.gz"
    assert written["b"]["tstat"] is None
    img = nib.load(written["a"]["mean"])
    np.testing.assert_allclose(img.affine, affine)


# -- a run folder end to end --------------------------------------------------------------------------------
RES = 8.0


def _make_run(root, extra_trained=False, channels=1):
    """Derivatives with 7 subjects on the 8 mm grid, and a 2-fold run of untrained compact models
    (``channels=2``: T1w and ALFF maps stacked, a 2-channel run)."""
    from neuroml.io.templates import TEMPLATE_SPACE, target_grid
    from neuroml.models import build_model
    from neuroml.runs.checkpoint import save_checkpoint
    from neuroml.runs.folder import save_splits

    affine, shape = target_grid(RES)
    raw, deriv, run = root / "raw", root / "deriv", root / "run"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {
        "sub-01": "control",
        "sub-02": "control",
        "sub-03": "control",
        "sub-04": "MDD",
        "sub-05": "MDD",
        "sub-06": "MDD",
        "sub-07": "MDD",
    }
    for pid in labels:
        path = (
            deriv / pid / "anat" / f"{pid}_space-MNI152NLin2009aSym_res-8_desc-preproc_T1w.nii.gz"
        )
        path.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), str(path))
        if channels == 2:
            path = (
                deriv
                / pid
                / "func"
                / f"{pid}_task-rest_space-{TEMPLATE_SPACE}_res-8_desc-alff_boldmap.nii.gz"
            )
            path.parent.mkdir(parents=True)
            nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), str(path))
    (raw / "participants.tsv").write_text(
        "participant_id\tdiagnosis\n" + "".join(f"{p}\t{c}\n" for p, c in labels.items())
    )
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "t",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neuroml"}],
                "SourceDatasets": [{"URL": f"file://{raw.resolve()}"}],
            }
        )
    )
    classes = ["control", "MDD"]
    splits = [
        {
            "fold": 0,
            "train": ["sub-03", "sub-06"],
            "val": ["sub-02"],
            "test": ["sub-01", "sub-04"],
            "test_site": None,
        },
        {
            "fold": 1,
            "train": ["sub-01", "sub-04"],
            "val": ["sub-05"],
            "test": ["sub-02", "sub-03", "sub-06"],
            "test_site": None,
        },
    ]
    if extra_trained:  # sub-05 is now trained on by both folds and tested by none
        splits[0]["train"].append("sub-05")
    run.mkdir()
    config = {
        "classes": classes,
        "n_classes": 2,
        "model": "compact",
        "in_channels": channels,
        "label_column": "diagnosis",
        "resolution": "8",
        "resolution_mm": RES,
        "grid": {"affine": affine.tolist(), "shape": list(shape)},
        "participants": str(raw / "participants.tsv"),
    }
    if channels == 2:
        config["inputs"] = ["T1w", "alff"]
    (run / "config.json").write_text(json.dumps(config))
    save_splits(run / "splits.json", splits)
    for k in (0, 1):
        torch.manual_seed(k)
        net = build_model("compact", 2, in_channels=channels, spatial_shape=shape)
        meta = {
            "model": "compact",
            "n_classes": 2,
            "in_channels": channels,
            "spatial_shape": list(shape),
        }
        save_checkpoint(
            {"state_dict": net.state_dict(), "meta": meta}, run / f"fold-{k}" / "model.pt"
        )
    return run, deriv


def test_attribute_run_end_to_end(tmp_path):
    from neuroml.data import build_cache
    from neuroml.runs import load_run

    run_dir, deriv = _make_run(tmp_path)
    out = attribute_run(run_dir, deriv, method="gradcam", target="true", show_progress=False)
    doc = json.loads(out.read_text())
    folder = run_dir / "attribution" / "gradcam"
    subjects = {s["participant_id"]: s for s in doc["subjects"]}
    assert sorted(subjects) == [f"sub-0{i}" for i in range(1, 8)]
    # out-of-fold: each run subject explained by the fold that tested it; sub-07 is not in the run
    assert subjects["sub-01"]["folds"] == [0] and subjects["sub-02"]["folds"] == [1]
    assert subjects["sub-01"]["model_use"] == "out-of-fold"
    assert subjects["sub-07"]["folds"] == [0, 1] and subjects["sub-07"]["model_use"] == "not-in-run"
    assert subjects["sub-05"]["folds"] == [0]  # validation in fold 1 only: explained by fold 0
    assert (
        subjects["sub-04"]["target_label"] == "MDD" and len(subjects["sub-04"]["top_regions"]) == 5
    )

    cache = build_cache(deriv)
    src = nib.load(next(deriv.glob("sub-01/anat/*preproc_T1w.nii.gz")))
    img = nib.load(folder / map_name("sub-01", method="gradcam"))
    assert img.shape == cache.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert not np.allclose(img.affine, np.eye(4))

    run = load_run(run_dir)
    fold0 = dict(run.fold_models("cpu"))[0]
    row = int(cache.index.set_index("participant_id").loc["sub-01", "row"])
    direct = Explainer(fold0, "gradcam", target_layer="net.layer_4").attribute(
        cache.load([row]), target=0
    )[0]
    np.testing.assert_allclose(np.asarray(img.dataobj), direct, rtol=1e-4, atol=1e-7)

    for c, n in (("control", 3), ("MDD", 4)):
        assert doc["group"][c]["n"] == n
        mean = nib.load(folder / "group" / f"class-{c}_desc-mean_map.nii.gz")
        nib.load(folder / "group" / f"class-{c}_desc-tstat_map.nii.gz")
        np.testing.assert_allclose(mean.affine, src.affine, atol=1e-5)
        table = pd.read_csv(folder / f"regions_atlas-aal_class-{c}.tsv", sep="\t")
        assert table["rank"].tolist() == list(range(1, len(table) + 1))
        assert (folder / f"regions_atlas-aal_class-{c}.json").is_file()
    members = [
        nib.load(folder / map_name(p, method="gradcam")).get_fdata()
        for p in ("sub-04", "sub-05", "sub-06", "sub-07")
    ]
    np.testing.assert_allclose(
        nib.load(folder / "group" / "class-MDD_desc-mean_map.nii.gz").get_fdata(),
        np.mean(members, 0),
        rtol=1e-4,
        atol=1e-8,
    )

    # a rerun skips the maps already written
    stamp = (folder / map_name("sub-03", method="gradcam")).stat().st_mtime_ns
    doc2 = json.loads(
        attribute_run(
            run_dir, deriv, method="gradcam", target="true", show_progress=False
        ).read_text()
    )
    assert all(s["skipped"] for s in doc2["subjects"])
    assert (folder / map_name("sub-03", method="gradcam")).stat().st_mtime_ns == stamp

    with pytest.raises(ConfigError, match="Did you mean 'MDD'"):
        attribute_run(run_dir, deriv, target="MDDD", show_progress=False)
    with pytest.raises(InputError, match="sub-99"):
        attribute_run(run_dir, deriv, participant_labels=["sub-99"], show_progress=False)


def test_a_rerun_redoes_maps_whose_atlas_or_models_changed(tmp_path):
    """A region_occlusion map hides the atlas's regions: another atlas recomputes it; the same one skips it."""
    from neuroml.models import build_model
    from neuroml.runs.checkpoint import load_checkpoint, save_checkpoint

    run_dir, deriv = _make_run(tmp_path)
    folder = run_dir / "attribution" / "region_occlusion"
    some = ["sub-01", "sub-04"]

    def call(atlas, method="region_occlusion"):
        doc = json.loads(
            attribute_run(
                run_dir,
                deriv,
                method=method,
                atlas=atlas,
                target="true",
                participant_labels=some,
                sanity=False,
                show_progress=False,
            ).read_text()
        )
        return doc, {s["participant_id"]: s["skipped"] for s in doc["subjects"]}

    def read(pid, method="region_occlusion"):
        return np.asarray(
            nib.load(run_dir / "attribution" / method / map_name(pid, method=method)).dataobj
        )

    doc, skipped = call("aal")
    assert not any(skipped.values())
    aal = read("sub-01")
    assert (folder / "sub-01_desc-regionocclusion_atlas-aal_regions.tsv").is_file()
    doc, skipped = call("harvard_oxford")
    assert skipped == {"sub-01": False, "sub-04": False}
    ho = read("sub-01")
    assert not np.allclose(aal, ho)
    assert not (
        folder / "sub-01_desc-regionocclusion_atlas-aal_regions.tsv"
    ).exists()  # it described the old map
    assert (folder / "sub-01_desc-regionocclusion_atlas-harvardoxford_regions.tsv").is_file()
    assert doc["identity"]["atlas"] == "harvard_oxford"
    stamp = (folder / map_name("sub-01", method="region_occlusion")).stat().st_mtime_ns
    doc2, skipped = call("harvard_oxford")
    assert all(skipped.values()) and doc2["identity_sha256"] == doc["identity_sha256"]
    assert (folder / map_name("sub-01", method="region_occlusion")).stat().st_mtime_ns == stamp
    # a map replaced since that call wrote it (a crashed call with other settings, a hand edit) is redone
    nib.save(
        nib.Nifti1Image(np.zeros(SHAPE_8MM(), np.float32), np.eye(4)),
        folder / map_name("sub-04", method="region_occlusion"),
    )
    assert call("harvard_oxford")[1] == {"sub-01": True, "sub-04": False}
    assert np.abs(read("sub-04")).max() > 0

    # a voxel method's maps do not depend on the atlas: reused; a retrained fold model redoes its subjects only
    call("aal", "saliency")
    assert all(call("harvard_oxford", "saliency")[1].values())
    path = run_dir / "fold-0" / "model.pt"  # fold 0 tests sub-01 and sub-04
    ckpt = load_checkpoint(path, require=("state_dict", "meta"))
    torch.manual_seed(7)
    save_checkpoint(
        {**ckpt, "state_dict": build_model("compact", 2, spatial_shape=SHAPE_8MM()).state_dict()},
        path,
    )
    before = read("sub-01", "saliency")
    assert call("harvard_oxford", "saliency")[1] == {"sub-01": False, "sub-04": False}
    assert not np.allclose(before, read("sub-01", "saliency"))


def SHAPE_8MM():  # noqa: N802
    from neuroml.io.templates import target_grid

    return target_grid(RES)[1]


def test_sanity_json_names_its_call_and_is_never_left_stale(tmp_path):
    run_dir, deriv = _make_run(tmp_path)
    folder = run_dir / "attribution" / "saliency"

    def call(**kw):
        return json.loads(
            attribute_run(
                run_dir,
                deriv,
                method="saliency",
                target="true",
                n_sanity=2,
                show_progress=False,
                **kw,
            ).read_text()
        )

    doc = call()
    trust = json.loads((folder / "sanity.json").read_text())
    doc2 = call(sanity=False, participant_labels=["sub-01"])
    assert not (
        folder / "sanity.json"
    ).exists()  # the checks of the earlier call, on other subjects
    assert trust["call_id"] == doc["call_id"] == doc["sanity"]["call_id"] == doc["trust"]["call_id"]
    assert trust["identity_sha256"] == doc["identity_sha256"]
    assert doc["sanity"] == {
        "run": True,
        "reason": None,
        "file": "sanity.json",
        "call_id": doc["call_id"],
        "superseded": None,
    }
    assert doc2["call_id"] != doc["call_id"]
    assert json.loads((folder / "sanity_superseded.json").read_text())["call_id"] == doc["call_id"]
    assert doc2["sanity"]["run"] is False and "--no-sanity" in doc2["sanity"]["reason"]
    assert doc2["sanity"]["superseded"] == "sanity_superseded.json" and doc2["trust"] is None

    doc3 = call()
    assert json.loads((folder / "sanity.json").read_text())["call_id"] == doc3["call_id"]
    assert not (folder / "sanity_superseded.json").exists()

    # checks asked for, but no explained scan has a class label: not run, and said why
    tsv = tmp_path / "raw" / "participants.tsv"
    tsv.write_text(tsv.read_text().replace("sub-07\tMDD", "sub-07\tn/a"))
    doc4 = json.loads(
        attribute_run(
            run_dir,
            deriv,
            method="saliency",
            participant_labels=["sub-07"],
            n_sanity=2,
            show_progress=False,
        ).read_text()
    )
    assert not (folder / "sanity.json").exists()
    assert doc4["sanity"]["run"] is False and "class label" in doc4["sanity"]["reason"]
    assert json.loads((folder / "sanity_superseded.json").read_text())["call_id"] == doc3["call_id"]


def test_every_method_explains_a_two_channel_run(tmp_path):
    """T1w + ALFF stacked: the cache gives (N, 2, X, Y, Z); every method maps onto the grid."""
    from neuroml.attribution import ALL_METHODS

    run_dir, deriv = _make_run(tmp_path, channels=2)
    shape = SHAPE_8MM()
    for method in ALL_METHODS:
        out = attribute_run(
            run_dir,
            deriv,
            method=method,
            target="true",
            participant_labels=["sub-01", "sub-07"],
            sanity=method == "region_occlusion",
            n_sanity=2,
            show_progress=False,
        )
        doc = json.loads(out.read_text())
        for s in doc["subjects"]:
            m = np.asarray(nib.load(out.parent / s["map"]).dataobj)
            assert m.shape == tuple(shape), method
            assert np.isfinite(m).all() and np.abs(m).max() > 0, method
    assert (
        doc["sanity"]["run"]
        and json.loads((out.parent / "sanity.json").read_text())["deletion"] is not None
    )


def test_attribute_run_refuses_training_subjects(tmp_path):
    run_dir, deriv = _make_run(tmp_path, extra_trained=True)
    with pytest.raises(LeakageError, match="sub-05"):
        attribute_run(
            run_dir, deriv, method="saliency", participant_labels=["sub-05"], show_progress=False
        )
    assert not (run_dir / "attribution" / "saliency").exists()
    out = attribute_run(
        run_dir,
        deriv,
        method="saliency",
        participant_labels=["05", "sub-01"],
        force=True,
        show_progress=False,
    )
    uses = {s["participant_id"]: s["model_use"] for s in json.loads(out.read_text())["subjects"]}
    assert uses == {"sub-05": "trained-on", "sub-01": "out-of-fold"}


def test_group_maps_explain_each_subjects_own_class(tmp_path):
    from neuroml.data import build_cache
    from neuroml.runs import load_run

    run_dir, deriv = _make_run(tmp_path)
    out = attribute_run(
        run_dir,
        deriv,
        method="saliency",
        target="control",
        participant_labels=["sub-04", "sub-05"],
        show_progress=False,
    )
    doc = json.loads(out.read_text())
    assert {s["target_label"] for s in doc["subjects"]} == {"control"}
    assert list(doc["group"]) == ["MDD"]
    cache = build_cache(deriv)
    fold0 = dict(load_run(run_dir).fold_models("cpu"))[
        0
    ]  # tests sub-04; sub-05 was only fold 1's validation
    rows = cache.index.set_index("participant_id").loc[["sub-04", "sub-05"], "row"].to_numpy()
    expected = Explainer(fold0, "saliency").attribute(cache.load(rows), target=1).mean(0)
    folder = run_dir / "attribution" / "saliency"
    group = nib.load(folder / "group" / "class-MDD_desc-mean_map.nii.gz").get_fdata()
    np.testing.assert_allclose(group, expected, rtol=1e-4, atol=1e-9)
    saved = np.mean(
        [
            nib.load(folder / map_name(p, method="saliency")).get_fdata()
            for p in ("sub-04", "sub-05")
        ],
        0,
    )
    assert not np.allclose(group, saved)


# -- region occlusion, known answers ---------------------------------------------------------------------------
def _box_labels():
    labels = np.full(SHAPE, 2, dtype=np.int32)
    labels[BOX] = 1
    labels[:, :4] = 3
    labels[0] = 0
    return labels


def test_occlusion_block_value_is_exact():
    """One 3x4x3 block hides 36 of the box's 72 voxels: the box mean halves, and the drop is known."""
    maps = Explainer(BoxModel(), "occlusion").attribute(np.ones((1, *SHAPE), np.float32), target=0)[
        0
    ]
    p = lambda v: float(torch.softmax(torch.tensor([4.0 * v, -4.0 * v, 0.0]), 0)[0])  # noqa: E731
    block = (slice(3, 6), slice(8, 12), slice(6, 9))
    assert _inside(block).sum() * 2 == _inside(BOX).sum()
    np.testing.assert_allclose(maps[block], p(1.0) - p(0.5), rtol=1e-5)


def test_region_occlusion_method_paints_each_region_with_its_drop():
    labels = _box_labels()
    x = np.ones((2, *SHAPE), dtype=np.float32)
    ex = Explainer(BoxModel(), "region_occlusion", feature_mask=labels, batch_size=3)
    maps = ex.attribute(x, target=0)
    p = float(torch.softmax(torch.tensor([4.0, -4.0, 0.0]), 0)[0] - 1 / 3)
    np.testing.assert_allclose(maps[:, labels == 1], p, rtol=1e-5)
    np.testing.assert_allclose(maps[:, labels != 1], 0, atol=1e-7)
    table = region_table(maps[0], labels, {1: "Box_L", 2: "Rest_R", 3: "Front_L"})
    assert table["region"].iloc[0] == "Box_L"
    with pytest.raises(ConfigError, match="feature_mask"):
        Explainer(BoxModel(), "region_occlusion").attribute(x)
    with pytest.raises(InputError, match="labels >= 0"):
        Explainer(BoxModel(), "region_occlusion", feature_mask=labels - 1).attribute(x)


# -- trust checks ------------------------------------------------------------------------------------------------
from neuroml.attribution import sanity  # noqa: E402


def test_randomize_weights_copies_and_is_seeded():
    model = tiny_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = sanity.randomize_weights(model, 3), sanity.randomize_weights(model, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    changed = [
        k for k in before if k.endswith("weight") and not torch.equal(before[k], a.state_dict()[k])
    ]
    assert len(changed) >= 3
    c = sanity.randomize_weights(model, 4)
    assert not torch.equal(a.state_dict()[changed[0]], c.state_dict()[changed[0]])


def test_model_randomization_flags_a_map_that_ignores_the_model(x):
    model = tiny_classifier()
    targets = np.array([0, 1])
    copy_input = lambda m, xx, t: np.asarray(xx)  # noqa: E731 - an "edge detector": the same for any weights
    res = sanity.model_randomization(copy_input, model, x, x, targets)
    assert res["rho"] == [1.0, 1.0] and not res["passed"]

    def weight_driven(m, xx, t):  # depends only on the weights: uncorrelated once they are redrawn
        w = max(m.parameters(), key=lambda q: q.numel()).detach().numpy().ravel()
        return np.stack([np.resize(w, SHAPE)] * len(xx))

    res = sanity.model_randomization(
        weight_driven, model, x, weight_driven(model, x, targets), targets
    )
    assert res["median_abs_rho"] < 0.2 and res["passed"]
    assert "Spearman" in res["rule"]


def test_spearman_matches_scipy(rng):
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert sanity.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert sanity.spearman(a, np.ones(50)) == 0.0


def test_deletion_curve_rewards_the_right_order():
    labels = np.zeros(SHAPE, np.int32)
    labels[BOX] = 1
    labels[9:, :, :] = 2
    labels[:3, :, :] = 3
    labels[3:9, 12:, :] = 4
    x = np.ones((1, *SHAPE), np.float32)
    good = np.where(labels == 1, 1.0, 0.0)[None].astype(np.float32)
    res = sanity.deletion_curve(BoxModel(), x, good, [0], labels, n_random=8)
    p1 = float(torch.softmax(torch.tensor([4.0, -4.0, 0.0]), 0)[0])
    assert res["steps"] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(res["probability"], [p1, 1 / 3, 1 / 3, 1 / 3, 1 / 3], atol=1e-4)
    assert res["fraction_removed"][1] == pytest.approx(
        (labels == 1).sum() / (labels > 0).sum(), abs=1e-4
    )
    assert res["auc"] < res["auc_random"] and res["passed"]
    bad = sanity.deletion_curve(BoxModel(), x, -good, [0], labels, n_random=8)
    assert bad["probability"][:4] == pytest.approx([p1] * 4, abs=1e-4)
    assert bad["auc"] > bad["auc_random"] and not bad["passed"]


def test_deletion_curve_removes_regions_from_every_channel():
    labels = np.zeros(SHAPE, np.int32)
    labels[BOX] = 1
    labels[9:, :, :] = 2

    class SecondChannel(torch.nn.Module):  # the box model reading channel 1 of a 2-channel input
        def __init__(self):
            super().__init__()
            self.box = BoxModel()

        def forward(self, x):
            return self.box(x[:, 1:2])

    good = np.where(labels == 1, 1.0, 0.0)[None].astype(np.float32)
    one = sanity.deletion_curve(
        BoxModel(), np.ones((1, *SHAPE), np.float32), good, [0], labels, n_random=2
    )
    x2 = np.stack([np.zeros(SHAPE), np.ones(SHAPE)]).astype(np.float32)[None]  # (1, 2, X, Y, Z)
    two = sanity.deletion_curve(SecondChannel(), x2, good, [0], labels, n_random=2)
    assert two["probability"] == one["probability"] and two["auc"] == one["auc"]
    assert two["probability"][1] < two["probability"][0]  # the box went from channel 1 too
    with pytest.raises(InputError, match="must agree"):
        sanity.deletion_curve(SecondChannel(), x2[:, :, :-1], good, [0], labels)


def test_fold_stability():
    v = np.arange(10.0)
    res = sanity.fold_stability({0: v, 1: v * 2, 2: -v}, top_k=3)
    assert [p[2] for p in res["pairs"]] == [1.0, -1.0, -1.0]
    assert [p[3] for p in res["pairs"]] == [1.0, 0.0, 0.0]  # shared top-3 regions

    assert res["median_rho"] == -1.0 and res["passed"] is False and res["passed_by"] is None
    assert res["top_overlap_p"] == 1.0  # no region in common
    assert sanity.fold_stability({0: v})["median_rho"] is None


def test_fold_stability_passes_a_sparse_effect_on_its_leading_regions_only():
    """A few regions carry the effect, ~110 score near zero in a random order: rho stays low, the
    folds agree on the top regions, and random maps agree on neither."""
    from scipy.stats import hypergeom

    rng = np.random.default_rng(0)
    sparse = {f: np.r_[[9.0, 8, 7, 6], rng.uniform(0, 1e-3, 112)] for f in range(3)}
    res = sanity.fold_stability(sparse)
    assert (
        res["median_rho"] < 0.5
        and res["n_regions"] == 116
        and res["chance_top_overlap"] == round(10 / 116, 4)
    )
    shared = round(res["median_top_overlap"] * 10)
    assert shared >= 4 and res["top_overlap_p"] == pytest.approx(
        hypergeom.sf(shared - 1, 116, 10, 10), rel=1e-3
    )
    assert res["passed"] is True and res["passed_by"] == "top_overlap"
    # exactly 4 of 10 shared among 116 regions: p = 0.0047, below 0.01
    four = {
        0: np.r_[np.arange(20.0, 10, -1), np.zeros(106)],
        1: np.r_[[20.0, 19, 18, 17], np.zeros(6), np.arange(10.0, 4, -1), np.zeros(100)],
    }
    res = sanity.fold_stability(four)
    assert res["median_top_overlap"] == 0.4 and res["top_overlap_p"] == pytest.approx(
        0.00472, abs=1e-5
    )
    assert res["passed"] is True
    assert (
        sanity.fold_stability(four, overlap_p=0.001)["passed"] is False
    )  # the rule's threshold is used
    # independent random maps: neither rule
    noise = {f: rng.normal(size=116) for f in range(5)}
    res = sanity.fold_stability(noise)
    assert res["passed"] is False and res["top_overlap_p"] > 0.01 and abs(res["median_rho"]) < 0.3
    # ties are not agreement: constant, NaN or mostly-zero maps would share index-ordered "top" regions
    assert sanity.fold_stability({f: np.zeros(116) for f in range(3)})["passed"] is False
    assert (
        sanity.fold_stability({f: np.full(116, np.nan) for f in range(2)})["top_overlap_p"] == 1.0
    )
    two = {
        f: np.bincount([2 * f, 2 * f + 1], minlength=116).astype(float) for f in range(3)
    }  # 2 regions each
    assert sanity.fold_stability(two)["passed"] is False
    # the shared count is exact for any top_k (4 of 7 among 60 is p = 0.0022)
    a = np.r_[np.arange(10.0, 3, -1), np.zeros(53)]
    b = np.r_[[10.0, 9, 8, 7], np.zeros(3), np.arange(6.0, 3, -1), np.zeros(50)]
    res = sanity.fold_stability({0: a, 1: b}, top_k=7)
    assert (
        res["top_overlap_p"] == pytest.approx(hypergeom.sf(3, 60, 7, 7), rel=1e-3)
        and res["passed"] is True
    )
    # every region in the top set: overlap is certain, so only rho can pass
    v = np.arange(5.0)
    assert sanity.fold_stability({0: v, 1: v[::-1]}, top_k=10)["top_overlap_p"] is None


def test_ground_truth_scores_hand_computed():
    mask = np.zeros(SHAPE, bool)
    mask[BOX] = True
    brain = np.ones(SHAPE, bool)
    brain[0] = False
    attribution = np.where(mask, 3.0, 0.0)
    attribution[5, 0, 0] = 1.0  # a little mass outside
    labels = _box_labels()
    table = region_table(attribution, labels, {1: "Box_L", 2: "Rest_R", 3: "Front_L"})
    res = sanity.ground_truth_scores(attribution, mask, brain, table, ["Box_L"], top_k=1)
    mass = 3.0 * mask.sum() / (3.0 * mask.sum() + 1.0)
    share = mask.sum() / brain.sum()
    assert res["mass_accuracy"] == pytest.approx(mass, abs=1e-4)
    assert res["planted_share"] == pytest.approx(share, abs=1e-4)
    assert res["mass_enrichment"] == pytest.approx(mass / share, rel=1e-3)
    assert res["roc_auc"] == pytest.approx(1.0)
    assert res["planted_ranks"] == {"Box_L": 1} and res["top_k_planted"] == 1 and res["passed"]
    flipped = sanity.ground_truth_scores(-attribution, mask, brain, table, ["Box_L"], top_k=1)
    assert flipped["mass_accuracy"] == 0.0 and flipped["roc_auc"] < 0.5 and not flipped["passed"]


def test_planted_ground_truth_from_a_synthetic_cohort(tmp_path):
    import shutil
    from pathlib import Path

    from neuroml.io.atlases import atlas_on_grid
    from neuroml.io.templates import target_grid

    samples = Path(__file__).resolve().parents[1] / "data_samples"
    deriv = tmp_path / "deriv"
    deriv.mkdir()
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "d",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "SourceDatasets": [{"URL": f"file://{samples.resolve()}"}],
            }
        )
    )
    affine, shape = target_grid(RES)
    truth = sanity.planted_ground_truth(deriv, affine, shape)
    assert sorted(truth) == ["MDD", "SCZ"]
    labels, names = atlas_on_grid("aal", affine, shape)
    index = {v: k for k, v in names.items()}
    for info in truth.values():
        assert info["mask"].shape == shape and info["mask"].any()
        planted = np.isin(labels, [index[r] for r in info["regions"] if r in index])
        assert (info["mask"] & planted).sum() > 0.6 * info[
            "mask"
        ].sum()  # on the planted atlas regions
    # not a synthetic cohort: no ground truth
    other = tmp_path / "raw"
    other.mkdir()
    shutil.copy(samples / "participants.tsv", other / "participants.tsv")
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "d",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "SourceDatasets": [{"URL": f"file://{other.resolve()}"}],
            }
        )
    )
    assert sanity.planted_ground_truth(deriv, affine, shape) is None


def test_attribute_run_region_occlusion_and_trust_checks(tmp_path):
    import shutil
    from pathlib import Path

    from neuroml.cli import main
    from neuroml.data import build_cache
    from neuroml.io.atlases import atlas_on_grid
    from neuroml.runs import load_run

    run_dir, deriv = _make_run(tmp_path)
    samples = Path(__file__).resolve().parents[1] / "data_samples" / "derivatives" / "groundtruth"
    gt = tmp_path / "raw" / "derivatives" / "groundtruth"
    gt.mkdir(parents=True)
    for f in (
        "planted_regions.json",
        "space-MNI152NLin2009aSym_desc-MDD_mask.nii.gz",
        "space-MNI152NLin2009aSym_desc-SCZ_mask.nii.gz",
    ):
        shutil.copy(samples / f, gt / f)
    assert (
        main(
            [
                "-q",
                "attribute",
                str(run_dir),
                str(deriv),
                "--method",
                "region_occlusion",
                "--target",
                "true",
                "--n-sanity",
                "3",
            ]
        )
        == 0
    )
    folder = run_dir / "attribution" / "region_occlusion"
    doc = json.loads((folder / "attribution.json").read_text())
    assert doc["method"] == "region_occlusion" and doc["n_subjects"] == 7

    # the map of sub-01 holds, per region, the drop region_occlusion() measures with the same model
    cache = build_cache(deriv)
    fold0 = dict(load_run(run_dir).fold_models("cpu"))[0]
    row = int(cache.index.set_index("participant_id").loc["sub-01", "row"])
    labels, names = atlas_on_grid("aal", cache.affine, cache.shape)
    table, drops = region_occlusion(fold0, cache.load([row]), labels, names, target=0)
    img = np.asarray(nib.load(folder / map_name("sub-01", method="region_occlusion")).dataobj)
    ids = np.array(sorted(names))
    first = np.array([np.flatnonzero(labels.ravel() == k)[0] for k in ids])
    np.testing.assert_allclose(img.ravel()[first], drops[0], rtol=1e-4, atol=1e-7)
    assert (img[labels == 0] == 0).all()

    trust = json.loads((folder / "sanity.json").read_text())
    assert len(trust["subjects"]) == 3 and {
        "randomization",
        "deletion",
        "stability",
        "ground_truth",
    } <= set(trust)
    assert len(trust["randomization"]["rho"]) == 3
    assert trust["randomization"]["passed"] == (trust["randomization"]["median_abs_rho"] < 0.2)
    assert len(trust["deletion"]["probability"]) == len(trust["deletion"]["steps"])
    assert trust["deletion"]["probability"][0] == pytest.approx(
        np.mean(
            [
                s["probabilities"][s["true_label"]]
                for s in doc["subjects"]
                if s["participant_id"] in trust["subjects"]
            ]
        ),
        abs=1e-3,
    )
    assert list(trust["ground_truth"]) == [
        "MDD"
    ]  # control has nothing planted; SCZ is not in this run
    mdd = trust["ground_truth"]["MDD"]
    assert (
        0 <= mdd["mass_accuracy"] <= 1
        and 0 <= mdd["roc_auc"] <= 1
        and "Hippocampus_L" in mdd["planted_ranks"]
    )
    assert doc["trust"]["file"] == "sanity.json" and "deletion" in doc["trust"]


def test_hirescam_is_exact_for_a_linear_head(rng):
    """conv (identity) -> flatten -> linear: HiResCAM = activation x weight of the logit, voxel by voxel."""
    conv = torch.nn.Conv3d(1, 1, 1, bias=False)
    linear = torch.nn.Linear(int(np.prod(SHAPE)), 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        w = torch.zeros((2, *SHAPE))
        w[1][BOX] = torch.as_tensor(rng.normal(size=_inside(BOX).sum()).astype(np.float32)).reshape(
            w[1][BOX].shape
        )
        linear.weight.copy_(w.reshape(2, -1))
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), linear)
    x = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    ex = Explainer(model, "hirescam", target_layer="0")
    maps = ex.attribute(x, target=1)
    np.testing.assert_allclose(maps, x * w[1].numpy()[None], rtol=1e-5, atol=1e-6)
    assert ex.target_layer_ == "0"
    assert (maps[:, ~_inside(BOX)] == 0).all()
    # the default layer is the last one at most 4x coarser than the input
    assert Explainer(tiny_classifier(), "hirescam").attribute(x[:1]).shape == (1, *SHAPE)


def test_bench_script_summary_applies_the_targets():
    """scripts/bench_attribution.py: a method meets the targets only with every class passing and |rho| < 0.2."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_attribution.py"
    spec = importlib.util.spec_from_file_location("bench_attribution", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt = {
        "mass_accuracy": 0.5,
        "planted_share": 0.02,
        "mass_enrichment": 25.0,
        "roc_auc": 0.9,
        "top_k_planted": 5,
        "top_k": 5,
        "planted_ranks": {"A_L": 1, "B_R": 7},
        "top_regions": ["A_L"],
        "passed": True,
    }
    trust = {
        "randomization": {"median_abs_rho": 0.05, "passed": True},
        "deletion": {"auc": 0.3, "auc_random": 0.9, "passed": True},
        "stability": {"MDD": {"median_rho": 0.6}},
        "ground_truth": {"MDD": gt, "SCZ": dict(gt, passed=False, top_k_planted=4)},
    }
    row = bench.summarize(trust, 1.5)
    assert (
        row["classes"]["MDD"]["planted_rank_best"] == 1
        and row["classes"]["MDD"]["planted_rank_worst"] == 7
    )
    assert not row["all_targets_met"]
    trust["ground_truth"]["SCZ"]["passed"] = True
    assert bench.summarize(trust, 1.5)["all_targets_met"]
    trust["deletion"]["passed"] = (
        False  # a deletion curve no better than random orders: a target missed
    )
    row = bench.summarize(trust, 1.5)
    assert (
        not row["all_targets_met"]
        and row["failed"] == ["deletion"]
        and row["deletion_passed"] is False
    )
    trust["randomization"]["passed"] = False
    trust["ground_truth"]["SCZ"].update(passed=False, mass_enrichment=8.6)
    assert bench.summarize(trust, 1.5)["failed"] == ["SCZ mass", "randomization", "deletion"]
    table = bench.markdown({"m": bench.summarize(trust, 1.5)}, ["MDD", "SCZ"])
    assert "| m | 1.50 | 5/5 | 1-7 | 25.0 | 0.9 | 4/5 |" in table
    assert table.rstrip().endswith("| no (SCZ mass, randomization, deletion) |")


def test_bench_script_times_each_method_on_attribute_runs_layer(tmp_path):
    """HiResCAM is timed on its own default layer (what attribute_run uses), not on the Grad-CAM one."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_attribution.py"
    spec = importlib.util.spec_from_file_location("bench_attribution", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run_dir, deriv = _make_run(tmp_path)
    seconds, layers = bench.time_methods(run_dir, deriv, ["gradcam", "hirescam"], "cpu", 1)
    used = {
        m: json.loads(
            attribute_run(
                run_dir,
                deriv,
                method=m,
                participant_labels=["sub-01"],
                sanity=False,
                show_progress=False,
            ).read_text()
        )["target_layer"]
        for m in layers
    }
    assert layers == used and layers["hirescam"] != layers["gradcam"]
    assert set(seconds) == {"gradcam", "hirescam"} and all(v >= 0 for v in seconds.values())


# -- calls on some participants, on other derivatives; options ------------------------------------------------
def _listed(folder, doc):
    """The attribution files of ``folder`` and those its ``attribution.json`` (``doc``) lists."""
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    listed = {
        "attribution.json",
        *(v for v in (doc["sanity"]["file"], doc["sanity"]["superseded"]) if v),
    }
    for s in doc["subjects"]:
        listed.update((s["map"], s["regions_tsv"], s["regions_json"]))
    for g in doc["group"].values():
        listed.update(
            v
            for k, v in g.items()
            if k in ("mean_map", "tstat_map", "regions_tsv", "regions_json") and v
        )
    return on_disk, listed


def test_a_call_on_some_participants_keeps_the_others_and_recomputes_the_group(tmp_path):
    run_dir, deriv = _make_run(tmp_path)
    folder = run_dir / "attribution" / "saliency"

    def call(labels=None, target="true", **kw):
        return json.loads(
            attribute_run(
                run_dir,
                deriv,
                method="saliency",
                target=target,
                participant_labels=labels,
                n_sanity=2,
                show_progress=False,
                **kw,
            ).read_text()
        )

    full = call()
    pool = json.loads((folder / "sanity.json").read_text())["n_subjects_pool"]
    mdd = nib.load(folder / "group" / "class-MDD_desc-mean_map.nii.gz").get_fdata()
    stamp = (folder / map_name("sub-05", method="saliency")).stat().st_mtime_ns
    doc = call(["sub-01"])
    subjects = {s["participant_id"]: s for s in doc["subjects"]}
    assert (
        sorted(subjects) == sorted(s["participant_id"] for s in full["subjects"])
        and doc["n_subjects"] == 7
    )
    assert all(s["skipped"] for s in doc["subjects"])
    assert (folder / map_name("sub-05", method="saliency")).stat().st_mtime_ns == stamp
    assert {c: g["n"] for c, g in doc["group"].items()} == {"control": 3, "MDD": 4}
    np.testing.assert_allclose(
        nib.load(folder / "group" / "class-MDD_desc-mean_map.nii.gz").get_fdata(), mdd
    )
    trust = json.loads((folder / "sanity.json").read_text())  # the checks cover every kept subject
    assert trust["call_id"] == doc["call_id"] and trust["n_subjects_pool"] == pool
    on_disk, listed = _listed(folder, doc)
    assert on_disk == listed

    # sub-02's and sub-03's maps replaced since (not by a call): not kept; control has one subject, no t map
    for pid in ("sub-02", "sub-03"):
        nib.save(
            nib.Nifti1Image(np.ones(SHAPE_8MM(), np.float32), np.eye(4)),
            folder / map_name(pid, method="saliency"),
        )
    assert (folder / "group" / "class-control_desc-tstat_map.nii.gz").is_file()
    doc = call(["sub-04"])
    assert sorted(s["participant_id"] for s in doc["subjects"]) == [
        "sub-01",
        "sub-04",
        "sub-05",
        "sub-06",
        "sub-07",
    ]
    assert doc["group"]["control"]["n"] == 1 and doc["group"]["control"]["tstat_map"] is None
    assert not (folder / "group" / "class-control_desc-tstat_map.nii.gz").exists()
    assert not (folder / map_name("sub-02", method="saliency")).exists()
    assert not list(folder.glob("sub-03_*"))  # its map and region tables
    np.testing.assert_allclose(
        nib.load(folder / "group" / "class-control_desc-mean_map.nii.gz").get_fdata(),
        nib.load(folder / map_name("sub-01", method="saliency")).get_fdata(),
        atol=1e-7,
    )
    on_disk, listed = _listed(folder, doc)
    assert on_disk == listed

    # another target is another identity: the earlier maps are not kept, and their files go
    doc = call(["sub-04"], target="MDD", sanity=False)
    assert [s["participant_id"] for s in doc["subjects"]] == ["sub-04"] and list(doc["group"]) == [
        "MDD"
    ]
    on_disk, listed = _listed(folder, doc)
    assert on_disk == listed and "sanity_superseded.json" in on_disk


def test_other_derivatives_are_refused_unless_written_elsewhere(tmp_path):
    import shutil

    run_dir, deriv = _make_run(tmp_path)
    folder = run_dir / "attribution" / "saliency"
    attribute_run(run_dir, deriv, method="saliency", sanity=False, show_progress=False)
    before = (folder / "attribution.json").read_bytes()
    other = tmp_path / "deriv2"
    shutil.copytree(deriv, other)
    with pytest.raises(InputError) as err:
        attribute_run(
            run_dir, other, method="saliency", participant_labels=["sub-01"], show_progress=False
        )
    message = str(err.value)
    assert (
        "\n" not in message and str(deriv.resolve()) in message and str(other.resolve()) in message
    )
    assert str(folder / "attribution.json") in message and "--out" in message
    assert (folder / "attribution.json").read_bytes() == before

    out = attribute_run(
        run_dir,
        other,
        method="saliency",
        participant_labels=["sub-01", "sub-04"],
        n_sanity=2,
        show_progress=False,
        out_dir=tmp_path / "elsewhere",
    )
    assert out == tmp_path / "elsewhere" / "attribution.json"
    doc = json.loads(out.read_text())
    assert doc["deriv_dir"] == str(other.resolve()) and doc["n_subjects"] == 2
    on_disk, listed = _listed(out.parent, doc)
    assert on_disk == listed and {"sanity.json", "group/class-MDD_desc-mean_map.nii.gz"} <= on_disk
    assert (folder / "attribution.json").read_bytes() == before
    assert sorted(p.name for p in (run_dir / "attribution").iterdir()) == ["saliency"]
    # a folder of another method, or with files attribute did not write, is refused (never cleaned)
    with pytest.raises(
        InputError, match="holds the saliency attribution, not gradcam: one method per folder"
    ):
        attribute_run(
            run_dir,
            other,
            method="gradcam",
            sanity=False,
            show_progress=False,
            out_dir=tmp_path / "elsewhere",
        )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_custom_map.nii.gz").write_bytes(b"keep me")
    with pytest.raises(
        InputError, match=r"holds files attribute did not write \(my_custom_map.nii.gz\)"
    ):
        attribute_run(
            run_dir, other, method="saliency", sanity=False, show_progress=False, out_dir=mine
        )
    assert (mine / "my_custom_map.nii.gz").read_bytes() == b"keep me"
    with pytest.raises(ConfigError, match="participant labels go in participant_labels="):
        attribute_run(
            run_dir, other, method="saliency", participants=["sub-01"], show_progress=False
        )


def test_attribute_options_are_checked_with_helpful_messages(tmp_path):
    from neuroml.cli import build_parser

    run_dir, deriv = _make_run(tmp_path)
    missing = tmp_path / "no" / "such.tsv"
    with pytest.raises(
        InputError, match="participants file not found"
    ) as err:  # the run is not harmonized
        attribute_run(run_dir, deriv, method="saliency", participants=missing, show_progress=False)
    assert str(missing) in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'aal'"):
        attribute_run(run_dir, deriv, atlas="AAL3", show_progress=False)
    assert not (run_dir / "attribution").exists()

    args = build_parser().parse_args(["attribute", "r", "d", "--device", "auto", "--out", "o"])
    assert args.device == "auto" and str(args.out) == "o"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            attribute_run(run_dir, deriv, method="saliency", device="cuda", show_progress=False)
    doc = json.loads(
        attribute_run(
            run_dir,
            deriv,
            method="saliency",
            participant_labels=["sub-01"],
            device="auto",
            sanity=False,
            show_progress=False,
        ).read_text()
    )
    assert doc["n_subjects"] == 1


def test_the_progress_bar_counts_scans(tmp_path, monkeypatch):
    import tqdm.auto

    bars = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.seen = dict(total=kwargs.get("total"), unit=kwargs.get("unit"), done=0)
            bars.append(self.seen)

        def update(self, n=1):
            self.seen["done"] += n

    run_dir, deriv = _make_run(tmp_path)
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    doc = json.loads(
        attribute_run(
            run_dir,
            deriv,
            method="gradcam",
            target="true",
            sanity=False,
            batch_size=2,
            show_progress=True,
        ).read_text()
    )
    n = len(doc["subjects"])
    assert n > 2  # more scans than one batch
    assert [b for b in bars if b["unit"] == "scan"] == [dict(total=n, unit="scan", done=n)]


def test_derivatives_on_another_grid_are_refused_with_the_resolution_to_use(tmp_path):
    from types import SimpleNamespace

    from neuroml.attribution.run import _check_grid
    from neuroml.io.templates import target_grid

    affine2, shape2 = target_grid(2.0)
    affine4, shape4 = target_grid(4.0)
    cfg = {
        "grid": {"affine": affine2.tolist(), "shape": list(shape2)},
        "resolution": "2",
        "resolution_mm": 2.0,
    }
    _check_grid(
        SimpleNamespace(shape=tuple(shape2), affine=affine2), cfg, tmp_path
    )  # the run's grid: fine
    with pytest.raises(
        InputError,
        match=rf"grid {re.escape(str(tuple(shape4)))} differs from the run's "
        rf"{re.escape(str(tuple(shape2)))}: preprocess with --resolution 2 \(res-2\)",
    ):
        _check_grid(SimpleNamespace(shape=tuple(shape4), affine=affine4), cfg, tmp_path)
