"""The one training loop (used by :func:`~neuroml.workflows.train_run` and :class:`NeuroClassifier`).

AdamW, a per-step learning-rate schedule, class-weighted cross-entropy, early stopping on
the validation balanced accuracy (ties broken by the validation loss) keeping the best
weights, optional gradient accumulation, bf16 autocast on CUDA, channels-last memory (on
CUDA and the CPU: :func:`resolve_channels_last`), and an optional ``torch.compile``. A batch
augmentation runs on the training device; for a network behind an input pooling
(:class:`~neuroml.models.factory.InputPool`) the volumes are pooled once (or, when they
cannot be held pooled, each batch first) and warped on the pooled grid.

Randomness is derived from ``(stream..., epoch)`` (the shuffling generator, the
augmentation state and torch's generator inside :func:`torch.random.fork_rng`), so an
epoch-level checkpoint (``last.pt``: model, optimiser, scheduler, best weights, history)
lets a killed fit continue to exactly the result of an uninterrupted one, and the
caller's global random state is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from neuroml._utils.device import resolve_device
from neuroml._utils.options import check_in_range, look_up_option
from neuroml.errors import ConfigError
from neuroml.models.factory import input_pool_of
from neuroml.runs.checkpoint import load_checkpoint, plain, save_checkpoint
from neuroml.training import distributed as ddp
from neuroml.training.distributed import is_main_process
from neuroml.training.metrics import balanced_accuracy

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "TrainSettings",
    "FitResult",
    "fit",
    "evaluate",
    "predict_proba",
    "resolve_device",
    "resolve_channels_last",
    "make_loader",
    "make_optimizer",
    "seed_for",
    "is_main_process",
    "SCHEDULES",
]

log = logging.getLogger("neuroml")

#: Learning-rate schedules (stepped once per optimiser step).
SCHEDULES = ("cosine", "onecycle", "constant")
# settings a resumed fit must share with the checkpoint it continues
_RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "grad_accum", "schedule")


@dataclasses.dataclass
class TrainSettings:
    """Hyper-parameters and runtime options of :func:`fit` (see :func:`~neuroml.workflows.train_run`)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int | None = 10
    grad_accum: int = 1
    schedule: str = "cosine"
    amp: bool = True
    channels_last: bool | str = "auto"
    compile: bool = False
    num_workers: int = 0
    device: str = "auto"
    show_progress: bool = True
    preload: bool | str = "auto"

    def validate(self) -> TrainSettings:
        """Check every value; return self. Raises :class:`ConfigError`."""
        for name in ("epochs", "batch_size", "grad_accum"):
            check_in_range(name, getattr(self, name), 1, None, kind=int)
        check_in_range("num_workers", self.num_workers, 0, None, kind=int)
        check_in_range("lr", self.lr, 0.0, None)
        if not self.lr > 0:
            raise ConfigError(f"The 'lr' parameter must be > 0. Got {self.lr!r} instead.")
        check_in_range("weight_decay", self.weight_decay, 0.0, None)
        if self.patience is not None:
            check_in_range("patience", self.patience, 1, None, kind=int)
        self.schedule = look_up_option("schedule", self.schedule, SCHEDULES)
        for name in ("preload", "channels_last"):
            value = getattr(self, name)
            if value not in ("auto", True, False):
                raise ConfigError(
                    f"The {name!r} parameter must be 'auto', True or False. Got {value!r} instead."
                )
        resolve_device(self.device)
        return self


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the model with its best weights (eval mode) and the history."""

    model: torch.nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_balanced_accuracy: float | None
    best_val_loss: float | None
    stopped_early: bool


def seed_for(*keys: object) -> int:
    """A 32-bit seed derived from integers and strings (e.g. ``seed_for(seed, fold, epoch)``)."""
    ints = [
        int(k) % (2**63) if isinstance(k, (int, np.integer)) else zlib.crc32(str(k).encode())
        for k in keys
    ]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


class _WorkerInit:
    """Reseeds the dataset's random transform in every DataLoader worker."""

    def __init__(self, seed):
        self.seed = seed

    def __call__(self, worker_id):
        info = torch.utils.data.get_worker_info()
        if hasattr(info.dataset, "set_seed"):
            info.dataset.set_seed(seed_for(self.seed, worker_id))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    sampler: Sampler[Any] | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A DataLoader with a seeded shuffling generator and seeded workers.

    ``sampler`` replaces the seeded random sampler (e.g. a ``DistributedSampler``).
    """
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    if sampler is None and shuffle:
        sampler = torch.utils.data.RandomSampler(cast(Sized, dataset), generator=gen)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=gen,
        worker_init_fn=_WorkerInit(seed) if num_workers else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


def resolve_channels_last(channels_last: bool | str, device: str | torch.device) -> bool:
    """Whether :func:`fit` keeps the network and the 5D batches in ``torch.channels_last_3d`` memory.

    ``"auto"``: on CUDA and on the CPU (oneDNN's 3D convolutions run faster channels-last;
    README, Benchmarks). ``True``/``False`` force it on or off.
    """
    device = torch.device(device)
    if channels_last == "auto":
        return device.type in ("cuda", "cpu")
    return bool(channels_last)


def _autocast(device, amp):
    # CUDA only. On the CPU bf16 autocast trained the compact network ~1.3x faster (channels-last,
    # AVX512-BF16), but oneDNN's bf16 convolution weight gradient is nondeterministic, at times NaN,
    # when an output side is <= 2 voxels (the compact network's last layers at 8 mm): not used.
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x, device, channels_last, augment=None, pool=None):
    x = x.to(device, non_blocking=True)
    if augment is not None:
        if (
            pool is not None
        ):  # warp the pooled batch (8x fewer voxels at 2x); the network passes it through
            x = augment.apply_batch(
                pool(x), pooled=pool.kernel_size
            )  # a pooled batch passes pool() unchanged
        else:
            x = augment.apply_batch(x)
    return (
        x.contiguous(memory_format=torch.channels_last_3d) if channels_last and x.ndim == 5 else x
    )


#: :func:`fit` average-pools the volumes once for a network with an input pooling when the pooled
#: float32 volumes take at most this many bytes (else the network pools every batch).
PREPOOL_MAX_BYTES = 4 * 2**30


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW with the fused implementation (one kernel over all parameters) where torch has it.

    On the CPU the default (one small op per parameter tensor and per update term) took ~2.7 ms
    of a compact-network step of 4 volumes, the fused one ~1 ms; the update is the same
    arithmetic. Falls back to the default for devices or dtypes the fused kernel lacks.

    Examples
    --------
    >>> opt = make_optimizer(torch.nn.Linear(3, 2).parameters(), 1e-3, 1e-4)
    >>> type(opt).__name__, opt.defaults["lr"]
    ('AdamW', 0.001)
    """
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _prepooled(data, pool, chunk=16):
    """``data`` with its volumes average-pooled once by the network's :class:`InputPool`, or ``data``.

    The network would pool the same volumes at every step of every epoch; pooled once, they
    take 8x less memory (at 2x) and the network passes them through (the same values, as the
    pooling is the network's own module). Only for a :class:`~neuroml.data.VolumeDataset`
    without a per-item transform, on the full grid, and under :data:`PREPOOL_MAX_BYTES`.
    """
    from neuroml.data.dataset import VolumeDataset

    if pool is None or not isinstance(data, VolumeDataset) or data.transform is not None:
        return data
    channels = data.volumes.shape[1] if data.volumes.ndim == 5 else 1
    # only the grid the network was built for (another one fails in the network, as it would have)
    if (
        tuple(data.volumes.shape[-3:]) != pool.in_shape
        or len(data) * channels * int(np.prod(pool.pooled_shape)) * 4 > PREPOOL_MAX_BYTES
    ):
        return data
    out = np.empty((len(data), channels, *pool.pooled_shape), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            rows = data.rows[start : start + chunk]
            x = torch.from_numpy(
                np.stack([np.asarray(data.volumes[r], dtype=np.float32) for r in rows])
            )
            out[start : start + len(rows)] = pool(x if x.ndim == 5 else x[:, None]).numpy()
    return VolumeDataset(out, data.labels)


def _batch_augmentation(data):
    """``(data without its transform, transform)`` when ``data``'s transform augments whole batches.

    A :class:`~neuroml.data.VolumeDataset` whose transform has ``apply_batch`` (the default
    :func:`~neuroml.data.make_augmentation`) then yields plain volumes, and :func:`fit`
    augments each batch on the training device; otherwise ``(data, None)``.
    """
    from neuroml.data.dataset import VolumeDataset

    transform = getattr(data, "transform", None)
    if not isinstance(data, VolumeDataset) or not hasattr(transform, "apply_batch"):
        return data, None
    plain = copy.copy(data)
    plain.transform = None
    return plain, transform


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset[Any],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: bool = True,
    channels_last: bool = False,
    num_workers: int = 0,
    criterion: torch.nn.Module | None = None,
) -> tuple[npt.NDArray[np.float64], float | None]:
    """Class probabilities of every item (in order) and, for labelled data, the loss.

    ``amp`` (bf16 autocast) applies on CUDA only. ``channels_last`` feeds 5D batches in
    ``torch.channels_last_3d`` memory (for a network kept in that format, as inside :func:`fit`).

    Returns
    -------
    proba : ndarray of shape (n, C), float64
    loss : float or None
    """
    dev: torch.device = resolve_device(device)
    model.eval()
    loader = make_loader(
        dataset, batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda"
    )
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in loader:
            x, y = batch if isinstance(batch, (list, tuple)) else (batch, None)
            with _autocast(dev, amp):
                out = model(_to_device(x, dev, channels_last))
            logits.append(out.float().cpu())
            if y is not None:
                labels.append(y)
    if not logits:
        return np.zeros((0, 0)), None
    scores = torch.cat(logits)
    loss = None
    if labels and criterion is not None:
        crit = copy.deepcopy(criterion).cpu()
        loss = float(crit(scores, torch.cat(labels)))
    return torch.softmax(scores.double(), dim=1).numpy(), loss


