"""A corpus of hostile inputs, written by code (no binaries are checked in).

:func:`make_image_corpus` writes one bad image file per case; :func:`make_participants_corpus`
writes broken ``participants.tsv`` files; :func:`make_bids_corpus` writes a BIDS dataset with
one good subject and one subject per bad image. Each case carries a regular expression that
the one-line error must match. Everything is seeded: the same call writes the same bytes.
The good cohorts these are set against are built by :mod:`_cohorts`.
"""

import dataclasses
import gzip
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from _cohorts import good_volume

__all__ = [
    "Case",
    "IMAGE_CASES",
    "make_image_corpus",
    "make_participants_corpus",
    "make_bids_corpus",
    "snapshot",
    "assert_every_final_file_is_complete",
    "assert_no_temporaries",
]


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input: its id, the file written, and what the error must say."""

    name: str
    path: Path
    match: str


def _affine(zoom=2.0):
    a = np.diag([zoom, zoom, zoom, 1.0])
    a[:3, 3] = -10
    return a


def _nifti_bytes(img):
    """The .nii bytes of an image (uncompressed)."""
    bio = io.BytesIO()
    file_map = img.make_file_map({"image": bio, "header": bio})
    img.to_file_map(file_map)
    return bio.getvalue()


def _patched_header(data, **fields):
    """Bytes of a .nii whose header fields are overwritten after the image is built."""
    img = nib.Nifti1Image(data, _affine())
    raw = bytearray(_nifti_bytes(img))
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.binaryblock
    return bytes(raw)


def _with_sform(data, sform):
    img = nib.Nifti1Image(data, _affine())
    hdr = img.header
    raw = bytearray(_nifti_bytes(img))
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    raw[:348] = hdr.binaryblock
    return bytes(raw)


def _gz(raw):
    return gzip.compress(raw, mtime=0)


def _image_cases(rng):
    """(name, file name, bytes or a writer, expected error regex)."""
    vol = good_volume()
    i16 = np.clip(vol, 0, 30000).astype(np.int16)
    good_gz = _gz(_nifti_bytes(nib.Nifti1Image(vol, _affine())))
    singular = _affine()
    singular[:, 1] = 0
    nan_affine = _affine()
    nan_affine[0, 3] = np.nan
    nan_vox = vol.copy()
    nan_vox[3, 4, 5] = np.nan
    inf_vox = vol.copy()
    inf_vox[1, 2, 3] = -np.inf
    return [
        (
            "truncated",
            "truncated.nii.gz",
            good_gz[: len(good_gz) // 2],
            r"truncated|cannot be read|not a readable",
        ),
        ("gzipgarbage", "garbage.nii.gz", _gz(rng.bytes(4000)), r"not a readable image"),
        ("rawgarbage", "garbage.nii", rng.bytes(4000), r"not a readable image"),
        ("notgzip", "notgzip.nii.gz", rng.bytes(4000), r"not a readable image"),
        (
            "absurddims",
            "absurd.nii",
            _patched_header(vol, dim=[3, 30000, 30000, 30000, 1, 1, 1, 1]),
            r"implausibly large|not a readable",
        ),
        (
            "negativedim",
            "negdim.nii",
            _patched_header(vol, dim=[3, -5, 16, 18, 1, 1, 1, 1]),
            r"not a readable|empty axis",
        ),
        (
            "negativezoom",
            "negzoom.nii",
            _patched_header(vol, pixdim=[1, -2, 2, 2, 1, 1, 1, 1], qform_code=0, sform_code=0),
            r"voxel sizes .* negative|not a readable",
        ),
        (
            "nanzoom",
            "nanzoom.nii",
            _patched_header(vol, pixdim=[1, np.nan, 2, 2, 1, 1, 1, 1], qform_code=0, sform_code=0),
            r"not finite|NaN or infinite|not a readable",
        ),
        ("singularaffine", "singular.nii", _with_sform(vol, singular), r"singular"),
        ("nanaffine", "nanaffine.nii", _with_sform(vol, nan_affine), r"NaN or infinite values"),
        (
            "twod",
            "twod.nii.gz",
            nib.Nifti1Image(vol[:, :, 0], _affine()),
            r"expected a 3D image and got a 2D",
        ),
        (
            "fived",
            "fived.nii.gz",
            nib.Nifti1Image(np.stack([vol, vol + 1], -1)[..., None].repeat(2, -1), _affine()),
            r"expected a 3D image and got a 5D",
        ),
        (
            "fourd",
            "fourd.nii.gz",
            nib.Nifti1Image(np.stack([vol, vol + 1], -1), _affine()),
            r"expected a 3D image and got a 4D",
        ),
        ("allzero", "zero.nii.gz", nib.Nifti1Image(np.zeros_like(vol), _affine()), r"constant"),
        (
            "constant",
            "constant.nii.gz",
            nib.Nifti1Image(np.full_like(vol, 7.5), _affine()),
            r"constant",
        ),
        (
            "nanvoxels",
            "nan.nii.gz",
            nib.Nifti1Image(nan_vox, _affine()),
            r"1 of \d+ voxels are NaN or infinite",
        ),
        ("infvoxels", "inf.nii.gz", nib.Nifti1Image(inf_vox, _affine()), r"NaN or infinite"),
        (
            "scaleoverflow",
            "overflow.nii",
            _patched_header(i16, scl_slope=1e38, scl_inter=0),
            r"NaN or infinite",
        ),
        (
            "truncatedraw",
            "short.nii",
            _nifti_bytes(nib.Nifti1Image(vol, _affine()))[:1000],
            r"truncated|cannot be read|not a readable",
        ),
        ("empty", "empty.nii.gz", b"", r"empty file"),
        ("directory", "folder.nii.gz", "DIR", r"is a directory"),
        ("symlinkloop", "loop.nii.gz", "LOOP", r"symbolic link|loop"),
        ("brokenlink", "broken.nii.gz", "BROKEN", r"broken symbolic link"),
    ]


#: Names of the image cases.
IMAGE_CASES = [c[0] for c in _image_cases(np.random.default_rng(0))]


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, nib.Nifti1Image):
        nib.save(content, str(path))
    elif content == "DIR":
        path.mkdir()
        (path / "inside.txt").write_text("not an image")
    elif content == "LOOP":
        other = path.with_name(".loop-partner")
        os.symlink(other.name, path)
        os.symlink(path.name, other)
    elif content == "BROKEN":
        os.symlink("does-not-exist.nii.gz", path)
    else:  # pragma: no cover
        raise ValueError(content)


def make_image_corpus(root, seed=0):
    """Write every bad image under ``root``; return a list of :class:`Case`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cases = []
    for name, fname, content, match in _image_cases(rng):
        path = root / name / fname
        _write(path, content)
        cases.append(Case(name, path, match))
    return cases


