#!/usr/bin/env python3
"""Benchmark T1w preprocessing: time per subject (per step), peak memory, registration error.

A synthetic cohort (``neuroml.synth.make_cohort``) is generated in a child process, so the
peak memory reported is that of preprocessing alone. Each subject is then preprocessed
on ONE core (one process, one SimpleITK thread, one BLAS/OpenMP thread) and scored against
its known transform:

    error = mean over template brain voxels of | T_est(p) - T_true(p) |   (mm, scanner space)

where ``T_est`` is the estimated MNI -> scanner affine (the ``_xfm.txt``) and ``T_true`` the
generator's mapping (``neuroml.io.groundtruth.true_scanner_coords``: a small non-linear warp, then an
affine). Because an affine cannot follow the warp, the error of the best affine fit to the
true mapping (least squares over the same points) is reported as the floor.

Usage::

    python scripts/bench_preprocessing.py --n-subjects 6 --json bench.json
"""

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

STEPS = ("load", "n4", "registration", "resample", "qc", "normalize", "write")


def _make_cohort(bids, n_subjects, seed, voxel_scale):
    code = (
        "import sys; from neuroml.synth import make_cohort; "
        "make_cohort(sys.argv[1], n_subjects=int(sys.argv[2]), seed=int(sys.argv[3]), "
        "voxel_scale=float(sys.argv[4]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(bids), str(n_subjects), str(seed), str(voxel_scale)],
        check=True,
    )


def _brain_points(step):
    from neuroml.io.templates import mni_brain_mask

    mask = mni_brain_mask()
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)[::step].astype(np.float64)
    return idx @ mask.affine[:3, :3].T + mask.affine[:3, 3]


def _affine_floor(points, true):
    """Mean error of the least-squares affine fit of the true mapping (what an affine can reach)."""
    design = np.c_[points, np.ones(len(points))]
    coef, *_ = np.linalg.lstsq(design, true, rcond=None)
    return float(np.linalg.norm(design @ coef - true, axis=1).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-subjects", type=int, default=6, help="subjects (sites rotate; default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-scale", type=float, default=1.0, help="1.0 = 1 mm input (default)")
    p.add_argument("--resolution", type=float, default=2.0, help="target grid (mm)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the cohort and outputs here")
    p.add_argument("--point-step", type=int, default=8, help="use every n-th template brain voxel")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="neuroml-bench-"))
    bids, out = work / "bids", work / "derivatives"
    t = time.perf_counter()
    if not (bids / "participants.tsv").is_file():
        _make_cohort(bids, args.n_subjects, args.seed, args.voxel_scale)
    print(f"cohort: {bids} ({time.perf_counter() - t:.1f} s)", flush=True)

    from neuroml.io.bids import find_scans, read_participants
    from neuroml.io.groundtruth import true_scanner_coords
    from neuroml.io.templates import brain_mask_on_grid, template_on_grid
    from neuroml.preprocessing import mni_to_scanner, preprocess_t1w, read_transform
    from neuroml.preprocessing.registration import _fixed_images
    from neuroml.preprocessing.t1w import check_params

    # one-off costs of a process (template loading and resampling), reported apart
    t, c = time.perf_counter(), time.process_time()
    params = check_params(resolution=args.resolution)
    _fixed_images(params["registration_resolution"])
    template_on_grid(args.resolution)
    brain_mask_on_grid(args.resolution)
    startup = {
        "wall_s": round(time.perf_counter() - t, 2),
        "cpu_s": round(time.process_time() - c, 2),
    }

    participants = read_participants(bids)
    points = _brain_points(args.point_step)
    gt = bids / "derivatives" / "groundtruth"
    rows = []
    for scan in find_scans(bids):
        res = preprocess_t1w(scan, out, resolution=args.resolution, bids_dir=bids, n_threads=1)
        est = mni_to_scanner(read_transform(res["xfm"]), points)
        true = true_scanner_coords(gt, scan.participant_id, points)
        err = np.linalg.norm(est - true, axis=1)
        row = {
            "participant_id": scan.participant_id,
            "site": str(participants.loc[scan.participant_id, "site"]),
            "voxel_mm": [
                round(float(v), 3)
                for v in np.linalg.norm(nib.load(str(scan.path)).affine[:3, :3], axis=0)
            ],
            "error_mm": round(float(err.mean()), 3),
            "error_p95_mm": round(float(np.percentile(err, 95)), 3),
            "affine_floor_mm": round(_affine_floor(points, true), 3),
            "r": res["qc"]["correlation"],
            "cpu_s": res["timings"]["cpu_s"],
            "wall_s": res["timings"]["wall_s"],
        }
        rows.append(row)
        print(
            f"{row['participant_id']} {row['site']}: error {row['error_mm']:.2f} mm "
            f"(affine floor {row['affine_floor_mm']:.2f}), r {row['r']:.3f}, "
            f"cpu {row['cpu_s']['total']:.1f} s, wall {row['wall_s']['total']:.1f} s",
            flush=True,
        )

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    sites = {}
    for site in sorted({r["site"] for r in rows}):
        sel = [r for r in rows if r["site"] == site]
        sites[site] = {
            "n": len(sel),
            "voxel_mm": sel[0]["voxel_mm"],
            "mean_error_mm": round(float(np.mean([r["error_mm"] for r in sel])), 3),
            "max_error_mm": round(float(np.max([r["error_mm"] for r in sel])), 3),
            "affine_floor_mm": round(float(np.mean([r["affine_floor_mm"] for r in sel])), 3),
        }
    steps = {}
    for kind in ("cpu_s", "wall_s"):
        steps[kind] = {
            s: round(float(np.median([r[kind].get(s, 0.0) for r in rows])), 3)
            for s in STEPS + ("total",)
        }
    summary = {
        "n_subjects": len(rows),
        "resolution": args.resolution,
        "voxel_scale": args.voxel_scale,
        "startup": startup,
        "median_per_subject": steps,
        "peak_rss_mb": round(peak_mb, 1),
        "sites": sites,
        "subjects": rows,
        "work_dir": str(work),
    }
    print("\nmedian seconds per subject (one core):")
    print(f"  {'step':<13}{'cpu':>8}{'wall':>8}")
    for s in STEPS + ("total",):
        print(f"  {s:<13}{steps['cpu_s'][s]:>8.2f}{steps['wall_s'][s]:>8.2f}")
    print(f"  (once per process: {startup['cpu_s']:.1f} s cpu for the template)")
    print(f"peak memory: {peak_mb:.0f} MB")
    print("registration error per site (mean over template brain voxels):")
    for site, v in sites.items():
        print(
            f"  {site} voxel {v['voxel_mm']} mm: mean {v['mean_error_mm']:.2f} mm, "
            f"max {v['max_error_mm']:.2f} mm (affine floor {v['affine_floor_mm']:.2f} mm), n={v['n']}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
