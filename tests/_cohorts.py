"""The test suite's one cohort builder: synthetic raw + *preprocessed* derivatives, written where
``neuroml preprocess`` writes them, so a test can train without running the preprocessing.

:func:`write_derivatives` lays the folders out (``raw/participants.tsv``, ``deriv/sub-*/[ses-*/]
anat/*_desc-preproc_T1w.nii.gz`` with optional JSON sidecars, both ``dataset_description.json``);
the cohorts differ only in their volumes and table:

* :func:`make_derivatives` -- two classes (control/MDD), a blob brighter for MDD;
* :func:`make_cohort` -- three classes told apart by *where* a bright blob is, two sites,
  optional second sessions and source checksums (the training tests');
* :func:`make_template_derivatives` -- the MNI template, z-scored, with a class-dependent box
  (the benchmarks': ``scripts/_benchdata.py`` imports it from here);
* :func:`small_raw_cohort` -- raw BIDS only, two coarse subjects from :mod:`neuroml.synth`.

The session fixtures in ``conftest.py`` build them once; a test that writes into one (training
writes the tensor cache into the derivatives) works on a :func:`copy_cohort` of it.
"""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

SPACE = "MNI152NLin2009aSym"
#: Classes of :func:`make_cohort` and :func:`make_template_derivatives`.
CLASSES = ("control", "MDD", "SCZ")
#: A bright blob per class of :func:`make_cohort`, on the 19 x 23 x 20 grid (8 mm).
CENTERS = ((5, 6, 5), (13, 6, 14), (9, 17, 10))

__all__ = [
    "CENTERS",
    "CLASSES",
    "blob_volume",
    "copy_cohort",
    "good_volume",
    "make_cohort",
    "make_derivatives",
    "make_template_derivatives",
    "small_raw_cohort",
    "write_derivatives",
]


def write_derivatives(
    root,
    rows,
    scans,
    affine,
    res_key,
    *,
    raw_name=None,
    name="derivatives",
    generated_by="neuroml",
):
    """Write ``root/raw/participants.tsv`` and ``root/deriv``; return the derivatives folder.

    ``rows``: one dict per participant (the table's columns, in the first row's order);
    ``scans``: ``(participant_id, session or None, volume, sidecar dict or None)``, consumed in
    order (so a generator drawing its volumes from one seeded generator stays reproducible);
    ``raw_name``: also write the raw folder's ``dataset_description.json`` under that name.
    """
    root = Path(root)
    raw, deriv = root / "raw", root / "deriv"
    raw.mkdir(parents=True, exist_ok=True)
    for pid, ses, vol, sidecar in scans:
        folder = deriv / pid / (f"ses-{ses}" if ses else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{pid}{f'_ses-{ses}' if ses else ''}_space-{SPACE}_res-{res_key}_desc-preproc_T1w"
        nib.save(nib.Nifti1Image(vol, affine), str(folder / f"{stem}.nii.gz"))
        if sidecar is not None:
            (folder / f"{stem}.json").write_text(json.dumps(sidecar) + "\n")
    columns = list(rows[0])
    lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in rows]
    (raw / "participants.tsv").write_text("\n".join(lines) + "\n")
    if raw_name is not None:
        (raw / "dataset_description.json").write_text(
            json.dumps({"Name": raw_name, "BIDSVersion": "1.9.0"}) + "\n"
        )
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": name,
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": generated_by}],
                "SourceDatasets": [{"URL": raw.resolve().as_uri()}],
            }
        )
        + "\n"
    )
    return deriv


def copy_cohort(src, dest, cache=True):
    """Copy a cohort folder ``src`` (holding ``raw`` and ``deriv``) to ``dest``; return ``dest``.

    The copy's ``deriv/dataset_description.json`` names the copy's raw folder, so the copy is
    self-contained; ``cache=False`` leaves the derivatives' tensor cache behind."""
    src, dest = Path(src), Path(dest)
    shutil.copytree(src, dest, ignore=None if cache else shutil.ignore_patterns("cache"))
    description = dest / "deriv" / "dataset_description.json"
    if description.is_file() and (dest / "raw").is_dir():
        doc = json.loads(description.read_text())
        doc["SourceDatasets"] = [{"URL": (dest / "raw").resolve().as_uri()}]
        description.write_text(json.dumps(doc) + "\n")
    return dest


