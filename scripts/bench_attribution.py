#!/usr/bin/env python3
"""Benchmark attribution methods against a synthetic cohort's planted ground truth.

Self-contained: with no ``--run`` it makes (or reuses, under ``--workdir``) a
``neuroml synth`` cohort, preprocesses it at 2 mm and trains a compact CNN with the
explicit settings below, then, for every method, runs ``attribute_run`` (maps explaining
each subject's true class, out of fold) with the trust checks, and times each method on
single subjects.

Figures per method (from ``RUN/attribution/<method>/sanity.json``):

* ``top5``      per patient class, how many of the group map's top 5 AAL regions are
                planted regions (target 5/5: the top 5 are all planted; each class has
                6 planted regions), and the best/worst rank of its planted regions;
* ``enrich``    relevance mass accuracy inside the planted mask / planted share of the
                brain volume (target >= 10), and the voxel-wise ROC AUC vs the mask;
* ``rand |rho|`` median |Spearman rho| between trained- and randomized-weights maps
                (target < 0.2);
* ``deletion``  area under the deletion curve, top regions first vs random orders
                (target: below the random orders' area);
* ``stability`` median Spearman rho of region scores between folds / median share of their
                top-10 regions in common, and the check's verdict (rho >= 0.5, or that
                overlap above chance at p < 0.01; reported, not among the targets);
* ``s/subject`` seconds to explain one subject (median of ``--timing-subjects``), on the
                chosen device with the chosen number of threads, with the layer
                ``attribute_run`` gives the method (HiResCAM: its own fine default layer).

A method meets the targets when every planted class passes (top 5 and mass), the
randomization check passes and the deletion check passes; ``failed`` lists the others.

Usage::

    python scripts/bench_attribution.py --workdir /tmp/bench5             # CPU, 2 threads
    python scripts/bench_attribution.py --workdir /tmp/bench5gpu --device cuda
    python scripts/bench_attribution.py --run RUN --deriv DERIV --methods gradcam saliency
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout without installing

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import numpy as np  # noqa: E402

#: Training settings of the benchmark run (explicit, so that changes of the library's
#: defaults do not change the benchmark).
TRAIN = dict(
    model="compact",
    epochs=40,
    folds=3,
    batch_size=4,
    lr=1e-3,
    weight_decay=1e-4,
    seed=0,
    augment=True,
    patience=12,
    schedule="cosine",
    n_bootstrap=200,
)


def _log(msg):
    print(f"[bench_attribution {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prepare(workdir, n_subjects, seed, device, n_jobs, epochs):
    """Cohort, derivatives and a trained run under ``workdir`` (each step reused when done)."""
    from neuroml.synth import make_cohort
    from neuroml.workflows import run_participant_level, train_run

    bids, deriv = workdir / "bids", workdir / "deriv"
    run = workdir / f"run-{device}"
    t0 = time.perf_counter()
    make_cohort(bids, n_subjects=n_subjects, seed=seed, voxel_scale=2.0, n_jobs=n_jobs)
    _log(f"cohort ready ({time.perf_counter() - t0:.0f} s): {bids}")
    t0 = time.perf_counter()
    run_participant_level(bids, deriv, n_jobs=n_jobs, resolution=2.0, show_progress=False)
    _log(f"derivatives ready ({time.perf_counter() - t0:.0f} s): {deriv}")
    if not (run / "metrics.json").is_file():
        t0 = time.perf_counter()
        train_run(
            deriv,
            run,
            device=device,
            resume=(run / "config.json").is_file(),
            show_progress=False,
            **{**TRAIN, "epochs": epochs},
        )
        _log(f"training done ({time.perf_counter() - t0:.0f} s): {run}")
    return run, deriv


def time_methods(run, deriv, methods, device, n_subjects):
    """Median seconds per subject and method (one subject at a time, fold 0's model, the layer
    ``attribute_run`` uses for the method), and those layers: ``(seconds, layers)``."""
    from neuroml.attribution import Explainer
    from neuroml.attribution.run import method_target_layer
    from neuroml.data.stack import open_inputs
    from neuroml.io.atlases import atlas_on_grid
    from neuroml.runs import load_run

    r = load_run(run)
    model = r.fold_model(0, device)
    cache = open_inputs(deriv, resolution=r.config.get("resolution"), inputs=r.config.get("inputs"))
    labels, _ = atlas_on_grid("aal", cache.affine, cache.shape)
    rows = list(cache.index["row"])[:n_subjects]
    out, layers = {}, {}
    for method in methods:
        layer = method_target_layer(method, r.config.get("model"), model, cache.load(rows[:1]))
        layers[method] = layer if method in ("gradcam", "gradcampp", "hirescam") else None
        ex = Explainer(
            model,
            method,
            target_layer=layer,
            batch_size=8,
            feature_mask=labels if method == "region_occlusion" else None,
        )
        ex.attribute(cache.load(rows[:1]))  # warm-up (lazy imports, cuDNN autotune)
        times = []
        for row in rows:
            x = cache.load([row])
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            t0 = time.perf_counter()
            ex.attribute(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[method] = round(float(np.median(times)), 3)
        _log(
            f"time {method}{f' ({layers[method]})' if layers[method] else ''}: {out[method]:.2f} s/subject"
        )
    return out, layers


def summarize(trust, seconds):
    row = {"s_per_subject": seconds}
    rnd, dele = trust.get("randomization") or {}, trust.get("deletion") or {}
    row["rand_median_abs_rho"] = rnd.get("median_abs_rho")
    row["rand_passed"] = rnd.get("passed")
    row["deletion_auc"], row["deletion_auc_random"] = dele.get("auc"), dele.get("auc_random")
    row["deletion_passed"] = dele.get("passed")
    row["stability"] = {
        c: {
            "rho": v.get("median_rho"),
            "top_overlap": v.get("median_top_overlap"),
            "top_overlap_p": v.get("top_overlap_p"),
            "passed": v.get("passed"),
        }
        for c, v in (trust.get("stability") or {}).items()
    }
    row["classes"] = {}
    for c, g in (trust.get("ground_truth") or {}).items():
        ranks = [v for v in (g.get("planted_ranks") or {}).values() if v is not None]
        row["classes"][c] = {
            "top5_planted": g.get("top_k_planted"),
            "planted_rank_best": min(ranks, default=None),
            "planted_rank_worst": max(ranks, default=None),
            "top_regions": g.get("top_regions"),
            "mass_accuracy": g.get("mass_accuracy"),
            "planted_share": g.get("planted_share"),
            "mass_enrichment": g.get("mass_enrichment"),
            "roc_auc": g.get("roc_auc"),
            "per_subject_median": g.get("per_subject_median"),
            "passed": g.get("passed"),
        }
    from neuroml.attribution.sanity import MASS_ENRICHMENT

    enrichment = (trust.get("thresholds") or {}).get("mass_enrichment", MASS_ENRICHMENT)
    failed = []
    for c, g in row["classes"].items():
        if g["passed"]:
            continue
        top_k = trust["ground_truth"][c].get("top_k") or 5
        planted = len(trust["ground_truth"][c].get("planted_ranks") or {}) or top_k
        if g["top5_planted"] is not None and g["top5_planted"] < min(top_k, planted):
            failed.append(f"{c} top 5")
        if g["mass_enrichment"] is None or g["mass_enrichment"] < enrichment:
            failed.append(f"{c} mass")
        if not failed or not failed[-1].startswith(f"{c} "):
            failed.append(f"{c} ground truth")
    if not row["classes"]:
        failed.append("ground truth (none)")
    if not row["rand_passed"]:
        failed.append("randomization")
    if not row["deletion_passed"]:
        failed.append("deletion")
    row["failed"] = failed
    row["all_targets_met"] = not failed
    return row


def markdown(results, classes):
    head = ["method", "s/subject"]
    for c in classes:
        head += [f"{c} top-5 planted", f"{c} planted ranks", f"{c} mass x share", f"{c} AUC"]
    head += [
        "rand. median abs rho",
        "deletion AUC (random)",
        "fold stability rho / top-10 overlap",
        "targets met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        cells = [method, f"{r['s_per_subject']:.2f}" if r["s_per_subject"] is not None else "n/a"]
        for c in classes:
            g = r["classes"].get(c, {})
            cells += [
                f"{g.get('top5_planted')}/5",
                f"{g.get('planted_rank_best')}-{g.get('planted_rank_worst')}",
                f"{g.get('mass_enrichment')}",
                f"{g.get('roc_auc')}",
            ]
        stab = (
            ", ".join(
                f"{k} {v.get('rho')} / {v.get('top_overlap')}"
                + ("" if v.get("passed") else " (fails)")
                for k, v in r["stability"].items()
            )
            or "n/a"
        )
        cells += [
            f"{r['rand_median_abs_rho']}",
            f"{r['deletion_auc']} ({r['deletion_auc_random']})",
            stab,
            "yes" if r["all_targets_met"] else f"no ({', '.join(r['failed'])})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    from neuroml.attribution import ALL_METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/bench5"),
        help="cache of cohort, derivatives, run",
    )
    p.add_argument(
        "--run", type=Path, default=None, help="an existing run folder (skips cohort and training)"
    )
    p.add_argument(
        "--deriv", type=Path, default=None, help="derivatives of --run (needed with --run)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=list(ALL_METHODS))
    p.add_argument("--n-subjects", type=int, default=36, help="cohort size when one is generated")
    p.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    p.add_argument(
        "--n-sanity", type=int, default=8, help="subjects for the randomization and deletion checks"
    )
    p.add_argument("--timing-subjects", type=int, default=3)
    p.add_argument(
        "--n-jobs", type=int, default=2, help="processes for synthesis and preprocessing"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="results JSON (default WORKDIR/bench_attribution.json)",
    )
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    from neuroml.attribution import attribute_run
    from neuroml.runs import load_run

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.run is None:
        run, deriv = prepare(
            args.workdir, args.n_subjects, args.seed, args.device, args.n_jobs, args.epochs
        )
    else:
        if args.deriv is None:
            p.error("--run needs --deriv (the derivatives the run was trained on)")
        run, deriv = args.run, args.deriv
    metrics = (
        json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    )
    classes = [c for c in load_run(run).classes]
    seconds, layers = time_methods(run, deriv, args.methods, args.device, args.timing_subjects)
    results = {}
    for method in args.methods:
        t0 = time.perf_counter()
        out = attribute_run(
            run,
            deriv,
            method=method,
            target="true",
            device=args.device,
            show_progress=False,
            n_sanity=args.n_sanity,
            seed=args.seed,
        )
        trust = json.loads((out.parent / "sanity.json").read_text())
        call = json.loads(out.read_text())
        if trust.get("call_id") != call.get("call_id"):
            raise RuntimeError(
                f"{out.parent / 'sanity.json'} does not belong to the attribution call just made"
            )
        if call.get("target_layer") != layers[method] and layers[method] is not None:
            raise RuntimeError(
                f"{method}: timed on layer {layers[method]}, attribute_run used {call['target_layer']}"
            )
        results[method] = summarize(trust, seconds.get(method))
        results[method]["target_layer"] = layers[method]
        results[method]["run_seconds"] = round(time.perf_counter() - t0, 1)
        _log(
            f"{method}: {json.dumps(results[method]['classes'], default=str)[:300]} "
            f"rand {results[method]['rand_median_abs_rho']} ({results[method]['run_seconds']} s)"
        )
    planted = [c for c in classes if any(c in r["classes"] for r in results.values())]
    table = markdown(results, planted)
    doc = {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "run": str(run),
        "deriv": str(deriv),
        "train_settings": TRAIN if args.run is None else None,
        "cnn_balanced_accuracy": (metrics.get("cnn") or {}).get("balanced_accuracy"),
        "seconds_all_methods_one_subject": round(
            sum(v for v in seconds.values() if v is not None), 2
        ),
        "methods": results,
        "markdown": table,
    }
    path = args.json or args.workdir / "bench_attribution.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(table)
    print(
        f"\nCNN balanced accuracy (out of fold): {doc['cnn_balanced_accuracy']}; "
        f"all methods for one subject: {doc['seconds_all_methods_one_subject']} s on {args.device}"
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
