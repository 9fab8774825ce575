#!/usr/bin/env python3
"""Make ``data_samples/``: the small synthetic BIDS cohort committed with neuroml.

12 subjects (4 per class: control, MDD, SCZ), 3 sites, voxels about 2.5 mm, int16 scans
with a reduced dynamic range, so that the whole folder stays under 6 MB. The demo and the
tests preprocess these scans to a 2-4 mm MNI grid.

Usage::

    python scripts/make_sample_data.py            # writes data_samples/ (skips if up to date)
    python scripts/make_sample_data.py --check    # also prints the planted-region contrast
"""

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from neuroml.synth import DEFAULT_SITES, make_cohort  # noqa: E402

#: Parameters of the committed sample (change them only together with the data).
SAMPLE_PARAMS = dict(
    n_subjects=12,
    seed=0,
    classes=("control", "MDD", "SCZ"),
    voxel_scale=2.5,
    effect_size=0.35,
    noise_scale=0.75,
    # 8-bit-like stored range keeps the gzipped scans small (noise dominates their size)
    sites={name: {"int_max": 255} for name in DEFAULT_SITES},
)


def planted_contrast(out_dir, resolution=4.0):
    """Mean intensity in each class's planted regions, per subject, after ideal registration.

    Each scan is sampled at the true positions of the MNI grid points (``resolution`` mm)
    and divided by its median brain intensity. Returns ``{class_mask: {diagnosis: [...]}}``.
    """
    import nibabel as nib
    from nilearn.image import resample_img
    from scipy.ndimage import map_coordinates

    from neuroml.io.groundtruth import planted_mask_path, true_scanner_coords
    from neuroml.io.templates import brain_mask_on_grid, target_grid

    warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
    root = Path(out_dir)
    gt = root / "derivatives" / "groundtruth"
    affine, shape = target_grid(resolution)
    brain = np.asarray(brain_mask_on_grid(resolution).dataobj) > 0
    idx = np.argwhere(brain)
    pts = nib.affines.apply_affine(affine, idx)
    rows = [line.split("\t") for line in (root / "participants.tsv").read_text().splitlines()[1:]]
    masks = {}
    for c in ("MDD", "SCZ"):
        mimg = nib.load(str(planted_mask_path(gt, c)))
        mimg = nib.Nifti1Image(np.asarray(mimg.dataobj, dtype=np.float32), mimg.affine)
        m = resample_img(
            mimg,
            target_affine=affine,
            target_shape=shape,
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
        masks[c] = np.asarray(m.dataobj)[brain] >= 0.5
    out = {c: {} for c in masks}
    for pid, diagnosis, *_ in rows:
        img = nib.load(str(root / pid / "anat" / f"{pid}_T1w.nii.gz"))
        data = np.asarray(img.dataobj, dtype=np.float32)
        xyz = true_scanner_coords(gt, pid, pts)
        vox = nib.affines.apply_affine(np.linalg.inv(img.affine), xyz).T
        vals = map_coordinates(data, vox, order=1)
        vals /= np.median(vals)
        for c, m in masks.items():
            out[c].setdefault(diagnosis, []).append(float(vals[m].mean()))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(REPO / "data_samples"), help="output folder (default: data_samples/)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a sample made with other parameters"
    )
    parser.add_argument(
        "--check", action="store_true", help="print the planted-region contrast per class"
    )
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    summary = make_cohort(
        args.out, overwrite=args.overwrite, n_jobs=args.n_jobs, show_progress=True, **SAMPLE_PARAMS
    )
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(
        f"{args.out}: {len(summary['participants'])} subjects, {size / 1e6:.2f} MB, "
        f"{time.perf_counter() - t0:.1f} s{' (already up to date)' if summary['skipped'] else ''}"
    )
    if args.check:
        for res in (2.0, 4.0):
            for c, per_class in planted_contrast(args.out, res).items():
                text = "  ".join(
                    f"{d}: {np.mean(v):.3f} (sd {np.std(v):.3f})" for d, v in per_class.items()
                )
                print(f"{res:g} mm, {c} regions: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
