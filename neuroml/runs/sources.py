"""Where a run's training scans came from (raw-scan SHA-256s in ``provenance.json``), and which new
scans a run's models trained on."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from neuroml.errors import InputError

if TYPE_CHECKING:
    from neuroml.runs.folder import Run

__all__ = ["source_identity", "trained_on", "training_twins"]

log = logging.getLogger("neuroml")


def source_identity(
    deriv_dir: str | os.PathLike[str], paths: Sequence[str]
) -> tuple[list[str], list[str | None]]:
    """Where a derivatives folder's scans come from: its source datasets and each scan's raw input.

    Parameters
    ----------
    deriv_dir : str or Path
    paths : sequence of str
        Scan paths relative to ``deriv_dir`` (stacked inputs: joined with ``|``; the first is used).

    Returns
    -------
    (list of str, list of str or None)
        The ``SourceDatasets`` URLs of its ``dataset_description.json`` (empty when unknown) and,
        per path, the ``SourceSHA256`` its JSON sidecar records (None when unknown).
    """
    from neuroml._utils.fileio import read_json

    deriv_dir = Path(deriv_dir)
    try:
        desc = read_json(deriv_dir / "dataset_description.json")
        urls = sorted(
            {
                str(d["URL"])
                for d in desc.get("SourceDatasets") or []
                if isinstance(d, dict) and "URL" in d
            }
        )
    except (InputError, OSError, AttributeError, TypeError):
        urls = []
    shas = []
    for rel in paths:
        first = str(rel).split("|")[0]
        # a BOLD map's record is the series' desc-maps_bold.json; a T1w's sits beside it
        stem = re.sub(
            r"_desc-[A-Za-z0-9]+_boldmap$",
            "_desc-maps_bold",
            first[: -len(".nii.gz")] if first.endswith(".nii.gz") else first.rsplit(".", 1)[0],
        )
        try:
            sha = read_json(deriv_dir / f"{stem}.json").get("SourceSHA256")
        except (InputError, OSError, AttributeError):
            sha = None
        shas.append(sha if isinstance(sha, str) and sha else None)
    return urls, shas


def _training_sources(run: Run) -> dict[str, set[str]]:
    """``{participant: raw-scan SHA-256s}`` of a run's training scans (``provenance.json``)."""
    from neuroml._utils.fileio import read_json

    try:
        inputs = read_json(Path(run.run_dir) / "provenance.json").get("inputs") or {}
    except (InputError, OSError, AttributeError):
        inputs = {}
    return {p: set(v) for p, v in (inputs.get("source_sha256") or {}).items()}


def training_twins(
    run: Run,
    deriv_dir: str | os.PathLike[str],
    participant_ids: Sequence[str],
    paths: Sequence[str],
) -> dict[str, str]:
    """``{participant: training participant}`` for scans whose raw input (``SourceSHA256``) is a
    training scan of another ID (the same raw file under another name; a de-identified copy has
    other bytes and is not found)."""
    owner = {sha: p for p, shas in _training_sources(run).items() for sha in shas}
    _, shas = source_identity(deriv_dir, paths)
    return {p: owner[s] for p, s in zip(participant_ids, shas) if s in owner and owner[s] != p}


def trained_on(
    run: Run,
    deriv_dir: str | os.PathLike[str],
    participant_ids: Sequence[str],
    paths: Sequence[str],
) -> tuple[set[str], set[str]]:
    """Which of these scans' participants a fold model of ``run`` trained or validated on.

    A participant is "trained on" when its ID is a training ID, or when one of its scans has
    the raw input (``SourceSHA256`` of its sidecar) of a training scan, under any ID. An ID is
    never cleared by its checksum: a re-converted or de-identified copy of a training scan has
    other bytes, so only ``force`` predicts another study's ``sub-001``.

    Returns
    -------
    (set of str, set of str)
        The trained-on participants, and those of them found by checksum under a new ID.
    """
    seen_shas = set().union(*_training_sources(run).values())
    _, shas = source_identity(deriv_dir, paths)
    by_content = {p for p, s in zip(participant_ids, shas) if s is not None and s in seen_shas}
    by_id = set(participant_ids) & run.trained_ids()
    return by_content | by_id, by_content - by_id
