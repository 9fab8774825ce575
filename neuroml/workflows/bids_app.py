"""Preprocessing a whole BIDS dataset: participant level (resumable, parallel) and group level.

Resuming: a scan is skipped when its sidecar exists, is valid JSON, records the input's
SHA-256 and the same parameters, and all its other outputs exist with the size and SHA-256
the sidecar records (a truncated file is redone; a sidecar written before these records
existed is trusted when its images read in full). Every file is written atomically and the
sidecar last, so a killed run leaves either a complete scan or one that is redone.

Failures: one bad scan never stops the batch, nor does a worker process that dies (killed
for memory, a crash): the scans it may have held run again, each in a process of its own,
and the one that dies again is recorded. Each failure is recorded in ``OUT/failures.tsv``
(``participant_id``, ``file``, one-line ``reason``); the file is rewritten on every run
(entries of scans that now succeed, or whose file is no longer in the BIDS folder, are removed;
it is deleted when nothing fails) under a
lock, so SLURM array tasks writing to the same folder do not lose each other's entries.
"""

import contextlib
import dataclasses
import logging
import os
import traceback
import zlib
from pathlib import Path

from neuroml._version import __version__
from neuroml._utils.fileio import (
    advisory_lock,
    read_json,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from neuroml._utils.options import check_in_range
from neuroml.errors import ConfigError, InputError, NeuromlError, OutputError
from neuroml.io.bids import derivative_name, find_scans, parse_entities
from neuroml.preprocessing.qc import write_group_qc
from neuroml.preprocessing.t1w import check_params, is_complete, output_paths, preprocess_t1w

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

    def __str__(self):
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
    failures: list


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _source_url(bids_dir):
    return "file://" + str(Path(bids_dir).resolve())


def write_dataset_description(out_dir, bids_dir):
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
            old = read_json(path)
            old_urls = [d.get("URL") for d in old.get("SourceDatasets", []) if isinstance(d, dict)]
        except (InputError, AttributeError):
            old_urls = []
        if old_urls and url not in old_urls:
            raise ConfigError(
                f"{out_dir} already holds derivatives of another dataset ({old_urls[0]}); "
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


def _previous_version_kept(scan, sidecar):
    """True when ``sidecar`` describes a whole earlier version made from the scan's current input."""
    from neuroml._utils.fileio import sha256_file
    from neuroml.io.derivatives import outputs_intact

    try:
        side = read_json(sidecar)
        records = side.get("OutputFiles")
        if not isinstance(records, dict) or side.get("SourceSHA256") != sha256_file(scan.path):
            return False
        files = [sidecar.parent / str(rec["File"]) for rec in records.values()]
        return outputs_intact(sidecar, side, files)
    except (InputError, OSError, AttributeError, KeyError, TypeError):
        return False


def _worker(scan, out_dir, bids_dir, params, n_threads):
    """Process one scan (T1w, or a BOLD series through ``neuroml.functional``); never raises
    (returns the status, reason and traceback) except for an :class:`OutputError`.

    A scan that fails leaves no outputs of this attempt behind. An earlier version is kept
    when it is whole (its sidecar and every file it records, by size and SHA-256) and was
    made from the same input, e.g. with other parameters: the failure is recorded in
    ``failures.tsv`` and the earlier files stay as they were. Outputs of another input are
    deleted (they would not match the scan any more).
    """
    if scan.suffix == "bold":
        from neuroml.functional.files import func_output_paths, preprocess_bold

        run, outputs = preprocess_bold, lambda: func_output_paths(scan.entities, out_dir, params)
    else:
        run, outputs = (
            preprocess_t1w,
            lambda: output_paths(scan.entities, out_dir, params["resolution"]),
        )
    try:
        run(scan, out_dir, bids_dir=bids_dir, n_threads=n_threads, **params)
        return "done", None, None
    except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the batch
        tb = traceback.format_exc()
        with contextlib.suppress(Exception):
            paths = (
                outputs()
            )  # this attempt's temporaries are gone already (atomic_path removes them)
            if not _previous_version_kept(scan, paths["sidecar"]):
                for path in paths.values():
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
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
    try:
        # resolve the folder, not the file: a symlinked scan (git-annex, a loop) keeps its own name
        path = Path(path)
        return (path.parent.resolve() / path.name).relative_to(Path(bids_dir).resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):
        return str(path)


#: The reason recorded for a file that looks like a T1w image but is not found as one.
MISNAMED_T1W = (
    "looks like a T1w image but its path is not BIDS, so it is not processed: rename it "
    "sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_...]_T1w.nii[.gz] "
    "(this folder's participant label, suffix and extension as written)"
)


def _misnamed_t1w(bids_dir, scans, participant_labels):
    """``(participant_id, path)`` of files in the participants' ``anat`` folders whose name says
    T1w and an image extension in any case (``sub01_T1w.nii.gz``, ``sub-01_t1w.nii``,
    ``sub-01_T1w.NII.GZ``, another participant's label, a folder ``sub-01_old``) but that are
    not among ``scans``."""
    from neuroml.io.bids import _subject_dirs, check_label

    found = {Path(scan.path) for scan in scans}
    out = []
    for sub_dir in _subject_dirs(bids_dir, participant_labels):
        try:
            participant_id = f"sub-{check_label(sub_dir.name)}"
        except InputError:  # 'sub-01 copy', 'sub-01_old': the BIDS search skips the whole folder
            participant_id = sub_dir.name
        for folder in [sub_dir / "anat"] + sorted(sub_dir.glob("ses-*/anat")):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                name = path.name.lower()
                if (
                    path not in found
                    and not name.startswith(".")
                    and "t1w" in name
                    and name.endswith((".nii", ".nii.gz", ".mnc", ".mgz", ".par"))
                ):
                    out.append((participant_id, path))
    return out


def read_failures(out_dir):
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
    bids_dir,
    out_dir,
    participant_labels=None,
    resolution=2.0,
    n_jobs=1,
    show_progress=True,
    modality="anat",
    func_params=None,
    **params,
):
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
    from neuroml._utils.options import look_up_option

    modality = look_up_option("modality", modality, ["anat", "func", "both"])
    params = check_params(resolution=resolution, **params)
    fparams = None
    if modality == "anat" and func_params:
        raise ConfigError(
            f"func_params {sorted(func_params)} apply to BOLD series: use modality 'func' or 'both' "
            "(on the command line: --modality func|both with --confounds)"
        )
    if modality != "anat":
        from neuroml.functional.bold import check_func_params

        fparams = check_func_params(**{**(func_params or {}), "resolution": resolution})

    def params_of(scan):
        return fparams if scan.suffix == "bold" else params

    n_jobs = int(check_in_range("n_jobs", n_jobs, -1, 1024, kind=(int,)))
    if n_jobs == 0:
        raise ConfigError("The 'n_jobs' parameter must be a positive number of processes or -1.")
    bids_dir = Path(bids_dir)
    out_dir = Path(out_dir)
    scans = find_scans(bids_dir, "T1w", "anat", participant_labels) if modality != "func" else []
    misnamed = _misnamed_t1w(bids_dir, scans, participant_labels) if modality != "func" else []
    if not scans and not misnamed and modality == "anat":
        raise InputError(
            "no T1w scans found (looked for sub-*/[ses-*/]anat/*_T1w.nii[.gz])", bids_dir
        )
    if modality != "anat":
        from neuroml.functional.files import find_bold_scans

        bold = find_bold_scans(bids_dir, participant_labels)
        if not bold and not scans:
            raise InputError(
                "no BOLD series found (looked for sub-*/[ses-*/]func/*_bold.nii[.gz])"
                + (" nor T1w scans" if modality == "both" else ""),
                bids_dir,
            )
        if not bold:
            log.warning("no BOLD series found in %s: only T1w scans processed", bids_dir)
        scans = scans + bold
    if out_dir.resolve() == bids_dir.resolve():
        raise ConfigError("the output folder must differ from the BIDS folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # temporaries a killed run left (failures.tsv, beside scans that are now skipped); only this
    # host's of dead processes, so concurrent SLURM tasks are not disturbed
    remove_stale_temporaries(out_dir)
    for folder in sorted({out_dir / f"sub-{scan.subject}" for scan in scans}):
        remove_stale_temporaries(folder, recursive=True)
    write_dataset_description(out_dir, bids_dir)

    # two inputs with one output name (sub-01_T1w.nii beside sub-01_T1w.nii.gz) would overwrite each
    # other's outputs, one at random on every run: none of them is processed
    by_output = {}
    for scan in scans:
        if scan.suffix == "bold":
            from neuroml.functional.files import func_output_paths

            sidecar = func_output_paths(scan.entities, out_dir, fparams)["sidecar"]
        else:
            sidecar = output_paths(scan.entities, out_dir, params["resolution"])["sidecar"]
        by_output.setdefault(sidecar, []).append(scan)
    clashes = [group for group in by_output.values() if len(group) > 1]
    clashing = {id(scan) for group in clashes for scan in group}
    scans = [scan for scan in scans if id(scan) not in clashing]

    todo, n_skipped = [], 0
    for scan in scans:
        try:
            if scan.suffix == "bold":
                from neuroml.functional.files import is_func_complete

                done = is_func_complete(scan, out_dir, **fparams)
            else:
                done = is_complete(scan, out_dir, **params)
        except (NeuromlError, OSError):
            done = False
        if done:
            n_skipped += 1
        else:
            todo.append(scan)
    if n_skipped:
        log.info("%d of %d scans already preprocessed: skipped", n_skipped, len(scans))

    n_workers = _cpu_count() if n_jobs == -1 else n_jobs
    n_workers = max(1, min(n_workers, len(todo)))
    n_threads = 1  # results depend on the thread count: keep them independent of n_jobs
    failures, handled, n_done = [], set(), 0
    bar = _progress(len(todo), show_progress)

    def handle(scan, outcome):
        nonlocal n_done
        status, reason, tb = outcome
        rel = _relative(scan.path, bids_dir)
        handled.add(rel)
        if status == "done":
            n_done += 1
        else:
            log.warning("%s: %s", rel, reason)
            log.debug("traceback of %s:\n%s", rel, tb)
            failures.append(Failure(scan.participant_id, rel, reason))
        bar.update(1)

    for group in clashes:
        for scan in group:
            rel = _relative(scan.path, bids_dir)
            others = ", ".join(_relative(o.path, bids_dir) for o in group if o is not scan)
            reason = (
                f"same BIDS name as {others} (one image per name, whatever the extension): "
                "not processed; remove or rename one of them"
            )
            log.warning("%s: %s", rel, reason)
            handled.add(rel)
            failures.append(Failure(scan.participant_id, rel, reason))
    for participant_id, path in misnamed:
        rel = _relative(path, bids_dir)
        log.warning("%s: %s", rel, MISNAMED_T1W)
        handled.add(rel)
        failures.append(Failure(participant_id, rel, MISNAMED_T1W))
    finished = False
    try:
        if n_workers == 1:
            for scan in todo:
                handle(scan, _worker(scan, out_dir, bids_dir, params_of(scan), n_threads))
        elif todo:
            from joblib.externals.loky.process_executor import TerminatedWorkerError

            def args_of(scan):
                return scan, out_dir, bids_dir, params_of(scan), n_threads

            left = dict.fromkeys(range(len(todo)))
            try:
                for i, outcome in _parallel(todo, n_workers, args_of):
                    left.pop(i, None)
                    handle(todo[i], outcome)
            except TerminatedWorkerError:
                # joblib cannot tell which scan the dead process held: the rest run one per process
                log.warning(
                    "a worker process died (out of memory?): the %d scans not finished run again, "
                    "each in a process of its own",
                    len(left),
                )
                for i, outcome in _isolated([(i, args_of(todo[i])) for i in left], n_workers):
                    handle(todo[i], outcome)
        finished = True
    finally:
        bar.close()
        # also on Ctrl-C: record what was handled, keep older entries of the rest
        try:
            _update_failures(out_dir, handled, failures, bids_dir)
        except (OSError, NeuromlError):
            if finished:
                raise
            log.debug("failures.tsv not updated", exc_info=True)  # the error in flight says why
    log.info(
        "preprocessing: %d processed, %d already done, %d failed", n_done, n_skipped, len(failures)
    )
    return BatchResult(n_done=n_done, n_skipped=n_skipped, failures=failures)


def _indexed(i, scan, out_dir, bids_dir, params, n_threads):
    return i, _worker(scan, out_dir, bids_dir, params, n_threads)


def _sidecars(out_dir):
    """T1w sidecars, one per scan and resolution (``res-`` tells them apart)."""
    yield from sorted(out_dir.glob("sub-*/**/anat/*_desc-preproc_T1w.json"))


def _figure_path(out_dir, entities, suffix, old_name=False):
    """The QC picture of a derivative named by ``entities``, with its ``res-``; with ``old_name``,
    the name without it when only that exists (outputs written before figures named their resolution)."""
    raw = {k: v for k, v in entities.items() if k not in ("space", "desc")}
    folder = out_dir / f"sub-{raw['sub']}" / "figures"
    path = folder / derivative_name(raw, suffix, ".png", desc="qc")
    if old_name and not path.is_file() and "res" in raw:
        old = folder / derivative_name(
            {k: v for k, v in raw.items() if k != "res"}, suffix, ".png", desc="qc"
        )
        if old.is_file():
            return old
    return path


def _label_resolutions(rows):
    """With several resolutions in one folder, add ``(res-R)`` to each row's ``file``."""
    from neuroml.io.templates import res_entity

    if len({r["resolution"] for r in rows if r.get("resolution") is not None}) > 1:
        for r in rows:
            if r.get("resolution") is not None:
                r["file"] = f"{r['file']} (res-{res_entity(r['resolution'])})"
    return rows


def _bold_sidecars(out_dir):
    yield from sorted(out_dir.glob("sub-*/**/func/*_desc-maps_bold.json"))


def _raw_root(out_dir):
    """The raw dataset of a derivatives folder, or None."""
    from neuroml.data import participants_file

    try:
        return participants_file(out_dir).parent
    except (InputError, OSError):
        return None


def _bold_row(out_dir, path, side, raw_root):
    """One BOLD QC row (see :func:`neuroml.preprocessing.qc.bold_qc_rows`) from a maps sidecar."""
    from neuroml.functional.clean import framewise_displacement_summary

    entities = parse_entities(path.name)[0]
    n = int(side["NumberOfVolumes"])
    dropped = side.get("DroppedVolumes") or []
    registration = side.get("Registration") or {}
    fd = side.get("FramewiseDisplacement")
    if (
        fd is None
        and "FramewiseDisplacement" not in side
        and side.get("ConfoundsFile")
        and raw_root is not None
    ):
        # sidecar written before the field existed: read the confounds table of the raw dataset
        table = raw_root / Path(str(side["SourceFile"])).parent / str(side["ConfoundsFile"])
        fd = framewise_displacement_summary(table) if table.is_file() else None
    metric = registration.get("metric") if isinstance(registration, dict) else None
    return {
        "participant_id": f"sub-{entities['sub']}",
        "file": str(side["SourceFile"]),
        "n_volumes": n,
        "volumes_dropped": len(dropped),
        "mean_fd_mm": float(fd["mean_fd_mm"])
        if isinstance(fd, dict) and fd.get("mean_fd_mm") is not None
        else None,
        "coverage": float(side["Coverage"]),
        "registered": bool(side.get("Registered")),
        "registration_metric": float(metric) if metric is not None else None,
        "figure": _figure_path(out_dir, entities, "bold"),
        "mean_map": path.parent / str((side.get("Maps") or {}).get("mean", "")),
        "mask": path.parent / str(side.get("Mask", "")),
        "resolution": float(side["Resolution"]),
        "sidecar": path,
    }


def _bold_figure(row, out_dir):
    """The mean BOLD volume with the template's edges (made when missing or older than its sidecar).

    Returns
    -------
    dict or None
        A row for the report's "not processed" table when the mean map cannot be read.
    """
    import nibabel as nib
    import numpy as np

    from neuroml.preprocessing.qc import qc_figure

    fig, mean_map, mask = row["figure"], row["mean_map"], row["mask"]
    if fig.is_file() and fig.stat().st_mtime >= row["sidecar"].stat().st_mtime:
        return None
    if not mean_map.is_file():
        return None
    try:
        data = np.asarray(nib.load(str(mean_map)).dataobj, dtype=np.float32)
        fov = np.asarray(nib.load(str(mask)).dataobj) > 0 if mask.is_file() else None
        fig.parent.mkdir(parents=True, exist_ok=True)
        qc_figure(data, row["resolution"], fig, title=f"{row['participant_id']} mean BOLD", fov=fov)
    except (
        OSError,
        ValueError,
        EOFError,
        zlib.error,
        NeuromlError,
    ) as exc:  # a picture never stops the group QC
        # a truncated .nii.gz: EOFError, zlib.error or gzip.BadGzipFile (an OSError)
        log.warning(
            "%s: unreadable, QC picture not drawn (%s: %s)", mean_map, type(exc).__name__, exc
        )
        return {
            "participant_id": row["participant_id"],
            "file": _relative(mean_map, out_dir),
            "reason": f"derivative unreadable (truncated?), QC picture not drawn: {type(exc).__name__}: "
            + (" ".join(str(exc).split()) or "no detail"),
        }
    return None


def run_group_level(out_dir):
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
    rows = []
    for path in _sidecars(out_dir):
        try:
            side = read_json(path)
            qc = side["QC"]
            row = {
                "participant_id": f"sub-{parse_entities(path.name)[0]['sub']}",
                "file": str(side["SourceFile"]),
                "correlation": float(qc["correlation"]),
                "coverage": float(qc["coverage"]),
                "brain_volume_ml": float(qc["brain_volume_ml"]),
                "qc_pass": bool(qc["qc_pass"]),
                "reasons": [str(r) for r in qc.get("reasons", [])],
                "resolution": float(side["Resolution"])
                if side.get("Resolution") is not None
                else None,
            }
        except (InputError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: unreadable sidecar skipped (%s)", path, exc)
            continue
        row["figure"] = _figure_path(out_dir, parse_entities(path.name)[0], "T1w", old_name=True)
        rows.append(row)
    bold_rows, raw_root, looked, problems = [], None, False, []
    for path in _bold_sidecars(out_dir):
        try:
            side = read_json(path)
            if not looked and "FramewiseDisplacement" not in side:
                raw_root, looked = _raw_root(out_dir), True
            row = _bold_row(out_dir, path, side, raw_root)
        except (InputError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable sidecar skipped (%s)", path, exc)
            continue
        problem = _bold_figure(row, out_dir)
        if problem is not None:
            problems.append(problem)
        bold_rows.append(row)
    if not rows and not bold_rows:
        raise InputError("no preprocessed scans found (run the participant level first)", out_dir)
    _label_resolutions(rows)
    _label_resolutions(bold_rows)
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
