#!/usr/bin/env python3
"""Benchmark the resting-state pipeline on a synthetic cohort with planted effects.

Steps (each timed): generate a synthetic fMRIPrep-style cohort (``neuroml.synth.make_func_cohort``;
patients: larger amplitude and weaker network coupling in planted AAL regions) -> BOLD maps on
the MNI grid (``run_participant_level(modality="func")``) -> CNN on derived maps with
subject-level cross-validation (``train_run(inputs=...)``) -> connectome baseline in the same
folds (``connectome_run``: tangent space + logistic regression) -> attribution of each
subject's true class (``attribute_run``; by default the package default ``region_occlusion``,
then integrated gradients and Grad-CAM) and the rank of each planted region in the AAL region
table of the patient class's group map (1 = highest mean attribution), with the trust checks
of ``sanity.json`` (model randomization, deletion, fold stability, ground truth).

Each stage records its wall time, its time per subject and the 1-minute load average before
and after (the development machine is shared, so timings vary with its load).

Usage::

    python scripts/bench_func.py --n-subjects 40 --json bench_func.json
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repository's neuroml, installed or not

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _ranks(run_dir, method, cls, planted):
    table = pd.read_csv(
        Path(run_dir) / "attribution" / method / f"regions_atlas-aal_class-{cls}.tsv", sep="\t"
    )
    order = table.sort_values("rank")
    rank_of = dict(zip(order["region"], order["rank"]))
    return {r: int(rank_of[r]) if r in rank_of else None for r in planted}, order["region"].head(
        5
    ).tolist()


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def _sanity(run_dir, method):
    """The verdicts and figures of ``sanity.json`` (None when the checks were not computed)."""
    path = Path(run_dir) / "attribution" / method / "sanity.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    rnd, dele = doc.get("randomization") or {}, doc.get("deletion") or {}
    out = {
        "seconds": doc.get("seconds"),
        "randomization": {k: rnd.get(k) for k in ("median_abs_rho", "passed")} if rnd else None,
        "deletion": {k: dele.get(k) for k in ("auc", "auc_random", "passed")} if dele else None,
        "stability": {
            c: {
                k: v.get(k) for k in ("median_rho", "median_top_overlap", "top_overlap_p", "passed")
            }
            for c, v in (doc.get("stability") or {}).items()
        }
        or None,
        "ground_truth": {
            c: {
                k: v.get(k)
                for k in (
                    "mass_accuracy",
                    "planted_share",
                    "mass_enrichment",
                    "roc_auc",
                    "planted_ranks",
                    "top_k_planted",
                    "top_k",
                    "passed",
                )
            }
            for c, v in (doc.get("ground_truth") or {}).items()
        }
        or None,
    }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-subjects", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=4.0)
    p.add_argument("--n-volumes", type=int, default=100)
    p.add_argument("--amplitude-effect", type=float, default=0.8, help="see make_func_cohort")
    p.add_argument("--decoupling", type=float, default=0.8, help="see make_func_cohort")
    p.add_argument("--inputs", nargs="+", default=["alff", "falff", "reho"])
    p.add_argument("--confounds", default="simple")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["region_occlusion", "integrated_gradients", "gradcam"],
        help="attribution methods (default: the package default region_occlusion, then integrated "
        "gradients and Grad-CAM)",
    )
    p.add_argument(
        "--n-sanity", type=int, default=8, help="subjects for the randomization and deletion checks"
    )
    p.add_argument("--no-sanity", action="store_true", help="skip the attribution trust checks")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the files here (default: a temporary folder)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from neuroml.attribution import attribute_run
    from neuroml.synth.func import make_func_cohort
    from neuroml.training.connectome import connectome_run
    from neuroml.workflows import run_participant_level, train_run

    work = args.workdir or Path(tempfile.mkdtemp(prefix="neuroml-bench-func-"))
    if work.exists() and any(work.iterdir()):
        p.error(f"--workdir {work} is not empty: the timings need a fresh folder")
    work.mkdir(parents=True, exist_ok=True)
    out = {
        "command": "python scripts/bench_func.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_subjects": args.n_subjects,
        "resolution_mm": args.resolution,
        "n_volumes": args.n_volumes,
        "inputs": args.inputs,
        "confounds": args.confounds,
        "amplitude_effect": args.amplitude_effect,
        "decoupling": args.decoupling,
        "epochs": args.epochs,
        "folds": args.folds,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_1min": {"start": _load()},
    }
    t = time.perf_counter()
    synth = make_func_cohort(
        work / "bids",
        n_subjects=args.n_subjects,
        seed=args.seed,
        resolution=args.resolution,
        n_volumes=args.n_volumes,
        amplitude_effect=args.amplitude_effect,
        decoupling=args.decoupling,
        overwrite=True,
    )
    out["synth_s_per_subject"] = round((time.perf_counter() - t) / args.n_subjects, 2)
    out["load_1min"]["after_synth"] = _load()
    planted = synth["planted"]

    t = time.perf_counter()
    res = run_participant_level(
        work / "bids",
        work / "deriv",
        resolution=args.resolution,
        modality="func",
        show_progress=False,
        func_params={"confounds": args.confounds},
    )
    wall = time.perf_counter() - t
    sides = [
        json.loads(s.read_text())
        for s in sorted((work / "deriv").glob("sub-*/func/*_desc-maps_bold.json"))
    ]
    totals = [s["Timings"]["total"] for s in sides]
    out["preprocess"] = {
        "n_done": res.n_done,
        "failures": [str(f) for f in res.failures],
        "wall_s": round(wall, 1),
        "s_per_subject_median": round(float(np.median(totals)), 2),
        "s_per_subject_max": round(float(np.max(totals)), 2),
        "steps_median_s": {
            k: round(float(np.median([s["Timings"][k] for s in sides])), 2)
            for k in sides[0]["Timings"]
        },
    }
    out["load_1min"]["after_preprocess"] = _load()

    t = time.perf_counter()
    run = work / "run"
    summary = train_run(
        work / "deriv",
        run,
        inputs=args.inputs,
        epochs=args.epochs,
        folds=args.folds,
        seed=args.seed,
        device=args.device,
        show_progress=False,
        n_bootstrap=1000,
    )
    train_s = time.perf_counter() - t
    metrics = json.loads((run / "metrics.json").read_text())
    out["cnn"] = {
        "balanced_accuracy": summary["balanced_accuracy"],
        "ci95": summary["balanced_accuracy_ci"],
        "auc": summary["auc_macro"],
        "train_s": round(train_s, 1),
        "train_s_per_subject": round(train_s / args.n_subjects, 2),
    }
    out["load_1min"]["after_training"] = _load()
    base = metrics.get("baseline", {})
    out["region_mean_baseline"] = {
        "balanced_accuracy": base.get("balanced_accuracy"),
        "ci95": base.get("ci", {}).get("balanced_accuracy"),
    }
    t = time.perf_counter()
    conn = connectome_run(run, work / "deriv")
    out["connectome"] = {
        "balanced_accuracy": conn["balanced_accuracy"],
        "ci95": conn.get("ci", {}).get("balanced_accuracy"),
        "auc": conn.get("auc_macro"),
        "features": conn["features"],
        "seconds": round(time.perf_counter() - t, 1),
    }
    out["connectome"]["s_per_subject"] = round(out["connectome"]["seconds"] / args.n_subjects, 3)
    out["load_1min"]["after_connectome"] = _load()
    out["attribution"] = {}
    for method in args.methods:
        t = time.perf_counter()
        json_path = attribute_run(
            run,
            work / "deriv",
            method=method,
            target="true",
            show_progress=False,
            sanity=not args.no_sanity,
            n_sanity=args.n_sanity,
            seed=args.seed,
        )
        wall = time.perf_counter() - t
        doc = json.loads(Path(json_path).read_text())
        maps_s = (doc.get("timing") or {}).get("total_seconds")
        entry = {
            "wall_s": round(wall, 1),
            "seconds_per_subject": round(wall / args.n_subjects, 3),
            "maps_seconds_per_subject": None
            if maps_s is None
            else round(maps_s / args.n_subjects, 3),
            "sanity": _sanity(run, method),
            "load_1min_after": _load(),
        }
        for cls, regions in planted.items():
            ranks, top5 = _ranks(run, method, cls, regions)
            entry[cls] = {
                "planted_ranks": ranks,
                "top5": top5,
                "planted_in_top5": sum(1 for r in ranks.values() if r is not None and r <= 5),
                "n_planted": len(regions),
            }
        out["attribution"][method] = entry
    out["workdir"] = str(work)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)  # atomic: never a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(main())
