"""Multi-process training with ``torchrun``: PyTorch DistributedDataParallel helpers.

Launch any training entry point under ``torchrun`` and it trains data-parallel::

    torchrun --nproc_per_node=4 -m neuroml train DERIV --run-dir RUN           # one node, 4 GPUs
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m neuroml train DERIV --run-dir RUN  # two nodes

:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``...) and joins the process group: NCCL when the run uses
CUDA, gloo on CPU (so the same code is tested on a laptop). Every rank computes the same
seeded splits (rank 0's are broadcast and checked), the network's weights are broadcast
from rank 0, a :class:`~torch.utils.data.DistributedSampler` gives each rank its share of
every epoch, and only rank 0 writes files. Without torchrun's variables nothing changes:
training runs in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch

from neuroml.errors import ConfigError

__all__ = [
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main_process",
    "barrier",
    "broadcast_object",
    "all_reduce_mean",
    "launched_by_torchrun",
]

log = logging.getLogger("neuroml")

_T = TypeVar("_T")


def _dist():
    return torch.distributed


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    d = _dist()
    return d.is_available() and d.is_initialized() and d.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    d = _dist()
    return d.get_rank() if d.is_available() and d.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    d = _dist()
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def local_rank() -> int:
    """Rank on this node (torchrun's ``LOCAL_RANK``; 0 without it)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True unless running as a non-zero rank of ``torch.distributed`` (only rank 0 writes)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or SLURM + torchrun) set ``WORLD_SIZE`` > 1 and ``RANK``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(
    device: str | torch.device = "auto", timeout_s: float = 1800
) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes; return ``(device, initialised_here)``.

    Parameters
    ----------
    device : str, default="auto"
        "auto" (CUDA when available), "cpu" or "cuda". With CUDA each process uses
        ``cuda:LOCAL_RANK`` and NCCL; on CPU gloo.
    timeout_s : int, default=1800
        Collective-operation timeout.

    Returns
    -------
    device : torch.device
        The device this rank trains on.
    initialised_here : bool
        True when this call created the process group (the caller then tears it down
        with ``torch.distributed.destroy_process_group()``).

    Raises
    ------
    ConfigError
        If CUDA is requested and this node has fewer GPUs than ``LOCAL_RANK + 1``.
    """
    from neuroml._utils.device import resolve_device

    dev = resolve_device(device)
    d = _dist()
    created = False
    if launched_by_torchrun() and d.is_available() and not d.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            n_gpu = torch.cuda.device_count()
            if local_rank() >= n_gpu:
                raise ConfigError(
                    f"LOCAL_RANK={local_rank()} but this node has {n_gpu} CUDA device(s); "
                    f"use --nproc_per_node={n_gpu}"
                )
            torch.cuda.set_device(local_rank())
        d.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=int(timeout_s)))
        created = True
        log.info("rank %d/%d joined the process group (%s)", rank(), world_size(), backend)
    if dev.type == "cuda" and is_distributed():
        dev = torch.device("cuda", local_rank())
    return dev, created


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        _dist().barrier()


def broadcast_object(obj: _T, src: int = 0) -> _T:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in one process)."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float, weight: float = 1.0) -> float:
    """Weighted mean of a float over ranks (``value`` itself in one process)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value) * float(weight), float(weight)], dtype=torch.float64)
    if _dist().get_backend() == "nccl":
        t = t.cuda()
    _dist().all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


@contextlib.contextmanager
def no_sync_if(net: torch.nn.Module, skip: bool) -> Iterator[None]:
    """``net.no_sync()`` when ``skip`` (gradient accumulation under DDP), else nothing."""
    if skip and hasattr(net, "no_sync"):
        with net.no_sync():  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
            yield
    else:
        yield
