#!/usr/bin/env python3
"""Accuracy benchmark: the DEFAULT CPU training configuration on a synthetic 3-class cohort.

1. ``neuroml synth``: a cohort of ``--n-subjects`` (default 90: control / MDD / SCZ, three
   sites, planted grey-matter atrophy, ``make_cohort`` defaults, effect_size 0.35);
2. ``neuroml preprocess`` at 2 mm with ``--n-jobs`` processes (timed separately; reused when
   the workdir already holds it);
3. ``train_run`` with every training parameter at its default (compact MONAI CNN, 3-fold
   subject-level CV with a nested validation split for early stopping) on ``--threads`` CPU
   threads: held-out balanced accuracy with its bootstrap 95% interval, beside the atlas
   logistic-regression baseline in the same folds;
4. the same run on shuffled labels (a seeded permutation of the diagnosis column): it must
   land at chance (1/3).

Wall and CPU time are reported for each stage with the load average, since the machine may
be shared. Usage::

    python scripts/bench_training.py --workdir /tmp/neuroml-bench --json bench_training.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repository's neuroml, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _benchdata import report_result, timed  # noqa: E402


def _run_summary(summary, run_dir):
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    cnn, base = metrics["cnn"], metrics.get("baseline", {})
    return {
        "balanced_accuracy": cnn["balanced_accuracy"],
        "balanced_accuracy_ci95": cnn["ci"].get("balanced_accuracy"),
        "auc_macro": cnn["auc_macro"],
        "baseline_balanced_accuracy": base.get("balanced_accuracy"),
        "baseline_ci95": base.get("ci", {}).get("balanced_accuracy"),
        "per_fold": [
            {
                k: f[k]
                for k in ("fold", "balanced_accuracy", "epochs_run", "best_val_balanced_accuracy")
            }
            for f in cnn["per_fold"]
        ],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/neuroml-bench-training"))
    p.add_argument(
        "--bids", type=Path, default=None, help="existing synthetic BIDS (default WORKDIR/bids)"
    )
    p.add_argument(
        "--deriv", type=Path, default=None, help="existing derivatives (default WORKDIR/deriv)"
    )
    p.add_argument("--n-subjects", type=int, default=90)
    p.add_argument("--resolution", type=float, default=2.0)
    p.add_argument("--n-jobs", type=int, default=2, help="processes for synth and preprocessing")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument(
        "--seed", type=int, default=0, help="cohort seed (training uses its default seed)"
    )
    p.add_argument("--no-shuffled", action="store_true", help="skip the shuffled-label run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from neuroml.synth import make_cohort
    from neuroml.workflows import run_group_level, run_participant_level, train_run

    torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    bids, deriv = args.bids or work / "bids", args.deriv or work / "deriv"
    stages_path = work / "stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    if not (bids / "participants.tsv").is_file():
        _, stages["synth"] = timed(
            make_cohort, bids, n_subjects=args.n_subjects, seed=args.seed, n_jobs=args.n_jobs
        )
    if not (deriv / "cache").is_dir() and not list(
        deriv.glob("sub-*/anat/*_desc-preproc_T1w.nii.gz")
    ):
        _, stages["preprocess"] = timed(
            run_participant_level,
            bids,
            deriv,
            n_jobs=args.n_jobs,
            resolution=args.resolution,
            show_progress=False,
        )
        run_group_level(deriv)
    stages_path.write_text(json.dumps(stages, indent=2))
    cohort_info = json.loads((bids / "dataset_description.json").read_text())
    truth = bids / "derivatives" / "groundtruth" / "planted_regions.json"
    synth_record = json.loads(truth.read_text()) if truth.is_file() else {}
    print(
        f"cohort: {bids} ({cohort_info.get('Name')}); effect_size {synth_record.get('effect_size')}",
        flush=True,
    )
    for name, t in stages.items():
        print(
            f"{name}: {t['wall_s']} s wall, {t['cpu_s']} s CPU (load {t['load_avg_1min_start']})",
            flush=True,
        )

    doc = {
        "n_subjects": args.n_subjects,
        "resolution_mm": args.resolution,
        "threads": args.threads,
        "cohort": {
            "bids": str(bids),
            "seed": args.seed,
            "effect_size": synth_record.get("effect_size"),
            "generator_version": synth_record.get("generator_version"),
            "parameters": synth_record.get("parameters"),
        },
        "stages": stages,
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
    }
    summary, timing = timed(
        train_run, deriv, work / "run-default", device="cpu", show_progress=False
    )
    doc["default"] = {
        **_run_summary(summary, work / "run-default"),
        **timing,
        "config": {
            k: v
            for k, v in json.loads((work / "run-default" / "config.json").read_text()).items()
            if k
            in (
                "model",
                "epochs",
                "folds",
                "batch_size",
                "lr",
                "weight_decay",
                "patience",
                "schedule",
                "augment",
                "val_fraction",
                "grad_accum",
                "seed",
                "input_pool",
            )
        },
    }
    d = doc["default"]
    print(
        f"default CNN: balanced accuracy {d['balanced_accuracy']:.3f} (95% CI {d['balanced_accuracy_ci95']}), "
        f"baseline {d['baseline_balanced_accuracy']:.3f}; training {timing['wall_s']} s wall, "
        f"{timing['cpu_s']} s CPU, load {timing['load_avg_1min_start']}->{timing['load_avg_1min_end']}",
        flush=True,
    )

    if not args.no_shuffled:
        table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
        rng = np.random.default_rng(12345)
        table["diagnosis"] = rng.permutation(table["diagnosis"].to_numpy())
        shuffled = work / "participants_shuffled.tsv"
        table.to_csv(shuffled, sep="\t", index=False)
        summary, timing = timed(
            train_run,
            deriv,
            work / "run-shuffled",
            participants=shuffled,
            device="cpu",
            show_progress=False,
        )
        doc["shuffled"] = {
            **_run_summary(summary, work / "run-shuffled"),
            **timing,
            "permutation_seed": 12345,
        }
        s = doc["shuffled"]
        print(
            f"shuffled labels: CNN {s['balanced_accuracy']:.3f} (95% CI {s['balanced_accuracy_ci95']}), "
            f"baseline {s['baseline_balanced_accuracy']:.3f} (chance 0.333); {timing['wall_s']} s wall",
            flush=True,
        )
    return report_result(doc, args.json)


if __name__ == "__main__":
    main()
