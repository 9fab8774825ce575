#!/usr/bin/env python3
"""Accuracy and training time of the compact network with and without its input pooling.

For every cohort it runs :func:`neuroml.workflows.train_run` with every parameter at its
default except ``input_pool`` (2, the default on the 2 mm grid, then 1, the full-resolution
network), with ``--batch-sizes`` the batch size (default only 4, the default), and with
``--activations`` the compact network's activation (default only ``leakyrelu``, the default;
``prelu`` MONAI's default PReLU, ``relu`` a plain ReLU; the network is
swapped in for ``train_run``, whose run folder still records ``leakyrelu``), and reports the
out-of-fold balanced accuracy with its bootstrap interval, the macro AUC, the baseline beside
it, and the wall and CPU time of each run.

Cohorts are preprocessed derivatives given as ``--cohort NAME=DERIV_DIR``, and (unless
``--no-harder``) a harder synthetic cohort that it makes in ``--workdir`` (90 subjects, seed 1,
``effect_size`` 0.12, voxel scale 2) and preprocesses at 2 mm, named ``harder``; each step is
reused when the workdir already holds it. Usage::

    python scripts/bench_input_pool.py --workdir /tmp/neuroml-bench-pool --json bench_input_pool.json
    python scripts/bench_input_pool.py --cohort benchmark=/tmp/wt4bench/deriv --workdir /tmp/neuroml-bench-pool
    python scripts/bench_input_pool.py --workdir /tmp/neuroml-bench-pool --pools 2 --batch-sizes 4 8 16
    python scripts/bench_input_pool.py --workdir /tmp/neuroml-bench-pool --pools 2 --batch-sizes 4 8 \
        --activations leakyrelu prelu relu
"""

import argparse
import contextlib
import itertools
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

from _benchdata import report_result, timed  # noqa: E402

#: The harder cohort: a third of the default effect size.
HARDER = dict(n_subjects=90, seed=1, effect_size=0.12, voxel_scale=2.0)


def _harder_cohort(workdir, n_jobs):
    from neuroml.synth.cohort import make_cohort
    from neuroml.workflows import run_participant_level

    bids, deriv = workdir / "harder" / "bids", workdir / "harder" / "deriv"
    if not (bids / "participants.tsv").is_file():
        make_cohort(bids, n_jobs=n_jobs, **HARDER)
    run_participant_level(
        bids, deriv, resolution=2.0, n_jobs=n_jobs, show_progress=False
    )  # skips finished work
    return deriv


def _network(activation):
    """A context in which ``train_run`` (and the run it writes) builds the compact network with ``activation``."""
    if activation == "leakyrelu":
        return contextlib.nullcontext()
    from unittest import mock

    import torch

    import neuroml.workflows.train as run_module
    from neuroml.models.factory import build_model

    chosen = activation

    def build(name, *args, activation=None, **kwargs):  # the run's own choice is overridden
        model = build_model(
            name, *args, activation="prelu" if chosen == "prelu" else "leakyrelu", **kwargs
        )
        if chosen == "relu":
            for module in model.modules():
                if isinstance(module, torch.nn.LeakyReLU):
                    module.negative_slope = 0.0  # a plain ReLU
        return model

    return mock.patch.object(run_module, "build_model", build)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cohort",
        action="append",
        default=[],
        metavar="NAME=DERIV_DIR",
        help="preprocessed derivatives to train on (repeatable)",
    )
    p.add_argument("--no-harder", action="store_true", help="skip the harder synthetic cohort")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/neuroml-bench-pool"))
    p.add_argument(
        "--pools", type=int, nargs="+", default=[2, 1], help="input_pool values to compare"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4], help="batch sizes to compare")
    p.add_argument(
        "--activations",
        nargs="+",
        default=["leakyrelu"],
        choices=["leakyrelu", "prelu", "relu"],
        help="activations of the compact network to compare",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-jobs", type=int, default=2, help="processes for making the harder cohort")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from neuroml.workflows import train_run

    torch.set_num_threads(args.threads)
    cohorts = {}
    for item in args.cohort:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--cohort takes NAME=DERIV_DIR, got {item!r}")
        cohorts[name] = Path(path)
    if not args.no_harder:
        t0 = time.perf_counter()
        cohorts["harder"] = _harder_cohort(args.workdir, args.n_jobs)
        print(
            f"harder cohort ready in {time.perf_counter() - t0:.0f} s: {cohorts['harder']}",
            flush=True,
        )
    if not cohorts:
        p.error("no cohort: give --cohort NAME=DERIV_DIR or drop --no-harder")
    doc = {
        "threads": args.threads,
        "harder_cohort": HARDER,
        "cohorts": {k: str(v) for k, v in cohorts.items()},
        "runs": {},
    }
    for (name, deriv), pool, bs, act in itertools.product(
        cohorts.items(), args.pools, args.batch_sizes, args.activations
    ):
        tag = (
            f"pool{pool}"
            + (f"-batch{bs}" if bs != 4 else "")
            + (f"-{act}" if act != "leakyrelu" else "")
        )
        run_dir = args.workdir / f"run-{name}-{tag}"
        shutil.rmtree(
            run_dir, ignore_errors=True
        )  # timed from scratch (train_run would keep finished folds)
        with _network(act):
            s, timing = timed(
                train_run, deriv, run_dir, input_pool=pool, batch_size=bs, show_progress=False
            )
        row = {
            "input_pool": pool,
            "batch_size": bs,
            "activation": act,
            "balanced_accuracy": s["balanced_accuracy"],
            "balanced_accuracy_ci95": s["balanced_accuracy_ci"],
            "auc_macro": s["auc_macro"],
            "baseline_balanced_accuracy": s["baseline_balanced_accuracy"],
            **timing,
            "run_dir": str(run_dir),
        }
        doc["runs"][
            f"{name}/input_pool={pool}"
            + (f"/batch_size={bs}" if bs != 4 else "")
            + (f"/activation={act}" if act != "leakyrelu" else "")
        ] = row
        print(
            f"{name}, input_pool={pool}, batch {bs}, {act}: balanced accuracy {row['balanced_accuracy']:.3f} "
            f"{row['balanced_accuracy_ci95']}, AUC {row['auc_macro']:.3f}, baseline "
            f"{row['baseline_balanced_accuracy']:.3f}; {row['wall_s']} s wall, {row['cpu_s']} s CPU "
            f"(load {row['load_avg_1min_start']}->{row['load_avg_1min_end']})",
            flush=True,
        )
    return report_result(doc, args.json)


if __name__ == "__main__":
    main()
