"""Tests of neuroml.data: derivatives discovery, the float16 tensor cache, the cohort, the Dataset."""

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroml._utils.fileio import sha256_file
from neuroml.data import (
    TensorCache,
    VolumeDataset,
    build_cache,
    find_preprocessed,
    load_cohort,
    make_augmentation,
    participants_file,
    resolution_key,
)
from neuroml.errors import ConfigError, InputError
from neuroml.io.templates import target_grid

SPACE = "space-MNI152NLin2009aSym"


def _write_volume(deriv, pid, data, affine, ses=None, res="8"):
    folder = deriv / pid / (f"ses-{ses}" if ses else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{pid}{f'_ses-{ses}' if ses else ''}_{SPACE}_res-{res}_desc-preproc_T1w"
    path = folder / f"{stem}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    (folder / f"{stem}.json").write_text("{}")
    return path


def make_derivatives(
    root,
    n=6,
    labels=("control", "MDD", "SCZ"),
    sessions=("1", "2"),
    extra_images=(),
    extra_rows=(),
    seed=0,
):
    """Raw folder with participants.tsv + derivatives on the 8 mm grid (19 x 23 x 20).

    sub-01 has two sessions; ``extra_images`` are unlabelled participants with images,
    ``extra_rows`` labelled participants without images.
    """
    raw, deriv = root / "raw", root / "deriv"
    raw.mkdir(parents=True)
    affine, shape = target_grid(8.0)
    rng = np.random.default_rng(seed)
    rows = ["participant_id\tdiagnosis\tage"]
    for i in range(n):
        pid = f"sub-{i + 1:02d}"
        rows.append(f"{pid}\t{labels[i % len(labels)]}\t{30 + i}")
        for ses in sessions if i == 0 else (None,):
            _write_volume(deriv, pid, rng.normal(size=shape), affine, ses)
    for pid in extra_images:
        _write_volume(deriv, pid, rng.normal(size=shape), affine)
    for pid in extra_rows:
        rows.append(f"{pid}\tcontrol\t50")
    (raw / "participants.tsv").write_text("\n".join(rows) + "\n")
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"})
    )
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "neuroml derivatives",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neuroml"}],
                "SourceDatasets": [{"URL": raw.resolve().as_uri()}],
            }
        )
    )
    return deriv


@pytest.fixture
def deriv(tmp_path):
    return make_derivatives(tmp_path)


def test_resolution_key():
    assert resolution_key(2) == "2"
    assert resolution_key(1.5) == resolution_key("1.5") == resolution_key("1p5") == "1p5"
    with pytest.raises(ConfigError, match="resolution"):
        resolution_key("fine")


def test_find_preprocessed_lists_sessions_sorted(deriv):
    df = find_preprocessed(deriv)
    assert df["participant_id"].tolist() == [
        "sub-01",
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
        "sub-05",
        "sub-06",
    ]
    assert df["session"].tolist()[:3] == ["1", "2", None]
    assert set(df["resolution"]) == {"8"}
    assert all((deriv / p).is_file() for p in df["path"])
    with pytest.raises(
        InputError, match=r"no preprocessed images at res-2 \(resolutions present: \['8'\]\)"
    ):
        find_preprocessed(deriv, resolution=2)


