"""Peak memory of preprocessing and prediction on one large (512 x 512 x 400) T1w volume.

Each measurement runs in a fresh child process and reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so imports, SimpleITK's C++ buffers and
torch are all counted; ``imports`` is the same child doing only the imports (the floor).

Usage::

    python scripts/bench_memory.py [--workdir DIR] [--shape 512 512 400] [--repeat 1]

It writes ``DIR/big_T1w.nii.gz`` once (a synthetic subject from ``neuroml.synth`` resampled
to 0.5 x 0.5 x 0.5 mm, int16 with a scaling factor, as a scanner writes it), then prints one
table row per stage: stage, peak RSS (MiB), wall time (s). ``--json FILE`` also saves them.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a source checkout without installing

_CHILD = r"""
import os, resource, sys, time, json
from neuroml._utils.threads import configure_openmp
configure_openmp()
stage, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
import numpy as np, nibabel as nib, SimpleITK, torch
from neuroml.preprocessing import preprocess_scan
from neuroml.models import build_model
from neuroml.training.trainer import predict_proba
out = {}
if stage in ("preprocess", "preprocess+predict"):
    res = preprocess_scan(path, resolution=2.0)
    out["grid"] = list(res.image.shape)
    out["qc_r"] = round(float(res.qc["correlation"]), 3)
    if stage == "preprocess+predict":
        torch.manual_seed(0)
        vol = np.asarray(res.image.dataobj, dtype=np.float32)[None]
        model = build_model("compact", 3, spatial_shape=vol.shape[1:], input_pool="auto").eval()  # as train_run
        out["proba"] = [round(float(p), 4) for p in predict_proba(model, vol, batch_size=1, device="cpu")[0]]
out["seconds"] = round(time.perf_counter() - t0, 1)
ru = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print("RESULT " + json.dumps(out))
"""


def make_big_volume(path, shape=(512, 512, 400), seed=0):
    """A synthetic T1w (neuroml.synth, 1 mm) resampled to ``shape`` at 0.5 mm, int16 + scl_slope."""
    import tempfile

    import nibabel as nib
    import numpy as np
    from scipy.ndimage import map_coordinates

    from neuroml.synth import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        make_cohort(Path(tmp) / "bids", n_subjects=1, seed=seed, sites=["siteA"])
        src = nib.load(str(Path(tmp) / "bids" / "sub-001" / "anat" / "sub-001_T1w.nii.gz"))
        data = np.asarray(src.dataobj, dtype=np.float32)
        src_affine = src.affine
    zoom = 0.5
    centre_src = src_affine @ np.r_[(np.array(data.shape) - 1) / 2, 1]
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = centre_src[:3] - zoom * (np.array(shape) - 1) / 2
    vox = np.linalg.inv(src_affine) @ affine  # output voxel -> source voxel
    out = np.empty(shape, dtype=np.int16)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(shape[2]):  # slice by slice: the preparation itself stays small
        coords = (
            vox[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)]) + vox[:3, 3:4]
        )
        sl = map_coordinates(data, coords, order=1, mode="constant", cval=0.0).reshape(shape[:2])
        out[:, :, k] = np.clip(np.rint(sl * 8), 0, 32767)
    img = nib.Nifti1Image(out, affine)
    img.header.set_slope_inter(0.125, 0)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def run_child(stage, path):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, stage, str(path)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("bench-memory"))
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    p.add_argument("--stages", nargs="+", default=["imports", "preprocess", "preprocess+predict"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"big_{'x'.join(map(str, args.shape))}_T1w.nii.gz"
    if not path.is_file():
        t0 = time.perf_counter()
        make_big_volume(path, tuple(args.shape))
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s"
        )
    voxels = int(args.shape[0]) * int(args.shape[1]) * int(args.shape[2])
    print(
        f"volume {tuple(args.shape)}: {voxels / 1e6:.1f} M voxels = {voxels * 4 / 2**20:.0f} MiB as float32"
    )
    rows = []
    print("| stage | peak RSS (MiB) | CPU (s) | wall (s) | notes |")
    print("|---|---|---|---|---|")
    for stage in args.stages:
        r = run_child(stage, path)
        r["stage"] = stage
        rows.append(r)
        notes = {
            k: v
            for k, v in r.items()
            if k not in ("stage", "peak_rss_mib", "wall_s", "seconds", "cpu_s")
        }
        print(
            f"| {stage} | {r['peak_rss_mib']:.0f} | {r['cpu_s']} | {r['wall_s']} | {json.dumps(notes)} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
