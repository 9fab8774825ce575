#!/usr/bin/env python3
"""GPU training throughput: compute alone against neuroml's full training loop, fp32 and bf16.

For each network (built as ``train_run`` builds it: ``compact`` with its default input
pooling, 2x on the 2 mm grid) and precision it measures volumes per second of

* **compute**: forward + backward + AdamW step on one batch that already sits on the GPU
  (channels-last, bf16 autocast for "bf16"), the upper bound for this batch size;
* **full loop**: :func:`neuroml.training.fit` (the loop ``neuroml train`` runs) over a
  dataset read from the float16 tensor cache (``TensorCache`` -> RAM float32, as
  ``train_run`` does for cohorts under 2 GiB), with its class-weighted loss, scheduler and
  per-epoch bookkeeping; the first epoch is warm-up. "default" is ``fit`` as it runs without
  augmentation (``preload="auto"``: the cohort is copied to the GPU once and batches are
  gathered there); "augmented" adds ``train_run``'s default batch augmentation (random
  affine, intensity and noise, applied on the GPU); the ``dataloader_<w>_workers`` variants force the DataLoader path
  (pinned host memory, a host-to-device copy per batch) to show what the preload saves.

and reports ``full / compute`` (target >= 0.9), taken within each of ``--repeats`` rounds
(compute and loops in turn, so that a clock or load change hits them alike) and its median.
It prints the card, versions and one JSON document (also written with ``--json``).
Without ``--deriv`` it writes its own synthetic preprocessed volumes
(``scripts/_benchdata.py``), so it runs on a bare machine with only the repository copied::

    python scripts/bench_gpu.py                          # GPU, ~4-6 min on an H100 (3 rounds)
    python scripts/bench_gpu.py --device cpu --quick     # smoke test on CPU (seconds)
    python scripts/bench_gpu.py --deriv /data/deriv --models densenet121 --batch-size 16
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repository's neuroml, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from neuroml._utils.threads import configure_openmp  # noqa: E402

configure_openmp()  # as the neuroml command does, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _benchdata import report_result  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_only(
    model_name, shape, n_classes, batch_size, precision, device, steps, warmup, seed=0
):
    """Volumes/s of forward+backward+step on a batch already on the device."""
    from neuroml.models import build_model
    from neuroml.training.trainer import make_optimizer

    torch.manual_seed(seed)
    net = build_model(model_name, n_classes, spatial_shape=shape, input_pool="auto").to(
        device
    )  # as train_run
    cl = device.type == "cuda"
    if cl:
        net = net.to(memory_format=torch.channels_last_3d)
    opt = make_optimizer(net.parameters(), 1e-4, 1e-4)  # fit's optimiser
    crit = torch.nn.CrossEntropyLoss(weight=torch.ones(n_classes, device=device))
    x = torch.randn(batch_size, 1, *shape, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.arange(batch_size, device=device) % n_classes
    use_bf16 = precision == "bf16" and device.type == "cuda"
    net.train()

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = net(x)
        loss = crit(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def full_loop(
    model_name,
    volumes,
    labels,
    n_classes,
    batch_size,
    precision,
    device,
    epochs,
    num_workers,
    preload="auto",
    seed=0,
    augment=False,
):
    """Volumes/s of neuroml's fit() over a VolumeDataset (first epoch excluded)."""
    from neuroml.data import VolumeDataset, make_augmentation
    from neuroml.models import build_model
    from neuroml.training import TrainSettings, fit

    torch.manual_seed(seed)
    net = build_model(model_name, n_classes, spatial_shape=volumes.shape[1:], input_pool="auto")
    data = VolumeDataset(
        volumes, labels, transform=make_augmentation(seed=seed) if augment else None
    )
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=1e-4,
        patience=None,
        schedule="constant",
        amp=precision == "bf16",
        channels_last=True,
        num_workers=num_workers,
        device=str(device),
        show_progress=False,
        preload=preload,
    )
    res = fit(net, data, None, settings, class_weights=np.ones(n_classes), stream=(seed,))
    seconds = [r["seconds"] for r in res.history[1:]] or [res.history[0]["seconds"]]
    n_per_epoch = (
        (len(data) // batch_size) * batch_size if len(data) % batch_size == 1 else len(data)
    )
    return n_per_epoch * len(seconds) / sum(seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument(
        "--deriv",
        type=Path,
        default=None,
        help="preprocessed derivatives (default: synthetic ones)",
    )
    p.add_argument("--resolution", type=float, default=2.0)
    p.add_argument("--n-volumes", type=int, default=160)
    p.add_argument("--models", nargs="+", default=["compact", "densenet121"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5, help="full-loop epochs (the first is warm-up)")
    p.add_argument("--steps", type=int, default=100, help="compute-only timed steps")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of compute and full loops in turn; medians are reported (default 3)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        nargs="+",
        default=None,
        help="DataLoader workers to try in the full loop without preloading (default: 0 and 4 on CUDA, "
        "0 on CPU)",
    )
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke test (4 mm grid, 12 volumes, few steps)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.resolution, args.n_volumes, args.epochs, args.steps, args.batch_size = 4.0, 12, 2, 2, 4
        args.repeats = min(args.repeats, 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: error: no CUDA device visible to torch; use --device cpu --quick for a smoke test"
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    workers = (
        args.num_workers
        if args.num_workers is not None
        else ([0, 4] if device.type == "cuda" else [0])
    )

    from neuroml.data import build_cache, load_cohort

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neuroml-benchgpu-") as tmp:
        deriv = args.deriv
        if deriv is None:
            from _benchdata import make_derivatives

            deriv = make_derivatives(tmp, n_volumes=args.n_volumes, resolution=args.resolution)
        build_cache(deriv, resolution=args.resolution if args.deriv is None else None)
        cohort = load_cohort(deriv, resolution=args.resolution if args.deriv is None else None)
        volumes = cohort.cache.load(cohort.rows)  # train_run's in-RAM fast path
        labels, n_classes, shape = cohort.y, len(cohort.classes), cohort.cache.shape
        t_data = time.perf_counter() - t0

        card = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu"
        )
        print(
            f"device: {card} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
            f"cuDNN {torch.backends.cudnn.version() if device.type == 'cuda' else None}",
            flush=True,
        )
        print(
            f"data: {len(volumes)} volumes of {shape} from {'synthetic' if args.deriv is None else deriv} "
            f"({t_data:.1f} s to write/cache/load); batch {args.batch_size}; workers {workers}",
            flush=True,
        )
        results = []
        for model_name in args.models:
            for precision in args.precisions:
                # compute and the loops in turn, --repeats rounds: a clock or load change hits them alike,
                # and the ratio is taken within each round (its median is reported)
                comps, fulls_by_round = [], []
                for _ in range(args.repeats):
                    comps.append(
                        compute_only(
                            model_name,
                            shape,
                            n_classes,
                            args.batch_size,
                            precision,
                            device,
                            steps=args.steps,
                            warmup=max(2, args.steps // 5),
                        )
                    )
                    # the default loop: fit(preload="auto") keeps an un-augmented cohort on the GPU when it
                    # fits; train_run's default batch augmentation (random affine, intensity, noise) on the
                    # GPU; then the DataLoader path (pinned host memory, per-batch copies) per worker count
                    fulls = {
                        "default": full_loop(
                            model_name,
                            volumes,
                            labels,
                            n_classes,
                            args.batch_size,
                            precision,
                            device,
                            epochs=args.epochs,
                            num_workers=0,
                            preload="auto",
                        )
                    }
                    fulls["augmented"] = full_loop(
                        model_name,
                        volumes,
                        labels,
                        n_classes,
                        args.batch_size,
                        precision,
                        device,
                        epochs=args.epochs,
                        num_workers=0,
                        preload="auto",
                        augment=True,
                    )
                    for w in workers:
                        fulls[f"dataloader_{w}_workers"] = full_loop(
                            model_name,
                            volumes,
                            labels,
                            n_classes,
                            args.batch_size,
                            precision,
                            device,
                            epochs=args.epochs,
                            num_workers=w,
                            preload=False,
                        )
                    fulls_by_round.append(fulls)
                comp = float(np.median(comps))
                fulls = {
                    k: float(np.median([f[k] for f in fulls_by_round])) for k in fulls_by_round[0]
                }
                ratios = [f["default"] / c for f, c in zip(fulls_by_round, comps)]
                ratio = float(np.median(ratios))
                full = fulls["default"]
                row = {
                    "model": model_name,
                    "precision": precision,
                    "compute_vol_per_s": round(comp, 2),
                    "full_loop_vol_per_s": round(full, 2),
                    "full_over_compute": round(ratio, 3),
                    "full_over_compute_per_round": [round(r, 3) for r in ratios],
                    "compute_vol_per_s_per_round": [round(c, 2) for c in comps],
                    "full_loop_variants": {k: round(v, 2) for k, v in fulls.items()},
                    "variants_over_compute": {
                        k: round(
                            float(np.median([f[k] / c for f, c in zip(fulls_by_round, comps)])), 3
                        )
                        for k in fulls
                    },
                }
                results.append(row)
                by = ", ".join(f"{k} {v:.1f}" for k, v in fulls.items())
                print(
                    f"{model_name:12s} {precision:5s} compute {comp:8.1f} vol/s | full loop {full:8.1f} vol/s "
                    f"| ratio {ratio:.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.90) "
                    f"[{by}]",
                    flush=True,
                )
    doc = {
        "device": card,
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "grid_shape": list(shape),
        "resolution_mm": args.resolution,
        "n_volumes": int(len(volumes)),
        "batch_size": args.batch_size,
        "num_workers_tried": workers,
        "epochs_timed": args.epochs - 1,
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "cudnn_benchmark": bool(device.type == "cuda" and not args.no_cudnn_benchmark),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    return report_result(doc, args.json)


if __name__ == "__main__":
    main()
