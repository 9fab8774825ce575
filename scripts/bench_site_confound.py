"""Benchmark: how much does an entangled site inflate pooled cross-validation?

For each level of site entanglement, make a synthetic cohort (two classes, three sites
with different grey-matter contrast, a modest true atrophy effect), preprocess it, and
train pooled k-fold runs without and with ComBat (``harmonize="combat"``: the CNN's input
voxels and a second baseline's region means, fitted inside each training fold) and a
leave-one-site-out run; print balanced accuracies of the CNN and the region-mean baseline,
the ComBat-harmonized CNN and baseline, and the site probes.

    python scripts/bench_site_confound.py --workdir /tmp/bench_site --entanglement 0 0.8

Writes WORKDIR/bench_site_confound.json and prints a Markdown table.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repository's neuroml, installed or not

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_site"))
    p.add_argument("--entanglement", type=float, nargs="+", default=[0.0, 0.8])
    p.add_argument("--n-subjects", type=int, default=48)
    p.add_argument("--effect-size", type=float, default=0.25)
    p.add_argument(
        "--contrast", type=float, default=0.12, help="site grey-matter contrast offset (+, -, 0)"
    )
    p.add_argument("--voxel-scale", type=float, default=3.0)
    p.add_argument("--resolution", type=float, default=6.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from neuroml.synth import make_cohort
    from neuroml.workflows import run_participant_level, train_run

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sites = {
        "siteA": {"contrast": args.contrast},
        "siteB": {"contrast": -args.contrast},
        "siteC": {"contrast": 0.0},
    }
    rows = []
    for ent in args.entanglement:
        t0 = time.perf_counter()
        root = args.workdir / f"ent-{ent:g}"
        make_cohort(
            root / "bids",
            n_subjects=args.n_subjects,
            seed=args.seed,
            classes=("control", "MDD"),
            sites=sites,
            voxel_scale=args.voxel_scale,
            effect_size=args.effect_size,
            site_entanglement=ent,
            n_jobs=args.n_jobs,
        )
        run_participant_level(
            root / "bids",
            root / "deriv",
            resolution=args.resolution,
            n_jobs=args.n_jobs,
            show_progress=False,
        )
        common = dict(epochs=args.epochs, seed=args.seed, show_progress=False, n_bootstrap=1000)
        train_run(root / "deriv", root / "pooled", folds=args.folds, **common)
        train_run(
            root / "deriv", root / "pooled-combat", folds=args.folds, harmonize="combat", **common
        )
        train_run(root / "deriv", root / "loso", site_column="site", **common)
        pooled = json.loads((root / "pooled" / "metrics.json").read_text())
        combat = json.loads((root / "pooled-combat" / "metrics.json").read_text())
        loso = json.loads((root / "loso" / "metrics.json").read_text())
        cnn_probe = combat["site_probe"].get("cnn") or {}
        conf = json.loads((root / "pooled" / "confounds.json").read_text())
        rows.append(
            {
                "entanglement": ent,
                "cramers_v": conf["tests"]["site"]["effect_size"],
                "site_p": conf["tests"]["site"]["p_value"],
                "warned": "site" in conf["entangled"],
                "pooled_cnn": pooled["cnn"]["balanced_accuracy"],
                "pooled_cnn_ci": pooled["cnn"]["ci"]["balanced_accuracy"],
                "loso_cnn": loso["cnn"]["balanced_accuracy"],
                "loso_cnn_ci": loso["cnn"]["ci"]["balanced_accuracy"],
                "pooled_baseline": pooled["baseline"]["balanced_accuracy"],
                "loso_baseline": loso["baseline"]["balanced_accuracy"],
                "combat_cnn": combat["cnn"]["balanced_accuracy"],
                "combat_cnn_ci": combat["cnn"]["ci"]["balanced_accuracy"],
                "combat_baseline": combat["baseline_harmonized"]["balanced_accuracy"],
                "site_probe": pooled["site_probe"]["balanced_accuracy"],
                "site_probe_chance": pooled["site_probe"]["chance"],
                "site_probe_after_combat": combat["site_probe"]["after_combat"][
                    "balanced_accuracy"
                ],
                "site_probe_cnn": (pooled["site_probe"].get("cnn") or {}).get("balanced_accuracy"),
                "site_probe_combat_inputs": (cnn_probe.get("inputs") or {}).get(
                    "balanced_accuracy"
                ),
                "site_probe_combat_cnn": cnn_probe.get("balanced_accuracy"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (args.workdir / "bench_site_confound.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )

    def ci(v):
        return f"[{v[0]:.2f}, {v[1]:.2f}]" if v and None not in v else "n/a"

    def f2(v):
        return "n/a" if v is None else f"{v:.2f}"

    print(
        "| entanglement | Cramér's V (p) | pooled CNN | ComBat CNN | LOSO CNN | pooled baseline | LOSO baseline | "
        "ComBat baseline | site probe (chance) | probe after ComBat | probe on CNN features | "
        "probe on ComBat CNN inputs | probe on ComBat CNN features |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['entanglement']:g} | {r['cramers_v']:.2f} ({r['site_p']:.2g}) | {r['pooled_cnn']:.2f} "
            f"{ci(r['pooled_cnn_ci'])} | {r['combat_cnn']:.2f} {ci(r['combat_cnn_ci'])} | {r['loso_cnn']:.2f} "
            f"{ci(r['loso_cnn_ci'])} | {r['pooled_baseline']:.2f} | "
            f"{r['loso_baseline']:.2f} | {r['combat_baseline']:.2f} | {r['site_probe']:.2f} "
            f"({r['site_probe_chance']:.2f}) | {r['site_probe_after_combat']:.2f} | {f2(r['site_probe_cnn'])} | "
            f"{f2(r['site_probe_combat_inputs'])} | {f2(r['site_probe_combat_cnn'])} |"
        )


if __name__ == "__main__":
    main()