def test_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no preprocessed images.*neuroml preprocess"):
        build_cache(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        build_cache(tmp_path / "missing")


def test_cache_contents_float16_memmap(deriv):
    cache = build_cache(deriv)
    affine, shape = target_grid(8.0)
    assert isinstance(cache.data, np.memmap) and cache.data.dtype == np.float16
    assert cache.data.shape == (7, *shape) == (7, 19, 23, 20)
    assert cache.shape == shape and np.allclose(cache.affine, affine)
    npy = deriv / "cache" / "res-8_T1w.npy"
    assert np.load(npy, mmap_mode="r").shape == (7, 19, 23, 20)
    index = cache.index
    assert list(index.columns) == ["row", "participant_id", "session", "run", "path", "sha256"]
    for _, row in index.iterrows():
        original = np.asarray(nib.load(str(deriv / row["path"])).dataobj, dtype=np.float32)
        cached = cache.volume(row["row"])
        assert cached.dtype == np.float32
        assert np.all(np.abs(cached - original) <= 5e-4 * np.abs(original) + 1e-7)
        assert row["sha256"] == sha256_file(deriv / row["path"])
    meta = json.loads((deriv / "cache" / "meta.json").read_text())["entries"]["res-8"]
    assert meta["shape"] == [19, 23, 20] and meta["resolution_mm"] == 8.0
    assert np.allclose(meta["affine"], affine)
    reopened = TensorCache.open(deriv)
    assert reopened.digest == cache.digest and len(reopened) == 7
    assert np.array_equal(cache.load([2, 0]), np.stack([cache.volume(2), cache.volume(0)]))


def test_cache_reused_then_updated_incrementally(deriv, caplog):
    first = build_cache(deriv)
    npy = deriv / "cache" / "res-8_T1w.npy"
    stamp = os.stat(npy).st_mtime_ns
    assert build_cache(deriv).digest == first.digest
    assert os.stat(npy).st_mtime_ns == stamp  # nothing rewritten
    # change one volume and add a participant: only those two are read again
    affine, shape = target_grid(8.0)
    changed = first.index["path"].iloc[3]
    new = np.full(shape, 2.5, dtype=np.float32)
    new[0, 0, 0] = -1.0
    nib.save(nib.Nifti1Image(new, affine), str(deriv / changed))
    _write_volume(deriv, "sub-99", np.random.default_rng(5).normal(size=shape), affine)
    with caplog.at_level(logging.INFO, logger="neuroml"):
        second = build_cache(deriv)
    assert "8 volumes (2 read, 6 reused)" in caplog.text
    assert second.digest != first.digest and len(second) == 8
    assert np.allclose(second.volume(3), new)
    assert np.array_equal(np.asarray(second.data[0]), np.asarray(first.data[0]))
    assert second.index["participant_id"].iloc[-1] == "sub-99"


def test_interrupted_cache_is_detected_and_rebuilt(deriv):
    build_cache(deriv)
    tsv = deriv / "cache" / "res-8_T1w.tsv"
    tsv.write_text(tsv.read_text().replace("sub-02", "sub-77"))  # index no longer matches meta.json
    with pytest.raises(InputError, match="does not match meta.json"):
        TensorCache.open(deriv)
    assert "sub-02" in build_cache(deriv).index["participant_id"].tolist()
    (deriv / "cache" / "meta.json").unlink()
    with pytest.raises(InputError, match="meta.json missing"):
        TensorCache.open(deriv, resolution=8)


def test_grid_mismatch_names_the_file(deriv):
    affine, shape = target_grid(8.0)
    bad = _write_volume(deriv, "sub-50", np.ones((19, 23, 21)) + np.arange(21), affine)
    with pytest.raises(InputError, match=r"sub-50.*not on the grid.*\(19, 23, 21\)"):
        build_cache(deriv)
    bad.unlink()
    shifted = affine.copy()
    shifted[0, 3] += 4
    _write_volume(deriv, "sub-51", np.random.default_rng(0).normal(size=shape), shifted)
    with pytest.raises(InputError, match="sub-51.*not on the grid"):
        build_cache(deriv)


def test_bad_volume_values_name_the_file(deriv):
    affine, shape = target_grid(8.0)
    data = np.random.default_rng(0).normal(size=shape)
    data[1, 1, 1] = 1e6
    _write_volume(deriv, "sub-60", data, affine)
    with pytest.raises(InputError, match="sub-60.*float16 range"):
        build_cache(deriv)
    data[1, 1, 1] = np.nan
    _write_volume(deriv, "sub-60", data, affine)
    with pytest.raises(InputError, match="sub-60.*NaN"):
        build_cache(deriv)


def test_participants_file_resolution(tmp_path, deriv):
    assert participants_file(deriv) == (tmp_path / "raw" / "participants.tsv").resolve()
    assert participants_file(deriv, tmp_path / "raw") == tmp_path / "raw" / "participants.tsv"
    (tmp_path / "raw" / "participants.tsv").unlink()
    with pytest.raises(InputError, match="participants.tsv.*not found.*participants="):
        participants_file(deriv)
    (deriv / "dataset_description.json").write_text(json.dumps({"Name": "x"}))
    with pytest.raises(InputError, match="SourceDatasets"):
        participants_file(deriv)


def test_load_cohort_joins_labels(tmp_path, caplog):
    deriv = make_derivatives(tmp_path, extra_images=("sub-90",), extra_rows=("sub-80",))
    with caplog.at_level(logging.WARNING, logger="neuroml"):
        cohort = load_cohort(deriv)
    assert "no 'diagnosis' label" in caplog.text and "sub-90" in caplog.text
    assert "no preprocessed image" in caplog.text and "sub-80" in caplog.text
    assert cohort.unlabeled == ["sub-90"] and cohort.without_images == ["sub-80"]
    assert cohort.classes == ["control", "MDD", "SCZ"]
    assert len(cohort) == 7 and "sub-90" not in cohort.participant_ids
    assert cohort.participant_ids[:2] == ["sub-01", "sub-01"]  # two sessions
    assert [cohort.classes[i] for i in cohort.y] == cohort.labels
    assert cohort.column("age")[2] == "31"
    other = load_cohort(deriv, classes=["SCZ", "MDD", "control"])
    assert other.classes == ["SCZ", "MDD", "control"] and other.digest == cohort.digest
    with pytest.raises(
        InputError, match=r"label column 'dx' not found; available columns: \['diagnosis', 'age'\]"
    ):
        load_cohort(deriv, label_column="dx")
    with pytest.raises(ConfigError, match="not in classes"):
        load_cohort(deriv, classes=["control", "MDD"])


def test_single_class_is_refused(tmp_path):
    deriv = make_derivatives(tmp_path, labels=("control",))
    with pytest.raises(InputError, match="single class"):
        load_cohort(deriv)


def test_volume_dataset_items(deriv):
    cache = build_cache(deriv)
    ds = VolumeDataset(cache.data, labels=[0, 2], rows=[4, 1])
    x, y = ds[0]
    assert x.shape == (1, 19, 23, 20) and x.dtype == torch.float32 and int(y) == 0
    assert np.array_equal(x[0].numpy(), cache.volume(4))
    ram = VolumeDataset(cache.data, labels=[0, 2], rows=[4, 1], in_memory=True)
    assert isinstance(ram.volumes, np.ndarray) and ram.volumes.dtype == np.float32
    assert torch.equal(ram[1][0], ds[1][0]) and int(ram[1][1]) == 2
    assert VolumeDataset(cache.data)[6].shape == (1, 19, 23, 20)  # unlabelled items are tensors
    with pytest.raises(InputError, match="labels"):
        VolumeDataset(cache.data, labels=[0], rows=[1, 2])


def test_augmentation_is_seeded_and_never_flips(deriv):
    cache = build_cache(deriv)
    aug = make_augmentation(seed=3, prob=1.0)
    assert "RandFlip" not in repr(aug)
    assert "RandFlip" in repr(make_augmentation(flip=True))
    ds = VolumeDataset(cache.data, labels=np.zeros(7, int), transform=aug, in_memory=True)
    before = ds.volumes.copy()
    ds.set_seed(11)
    a = ds[2][0]
    ds.set_seed(11)
    b = ds[2][0]
    ds.set_seed(12)
    c = ds[2][0]
    assert type(a) is torch.Tensor and a.shape == (1, 19, 23, 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], torch.from_numpy(before[2]))
    assert np.array_equal(ds.volumes, before)  # the RAM copy is never modified


