#!/usr/bin/env python3
"""CPU training throughput: neuroml's loop (float16 tensor cache) against a naive MONAI-tutorial loop.

The loops train the same network (the default CPU network: ``build_model("compact",
input_pool="auto")``, which average-pools the 2 mm grid 2x; and, for comparison, the compact
network at full resolution, ``input_pool=1``), from the same initial weights, with the same
batch size, optimiser (AdamW: as a tutorial builds it in the naive loop, fused in fit), loss
and torch threads, on the same volumes, in one process:

* **naive**: the MONAI tutorial pattern: ``monai.data.Dataset`` with ``LoadImaged`` (the
  ``.nii.gz`` read and decompressed at every step), ``EnsureChannelFirstd``,
  ``ScaleIntensityd``, float32, contiguous memory, no cache, a plain ``DataLoader`` (no
  worker processes) and training loop; also with the network's dropout left as MONAI builds
  it (``torch.nn.Dropout``, as a tutorial would have it), and with 2 DataLoader workers (as
  MONAI's 3D classification tutorials have it: the loading overlaps the training step, on
  cores the step also uses);
* **neuroml**: :func:`neuroml.training.fit` over the tensor cache as ``train_run`` uses it
  (float16 memmap, read into RAM as float32 once for cohorts under 2 GiB) with its default
  settings (channels-last memory on the CPU); also with the default augmentation (batched:
  :class:`~neuroml.data.BatchAugmentation`, warping the pooled grid), with that augmentation
  warping the full grid, and with MONAI's transforms per item (``make_augmentation(batched=False)``).

It also times the network's training step alone (forward, backward and AdamW step on one
batch already pooled, ``network_step_only``: the bound no data pipeline can beat) and the
data pipelines alone (iterating the loaders without a network). The
one-off cost of building the cache is reported separately. Volumes/s exclude each fit's
first (warm-up) epoch; the loops run in turn, ``--repeats`` times, so that a change of the
machine's load hits them alike. Usage::

    python scripts/bench_throughput.py                              # synthetic 2 mm volumes
    python scripts/bench_throughput.py --deriv /tmp/neuroml-bench-training/deriv --json tp.json
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _benchdata import report_result  # noqa: E402


class _PreviousDropout(torch.nn.Dropout):
    """``FastDropout`` as it was until commit 4085d8f: a C-order bool mask of 15-bit
    integers (``random_()``, masked), converted to float and multiplied."""

    def forward(self, x):
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n]
        keep = torch.bitwise_and(bits, (1 << 15) - 1) >= round(self.p * (1 << 15))
        return x * keep.to(x.dtype).div_(1 - self.p).view(x.shape)


def _unfuse(model, previous_mask=True):
    """Each :class:`~neuroml.models.layers.FastADN` of ``model`` as its children in turn (in place);
    ``previous_mask``: with :class:`_PreviousDropout` for the dropout. Returns ``model``."""
    import collections

    from neuroml.models.layers import FastADN, _swap

    def unfused(child):
        if type(child) is not FastADN:
            return None
        kids = collections.OrderedDict(child.named_children())
        if previous_mask:
            kids["D"] = _PreviousDropout(kids["D"].p)
        return torch.nn.Sequential(kids)

    return _swap(model, unfused)


def _model(
    shape, n_classes, seed=0, torch_dropout=False, input_pool="auto", earlier=False, unfused=False
):
    """The compact network as ``train_run`` builds it; ``earlier``: as it was until commit 1865fa9
    (PReLU activations and torch's ``InstanceNorm3d``); ``unfused``: as it was until commit 4085d8f
    (each block's norm, dropout and leaky ReLU in turn, :class:`_PreviousDropout`), for comparison."""
    from neuroml.models import build_model, resolve_input_pool
    from neuroml.models.layers import FastDropout, FastInstanceNorm3d, _swap

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            "compact",
            n_classes,
            spatial_shape=shape,
            input_pool=resolve_input_pool(input_pool, "compact", shape),
            activation="prelu" if earlier else "leakyrelu",
        )
    if earlier:
        _swap(
            model,
            lambda c: (
                torch.nn.InstanceNorm3d(c.num_features, eps=c.eps)
                if type(c) is FastInstanceNorm3d
                else None
            ),
        )
    if unfused:
        _unfuse(model)
    if torch_dropout:  # the network as MONAI builds it
        _swap(
            _unfuse(model, previous_mask=False),
            lambda c: torch.nn.Dropout(c.p) if type(c) is FastDropout else None,
        )
    return model


def ours(
    volumes,
    y,
    n_classes,
    batch_size,
    epochs,
    augment=False,
    torch_dropout=False,
    input_pool="auto",
    warp_full_grid=False,
    earlier=False,
    unfused=False,
    **settings,
):
    """(volumes, wall seconds, CPU seconds) of neuroml's fit() over the epochs after the first.

    ``warp_full_grid``: hide the network's input pooling from ``fit``, which then augments the
    full grid (as before it warped the pooled grid), for comparison.
    """
    import contextlib
    from unittest import mock

    from neuroml.data import VolumeDataset, make_augmentation
    from neuroml.training import TrainSettings, fit

    aug = make_augmentation(seed=0, batched=augment != "monai") if augment else None
    data = VolumeDataset(volumes, y, transform=aug)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        patience=None,
        device="cpu",
        show_progress=False,
        **settings,
    )
    marks = []  # (wall, CPU) clock at the end of every epoch
    hide = (
        mock.patch("neuroml.training.trainer.input_pool_of", lambda model: None)
        if warp_full_grid
        else contextlib.nullcontext()
    )
    with hide:
        fit(
            _model(
                volumes.shape[1:],
                n_classes,
                torch_dropout=torch_dropout,
                input_pool=input_pool,
                earlier=earlier,
                unfused=unfused,
            ),
            data,
            None,
            settings,
            class_weights=np.ones(n_classes),
            callback=lambda *_: marks.append((time.perf_counter(), time.process_time())),
        )
    n = (len(data) // batch_size) * batch_size if len(data) % batch_size == 1 else len(data)
    return n * (len(marks) - 1), marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]


