"""The modality pipelines of the BIDS-App batch: what it needs to know about each kind of scan.

Each pipeline (:class:`T1wPipeline`, :class:`BoldPipeline`) holds its checked parameters
(:meth:`~T1wPipeline.checked`) and answers the same questions: which scans a dataset holds
(:meth:`~T1wPipeline.find_scans`), where a scan's outputs go
(:meth:`~T1wPipeline.output_paths`), whether they are complete
(:meth:`~T1wPipeline.is_complete`), how to process one scan (:meth:`~T1wPipeline.run`, in a
worker process), and the rows of the group-level QC (:meth:`~T1wPipeline.group_rows`). The
batch (:mod:`neuroml.workflows.bids_app`) loops over the pipelines that
:func:`select_pipelines` gives for a modality.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from neuroml._utils.fileio import read_json
from neuroml._utils.options import look_up_option
from neuroml._utils.types import PathLike
from neuroml.errors import ConfigError, InputError, NeuromlError
from neuroml.io.bids import Scan, derivative_name, find_scans, parse_entities
from neuroml.io.derivatives import relative_path

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage as _Image

__all__ = ["MODALITIES", "MISNAMED_T1W", "T1wPipeline", "BoldPipeline", "select_pipelines"]

log = logging.getLogger("neuroml")

#: The modalities of :func:`select_pipelines`: T1w scans, BOLD series, or both.
MODALITIES = ["anat", "func", "both"]

#: The reason recorded for a file that looks like a T1w image but is not found as one.
MISNAMED_T1W = (
    "looks like a T1w image but its path is not BIDS, so it is not processed: rename it "
    "sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_...]_T1w.nii[.gz] "
    "(this folder's participant label, suffix and extension as written)"
)


def select_pipelines(
    modality: str,
    resolution: float,
    func_params: Mapping[str, Any] | None,
    params: Mapping[str, Any],
) -> list[T1wPipeline | BoldPipeline]:
    """The pipelines of ``modality``, in the order their scans are processed.

    Parameters
    ----------
    modality : {"anat", "func", "both"}
    resolution : float
        Target grid voxel size (mm), shared by both pipelines.
    func_params : dict or None
        Parameters of the BOLD pipeline; refused with ``modality="anat"``.
    params : dict
        Other parameters of the T1w pipeline (checked whatever the modality).

    Returns
    -------
    list of T1wPipeline or BoldPipeline

    Raises
    ------
    ConfigError
        For an unknown modality or a bad parameter.
    """
    modality = look_up_option("modality", modality, MODALITIES)
    t1w = T1wPipeline.checked(resolution=resolution, **params)
    if modality == "anat" and func_params:
        raise ConfigError(
            f"func_params {sorted(func_params)} apply to BOLD series: use modality 'func' or 'both' "
            "(on the command line: --modality func|both with --confounds)"
        )
    if modality == "anat":
        return [t1w]
    bold = BoldPipeline.checked(**{**(func_params or {}), "resolution": resolution})
    return [bold] if modality == "func" else [t1w, bold]


def _figure_path(out_dir, entities, suffix):
    """The QC picture of a derivative named by ``entities`` (with its ``res-``)."""
    raw = {k: v for k, v in entities.items() if k not in ("space", "desc")}
    folder = out_dir / f"sub-{raw['sub']}" / "figures"
    return folder / derivative_name(raw, suffix, ".png", desc="qc")


def _label_resolutions(rows):
    """With several resolutions in one folder, add ``(res-R)`` to each row's ``file``."""
    from neuroml.io.templates import res_entity

    if len({r["resolution"] for r in rows if r.get("resolution") is not None}) > 1:
        for r in rows:
            if r.get("resolution") is not None:
                r["file"] = f"{r['file']} (res-{res_entity(r['resolution'])})"
    return rows


