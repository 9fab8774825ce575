"""Property-based tests of the input checker and the BIDS name parser."""

import nibabel as nib
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuroml.errors import InputError
from neuroml.io import check_img, derivative_name, parse_entities
from neuroml.io.bids import check_label

shapes = st.tuples(*[st.integers(1, 6)] * 3)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, shapes, elements=floats))
def test_check_img_accepts_or_names_the_problem(data):
    img = nib.Nifti1Image(data, np.eye(4))
    finite = np.isfinite(data).all()
    constant = finite and data.max() == data.min()
    try:
        out = check_img(img, name="prop.nii")
    except InputError as exc:
        msg = str(exc)
        assert msg.startswith("prop.nii: ") and "\n" not in msg
        assert (not finite and "NaN or infinite" in msg) or (constant and "constant" in msg)
    else:
        assert finite and not constant
        np.testing.assert_array_equal(np.asarray(out.dataobj), data)
        again = check_img(out)
        np.testing.assert_array_equal(np.asarray(again.dataobj), data)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(*[st.integers(1, 4)] * n)))
def test_low_dimensional_arrays_are_refused(shape):
    if len(shape) == 3:
        return
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4))
    try:
        check_img(img, name="x.nii")
    except InputError as exc:
        assert f"got a {len(shape)}D image" in str(exc) or "constant" in str(exc)
    else:  # pragma: no cover - must not happen
        raise AssertionError(f"shape {shape} accepted as 3D")


alnum = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(
    sub=alnum,
    ses=st.none() | alnum,
    run=st.none() | st.integers(1, 99).map(str),
    desc=st.none() | alnum,
)
def test_derivative_names_round_trip(sub, ses, run, desc):
    ents = {"sub": sub}
    if ses:
        ents["ses"] = ses
    if run:
        ents["run"] = run
    name = derivative_name(ents, "T1w", space="MNI152NLin2009aSym", desc=desc)
    parsed, suffix, ext = parse_entities(name)
    expected = dict(ents, space="MNI152NLin2009aSym")
    if desc:
        expected["desc"] = desc
    assert parsed == expected and suffix == "T1w" and ext == ".nii.gz"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_labels_never_escape_a_folder(label):
    try:
        clean = check_label(label)
    except InputError:
        return
    assert clean.isalnum() and clean.isascii()
    assert "/" not in clean and "\\" not in clean and ".." not in clean
