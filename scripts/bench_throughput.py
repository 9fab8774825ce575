#!/usr/bin/env python3
"""CPU training throughput: neuroml's loop (float16 tensor cache) against a naive MONAI-tutorial loop.

Both loops train the same network (``build_model("compact")``, same initial weights), with
the same batch size, optimiser (AdamW), loss and torch threads, on the same volumes, in one
process:

* **neuroml**: :func:`neuroml.training.fit` over the tensor cache as ``train_run`` uses it
  (float16 memmap, read into RAM as float32 once for cohorts under 2 GiB); once without
  augmentation and once with the default augmentation;
* **naive**: the MONAI tutorial pattern: ``monai.data.Dataset`` with ``LoadImaged`` (the
  ``.nii.gz`` read and decompressed at every step), ``EnsureChannelFirstd``,
  ``ScaleIntensityd``, float32, no cache, a plain ``DataLoader`` and training loop.

It also times the data pipelines alone (iterating the loaders without a network). The
one-off cost of building the cache is reported separately. Volumes/s exclude the first
(warm-up) epoch. Usage::

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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _model(shape, n_classes, seed=0):
    from neuroml.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("compact", n_classes, spatial_shape=shape)


def ours(volumes, y, n_classes, batch_size, epochs, augment):
    """Volumes/s of neuroml's fit() (epochs after the first)."""
    from neuroml.data import VolumeDataset, make_augmentation
    from neuroml.training import TrainSettings, fit

    data = VolumeDataset(volumes, y, transform=make_augmentation(seed=0) if augment else None)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, patience=None, device="cpu", show_progress=False)
    res = fit(_model(volumes.shape[1:], n_classes), data, None, settings, class_weights=np.ones(n_classes))
    n = (len(data) // batch_size) * batch_size if len(data) % batch_size == 1 else len(data)
    secs = [r["seconds"] for r in res.history[1:]]
    return n * len(secs) / sum(secs)


def _naive_loader(files, y, batch_size, seed=0):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    transforms = Compose([LoadImaged(keys="img", image_only=True), EnsureChannelFirstd(keys="img"),
                          ScaleIntensityd(keys="img")])
    items = [{"img": str(f), "label": int(lab)} for f, lab in zip(files, y)]
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(items, transforms), batch_size=batch_size, shuffle=True, num_workers=0, generator=gen)


def naive(files, y, shape, n_classes, batch_size, epochs):
    """Volumes/s of the MONAI-tutorial loop (epochs after the first)."""
    net = _model(shape, n_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    loader = _naive_loader(files, y, batch_size)
    rates = []
    for epoch in range(epochs):
        net.train()
        t0, n = time.perf_counter(), 0
        for batch in loader:
            x, lab = batch["img"].as_tensor() if hasattr(batch["img"], "as_tensor") else batch["img"], batch["label"]
            opt.zero_grad()
            loss = crit(net(x), lab)
            loss.backward()
            opt.step()
            n += len(lab)
        if epoch:
            rates.append((n, time.perf_counter() - t0))
    return sum(r[0] for r in rates) / sum(r[1] for r in rates)


def loader_only(make_iter, n_items, repeats=2):
    """Volumes/s of iterating a data pipeline (no network)."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in make_iter():
            pass
    return n_items * repeats / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deriv", type=Path, default=None, help="preprocessed derivatives (default: synthetic 2 mm)")
    p.add_argument("--n-volumes", type=int, default=48, help="volumes used (the first N of the cohort)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs per loop (the first is warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from neuroml.data import load_cohort
    from neuroml.data.dataset import VolumeDataset
    from neuroml.training.trainer import make_loader

    with tempfile.TemporaryDirectory(prefix="neuroml-benchtp-") as tmp:
        deriv = args.deriv
        if deriv is None:
            from _benchdata import make_derivatives

            deriv = make_derivatives(tmp, n_volumes=args.n_volumes)
        t0 = time.perf_counter()
        cohort = load_cohort(deriv)  # builds (or reuses) the float16 cache
        t_cache = time.perf_counter() - t0
        rows, y = cohort.rows[:args.n_volumes], cohort.y[:args.n_volumes]
        files = [Path(deriv) / cohort.cache.index["path"].iloc[r] for r in rows]
        shape, n_classes = cohort.cache.shape, len(cohort.classes)
        t0 = time.perf_counter()
        volumes = cohort.cache.load(rows)
        t_ram = time.perf_counter() - t0
        n, bs = len(rows), args.batch_size
        print(f"{n} volumes of {shape} from {deriv}; batch {bs}; {args.threads} threads; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

        res = {"n_volumes": n, "grid_shape": list(shape), "batch_size": bs, "threads": args.threads,
               "epochs_timed": args.epochs - 1, "cache_build_or_check_s": round(t_cache, 2),
               "cache_to_ram_s": round(t_ram, 2), "load_avg_start": round(os.getloadavg()[0], 2)}
        memmap_ds = VolumeDataset(cohort.cache.data, y, rows)
        ram_ds = VolumeDataset(volumes, y)
        res["loader_vol_per_s"] = {
            "neuroml_ram_float32": loader_only(lambda: make_loader(ram_ds, bs, shuffle=True), n),
            "neuroml_memmap_float16": loader_only(lambda: make_loader(memmap_ds, bs, shuffle=True), n),
            "naive_loadimage_nifti": loader_only(lambda: _naive_loader(files, y, bs), n),
        }
        print("data pipeline alone (vol/s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["loader_vol_per_s"].items()),
              flush=True)
        train = {}
        train["naive_monai_tutorial"] = naive(files, y, shape, n_classes, bs, args.epochs)
        print(f"naive MONAI loop: {train['naive_monai_tutorial']:.2f} vol/s", flush=True)
        train["neuroml"] = ours(volumes, y, n_classes, bs, args.epochs, augment=False)
        print(f"neuroml loop: {train['neuroml']:.2f} vol/s", flush=True)
        train["neuroml_default_augmentation"] = ours(volumes, y, n_classes, bs, args.epochs, augment=True)
        print(f"neuroml loop with default augmentation: {train['neuroml_default_augmentation']:.2f} vol/s", flush=True)
        res["train_vol_per_s"] = train
        res["speedup_train"] = train["neuroml"] / train["naive_monai_tutorial"]
        res["speedup_loader"] = res["loader_vol_per_s"]["neuroml_ram_float32"] / res["loader_vol_per_s"][
            "naive_loadimage_nifti"]
        res["load_avg_end"] = round(os.getloadavg()[0], 2)
        res = json.loads(json.dumps(res), parse_float=lambda s: round(float(s), 3))
    print(f"speed-up, training loop: {res['speedup_train']:.2f}x; data pipeline alone: {res['speedup_loader']:.1f}x")
    print("RESULT_JSON " + json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