def test_the_monai_augmentation_is_still_available_per_item():
    from neuroml.data import Augmentation, BatchAugmentation

    assert isinstance(make_augmentation(), BatchAugmentation)
    monai_aug = make_augmentation(seed=1, prob=1.0, batched=False)
    assert isinstance(monai_aug, Augmentation) and "RandAffine" in repr(monai_aug)
    x = torch.randn(1, 9, 10, 11)
    assert monai_aug(x).shape == x.shape and not torch.equal(monai_aug(x), x)


@pytest.mark.parametrize("rot, shift, scale", [(0.3, 4.0, 0.2), (0.05, 2.0, 0.03)])
def test_batch_warp_resamples_exactly_like_monai_rand_affine(rot, shift, scale):
    from monai.transforms import RandAffine

    from neuroml.data.augment import _monai_affine, warp_affine

    torch.manual_seed(0)
    x = torch.randn(2, 1, 19, 23, 20)
    mats, refs = [], []
    for i, seed in enumerate((3, 4)):
        t = RandAffine(
            prob=1.0,
            rotate_range=(rot,) * 3,
            translate_range=(shift,) * 3,
            scale_range=(scale,) * 3,
            mode="bilinear",
            padding_mode="border",
        )
        t.set_random_state(seed)
        refs.append(t(x[i]).as_tensor())
        g = t.rand_affine_grid
        mats.append(
            _monai_affine(
                *(
                    torch.tensor(p, dtype=torch.float64)
                    for p in (g.rotate_params, g.translate_params, g.scale_params)
                )
            )
        )
    got = warp_affine(x, torch.stack(mats))
    assert (
        got - torch.stack(refs)
    ).abs().max() < 1e-4  # float32 rounding; the warp itself moves values by ~1
    assert (got - x).abs().max() > 0.5


