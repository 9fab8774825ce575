"""Several inputs of one subject as channels: the T1w and/or BOLD maps, stacked on one grid.

``inputs=["alff", "reho"]`` or ``["T1w", "falff"]``: each input has its own tensor cache
(:func:`~neuroml.data.cache.build_cache` with ``input=``); :func:`open_inputs` aligns them per
participant and session (the first file in name order when an input has several, e.g. two
BOLD runs) and stacks them as channels of one float16 array ``(N, C, X, Y, Z)`` held in RAM.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from neuroml._utils.types import PathLike
from neuroml.data.cache import TensorCache, build_cache
from neuroml.errors import ConfigError, InputError

__all__ = ["StackedCache", "open_inputs", "check_inputs"]

log = logging.getLogger("neuroml")


def check_inputs(inputs: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (the T1w alone) or a non-empty list of distinct input names."""
    if inputs is None:
        return None
    if isinstance(inputs, str):
        inputs = [s for s in inputs.replace(",", " ").split() if s]
    inputs = [str(i) for i in inputs]
    if not inputs or len(set(inputs)) != len(inputs):
        raise ConfigError(
            f"The 'inputs' parameter must list distinct inputs such as ['T1w', 'alff']. Got {inputs!r}."
        )
    return inputs


class StackedCache(TensorCache):
    """Inputs stacked as channels; same attributes as :class:`TensorCache` plus ``inputs``.

    ``data`` has shape ``(N, C, X, Y, Z)``; ``index.path`` joins the inputs' paths with ``|``
    and ``index.sha256`` is the SHA-256 of their checksums.
    """

    def __init__(
        self,
        deriv_dir: PathLike,
        resolution: str,
        data: npt.NDArray[Any],
        index: pd.DataFrame,
        affine: npt.ArrayLike,
        shape: Sequence[int],
        digest: str,
        inputs: Iterable[str],
    ) -> None:
        super().__init__(deriv_dir, resolution, data, index, affine, shape, digest)
        self.inputs = list(inputs)

    def __repr__(self):
        return (
            f"StackedCache({str(self.deriv_dir)!r}, res-{self.resolution}, "
            f"{len(self)} x {self.inputs} of {self.shape})"
        )

    @property
    def n_channels(self) -> int:
        return len(self.inputs)

    def load(self, rows: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Volumes ``rows`` (default all) as float32, shape ``(len(rows), C, X, Y, Z)``."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return np.asarray(self.data[rows], dtype=np.float32)


def _first_rows(cache):
    idx = cache.index.assign(_s=cache.index["session"].fillna("")).sort_values(
        ["participant_id", "_s", "path"]
    )
    first = idx.drop_duplicates(["participant_id", "_s"])
    if len(first) < len(idx):
        log.warning(
            "%s: %d participant/session(s) have several volumes; the first (by name) is used",
            cache.index["path"].iloc[0].rsplit("/", 1)[-1],
            len(idx) - len(first),
        )
    return {(p, s): r for p, s, r in zip(first["participant_id"], first["_s"], first["row"])}


def open_inputs(
    deriv_dir: PathLike,
    resolution: float | str | None = None,
    inputs: str | Iterable[str] | None = None,
    show_progress: bool = False,
) -> TensorCache:
    """The cache of the T1w (``inputs=None``), of one input, or of several stacked as channels.

    Raises
    ------
    InputError
        If an input is missing, the inputs lie on different grids, or no participant has all.
    """
    inputs = check_inputs(inputs)
    if inputs is None:
        return build_cache(deriv_dir, resolution=resolution, show_progress=show_progress)
    caches = [
        build_cache(deriv_dir, resolution=resolution, show_progress=show_progress, input=i)
        for i in inputs
    ]
    if len(caches) == 1:
        return caches[0]
    ref = caches[0]
    for name, c in zip(inputs[1:], caches[1:]):
        if c.shape != ref.shape or not np.allclose(c.affine, ref.affine, atol=1e-4):
            raise InputError(
                f"input {name!r} lies on grid {c.shape}, input {inputs[0]!r} on {ref.shape}; "
                "preprocess both with the same --resolution",
                deriv_dir,
            )
    maps = [_first_rows(c) for c in caches]
    keys = sorted(set.intersection(*(set(m) for m in maps)))
    for name, m in zip(inputs, maps):
        lost = sorted({p for p, _ in set(m) - set(keys)})
        if lost:
            log.warning(
                "input %s: %d participant(s) lack another input and are left out: %s",
                name,
                len(lost),
                ", ".join(lost[:10]),
            )
    if not keys:
        raise InputError(f"no participant has all of the inputs {inputs}", deriv_dir)
    data = np.empty((len(keys), len(caches), *ref.shape), dtype=np.float16)
    records = []
    for i, key in enumerate(keys):
        rows = [m[key] for m in maps]
        for ch, (cache, r) in enumerate(zip(caches, rows)):
            data[i, ch] = cache.data[r]
        paths = [cache.index["path"].iloc[r] for cache, r in zip(caches, rows)]
        shas = [cache.index["sha256"].iloc[r] for cache, r in zip(caches, rows)]
        records.append(
            {
                "row": i,
                "participant_id": key[0],
                "session": key[1] or None,
                "run": None,
                "path": "|".join(paths),
                "sha256": hashlib.sha256("|".join(shas).encode()).hexdigest(),
            }
        )
    index = pd.DataFrame.from_records(records)
    digest = hashlib.sha256(
        "".join(f"{p}\t{s}\n" for p, s in zip(index["path"], index["sha256"])).encode()
    ).hexdigest()
    data.setflags(write=False)
    return StackedCache(
        deriv_dir, ref.resolution, data, index, ref.affine, ref.shape, digest, inputs
    )