# -- volumes --------------------------------------------------------------------------------
def good_volume(shape=(14, 16, 18), seed=0):
    """A small smooth positive volume with unequal sides (float32)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = np.exp(-(x**2 + y**2 + z**2) * 2) * 100
    return (blob + rng.normal(0, 1, shape)).astype(np.float32)


def blob_volume(rng, cls, shape, noise=0.5):
    """Noise and a bright blob at ``CENTERS[cls]``."""
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, CENTERS[cls]))
    return (rng.normal(0, noise, shape) + 3.0 * np.exp(-d2 / 8.0)).astype(np.float32)


# -- cohorts --------------------------------------------------------------------------------
def make_derivatives(root, n=8, res=8.0, seed=0):
    """A raw folder (participants.tsv, alternating control/MDD) and derivatives on the ``res`` grid.

    Each participant has a preprocessed-like volume (a blob, brighter for MDD) and a sidecar.
    Returns ``(raw, deriv, participant ids)``.
    """
    from neuroml.io.templates import target_grid

    affine, shape = target_grid(res)
    rng = np.random.default_rng(seed)
    ids = [f"sub-{i + 1:02d}" for i in range(n)]
    rows = [
        {"participant_id": p, "diagnosis": ["control", "MDD"][i % 2]} for i, p in enumerate(ids)
    ]

    def scans():
        for i, pid in enumerate(ids):
            vol = good_volume(shape, seed=seed + i) / 50 + (i % 2) * 0.5 + rng.normal(0, 0.1, shape)
            yield pid, None, vol.astype(np.float32), {}

    deriv = write_derivatives(root, rows, scans(), affine, f"{res:g}", raw_name="raw")
    return Path(root) / "raw", deriv, ids


def make_cohort(
    root,
    n_per_class=4,
    prefix="",
    seed=0,
    two_sessions=("01",),
    res=8.0,
    shape=None,
    source_sha=None,
):
    """Raw participants.tsv + derivatives: 3 classes told apart by where a bright blob is.

    ``source_sha(pid, ses)``: write each scan's JSON sidecar with that ``SourceSHA256`` (the raw
    input's). Returns the derivatives folder."""
    from neuroml.io.templates import target_grid

    affine, grid_shape = target_grid(res)
    shape = shape or grid_shape
    rng = np.random.default_rng(seed)
    people = []
    for i in range(n_per_class * len(CLASSES)):
        cls, label = i % 3, f"{prefix}{i + 1:02d}"
        people.append((f"sub-{label}", label, cls, "AB"[i % 2]))
    rows = [{"participant_id": p, "diagnosis": CLASSES[c], "site": s} for p, _, c, s in people]

    def scans():
        for pid, label, cls, _ in people:
            for ses in ("1", "2") if label in two_sessions else (None,):
                sidecar = None if source_sha is None else {"SourceSHA256": source_sha(pid, ses)}
                yield pid, ses, blob_volume(rng, cls, shape), sidecar

    return write_derivatives(root, rows, scans(), affine, f"{res:g}")


def make_template_derivatives(root, n_volumes=32, resolution=2.0, seed=0):
    """The benchmarks' cohort: each volume is the MNI template on the target grid, z-scored in the
    brain mask, with a class-dependent intensity change in one box and Gaussian noise. Returns the
    derivatives folder."""
    from neuroml.io.templates import brain_mask_on_grid, res_entity, template_on_grid

    tpl = template_on_grid(resolution)
    data = np.asarray(tpl.dataobj, dtype=np.float32)
    mask = np.asarray(brain_mask_on_grid(resolution).dataobj) > 0
    data = np.where(mask, (data - data[mask].mean()) / (data[mask].std() + 1e-6), 0).astype(
        np.float32
    )
    shape = data.shape
    boxes = [
        tuple(slice(int(a * s), int(a * s) + max(2, s // 6)) for s in shape)
        for a in (0.3, 0.5, 0.6)
    ]
    rng = np.random.default_rng(seed)
    ids = [f"sub-{i + 1:03d}" for i in range(n_volumes)]
    rows = [
        {"participant_id": p, "diagnosis": CLASSES[i % len(CLASSES)]} for i, p in enumerate(ids)
    ]

    def scans():
        for i, pid in enumerate(ids):
            cls = i % len(CLASSES)
            vol = data + rng.normal(0, 0.3, shape).astype(np.float32)
            if cls:
                vol[boxes[cls]] -= 0.5
            yield pid, None, vol * mask, None

    return write_derivatives(
        root,
        rows,
        scans(),
        tpl.affine,
        res_entity(resolution),
        raw_name="bench",
        name="bench derivatives",
        generated_by="scripts/_benchdata.py",
    )


def small_raw_cohort(root, seed):
    """``root/bids``: two coarse synthetic subjects, raw BIDS only (ground truth removed)."""
    from neuroml.synth import make_cohort as synth_cohort

    synth_cohort(Path(root) / "bids", n_subjects=2, voxel_scale=3.0, seed=seed)
    shutil.rmtree(Path(root) / "bids" / "derivatives", ignore_errors=True)
    return Path(root) / "bids"
