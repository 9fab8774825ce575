"""Preprocessing a whole BIDS dataset: participant level (resumable, parallel) and group level.

Each modality is a pipeline object (:mod:`neuroml.workflows.modalities`); the batch loops over
them and has no modality of its own.

Resuming: a scan is skipped when its sidecar exists, is valid JSON, records the input's
SHA-256 and the same parameters, and all its other outputs exist with the size and SHA-256
the sidecar records (a truncated file is redone; see :mod:`neuroml.io.derivatives`). Every
file is written atomically and the sidecar last, so a killed run leaves either a complete scan
or one that is redone.

Failures: one bad scan never stops the batch, nor does a worker process that dies (killed
for memory, a crash): the scans it may have held run again, each in a process of its own,
and the one that dies again is recorded. Each failure is recorded in ``OUT/failures.tsv``
(``participant_id``, ``file``, one-line ``reason``); the file is rewritten on every run
(entries of scans that now succeed, or whose file is no longer in the BIDS folder, are removed;
it is deleted when nothing fails) under a
lock, so SLURM array tasks writing to the same folder do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from neuroml._utils.fileio import (
    advisory_lock,
    read_json,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from neuroml._utils.options import check_in_range
from neuroml._utils.types import PathLike
from neuroml._version import __version__
from neuroml.errors import ConfigError, InputError, NeuromlError, OutputError
from neuroml.io.derivatives import discard_failed_attempt, relative_path
from neuroml.preprocessing.qc import write_group_qc
from neuroml.workflows.modalities import BoldPipeline, T1wPipeline, select_pipelines

__all__ = [
    "Failure",
    "read_failures",
    "BatchResult",
    "run_participant_level",
    "run_group_level",
    "write_dataset_description",
]

log = logging.getLogger("neuroml")

BIDS_VERSION = "1.9.0"
_FAILURE_COLUMNS = ("participant_id", "file", "reason")


@dataclasses.dataclass(frozen=True)
class Failure:
    """A scan that could not be processed."""

    participant_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.participant_id} {self.file}: {self.reason}"


@dataclasses.dataclass
class BatchResult:
    """Outcome of :func:`run_participant_level`.

    Attributes
    ----------
    n_done : int
        Scans processed in this run.
    n_skipped : int
        Scans already complete (resumed).
    failures : list of Failure
        Scans that failed in this run.
    """

    n_done: int
    n_skipped: int
    failures: list[Failure]


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _source_url(bids_dir):
    return "file://" + str(Path(bids_dir).resolve())


def write_dataset_description(out_dir: PathLike, bids_dir: PathLike) -> Path:
    """Write ``OUT/dataset_description.json`` for the derivatives (atomically).

    Raises
    ------
    ConfigError
        If ``out_dir`` already holds derivatives of another raw dataset.
    """
    out_dir = Path(out_dir)
    url = _source_url(bids_dir)
    path = out_dir / "dataset_description.json"
    if path.is_file():
        try:
            existing = read_json(path).get("SourceDatasets", [])
            existing_urls = [d.get("URL") for d in existing if isinstance(d, dict)]
        except (InputError, AttributeError):
            existing_urls = []
        if existing_urls and url not in existing_urls:
            raise ConfigError(
                f"{out_dir} already holds derivatives of another dataset ({existing_urls[0]}); "
                "choose another output folder, or delete its dataset_description.json to reuse it"
            )
    desc = {
        "Name": "neuroml preprocessing (T1w and resting-state BOLD on the MNI grid)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "neuroml",
                "Version": __version__,
                "Description": "T1w: N4, affine registration to MNI152NLin2009aSym, intensity "
                "normalization (SimpleITK); BOLD: onto the same grid, cleaning, "
                "ALFF/fALFF/ReHo/connectivity maps (nilearn)",
            }
        ],
        "SourceDatasets": [{"URL": url}],
        "DatasetLinks": {"raw": url},
    }
    write_json_atomic(path, desc)
    return path


def _one_line(exc):
    if isinstance(exc, NeuromlError):
        text = str(exc)
        path = getattr(exc, "path", None)
        if path and text.startswith(f"{path}: "):
            text = text[len(path) + 2 :]
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = (
            f"unexpected {type(exc).__name__}: {first}"
            if first
            else f"unexpected {type(exc).__name__}"
        )
    text = " ".join(text.split())
    return text[:500]


def _worker(scan, pipeline, out_dir, bids_dir, n_threads):
    """Process one scan with its pipeline; never raises (returns the status, reason and
    traceback) except for an :class:`OutputError`.

    A scan that fails leaves no outputs of this attempt behind; a whole earlier version made
    from the same input stays (see :func:`neuroml.io.derivatives.discard_failed_attempt`) and
    the failure is recorded in ``failures.tsv``.
    """
    try:
        pipeline.run(scan, out_dir, bids_dir, n_threads)
        return "done", None, None
    except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the batch
        tb = traceback.format_exc()
        with contextlib.suppress(Exception):
            discard_failed_attempt(pipeline.output_paths(scan, out_dir), scan.path)
        if isinstance(exc, OutputError):
            raise  # a full disk or a read-only folder stops the batch: every scan would fail
        return "failed", _one_line(exc), tb


#: The reason recorded for a scan whose worker process was killed.
WORKER_DIED = (
    "worker process died while processing this scan (out of memory? a crash in a library?); "
    "try again with fewer --n-jobs"
)


def _isolated(items, n_workers, target=None):
    """Run ``target(i, *args)`` for each ``(i, args)`` of ``items``, each in a process of its own
    executor, ``n_workers`` at a time; yield ``(i, outcome)`` as they finish.

    A process that dies (killed for memory, a segmentation fault) breaks only its own
    executor, so the outcome ``("failed", WORKER_DIED, None)`` names exactly its scan.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky.process_executor import BrokenProcessPool, ProcessPoolExecutor

    target = _indexed if target is None else target
    items = list(items)
    free = [ProcessPoolExecutor(max_workers=1) for _ in range(max(1, min(n_workers, len(items))))]
    running = {}
    try:
        while items or running:
            while items and free:
                executor = free.pop()
                i, args = items.pop(0)
                running[executor.submit(target, i, *args)] = (i, executor)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i, executor = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    executor.shutdown(wait=False)
                    free.append(ProcessPoolExecutor(max_workers=1))
                    outcome = (i, ("failed", WORKER_DIED, None))
                else:
                    free.append(executor)
                yield outcome
    finally:
        for executor in free + [e for _, e in running.values()]:
            with contextlib.suppress(Exception):
                executor.shutdown(wait=False, kill_workers=True)