def predict_proba(
    model: torch.nn.Module,
    volumes: npt.NDArray[Any] | Dataset[Any],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: bool = True,
) -> npt.NDArray[np.float64]:
    """Class probabilities of a model for volumes ``(N, X, Y, Z)``/``(N, C, X, Y, Z)`` or a Dataset."""
    from neuroml.data.dataset import VolumeDataset

    data = volumes if isinstance(volumes, torch.utils.data.Dataset) else VolumeDataset(volumes)
    device = resolve_device(device)
    model.to(device)
    return evaluate(model, data, batch_size=batch_size, device=device, amp=amp)[0]


def _make_scheduler(opt, settings, total_steps):
    total_steps = max(int(total_steps), 1)
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=total_steps, eta_min=settings.lr * 0.01
        )
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=settings.lr, total_steps=total_steps, pct_start=0.2
        )
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


class _Indices(torch.utils.data.Dataset):
    """Item i is i: drives a DataLoader that yields index batches in the real loader's order."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class _Gathered:
    """Batches ``(vols[i], labels[i])`` for the index batches of a loader."""

    def __init__(self, index_loader, vols, labels):
        self.index_loader, self.vols, self.labels = index_loader, vols, labels

    def __len__(self):
        return len(self.index_loader)

    def __iter__(self):
        # the epoch's index batches go to the device in one asynchronous copy: a blocking copy per
        # batch made the GPU wait for the host between the steps of a small network
        batches = list(self.index_loader)
        if not batches:
            return
        flat = torch.cat(batches)
        if self.vols.device.type == "cuda":
            flat = flat.pin_memory().to(self.vols.device, non_blocking=True)
        for idx in flat.split([len(b) for b in batches]):
            yield self.vols[idx], self.labels[idx]


#: Preload the training volumes to the GPU ("auto") when they take at most this fraction of its memory.
PRELOAD_GPU_FRACTION = 0.25


def _preload(data, settings, device):
    """``(volumes, labels)`` of ``data`` on ``device`` for :func:`fit` to index directly, or None.

    Only for a :class:`~neuroml.data.VolumeDataset` without a per-item transform (:func:`fit`
    takes a batch augmentation off the dataset first and applies it to the gathered batches).
    ``preload="auto"`` preloads on CUDA when the float32 volumes take at most
    :data:`PRELOAD_GPU_FRACTION` of the card's memory: the loader then costs one index per batch.
    """
    from neuroml.data.dataset import VolumeDataset

    if (
        settings.preload is False
        or not isinstance(data, VolumeDataset)
        or data.transform is not None
        or data.labels is None
    ):
        return None
    shape = data.volumes.shape[1:]
    n_bytes = len(data) * int(np.prod(shape)) * 4
    if settings.preload == "auto":
        if (
            device.type != "cuda"
            or n_bytes
            > PRELOAD_GPU_FRACTION * torch.cuda.get_device_properties(device).total_memory
        ):
            return None
    vols = torch.from_numpy(
        np.stack([np.asarray(data.volumes[r], dtype=np.float32) for r in data.rows])
    )
    if vols.ndim == 4:
        vols = vols[:, None]
    log.info("training volumes preloaded to %s (%.0f MB)", device, n_bytes / 2**20)
    return vols.to(device), torch.as_tensor(np.asarray(data.labels), dtype=torch.int64).to(device)


@dataclasses.dataclass
class _Loop:
    """What every epoch of :func:`fit` works with.

    ``model`` is the network itself (its weights are saved and returned), ``net`` what trains
    (``model`` behind DDP and/or ``torch.compile``), ``eval_net`` what validates; ``preloaded``:
    the training volumes and labels on the device (:func:`_preload`) or None; ``augment``: the
    batch augmentation or None; ``pool``: the network's input pooling when batches are augmented
    on the pooled grid, else None.
    """

    model: torch.nn.Module
    net: torch.nn.Module
    eval_net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    criterion: torch.nn.Module
    settings: TrainSettings
    device: torch.device
    channels_last: bool
    drop_last: bool
    preloaded: tuple | None = None
    augment: object = None
    pool: torch.nn.Module | None = None


def _epoch_loader(loop, data, seed):
    """The loader of one training epoch (this rank's share of it under DDP), seeded with ``seed``."""
    sampler = None
    if ddp.is_distributed():
        # each rank its own share of the epoch (same permutation on every rank, padded to equal
        # length) and its own augmentation stream
        sampler = torch.utils.data.DistributedSampler(
            data,
            num_replicas=ddp.world_size(),
            rank=ddp.rank(),
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        seed = seed_for(seed, "rank", ddp.rank())
    if hasattr(data, "set_seed"):
        data.set_seed(seed)
    if loop.augment is not None:
        loop.augment.set_random_state(seed)
    settings = loop.settings
    if loop.preloaded is None:
        return make_loader(
            data,
            settings.batch_size,
            shuffle=True,
            seed=seed,
            num_workers=settings.num_workers,
            sampler=sampler,
            pin_memory=loop.device.type == "cuda",
            drop_last=loop.drop_last,
        )
    # the same batches in the same order, gathered from the volumes already on the device
    vols, labels = loop.preloaded
    index = make_loader(
        _Indices(len(data)),
        settings.batch_size,
        shuffle=True,
        seed=seed,
        sampler=sampler,
        drop_last=loop.drop_last,
    )
    return _Gathered(index, vols, labels)


def _train_epoch(loop, data, seed):
    """One epoch of training; returns the mean training loss (over every rank)."""
    loop.net.train()
    loader = _epoch_loader(loop, data, seed)
    device, opt, sched = loop.device, loop.opt, loop.sched
    n, accum = len(loader), loop.settings.grad_accum
    total, count = (
        torch.zeros((), dtype=torch.float64, device=device),
        0,
    )  # summed on the device: no sync per step
    opt.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        x = _to_device(x, device, loop.channels_last, loop.augment, loop.pool)
        y = y.to(device, non_blocking=True)
        step = (i + 1) % accum == 0 or i + 1 == n
        # DDP: all-reduce gradients only on the stepping batch
        with ddp.no_sync_if(loop.net, not step):
            with _autocast(device, loop.settings.amp):
                logits = loop.net(x)
            loss = loop.criterion(logits.float(), y)
            group = min(accum, n - (i // accum) * accum)
            (loss / group).backward()
        total += loss.detach().double() * len(y)
        count += len(y)
        if step:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return ddp.all_reduce_mean(float(total) / max(count, 1), count)


def _cpu_state(model):
    """A CPU copy of the weights in the default (contiguous) memory format, whatever the model's."""
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in model.state_dict().items()
    }


def _placed(model, settings, device, channels_last):
    """``(model, net, eval_net)``: the model on ``device`` (sync batch norm under DDP on CUDA), the
    network that trains (behind DDP and/or ``torch.compile``) and the one that validates."""
    distributed = ddp.is_distributed()
    if distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    net = model
    if distributed:  # weights broadcast from rank 0; gradients averaged over ranks
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    net = torch.compile(net) if settings.compile else net
    return model, net, model if distributed else net


def _epoch_batches(n_train, batch_size):
    """``(drop_last, batches per epoch and rank)`` for ``n_train`` items (DistributedSampler pads)."""
    n_local = math.ceil(n_train / ddp.world_size())  # items per rank and epoch
    drop_last = (
        n_local > batch_size and n_local % batch_size == 1
    )  # a batch of one breaks batch norm
    n_batches = n_local // batch_size if drop_last else math.ceil(n_local / batch_size)
    return drop_last, n_batches


def _fit_identity(stream, n_train, n_val, settings, device):
    """What a resumed fit must share with the checkpoint it continues."""
    identity = {
        "stream": [int(s) for s in stream],
        "n_train": n_train,
        "n_val": n_val,
        "settings": {k: getattr(settings, k) for k in _RESUME_KEYS},
    }
    if ddp.is_distributed():
        identity["world_size"] = ddp.world_size()
    if settings.amp and device.type == "cuda":  # bf16 weights differ from fp32 ones
        identity["precision"] = "bf16"  # (key absent in fp32 runs)
    return identity


def _new_state():
    """The loop state of a fit that has not run an epoch yet (what ``last.pt`` saves)."""
    return {
        "epoch": 0,
        "history": [],
        "best": None,
        "best_state": None,
        "bad_epochs": 0,
        "stopped_early": False,
    }


def _resume(ckpt, identity, loop):
    """The loop state saved in ``ckpt``, with the model, optimiser and scheduler restored from it.

    Raises :class:`ConfigError` when it was written by a fit with another identity or holds the
    weights of another network.
    """
    saved = load_checkpoint(ckpt, require=("model", "optimizer", "scheduler", "state", "identity"))
    if saved["identity"] != plain(identity):
        raise ConfigError(
            f"{ckpt} was written by a fit with other settings or data ({saved['identity']}); "
            f"delete it or rerun without resume"
        )
    try:
        loop.model.load_state_dict(saved["model"])
    except RuntimeError as exc:  # e.g. the compact network with another activation
        detail = " ".join(line.strip() for line in str(exc).splitlines())[:300]
        raise ConfigError(
            f"{ckpt} holds the weights of another network ({detail}); delete it or rerun "
            "without resume"
        ) from None
    loop.opt.load_state_dict(saved["optimizer"])
    loop.sched.load_state_dict(saved["scheduler"])
    return saved["state"]


def _validate(loop, val_data, rec, best):
    """Score the epoch on ``val_data`` into ``rec``; whether it improves on ``best``.

    Every rank takes rank 0's early-stopping decision.
    """
    settings = loop.settings
    proba, vloss = evaluate(
        loop.eval_net,
        val_data,
        batch_size=settings.batch_size * 2,
        device=loop.device,
        amp=settings.amp,
        channels_last=loop.channels_last,
        num_workers=settings.num_workers,
        criterion=loop.criterion,
    )
    bacc = balanced_accuracy(val_data.labels, proba.argmax(1), proba.shape[1])
    bacc, vloss = ddp.broadcast_object((bacc, vloss))
    rec.update(val_loss=vloss, val_balanced_accuracy=bacc)
    return (
        best is None
        or bacc > best["val_balanced_accuracy"] + 1e-12
        or (bacc >= best["val_balanced_accuracy"] - 1e-12 and vloss < best["val_loss"])
    )


def _run_epoch(loop, train_data, val_data, state, epoch, seed):
    """Train and validate epoch ``epoch`` (0-based), updating ``state``; returns its history row."""
    t0 = time.perf_counter()
    cuda_devices = [loop.device.index or 0] if loop.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        train_loss = _train_epoch(loop, train_data, seed)
    rec = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": None,
        "val_balanced_accuracy": None,
        "lr": float(loop.opt.param_groups[0]["lr"]),
    }
    improved = True
    if val_data is not None and len(val_data):
        improved = _validate(loop, val_data, rec, state["best"])
    if improved:
        state["best"] = {
            "epoch": epoch + 1,
            "val_balanced_accuracy": rec["val_balanced_accuracy"],
            "val_loss": rec["val_loss"],
        }
        state["best_state"] = _cpu_state(loop.model)
        state["bad_epochs"] = 0
    else:
        state["bad_epochs"] += 1
    if loop.settings.patience and state["bad_epochs"] >= loop.settings.patience:
        state["stopped_early"] = True
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    state["history"].append(rec)
    state["epoch"] = epoch + 1
    return rec


def _save_last(ckpt, loop, identity, state, seed):
    """Write the epoch-level checkpoint ``last.pt`` (atomic)."""
    save_checkpoint(
        {
            "format": 1,
            "identity": plain(identity),
            "model": _cpu_state(loop.model),
            "optimizer": loop.opt.state_dict(),
            "scheduler": loop.sched.state_dict(),
            "state": plain(state),
            "rng": {"epoch_seed": seed, "torch": torch.get_rng_state()},
        },
        ckpt,
    )


def _fit_result(loop, state):
    """The model with its best weights, in the default memory format and eval mode, and its history."""
    model = loop.model
    if loop.channels_last:  # hand the model back in the default memory format (attribution, ...)
        model.to(memory_format=torch.contiguous_format)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    best = state["best"] or {}
    return FitResult(
        model=model,
        history=state["history"],
        best_epoch=int(best.get("epoch", 0)),
        best_val_balanced_accuracy=best.get("val_balanced_accuracy"),
        best_val_loss=best.get("val_loss"),
        stopped_early=bool(state["stopped_early"]),
    )


def _fit_loop(model, n_train, settings, class_weights):
    """The :class:`_Loop` of a fit (its data path still unset): the network placed on the device,
    its optimiser, learning-rate schedule and loss."""
    device = resolve_device(settings.device)
    channels_last = resolve_channels_last(settings.channels_last, device)
    model, net, eval_net = _placed(model, settings, device, channels_last)
    opt = make_optimizer(model.parameters(), settings.lr, settings.weight_decay)
    drop_last, n_batches = _epoch_batches(n_train, settings.batch_size)
    sched = _make_scheduler(
        opt, settings, settings.epochs * math.ceil(n_batches / settings.grad_accum)
    )
    weight = (
        None
        if class_weights is None
        else torch.as_tensor(np.asarray(class_weights), dtype=torch.float32)
    )
    criterion = torch.nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    return _Loop(
        model, net, eval_net, opt, sched, criterion, settings, device, channels_last, drop_last
    )


def fit(
    model: torch.nn.Module,
    train_data: Dataset[Any],
    val_data: Dataset[Any] | None = None,
    settings: TrainSettings | None = None,
    class_weights: npt.ArrayLike | None = None,
    stream: Sequence[int] = (0,),
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    desc: str = "train",
    callback: Callable[[int, dict[str, Any]], object] | None = None,
) -> FitResult:
    """Train ``model`` in place and return it with its best weights.

    Parameters
    ----------
    model : torch.nn.Module
        Freshly initialised (or resumed from ``checkpoint_path``).
    train_data, val_data : torch Dataset of ``(x, y)``
        ``val_data`` (optional) drives early stopping and the choice of the best epoch;
        without it the last epoch is kept. A :class:`~neuroml.data.VolumeDataset` whose
        transform has ``apply_batch`` (:func:`~neuroml.data.make_augmentation`'s default) is
        augmented a batch at a time on the training device, reseeded every epoch.
    settings : TrainSettings
    class_weights : array-like of float, optional
        Cross-entropy class weights (e.g. ``n / (C * count_c)``).
    stream : tuple of int
        Identifies this fit's random stream (e.g. ``(seed, fold)``).
    checkpoint_path : str or Path, optional
        Epoch-level checkpoint (``last.pt``) written atomically after every epoch.
    resume : bool, default=False
        Continue from ``checkpoint_path`` when it exists.
    desc : str
        Progress bar label.
    callback : callable, optional
        ``callback(epoch, record)`` after each epoch (1-based epoch, the history row).

    Returns
    -------
    FitResult
    """
    from tqdm.auto import tqdm

    settings = (settings or TrainSettings()).validate()
    n_train, n_val = len(cast(Sized, train_data)), len(cast(Sized, val_data or []))
    loop = _fit_loop(model, n_train, settings, class_weights)
    identity = _fit_identity(stream, n_train, n_val, settings, loop.device)
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    state = _new_state()
    if ckpt is not None and resume and ckpt.is_file():
        state = _resume(ckpt, identity, loop)
        log.info("%s: resuming after epoch %d", desc, state["epoch"])
    train_data, loop.augment = _batch_augmentation(train_data)
    pool = input_pool_of(loop.model)
    train_data, val_data = _prepooled(train_data, pool), _prepooled(val_data, pool)
    loop.preloaded = _preload(train_data, settings, loop.device)
    loop.pool = pool if loop.augment is not None else None
    bar = tqdm(
        total=settings.epochs,
        initial=state["epoch"],
        desc=desc,
        disable=not settings.show_progress,
        leave=False,
    )
    for epoch in range(state["epoch"], settings.epochs):
        if state["stopped_early"]:
            break
        seed = seed_for(*stream, epoch)
        rec = _run_epoch(loop, train_data, val_data, state, epoch, seed)
        if ckpt is not None and is_main_process():
            _save_last(ckpt, loop, identity, state, seed)
        bar.update(1)
        bar.set_postfix(
            loss=f"{rec['train_loss']:.3f}",
            val_bacc="-"
            if rec["val_balanced_accuracy"] is None
            else f"{rec['val_balanced_accuracy']:.2f}",
        )
        log.debug("%s epoch %d: %s", desc, epoch + 1, rec)
        if callback is not None:
            callback(epoch + 1, rec)
        if state["stopped_early"]:
            log.info(
                "%s: early stop after epoch %d (best epoch %d)",
                desc,
                epoch + 1,
                state["best"]["epoch"],
            )
    bar.close()
    return _fit_result(loop, state)


def class_weights(y, n_classes):
    """Balanced class weights ``n / (C * count)``; 0 for a class without samples."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