def test_batch_augmentation_steps_probabilities_and_seeding():
    from neuroml.data import BatchAugmentation

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(300, 1, 4, 5, 6)).astype(np.float32))
    before = x.clone()
    assert torch.equal(BatchAugmentation(prob=0.0).apply_batch(x), x)
    # intensity only: each item becomes a * x + b, a in [0.9, 1.1], b in [-0.1, 0.1]
    only = dict(rotate_deg=0, translate_vox=0, scale=0, noise_std=0, intensity=0.1, prob=1.0)
    out = BatchAugmentation(seed=1, **only).apply_batch(x)
    flat_x, flat_o = x.flatten(1).double(), out.flatten(1).double()
    a = ((flat_o - flat_o.mean(1, keepdim=True)) * (flat_x - flat_x.mean(1, keepdim=True))).sum(
        1
    ) / ((flat_x - flat_x.mean(1, keepdim=True)) ** 2).sum(1)
    b = flat_o.mean(1) - a * flat_x.mean(1)
    assert torch.allclose(
        flat_o, a[:, None] * flat_x + b[:, None], atol=1e-4
    )  # (after an identity resampling)
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 1.1 + 1e-6 and a.max() - a.min() > 0.15
    assert b.abs().max() <= 0.1 + 1e-6 and b.max() - b.min() > 0.15
    # noise only, prob 0.5: about half the items change, each by N(0, s), s <= noise_std
    noisy = BatchAugmentation(
        seed=2, **{**only, "intensity": 0, "noise_std": 0.5, "prob": 0.5}
    ).apply_batch(x)
    changed = (noisy - x).abs().flatten(1).amax(
        1
    ) > 1e-3  # not just the identity resampling's rounding
    assert 0.4 < changed.float().mean() < 0.6
    assert (noisy - x)[changed].flatten(1).std(1).max() < 0.6
    # flip only: an item is itself or flipped along its first spatial axis, both happen
    flipped = BatchAugmentation(
        seed=3, **{**only, "intensity": 0, "prob": 0.0}, flip=True
    ).apply_batch(x)
    same = (flipped == x).flatten(1).all(1)
    assert torch.equal(flipped[~same], x[~same].flip(2)) and 0.4 < same.float().mean() < 0.6
    # seeded, per item as well, and the input is never modified
    aug = make_augmentation(seed=7, prob=1.0)
    first = aug.apply_batch(x[:4])
    assert torch.equal(aug.set_random_state(7).apply_batch(x[:4]), first)
    assert not torch.equal(aug.set_random_state(8).apply_batch(x[:4]), first)
    assert aug(x[0]).shape == x[0].shape
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="batch"):
        aug.apply_batch(x[0])


def test_augmenting_the_pooled_grid_matches_pooling_the_augmented_grid():
    """apply_batch(pool(x), pooled=2) ~ pool(apply_batch(x)): same draws, shifts in mm, noise of pooled voxels."""
    import torch.nn.functional as F

    from neuroml.data import BatchAugmentation
    from neuroml.io.templates import template_on_grid

    tpl = torch.from_numpy(
        np.asarray(template_on_grid(2.0).dataobj, dtype=np.float32)
    )  # the 2 mm brain
    x = (tpl / tpl.max()).expand(4, 1, *tpl.shape).contiguous()

    def pool(v):
        return F.avg_pool3d(v, 2, ceil_mode=True)

    geometry = dict(
        rotate_deg=3.0, translate_vox=2.0, scale=0.03, intensity=0.1, noise_std=0.0, prob=1.0
    )
    full = pool(BatchAugmentation(seed=5, **geometry).apply_batch(x))
    coarse = BatchAugmentation(seed=5, **geometry).apply_batch(pool(x), pooled=2)
    wrong = BatchAugmentation(seed=5, **geometry).apply_batch(
        pool(x)
    )  # shifts not rescaled: twice as far
    changed = (full - pool(x)).abs().mean()
    assert (
        coarse - full
    ).abs().mean() < 0.2 * changed  # interpolation on the coarser grid only (0.13 here)
    assert (wrong - full).abs().mean() > 2 * (coarse - full).abs().mean()  # (3.9x here)
    # noise alone: the pooled grid gets the standard deviation of 8 averaged noise voxels
    noise = dict(rotate_deg=0, translate_vox=0, scale=0, intensity=0, noise_std=0.4, prob=1.0)
    big = torch.zeros(40, 1, 32, 32, 32)
    sd_full = pool(BatchAugmentation(seed=1, **noise).apply_batch(big)).flatten(1).std(1)
    sd_coarse = (
        BatchAugmentation(seed=1, **noise).apply_batch(pool(big), pooled=2).flatten(1).std(1)
    )
    assert torch.allclose(sd_coarse, sd_full, rtol=0.1)  # same per-item noise level drawn for both


