#!/usr/bin/env python3
"""The compact network's CPU training step with and without :class:`~neuroml.models.layers.FastADN`.

Three versions of the default CPU network (``build_model("compact", input_pool="auto")`` on
the 2 mm grid, the same initial weights), each trained on one batch already pooled, in
channels-last memory, with ``fit``'s optimiser (fused AdamW) and a cross-entropy loss:

* ``fused``: the network as ``build_model`` returns it (each block's norm, dropout and leaky
  ReLU one autograd function while training);
* ``unfused``: the same layers run in turn (``FastInstanceNorm3d``, ``FastDropout`` with the
  current mask, ``LeakyReLU``);
* ``unfused_previous_mask``: as the network was until commit 4085d8f (the layers in turn and
  the previous dropout mask, ``bench_throughput._PreviousDropout``).

The networks are built once and timed in turn, ``--steps`` steps a round for ``--rounds``
rounds (a different one first each round), so that the machine's swings hit them alike; the
figures are the median time per step and the median, over rounds, of each version's speed-up
within the round. Usage::

    python scripts/bench_fused_layers.py --json bench_fused_layers.json
    python scripts/bench_fused_layers.py --batch-size 8 --rounds 40
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import torch  # noqa: E402
from _benchdata import report_result  # noqa: E402

GRID = (73, 91, 78)  # the 2 mm MNI grid


def _network(version, n_classes):
    from bench_throughput import _model, _unfuse

    model = _model(GRID, n_classes)
    if version != "fused":
        _unfuse(model, previous_mask=version == "unfused_previous_mask")
    return model.to(memory_format=torch.channels_last_3d).train()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--steps", type=int, default=10, help="steps of each version per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from neuroml.models.factory import input_pool_of
    from neuroml.training.trainer import make_optimizer

    n_classes, bs = 3, args.batch_size
    versions = ("fused", "unfused", "unfused_previous_mask")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 1, *GRID, generator=gen)
    y = torch.arange(bs) % n_classes
    crit = torch.nn.CrossEntropyLoss()
    runs = {}
    for v in versions:
        model = _network(v, n_classes)
        with torch.no_grad():
            xv = input_pool_of(model)(x).contiguous(memory_format=torch.channels_last_3d)
        runs[v] = (model, make_optimizer(model.parameters(), 1e-3, 1e-4), xv)

    def step(model, opt, xv):
        crit(model(xv), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for run in runs.values():  # warm-up
        for _ in range(5):
            step(*run)
    ms = {v: [] for v in versions}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = versions[r % 3 :] + versions[: r % 3]
        for v in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(*runs[v])
            ms[v].append((time.perf_counter() - t) / args.steps * 1e3)
    load.append(os.getloadavg()[0])
    res = {
        "batch_size": bs,
        "grid": GRID,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps": args.steps,
        "torch": torch.__version__,
        "load_avg": [round(v, 2) for v in load],
        "ms_per_step_median": {v: round(statistics.median(t), 3) for v, t in ms.items()},
        "speedup_of_fused": {},
    }
    for v in versions[1:]:
        ratios = [b / a for a, b in zip(ms["fused"], ms[v])]
        res["speedup_of_fused"][f"against_{v}"] = {
            "median": round(statistics.median(ratios), 3),
            "q25": round(statistics.quantiles(ratios, n=4)[0], 3),
            "q75": round(statistics.quantiles(ratios, n=4)[2], 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        }
    for v in versions:
        print(f"{v}: {res['ms_per_step_median'][v]:.2f} ms a step (median of {args.rounds} rounds)")
    for k, d in res["speedup_of_fused"].items():
        print(f"fused {k}: {d['median']:.3f}x (quartiles {d['q25']:.3f}-{d['q75']:.3f})")
    return report_result(res, args.json)


if __name__ == "__main__":
    main()