def step_only(
    volumes, n_classes, batch_size, epochs, input_pool="auto", earlier=False, unfused=False
):
    """(volumes, wall s, CPU s) of the network's forward + backward + AdamW step alone.

    The same number of steps as ``epochs - 1`` epochs, on one batch already in the network's
    input grid (average-pooled for the pooled network) and channels-last memory: the bound
    that no data pipeline can beat.
    """
    from neuroml.models.factory import input_pool_of
    from neuroml.training.trainer import make_optimizer

    model = _model(
        volumes.shape[1:], n_classes, input_pool=input_pool, earlier=earlier, unfused=unfused
    )
    model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    opt = make_optimizer(model.parameters(), 1e-3, 1e-4)  # fit's optimiser
    crit = torch.nn.CrossEntropyLoss(weight=torch.ones(n_classes))
    x = torch.from_numpy(np.asarray(volumes[:batch_size], dtype=np.float32))[:, None]
    pool = input_pool_of(model)
    with torch.no_grad():
        x = (pool(x) if pool is not None else x).contiguous(memory_format=torch.channels_last_3d)
    y = torch.arange(batch_size) % n_classes

    def step():
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    n_steps = (epochs - 1) * max(1, len(volumes) // batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        step()
    return n_steps * batch_size, time.perf_counter() - t0, time.process_time() - c0


def _naive_loader(files, y, batch_size, seed=0, num_workers=0):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    transforms = Compose(
        [
            LoadImaged(keys="img", image_only=True),
            EnsureChannelFirstd(keys="img"),
            ScaleIntensityd(keys="img"),
        ]
    )
    items = [{"img": str(f), "label": int(lab)} for f, lab in zip(files, y)]
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        Dataset(items, transforms),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=gen,
    )