@pytest.mark.parametrize(
    "what, content",
    [
        ("npy", b""),
        ("npy", b"\x93NUMPY\x01\x00v\x00{'descr'"),
        ("meta", b"[1, 2]"),
        ("meta", b'{"entries": [1]}'),
        ("meta", b'{"entries": {"res-8": 5}}'),
    ],
)
def test_corrupt_cache_files_are_rebuilt_not_a_crash(deriv, what, content):
    expected = build_cache(deriv).load()
    path = deriv / "cache" / ("res-8_T1w.npy" if what == "npy" else "meta.json")
    path.write_bytes(content)
    with pytest.raises(InputError, match="rebuild it with"):
        TensorCache.open(deriv, resolution=8)
    assert np.array_equal(build_cache(deriv).load(), expected)
    assert TensorCache.open(deriv, resolution=8).digest == build_cache(deriv).digest


def test_concurrent_builds_of_two_caches_keep_both_meta_entries(deriv, monkeypatch):
    import threading

    import neuroml.data.cache as cache_mod

    affine6, shape6 = target_grid(6.0)
    for i in range(3):
        _write_volume(
            deriv,
            f"sub-{i + 1:02d}",
            np.random.default_rng(i).normal(size=shape6),
            affine6,
            res="6",
        )
    build_cache(deriv, resolution=8), build_cache(deriv, resolution=6)
    affine8, shape8 = target_grid(8.0)  # both caches are now out of date
    _write_volume(deriv, "sub-02", np.random.default_rng(8).normal(size=shape8), affine8)
    _write_volume(deriv, "sub-02", np.random.default_rng(6).normal(size=shape6), affine6, res="6")
    both_read = threading.Barrier(
        2, timeout=3
    )  # both builders read meta.json before either writes it
    seen, real_read_json = set(), cache_mod.read_json

    def read_json(path):
        doc = real_read_json(path)
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            try:
                both_read.wait()
            except threading.BrokenBarrierError:  # the other builder holds the lock: it never comes
                pass
        return doc

    monkeypatch.setattr(cache_mod, "read_json", read_json)
    errors = []

    def build(res):
        try:
            build_cache(deriv, resolution=res)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(res,)) for res in (8, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert not errors
    for res in (8, 6):
        cache = TensorCache.open(deriv, resolution=res)
        assert cache.sha256 == {
            p: sha256_file(deriv / p) for p in find_preprocessed(deriv, res)["path"]
        }


@pytest.mark.parametrize(
    "field, value", [("shape", 5), ("shape", None), ("affine", [1, 2]), ("affine", None)]
)
def test_a_cache_entry_without_a_valid_grid_is_rebuilt(deriv, field, value):
    expected = build_cache(deriv).load()
    meta_path = deriv / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text())
    if value is None:
        del meta["entries"]["res-8"][field]
    else:
        meta["entries"]["res-8"][field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="valid shape or affine"):
        TensorCache.open(deriv, resolution=8)
    rebuilt = build_cache(deriv)
    assert np.array_equal(rebuilt.load(), expected) and rebuilt.affine.shape == (4, 4)


def test_a_file_system_without_locks_still_builds_the_cache(deriv, monkeypatch):
    import errno
    import fcntl

    def no_locks(fh, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # as on an NFS mount without lockd
    cache = build_cache(deriv, resolution=8)
    assert cache.sha256 == {p: sha256_file(deriv / p) for p in find_preprocessed(deriv, 8)["path"]}
