"""Property-based tests (hypothesis) of the input checker and the BIDS parser, beyond
tests/test_io_properties.py: random headers, affines and scaling, mutated file bytes,
arbitrary file names, labels and participants tables. Whatever the input, the only
exception allowed is a one-line InputError naming the file.
"""

import gzip
import io
import os
import string
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from badcorpus import good_volume
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuroml.errors import InputError
from neuroml.io import check_img, find_scans, parse_entities, read_participants
from neuroml.io.bids import ENTITY_ORDER, check_label, derivative_name

# NEUROML_HYPOTHESIS_EXAMPLES=1000 for a longer fuzzing session
SETTINGS = settings(
    max_examples=int(os.environ.get("NEUROML_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


def _accepted(out, shape):
    data = np.asarray(out.dataobj)
    assert data.dtype == np.float32 and data.shape == shape
    assert np.isfinite(data).all() and data.max() > data.min()
    assert np.isfinite(out.affine).all() and abs(np.linalg.det(out.affine[:3, :3])) > 1e-6


def _refused(exc, name):
    msg = str(exc)
    assert msg.startswith(f"{name}: ") and "\n" not in msg and len(msg) < 1000, msg


@SETTINGS
@given(
    affine=arrays(np.float64, (3, 4), elements=st.one_of(finite, any_float)),
    shape=st.tuples(*[st.integers(2, 6)] * 3),
)
def test_any_affine_is_accepted_only_when_usable(tmp_path_factory, affine, shape):
    """Any sform in a file's header: accepted (and kept) only when finite and invertible."""
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    img = nib.Nifti1Image(data, np.eye(4))
    bio = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=bio), "header": nib.FileHolder(fileobj=bio)})
    raw = bytearray(bio.getvalue())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])), check=False)
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = affine.astype(np.float32)
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    raw[:348] = hdr.binaryblock
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "a.nii"
    path.write_bytes(bytes(raw))
    stored = np.vstack([affine.astype(np.float32).astype(np.float64), [0, 0, 0, 1]])
    try:
        out = check_img(path)
    except InputError as exc:
        _refused(exc, path)
        with np.errstate(all="ignore"):
            usable = np.isfinite(stored).all() and abs(np.linalg.det(stored[:3, :3])) >= 1e-6
        assert not usable or "affine" in str(exc) or "voxel sizes" in str(exc), str(exc)
    else:
        _accepted(out, shape)
        np.testing.assert_allclose(out.affine, stored, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    dtype=st.sampled_from(
        [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
    ),
    slope=st.one_of(st.just(1.0), any_float),
    inter=st.one_of(st.just(0.0), any_float),
    seed=st.integers(0, 2**16),
)
def test_scaling_factors_never_leak_non_finite_values(tmp_path_factory, dtype, slope, inter, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    raw = (
        rng.integers(info.min, info.max, size=(4, 5, 6), endpoint=True).astype(dtype)
        if info
        else rng.normal(0, 1e3, size=(4, 5, 6)).astype(dtype)
    )
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_data_dtype(dtype)
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "s.nii"
    nib.save(img, str(path))
    hdr = bytearray(path.read_bytes())
    h = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(hdr[:348])), check=False)
    h["scl_slope"], h["scl_inter"] = slope, inter
    hdr[:348] = h.binaryblock
    path.write_bytes(bytes(hdr))
    try:
        out = check_img(path)
    except InputError as exc:
        _refused(exc, path)
    else:
        _accepted(out, (4, 5, 6))


def _valid_nifti_bytes():
    img = nib.Nifti1Image(good_volume((5, 6, 7)), np.diag([2.0, 2.5, 3.0, 1.0]))
    bio = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=bio), "header": nib.FileHolder(fileobj=bio)})
    return bio.getvalue()


VALID = _valid_nifti_bytes()


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, len(VALID))),
    gz=st.booleans(),
)
def test_mutated_files_give_an_image_or_a_one_line_error(tmp_path_factory, edits, cut, gz):
    """Fuzzing: random byte edits (mostly in the header) and truncation of a valid file."""
    raw = bytearray(VALID)
    for pos, value in edits:
        raw[pos % 400 if pos % 3 else pos] = value  # two thirds of the edits hit the header
    raw = bytes(raw[:cut] if cut is not None else raw)
    name = "m.nii.gz" if gz else "m.nii"
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / name
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    try:
        out = check_img(path)
    except InputError as exc:
        _refused(exc, path)
    else:
        data = np.asarray(out.dataobj)
        assert data.ndim == 3 and np.isfinite(data).all() and data.dtype == np.float32
        assert np.isfinite(out.affine).all()
        again = check_img(out)  # idempotent on its own output
        np.testing.assert_array_equal(np.asarray(again.dataobj), data)


# --------------------------------------------------------------------------- BIDS names
@SETTINGS
@given(st.text(max_size=60))
def test_parse_entities_never_raises_and_splits_cleanly(name):
    entities, suffix, ext = parse_entities(name)
    assert isinstance(entities, dict) and isinstance(suffix, str) and isinstance(ext, str)
    for key, value in entities.items():
        assert "_" not in key and "_" not in value and "/" not in key + value
    assert "_" not in suffix and "-" not in suffix


label_text = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)


@SETTINGS
@given(
    entities=st.dictionaries(st.sampled_from(ENTITY_ORDER[1:]), label_text, max_size=5),
    sub=label_text,
    suffix=st.sampled_from(["T1w", "bold", "mask", "xfm"]),
    ext=st.sampled_from([".nii.gz", ".nii", ".json"]),
)
def test_any_entity_set_round_trips(entities, sub, suffix, ext):
    name = derivative_name({"sub": sub, **entities}, suffix, ext)
    parsed, sfx, e = parse_entities(name)
    assert parsed == {"sub": sub, **entities} and sfx == suffix and e == ext
    keys = list(parsed)
    assert keys == sorted(keys, key=ENTITY_ORDER.index)  # BIDS order


@SETTINGS
@given(label=st.text(max_size=12))
def test_find_scans_refuses_unsafe_labels_and_stays_inside(tmp_path_factory, label):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    bids = root / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    (root / "sub-x").mkdir()  # a subject-like folder outside the dataset: must never be found
    try:
        scans = find_scans(bids, participant_labels=[label])
    except InputError as exc:
        assert "\n" not in str(exc)
        clean = label[4:] if label.startswith("sub-") else label
        assert not (clean.isascii() and clean.isalnum()) or clean != "01"
    else:
        assert check_label(label) == "01" and scans == []


cell = st.text(alphabet=string.ascii_letters + string.digits + " -_./\\<>&\"'\t\r", max_size=8)


@SETTINGS
@given(
    header=st.lists(cell, min_size=1, max_size=4),
    rows=st.lists(st.lists(cell, max_size=5), max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_read_participants_gives_a_clean_table_or_a_one_line_error(
    tmp_path_factory, header, rows, raw
):
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "participants.tsv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    try:
        df = read_participants(path)
    except InputError as exc:
        _refused(exc, path)
    else:
        assert isinstance(df, pd.DataFrame) and df.index.name == "participant_id"
        assert df.index.is_unique
        for pid in df.index:
            assert pid.startswith("sub-") and pid[4:].isalnum() and pid[4:].isascii()