def naive(
    files,
    y,
    shape,
    n_classes,
    batch_size,
    epochs,
    torch_dropout=False,
    input_pool="auto",
    earlier=False,
    num_workers=0,
):
    """(volumes, wall seconds, CPU seconds) of the MONAI-tutorial loop over the epochs after the first."""
    net = _model(
        shape, n_classes, torch_dropout=torch_dropout, input_pool=input_pool, earlier=earlier
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    loader = _naive_loader(files, y, batch_size, num_workers=num_workers)
    rates = []
    for epoch in range(epochs):
        net.train()
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for batch in loader:
            x, lab = (
                batch["img"].as_tensor() if hasattr(batch["img"], "as_tensor") else batch["img"],
                batch["label"],
            )
            opt.zero_grad()
            loss = crit(net(x), lab)
            loss.backward()
            opt.step()
            n += len(lab)
        if epoch:
            rates.append((n, time.perf_counter() - t0, time.process_time() - c0))
    return tuple(sum(r[i] for r in rates) for i in range(3))


def loader_only(make_iter, n_items, repeats=2):
    """Volumes/s of iterating a data pipeline (no network)."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in make_iter():
            pass
    return n_items * repeats / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--deriv",
        type=Path,
        default=None,
        help="preprocessed derivatives (default: synthetic 2 mm)",
    )
    p.add_argument(
        "--n-volumes", type=int, default=48, help="volumes used (the first N of the cohort)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs per loop (the first is warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds of every loop, in turn")
    p.add_argument(
        "--loops",
        nargs="+",
        default=None,
        metavar="NAME",
        help="time only these loops (default: all; the speed-ups need naive_monai_tutorial, neuroml, "
        "neuroml_compile, network_step_only, ...)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from neuroml.data import load_cohort
    from neuroml.data.dataset import VolumeDataset
    from neuroml.models import resolve_input_pool
    from neuroml.training.trainer import make_loader

    with tempfile.TemporaryDirectory(prefix="neuroml-benchtp-") as tmp:
        deriv = args.deriv
        if deriv is None:
            from _benchdata import make_derivatives

            deriv = make_derivatives(tmp, n_volumes=args.n_volumes)
        t0 = time.perf_counter()
        cohort = load_cohort(deriv)  # builds (or reuses) the float16 cache
        t_cache = time.perf_counter() - t0
        rows, y = cohort.rows[: args.n_volumes], cohort.y[: args.n_volumes]
        files = [Path(deriv) / cohort.cache.index["path"].iloc[r] for r in rows]
        shape, n_classes = cohort.cache.shape, len(cohort.classes)
        t0 = time.perf_counter()
        volumes = cohort.cache.load(rows)
        t_ram = time.perf_counter() - t0
        n, bs = len(rows), args.batch_size
        print(
            f"{n} volumes of {shape} from {deriv}; batch {bs}; {args.threads} threads; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )

        res = {
            "n_volumes": n,
            "grid_shape": list(shape),
            "batch_size": bs,
            "threads": args.threads,
            "repeats": args.repeats,
            "openmp_env": {
                k: os.environ[k]
                for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                if k in os.environ
            },
            "epochs_timed": args.epochs - 1,
            "cache_build_or_check_s": round(t_cache, 2),
            "cache_to_ram_s": round(t_ram, 2),
            "load_avg_start": round(os.getloadavg()[0], 2),
        }
        memmap_ds = VolumeDataset(cohort.cache.data, y, rows)
        ram_ds = VolumeDataset(volumes, y)
        res["loader_vol_per_s"] = {
            "neuroml_ram_float32": loader_only(lambda: make_loader(ram_ds, bs, shuffle=True), n),
            "neuroml_memmap_float16": loader_only(
                lambda: make_loader(memmap_ds, bs, shuffle=True), n
            ),
            "naive_loadimage_nifti": loader_only(lambda: _naive_loader(files, y, bs), n),
        }
        print(
            "data pipeline alone (vol/s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in res["loader_vol_per_s"].items()),
            flush=True,
        )
        pool = resolve_input_pool("auto", "compact", shape)
        res["input_pool_default"] = pool
        loops = {  # name: (description, function returning (volumes, seconds) of the timed epochs)
            "naive_monai_tutorial": (
                f"naive MONAI loop, default network (input pooled {pool}x)",
                lambda: naive(files, y, shape, n_classes, bs, args.epochs),
            ),
            "naive_monai_tutorial_torch_dropout": (
                "naive MONAI loop, default network with torch.nn.Dropout",
                lambda: naive(files, y, shape, n_classes, bs, args.epochs, torch_dropout=True),
            ),
            "naive_monai_tutorial_2_workers": (
                "naive MONAI loop, default network, 2 DataLoader worker processes (as MONAI's tutorials)",
                lambda: naive(files, y, shape, n_classes, bs, args.epochs, num_workers=2),
            ),
            "neuroml": (
                "neuroml fit, defaults",
                lambda: ours(volumes, y, n_classes, bs, args.epochs),
            ),
            "neuroml_compile": (
                "neuroml fit, defaults + torch.compile (compiled in the untimed first epoch)",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, compile=True),
            ),
            "network_step_only": (
                "the default network's forward + backward + AdamW step alone (one batch, pooled)",
                lambda: step_only(volumes, n_classes, bs, args.epochs),
            ),
            "neuroml_default_augmentation": (
                "neuroml fit, defaults + default augmentation (batched)",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, augment=True),
            ),
            "neuroml_augmentation_full_grid": (
                "neuroml fit, defaults + default augmentation warping the full grid (before it warped the pooled one)",
                lambda: ours(
                    volumes, y, n_classes, bs, args.epochs, augment=True, warp_full_grid=True
                ),
            ),
            "neuroml_monai_augmentation": (
                "neuroml fit, defaults + MONAI's augmentation per item",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, augment="monai"),
            ),
            "naive_monai_tutorial_full_resolution": (
                "naive MONAI loop, compact network at full resolution (input_pool=1)",
                lambda: naive(files, y, shape, n_classes, bs, args.epochs, input_pool=1),
            ),
            "neuroml_full_resolution": (
                "neuroml fit, compact network at full resolution (input_pool=1)",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, input_pool=1),
            ),
            "neuroml_full_resolution_augmentation": (
                "neuroml fit, full resolution + default augmentation",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, input_pool=1, augment=True),
            ),
            "naive_monai_tutorial_earlier_network": (
                "naive MONAI loop, the earlier default network (PReLU, torch's InstanceNorm3d)",
                lambda: naive(files, y, shape, n_classes, bs, args.epochs, earlier=True),
            ),
            "neuroml_earlier_network": (
                "neuroml fit, the earlier default network",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, earlier=True),
            ),
            "network_step_only_earlier_network": (
                "the earlier default network's step alone (one batch, pooled)",
                lambda: step_only(volumes, n_classes, bs, args.epochs, earlier=True),
            ),
            "neuroml_unfused": (
                "neuroml fit, the default network unfused (norm, dropout, activation in turn; "
                "the previous dropout mask)",
                lambda: ours(volumes, y, n_classes, bs, args.epochs, unfused=True),
            ),
            "network_step_only_unfused": (
                "the unfused network's step alone (one batch, pooled)",
                lambda: step_only(volumes, n_classes, bs, args.epochs, unfused=True),
            ),
        }
        if args.loops:
            unknown = sorted(set(args.loops) - set(loops))
            if unknown:
                p.error(f"unknown loop(s) {', '.join(unknown)}; choose from {', '.join(loops)}")
            loops = {k: v for k, v in loops.items() if k in args.loops}
        totals = {k: np.zeros(3) for k in loops}  # volumes, wall seconds, CPU seconds
        per_round = {k: [] for k in loops}
        load = []
        for r in range(args.repeats):
            names = list(loops)
            names = (
                names[r % len(names) :] + names[: r % len(names)]
            )  # a different loop goes first each round
            for name in names:
                got = np.array(loops[name][1](), dtype=float)
                totals[name] += got
                per_round[name].append(round(got[0] / got[1], 2))
            load.append(round(os.getloadavg()[0], 2))
            print(
                f"round {r + 1}/{args.repeats} (load {load[-1]:.1f}), vol/s: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in per_round.items()),
                flush=True,
            )
        train = {k: v[0] / v[1] for k, v in totals.items()}
        train_cpu = {k: v[0] / v[2] for k, v in totals.items()}
        for name, (desc, _) in loops.items():
            print(
                f"{desc}: {train[name]:.2f} vol/s, {train_cpu[name]:.2f} vol per CPU second",
                flush=True,
            )
        res["train_vol_per_s"] = train
        res["train_vol_per_cpu_s"] = train_cpu
        res["train_vol_per_s_per_round"] = per_round
        res["load_avg_per_round"] = load
        ratios = {
            "same_network": ("neuroml", "naive_monai_tutorial"),
            "compiled": ("neuroml_compile", "naive_monai_tutorial"),
            "bound_network_step": ("network_step_only", "naive_monai_tutorial"),
            "against_torch_dropout_naive": ("neuroml", "naive_monai_tutorial_torch_dropout"),
            "against_naive_2_workers": ("neuroml", "naive_monai_tutorial_2_workers"),
            "full_resolution": ("neuroml_full_resolution", "naive_monai_tutorial_full_resolution"),
            "with_augmentation_against_naive": (
                "neuroml_default_augmentation",
                "naive_monai_tutorial",
            ),
            "augmentation_pooled_vs_full_grid": (
                "neuroml_default_augmentation",
                "neuroml_augmentation_full_grid",
            ),
            "earlier_network_same_network": (
                "neuroml_earlier_network",
                "naive_monai_tutorial_earlier_network",
            ),
            "network_against_earlier_fit": ("neuroml", "neuroml_earlier_network"),
            "network_against_earlier_step": (
                "network_step_only",
                "network_step_only_earlier_network",
            ),
            "network_against_unfused_fit": ("neuroml", "neuroml_unfused"),
            "network_against_unfused_step": ("network_step_only", "network_step_only_unfused"),
        }
        for key, rates in (("speedup_train", train), ("speedup_train_cpu", train_cpu)):
            res[key] = {
                name: rates[a] / rates[b]
                for name, (a, b) in ratios.items()
                if a in rates and b in rates
            }
        # the ratio within each round (both loops ran minutes apart at most), robust to a slow round
        res["speedup_train_rounds"] = {
            name: {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
            for name, (a, b) in ratios.items()
            if a in per_round and b in per_round
            for r in [[x / z for x, z in zip(per_round[a], per_round[b])]]
        }
        res["speedup_loader"] = (
            res["loader_vol_per_s"]["neuroml_ram_float32"]
            / res["loader_vol_per_s"]["naive_loadimage_nifti"]
        )
        res["load_avg_end"] = round(os.getloadavg()[0], 2)
        res = json.loads(json.dumps(res), parse_float=lambda s: round(float(s), 3))
    labels = {
        "same_network": "same network",
        "against_torch_dropout_naive": "against the naive loop with torch.nn.Dropout",
        "against_naive_2_workers": "against the naive loop with 2 workers",
        "compiled": "compiled",
        "bound_network_step": "the network step alone",
        "full_resolution": "with the full-resolution network",
        "with_augmentation_against_naive": "with augmentation against the naive loop without",
        "augmentation_pooled_vs_full_grid": "augmentation on the pooled grid against the full grid",
        "earlier_network_same_network": "with the earlier network (PReLU, torch's InstanceNorm3d) in both loops",
        "network_against_earlier_fit": "fit: default network against the earlier one",
        "network_against_earlier_step": "step alone: default network against the earlier one",
        "network_against_unfused_fit": "fit: default network against the unfused one",
        "network_against_unfused_step": "step alone: default network against the unfused one",
    }
    for key, unit in (("speedup_train", "wall"), ("speedup_train_cpu", "CPU")):
        print(
            f"speed-up of the training loop ({unit} time): "
            + "; ".join(f"{v:.2f}x {labels[k]}" for k, v in res[key].items())
        )
    print(
        "speed-up within each round (median; range): "
        + "; ".join(
            f"{v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f}) {labels[k]}"
            for k, v in res["speedup_train_rounds"].items()
        )
    )
    print(f"data pipeline alone: {res['speedup_loader']:.1f}x")
    return report_result(res, args.json)


if __name__ == "__main__":
    main()