class _Pipeline:
    """What the pipelines share: the group-level rows, read from their sidecars.

    A subclass sets ``suffix`` (the BIDS suffix of its scans), ``kind`` (its scans in words),
    ``not_found`` (the error when a dataset has none), ``sidecar_glob`` (its sidecars in a
    derivatives folder) and ``row_errors`` (what makes a sidecar unreadable), and defines
    :meth:`group_row`.
    """

    row_errors: tuple[type[Exception], ...] = (InputError, KeyError, TypeError, ValueError)
    sidecar_glob: str
    group_row: Callable[[PathLike, Path, Mapping[str, Any]], dict[str, Any]]

    @classmethod
    def group_rows(cls, out_dir: PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """QC rows of every sidecar of this kind in ``out_dir``, and problems met on the way.

        An unreadable sidecar is skipped with a warning.

        Returns
        -------
        rows : list of dict
        problems : list of dict
            Rows for the report's "not processed" table (``participant_id``, ``file``,
            ``reason``).
        """
        rows, problems = [], []
        for path in sorted(Path(out_dir).glob(cls.sidecar_glob)):
            try:
                row = cls.group_row(out_dir, path, read_json(path))
            except cls.row_errors as exc:
                log.warning("%s: unreadable sidecar skipped (%s)", path, exc)
                continue
            problem = cls.draw_figure(row, out_dir)
            if problem is not None:
                problems.append(problem)
            rows.append(row)
        return _label_resolutions(rows), problems

    @staticmethod
    def draw_figure(row: dict[str, Any], out_dir: PathLike) -> dict[str, Any] | None:
        """Draw the QC picture of a row if the group level makes it; a problem row or None."""
        return None


@dataclasses.dataclass(frozen=True)
class T1wPipeline(_Pipeline):
    """T1w scans (``anat/*_T1w``) through :func:`neuroml.preprocessing.t1w.preprocess_t1w`.

    Parameters
    ----------
    params : dict
        Checked parameters (:func:`neuroml.preprocessing.t1w.check_params`).
    """

    params: dict[str, Any]
    suffix = "T1w"
    kind = "T1w scans"
    not_found = "no T1w scans found (looked for sub-*/[ses-*/]anat/*_T1w.nii[.gz])"
    sidecar_glob = "sub-*/**/anat/*_desc-preproc_T1w.json"

    @classmethod
    def checked(cls, **params: Any) -> T1wPipeline:
        """The pipeline with ``params`` checked and completed (a :class:`ConfigError` if bad)."""
        from neuroml.preprocessing.t1w import check_params

        return cls(check_params(**params))

    def find_scans(
        self, bids_dir: PathLike, participant_labels: str | Iterable[str] | None
    ) -> tuple[list[Scan], list[tuple[str, Path, str]]]:
        """The T1w scans, and ``(participant_id, path, reason)`` of files not processed."""
        scans = find_scans(bids_dir, "T1w", "anat", participant_labels)
        misnamed = _misnamed_t1w(bids_dir, scans, participant_labels)
        return scans, [(participant_id, path, MISNAMED_T1W) for participant_id, path in misnamed]

    def output_paths(self, scan: Scan, out_dir: PathLike) -> dict[str, Path]:
        from neuroml.preprocessing.t1w import output_paths

        return output_paths(scan.entities, out_dir, self.params["resolution"])

    def is_complete(self, scan: Scan, out_dir: PathLike) -> bool:
        from neuroml.preprocessing.t1w import is_complete

        return is_complete(scan, out_dir, **self.params)

    def run(
        self, scan: Scan, out_dir: PathLike, bids_dir: PathLike | None, n_threads: int | None
    ) -> None:
        from neuroml.preprocessing.t1w import preprocess_t1w

        preprocess_t1w(scan, out_dir, bids_dir=bids_dir, n_threads=n_threads, **self.params)

    @staticmethod
    def group_row(out_dir: PathLike, path: Path, side: Mapping[str, Any]) -> dict[str, Any]:
        """One T1w QC row (see :func:`neuroml.preprocessing.qc.write_group_qc`) from a sidecar."""
        qc = side["QC"]
        entities = parse_entities(path.name)[0]
        return {
            "participant_id": f"sub-{entities['sub']}",
            "file": str(side["SourceFile"]),
            "correlation": float(qc["correlation"]),
            "coverage": float(qc["coverage"]),
            "brain_volume_ml": float(qc["brain_volume_ml"]),
            "qc_pass": bool(qc["qc_pass"]),
            "reasons": [str(r) for r in qc.get("reasons", [])],
            "resolution": float(side["Resolution"]) if side.get("Resolution") is not None else None,
            "figure": _figure_path(out_dir, entities, "T1w"),
        }


@dataclasses.dataclass(frozen=True)
class BoldPipeline(_Pipeline):
    """BOLD series (``func/*_bold``, raw or fMRIPrep) through
    :func:`neuroml.functional.preprocess_bold`.

    Parameters
    ----------
    params : dict
        Checked parameters (:func:`neuroml.functional.bold.check_func_params`).
    """

    params: dict[str, Any]
    suffix = "bold"
    kind = "BOLD series"
    not_found = "no BOLD series found (looked for sub-*/[ses-*/]func/*_bold.nii[.gz])"
    sidecar_glob = "sub-*/**/func/*_desc-maps_bold.json"
    row_errors = (InputError, KeyError, TypeError, ValueError, AttributeError)

    @classmethod
    def checked(cls, **params: Any) -> BoldPipeline:
        """The pipeline with ``params`` checked and completed (a :class:`ConfigError` if bad)."""
        from neuroml.functional.bold import check_func_params

        return cls(check_func_params(**params))

    def find_scans(
        self, bids_dir: PathLike, participant_labels: str | Iterable[str] | None
    ) -> tuple[list[Scan], list[tuple[str, Path, str]]]:
        """The BOLD series (one per acquisition), and no files not processed."""
        from neuroml.functional.files import find_bold_scans

        return find_bold_scans(bids_dir, participant_labels), []

    def output_paths(self, scan: Scan, out_dir: PathLike) -> dict[str, Path]:
        from neuroml.functional.files import func_output_paths

        return func_output_paths(scan.entities, out_dir, self.params)

    def is_complete(self, scan: Scan, out_dir: PathLike) -> bool:
        from neuroml.functional.files import is_func_complete

        return is_func_complete(scan, out_dir, **self.params)

    def run(
        self, scan: Scan, out_dir: PathLike, bids_dir: PathLike | None, n_threads: int | None
    ) -> None:
        from neuroml.functional.files import preprocess_bold

        preprocess_bold(scan, out_dir, bids_dir=bids_dir, n_threads=n_threads, **self.params)

    @staticmethod
    def group_row(out_dir: PathLike, path: Path, side: Mapping[str, Any]) -> dict[str, Any]:
        """One BOLD QC row (see :func:`neuroml.preprocessing.qc.bold_qc_rows`) from a maps sidecar."""
        entities = parse_entities(path.name)[0]
        n_volumes = int(side["NumberOfVolumes"])
        dropped = side.get("DroppedVolumes") or []
        registration = side.get("Registration") or {}
        fd = side.get("FramewiseDisplacement")
        metric = registration.get("metric") if isinstance(registration, dict) else None
        return {
            "participant_id": f"sub-{entities['sub']}",
            "file": str(side["SourceFile"]),
            "n_volumes": n_volumes,
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

    @staticmethod
    def draw_figure(row: dict[str, Any], out_dir: PathLike) -> dict[str, Any] | None:
        """The mean BOLD volume with the template's edges (made when missing or older than its
        sidecar).

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
            data = np.asarray(cast("_Image", nib.load(str(mean_map))).dataobj, dtype=np.float32)
            fov = (
                np.asarray(cast("_Image", nib.load(str(mask))).dataobj) > 0
                if mask.is_file()
                else None
            )
            fig.parent.mkdir(parents=True, exist_ok=True)
            title = f"{row['participant_id']} mean BOLD"
            qc_figure(data, row["resolution"], fig, title=title, fov=fov)
        except (OSError, ValueError, EOFError, zlib.error, NeuromlError) as exc:
            # a picture never stops the group QC; a truncated .nii.gz: EOFError, zlib.error or
            # gzip.BadGzipFile (an OSError)
            log.warning(
                "%s: unreadable, QC picture not drawn (%s: %s)", mean_map, type(exc).__name__, exc
            )
            return {
                "participant_id": row["participant_id"],
                "file": relative_path(mean_map, out_dir) or str(mean_map),
                "reason": "derivative unreadable (truncated?), QC picture not drawn: "
                f"{type(exc).__name__}: " + (" ".join(str(exc).split()) or "no detail"),
            }
        return None


def _misnamed_t1w(bids_dir, scans, participant_labels):
    """``(participant_id, path)`` of files in the participants' ``anat`` folders whose name says
    T1w and an image extension in any case (``sub01_T1w.nii.gz``, ``sub-01_t1w.nii``,
    ``sub-01_T1w.NII.GZ``, another participant's label, a folder ``sub-01_old``) but that are
    not among ``scans``."""
    from neuroml.io.bids import check_label, subject_dirs

    found = {Path(scan.path) for scan in scans}
    out = []
    for sub_dir in subject_dirs(bids_dir, participant_labels):
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
