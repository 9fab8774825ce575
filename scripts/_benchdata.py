"""Small synthetic *preprocessed* derivatives for the throughput benchmarks (no preprocessing run).

Each volume is the MNI template on the target grid, z-scored in the brain mask, with a
class-dependent intensity change in one box and Gaussian noise, written exactly where
``neuroml preprocess`` writes its output, with a raw ``participants.tsv`` beside it. It lets
``scripts/bench_gpu.py`` and ``scripts/bench_throughput.py`` run on a bare machine with only
the repository copied. :func:`report_result` is how the benchmark scripts hand back their
results.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np

CLASSES = ("control", "MDD", "SCZ")


def report_result(doc, path=None):
    """Print ``doc`` as one ``RESULT_JSON {...}`` line (for logs and the device tool) and,
    with ``path``, write it there as indented JSON (atomically); return ``doc``."""
    from neuroml._utils.fileio import write_json_atomic

    print("RESULT_JSON " + json.dumps(doc))
    if path:
        write_json_atomic(path, doc)
    return doc


def cpu_seconds():
    """CPU time of this process and its finished children (preprocessing runs in workers)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), timing)``: wall and CPU seconds, 1-minute load average before and after."""
    import os
    import time

    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
    out = fn(*args, **kwargs)
    timing = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
        "load_avg_1min_start": round(load0, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
    }
    return out, timing


def make_derivatives(root, n_volumes=32, resolution=2.0, seed=0):
    """Write ``root/raw/participants.tsv`` and ``root/deriv`` (preprocessed-like volumes); return deriv."""
    from neuroml.io.templates import (
        TEMPLATE_SPACE,
        brain_mask_on_grid,
        res_entity,
        template_on_grid,
    )

    root = Path(root)
    raw, deriv = root / "raw", root / "deriv"
    raw.mkdir(parents=True, exist_ok=True)
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
    rows = ["participant_id\tdiagnosis"]
    key = res_entity(resolution)
    for i in range(n_volumes):
        pid, cls = f"sub-{i + 1:03d}", i % len(CLASSES)
        vol = data + rng.normal(0, 0.3, shape).astype(np.float32)
        if cls:
            vol[boxes[cls]] -= 0.5
        folder = deriv / pid / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{pid}_space-{TEMPLATE_SPACE}_res-{key}_desc-preproc_T1w.nii.gz"
        nib.save(nib.Nifti1Image(vol * mask, tpl.affine), str(folder / name))
        rows.append(f"{pid}\t{CLASSES[cls]}")
    (raw / "participants.tsv").write_text("\n".join(rows) + "\n")
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"})
    )
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "bench derivatives",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "scripts/_benchdata.py"}],
                "SourceDatasets": [{"URL": raw.resolve().as_uri()}],
            }
        )
    )
    return deriv