def make_bids_corpus(root, good=None, seed=0):
    """A BIDS dataset: ``sub-good`` (a usable T1w) plus ``sub-<case>`` with each bad image.

    Returns
    -------
    root : Path
    cases : list of Case
        With ``path`` the subject's T1w file.
    """
    root = Path(root)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        '{"Name": "bad corpus", "BIDSVersion": "1.9.0"}\n'
    )
    rows = ["participant_id\tdiagnosis"]
    if good is not None:
        path = root / "sub-good" / "anat" / "sub-good_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(good, str(path))
        rows.append("sub-good\tcontrol")
    rng = np.random.default_rng(seed)
    cases = []
    for name, fname, content, match in _image_cases(rng):
        ext = ".nii.gz" if fname.endswith(".nii.gz") else ".nii"
        path = root / f"sub-{name}" / "anat" / f"sub-{name}_T1w{ext}"
        _write(path, content)
        cases.append(Case(name, path, match))
        rows.append(f"sub-{name}\tMDD")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root, cases


def make_participants_corpus(root, participants, label_column="diagnosis"):
    """Broken ``participants.tsv`` files for a dataset whose imaged participants are ``participants``.

    Returns a list of :class:`Case`; ``match`` is the expected error (``None``: no error,
    a warning names the problem and training goes on).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = list(participants)
    labels = ["control", "MDD"]
    good_rows = [f"{p}\t{labels[i % 2]}" for i, p in enumerate(ids)]
    header = f"participant_id\t{label_column}"
    files = {
        "missing": (None, r"participants file not found"),
        "empty": ("", r"cannot parse|missing column"),
        "binary": (bytes(range(256)) * 4, r"cannot parse|missing column|invalid participant_id"),
        "nocolumn": (
            "participant_id\tage\n" + "".join(f"{p}\t30\n" for p in ids),
            rf"label column '{label_column}' not found",
        ),
        "noid": (
            f"subject\t{label_column}\n" + "".join(r + "\n" for r in good_rows),
            r"missing column 'participant_id'",
        ),
        "ragged": (
            header + "\n" + "\n".join(r + "\textra\tmore" for r in good_rows) + "\n",
            r"cannot parse",
        ),
        "duplicate": (
            header + "\n" + "\n".join(good_rows + [good_rows[0]]) + "\n",
            r"listed more than once",
        ),
        "traversal": (
            header + "\n" + "\n".join(good_rows + ["sub-../../etc\tMDD"]) + "\n",
            r"invalid participant_id",
        ),
        "separator": (
            header + "\n" + "\n".join(good_rows + ["sub-a/b\tMDD"]) + "\n",
            r"invalid participant_id",
        ),
        "nolabels": (
            header + "\n" + "\n".join(f"{p}\tn/a" for p in ids) + "\n",
            r"no preprocessed image has",
        ),
        "unknown": (
            header + "\n" + "\n".join(f"sub-zz{i}\t{labels[i % 2]}" for i in range(4)) + "\n",
            r"no preprocessed image has",
        ),
        "oneclass": (
            header + "\n" + "\n".join(f"{p}\tcontrol" for p in ids) + "\n",
            r"single class",
        ),
        # labels for images that are not there: warned about, the rest trains
        "extralabels": (
            header
            + "\n"
            + "\n".join(good_rows + ["sub-ghost1\tMDD", "sub-ghost2\tcontrol"])
            + "\n",
            None,
        ),
    }
    cases = []
    for name, (content, match) in files.items():
        path = root / name / "participants.tsv"
        if content is not None:
            path.parent.mkdir(parents=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        cases.append(Case(name, path, match))
    return cases


def snapshot(root, exclude=()):
    """``{relative path: (size, mtime_ns)}`` of everything under ``root`` except ``exclude`` folders.

    Folders leading to an excluded folder are left out too (creating them is allowed).
    """
    root = Path(root)
    exclude = [Path(e).resolve() for e in exclude]
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath).resolve()
        if any(here == e or e in here.parents for e in exclude):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_dir() and any(p.resolve() == e or p.resolve() in e.parents for e in exclude):
                continue  # the output folder and the folders made to hold it
            st = p.lstat()
            out[p.relative_to(root).as_posix()] = (
                (st.st_size, st.st_mtime_ns) if not p.is_dir() else "dir"
            )
    return out


def assert_every_final_file_is_complete(folder):
    """Every file under a final (non-hidden) name reads back completely."""
    import json

    import pandas as pd
    import torch

    for path in sorted(Path(folder).rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        name = path.name
        if name.endswith(".nii.gz"):
            np.asarray(nib.load(str(path)).dataobj)
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".pt"):
            torch.load(path, weights_only=True)
        elif name.endswith(".tsv"):
            pd.read_csv(path, sep="\t")
        elif name.endswith(".png"):
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), path
        elif name.endswith(".npy"):
            np.load(path, mmap_mode="r")


def assert_no_temporaries(folder):
    assert not [p for p in Path(folder).rglob(".*.tmp*")], "temporary files left behind"