def _parallel(todo, n_workers, args_of):
    """Yield ``(i, outcome)`` of ``todo[i]`` as scans finish (joblib's loky processes);
    ``args_of(scan)`` gives the arguments of :func:`_worker`."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_workers, backend="loky", return_as="generator_unordered")(
        delayed(_indexed)(i, *args_of(scan)) for i, scan in enumerate(todo)
    )


def _relative(path, bids_dir):
    """``path`` relative to ``bids_dir`` (a symlinked scan keeps its own name), else in full."""
    rel = relative_path(path, bids_dir)
    return str(path) if rel is None else rel


def read_failures(out_dir: PathLike) -> list[dict[str, str]]:
    """Rows of ``OUT/failures.tsv`` as dicts (empty list when there is none)."""
    path = Path(out_dir) / "failures.tsv"
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append(dict(zip(_FAILURE_COLUMNS, parts[:2] + ["\t".join(parts[2:])])))
    return rows


def _clean(text):
    return " ".join(str(text).replace("\t", " ").split())


def _update_failures(out_dir, processed_files, failures, bids_dir=None):
    """Merge this run's outcome into ``failures.tsv`` (delete it when empty); with ``bids_dir``,
    entries of files no longer in it (renamed or deleted since) are dropped."""
    path = out_dir / "failures.tsv"
    with advisory_lock(out_dir / ".failures.lock"):
        rows = [
            r
            for r in read_failures(out_dir)
            if r["file"] not in processed_files
            and (bids_dir is None or os.path.lexists(Path(bids_dir) / r["file"]))
        ]
        rows += [dataclasses.asdict(f) for f in failures]
        rows.sort(
            key=lambda r: (r["file"], r["participant_id"])
        )  # not completion order: reruns diff cleanly
        if rows:
            text = (
                "\t".join(_FAILURE_COLUMNS)
                + "\n"
                + "".join("\t".join(_clean(r[c]) for c in _FAILURE_COLUMNS) + "\n" for r in rows)
            )
            write_text_atomic(path, text)
        elif path.exists():
            path.unlink()


def _progress(total, show):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="preprocess", unit="scan", disable=not show or total == 0)


def run_participant_level(
    bids_dir: PathLike,
    out_dir: PathLike,
    participant_labels: str | Iterable[str] | None = None,
    resolution: float = 2.0,
    n_jobs: int = 1,
    show_progress: bool = True,
    modality: str = "anat",
    func_params: Mapping[str, Any] | None = None,
    **params: Any,
) -> BatchResult:
    """Preprocess every T1w scan (and/or BOLD series) of a BIDS dataset (BIDS-App participant level).

    Parameters
    ----------
    bids_dir : str or Path
        Raw BIDS dataset.
    out_dir : str or Path
        Derivatives folder (created).
    participant_labels : list of str, optional
        Only these participants (``01`` or ``sub-01``).
    resolution : float, default=2.0
        Target grid voxel size (mm).
    n_jobs : int, default=1
        Scans processed in parallel (processes); -1 for one per core. Each scan uses one
        SimpleITK thread, so results do not depend on ``n_jobs``.
    show_progress : bool, default=True
        A tqdm progress bar.
    modality : {"anat", "func", "both"}, default="anat"
        T1w scans (``anat/*_T1w``), BOLD series (``func/*_bold``, raw or fMRIPrep outputs,
        see :func:`neuroml.functional.preprocess_bold`), or both.
    func_params : dict, optional
        Parameters of the BOLD pipeline (:data:`neuroml.functional.FUNC_DEFAULT_PARAMS`,
        e.g. ``{"confounds": "scrubbing"}``); ``resolution`` is shared with the T1w. Refused
        with ``modality="anat"``.
    **params
        Other parameters of :data:`neuroml.preprocessing.t1w.DEFAULT_PARAMS`
        (``normalization``, ``seed``...).

    Returns
    -------
    BatchResult
        ``n_done``, ``n_skipped``, ``failures`` (list of :class:`Failure`).

    Raises
    ------
    InputError
        If ``bids_dir`` is not a BIDS dataset, a requested participant is missing, or no
        T1w scan is found.
    ConfigError
        For a bad parameter.
    """
    pipelines = select_pipelines(modality, resolution, func_params, params)
    n_jobs = int(check_in_range("n_jobs", n_jobs, -1, 1024, kind=(int,)))
    if n_jobs == 0:
        raise ConfigError("The 'n_jobs' parameter must be a positive number of processes or -1.")
    batch = _Batch({p.suffix: p for p in pipelines}, Path(out_dir), Path(bids_dir))
    scans, not_processed = _find_scans(pipelines, batch.bids_dir, participant_labels)
    _prepare_out_dir(batch.out_dir, batch.bids_dir, scans)
    scans, clashes = _without_clashes(scans, batch)
    todo, n_skipped = _not_complete(scans, batch)
    n_workers = _cpu_count() if n_jobs == -1 else n_jobs
    n_workers = max(1, min(n_workers, len(todo)))
    tally = _Tally(batch.bids_dir, _progress(len(todo), show_progress))
    for group in clashes:
        for scan in group:
            others = ", ".join(_relative(o.path, batch.bids_dir) for o in group if o is not scan)
            reason = (
                f"same BIDS name as {others} (one image per name, whatever the extension): "
                "not processed; remove or rename one of them"
            )
            tally.not_processed(scan.participant_id, scan.path, reason)
    for participant_id, path, reason in not_processed:
        tally.not_processed(participant_id, path, reason)
    _process_and_record(todo, n_workers, batch, tally)
    log.info(
        "preprocessing: %d processed, %d already done, %d failed",
        tally.n_done,
        n_skipped,
        len(tally.failures),
    )
    return BatchResult(n_done=tally.n_done, n_skipped=n_skipped, failures=tally.failures)


@dataclasses.dataclass(frozen=True)
class _Batch:
    """What every scan of a batch shares: its pipeline (by BIDS suffix) and the folders.

    Results depend on the thread count: each scan uses ``n_threads`` SimpleITK threads whatever
    ``n_jobs``.
    """

    pipelines: dict
    out_dir: Path
    bids_dir: Path
    n_threads: int = 1

    def pipeline(self, scan):
        return self.pipelines[scan.suffix]

    def args_of(self, scan):
        """The arguments of :func:`_worker` for ``scan``."""
        return scan, self.pipeline(scan), self.out_dir, self.bids_dir, self.n_threads


@dataclasses.dataclass
class _Tally:
    """The outcome of a batch so far: scans done, failures, and the files handled."""

    bids_dir: Path
    bar: object
    n_done: int = 0
    failures: list = dataclasses.field(default_factory=list)
    handled: set = dataclasses.field(default_factory=set)

    def not_processed(self, participant_id, path, reason):
        """Record a file that is not processed (before the batch runs)."""
        rel = _relative(path, self.bids_dir)
        log.warning("%s: %s", rel, reason)
        self.handled.add(rel)
        self.failures.append(Failure(participant_id, rel, reason))

    def record(self, scan, outcome):
        """Record the outcome ``(status, reason, traceback)`` of a scan's worker."""
        status, reason, tb = outcome
        rel = _relative(scan.path, self.bids_dir)
        self.handled.add(rel)
        if status == "done":
            self.n_done += 1
        else:
            log.warning("%s: %s", rel, reason)
            log.debug("traceback of %s:\n%s", rel, tb)
            self.failures.append(Failure(scan.participant_id, rel, reason))
        self.bar.update(1)


def _find_scans(pipelines, bids_dir, participant_labels):
    """The scans of each pipeline in turn, and ``(participant_id, path, reason)`` of the files
    not processed.

    Raises :class:`InputError` when there is nothing to do: no scan of any pipeline (with a
    single pipeline, files not processed are something to report too); warns when the last
    pipeline finds nothing but the others do.
    """
    scans, not_processed = [], []
    for n, pipeline in enumerate(pipelines, 1):
        found, odd = pipeline.find_scans(bids_dir, participant_labels)
        if n == len(pipelines) and not found and not scans and not (n == 1 and odd):
            others = "".join(f" nor {p.kind}" for p in pipelines[:-1])
            raise InputError(pipeline.not_found + others, bids_dir)
        if n == len(pipelines) and not found and scans:
            log.warning(
                "no %s found in %s: only %s processed",
                pipeline.kind,
                bids_dir,
                " and ".join(p.kind for p in pipelines[:-1]),
            )
        scans += found
        not_processed += odd
    return scans, not_processed


def _prepare_out_dir(out_dir, bids_dir, scans):
    """Create the derivatives folder, clear what killed runs left in it, describe it."""
    if out_dir.resolve() == bids_dir.resolve():
        raise ConfigError("the output folder must differ from the BIDS folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # temporaries a killed run left (failures.tsv, beside scans that are now skipped); only this
    # host's of dead processes, so concurrent SLURM tasks are not disturbed
    remove_stale_temporaries(out_dir)
    for folder in sorted({out_dir / f"sub-{scan.subject}" for scan in scans}):
        remove_stale_temporaries(folder, recursive=True)
    write_dataset_description(out_dir, bids_dir)


def _without_clashes(scans, batch):
    """The scans whose outputs are their own, and the groups of scans that share one sidecar.

    Two inputs with one output name (``sub-01_T1w.nii`` beside ``sub-01_T1w.nii.gz``) would
    overwrite each other's outputs, one at random on every run: none of them is processed.
    """
    by_output = {}
    for scan in scans:
        sidecar = batch.pipeline(scan).output_paths(scan, batch.out_dir)["sidecar"]
        by_output.setdefault(sidecar, []).append(scan)
    clashes = [group for group in by_output.values() if len(group) > 1]
    clashing = {id(scan) for group in clashes for scan in group}
    return [scan for scan in scans if id(scan) not in clashing], clashes


def _not_complete(scans, batch):
    """The scans to process, and the number already complete (skipped)."""
    todo, n_skipped = [], 0
    for scan in scans:
        try:
            done = batch.pipeline(scan).is_complete(scan, batch.out_dir)
        except (NeuromlError, OSError):
            done = False
        if done:
            n_skipped += 1
        else:
            todo.append(scan)
    if n_skipped:
        log.info("%d of %d scans already preprocessed: skipped", n_skipped, len(scans))
    return todo, n_skipped


def _process_and_record(todo, n_workers, batch, tally):
    """Process ``todo``, then merge the outcome into ``failures.tsv`` (also on Ctrl-C: what was
    handled is recorded, older entries of the rest are kept)."""
    finished = False
    try:
        _process(todo, n_workers, batch, tally)
        finished = True
    finally:
        tally.bar.close()
        try:
            _update_failures(batch.out_dir, tally.handled, tally.failures, batch.bids_dir)
        except (OSError, NeuromlError):
            if finished:
                raise
            log.debug("failures.tsv not updated", exc_info=True)  # the error in flight says why


def _process(todo, n_workers, batch, tally):
    """Run :func:`_worker` on each scan of ``todo``, ``n_workers`` at a time; record each outcome.

    When a worker process dies, joblib cannot tell which scan it held: the scans not finished
    run again, each in a process of its own (:func:`_isolated`).
    """
    if n_workers == 1:
        for scan in todo:
            tally.record(scan, _worker(*batch.args_of(scan)))
        return
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    left = dict.fromkeys(range(len(todo)))
    try:
        for i, outcome in _parallel(todo, n_workers, batch.args_of):
            left.pop(i, None)
            tally.record(todo[i], outcome)
    except TerminatedWorkerError:
        log.warning(
            "a worker process died (out of memory?): the %d scans not finished run again, "
            "each in a process of its own",
            len(left),
        )
        for i, outcome in _isolated([(i, batch.args_of(todo[i])) for i in left], n_workers):
            tally.record(todo[i], outcome)


def _indexed(i, scan, pipeline, out_dir, bids_dir, n_threads):
    return i, _worker(scan, pipeline, out_dir, bids_dir, n_threads)


def run_group_level(out_dir: PathLike) -> Path:
    """Summarize the QC of every processed scan (BIDS-App group level).

    Writes ``OUT/group_qc.tsv`` (T1w: participant_id, file, correlation, coverage,
    brain_volume_ml, qc_pass, robust_z, outlier), ``OUT/group_qc_bold.tsv`` (BOLD series:
    volumes, volumes dropped by scrubbing, mean framewise displacement, coverage,
    registration metric, qc_pass, robust z-scores, outlier; see
    :func:`neuroml.preprocessing.qc.bold_qc_rows`) and ``OUT/group_qc.html`` (the tables and
    every QC picture, embedded). Each file is written only when there are scans of its kind.

    Parameters
    ----------
    out_dir : str or Path
        Derivatives folder written by :func:`run_participant_level`.

    Returns
    -------
    Path
        ``OUT/group_qc.html``.

    Raises
    ------
    InputError
        If the folder holds no preprocessed scan.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError("derivatives folder not found", out_dir)
    rows, problems = T1wPipeline.group_rows(out_dir)
    bold_rows, bold_problems = BoldPipeline.group_rows(out_dir)
    problems += bold_problems
    if not rows and not bold_rows:
        raise InputError("no preprocessed scans found (run the participant level first)", out_dir)
    _, html_path = write_group_qc(
        rows, out_dir, failures=read_failures(out_dir) + problems, bold_rows=bold_rows
    )
    n_bad = sum(not r["qc_pass"] or r["outlier"] for r in rows + bold_rows)
    log.info(
        "group QC: %d T1w scans, %d BOLD series, %d flagged -> %s",
        len(rows),
        len(bold_rows),
        n_bad,
        html_path,
    )
    return html_path
