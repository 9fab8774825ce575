"""Privacy of participant data: header scrubbing, sidecar cleaning, keyed pseudonyms, and a
de-identified copy of a BIDS dataset.

What neuroml guarantees:

* Derivatives, run folders and reports are written from fresh headers: no NIfTI
  ``descrip``/``aux_file``/``db_name``/``intent_name`` or header extension of an input is
  copied, and no field of an input sidecar is copied (sidecars are written from scratch).
* Pictures show images on the template grid inside the template brain mask (QC slices,
  attribution maps over the MNI template); no raw head image is drawn.
* :func:`deidentify_bids` writes a copy of a raw dataset whose participant labels are
  keyed hashes (HMAC-SHA256) of the originals and whose session labels are ``ses-1``,
  ``ses-2``, ... (per participant, in sorted order), with scrubbed NIfTI headers, sidecars
  (also the dataset-, subject- and session-level ones BIDS inheritance applies) without
  identifying fields (:func:`clean_sidecar`, at any depth), and a ``participants.tsv`` holding
  only :data:`PARTICIPANT_COLUMNS` (plus ``keep_columns``). Everything computed from the copy
  (derivatives, runs, attribution, reports) then carries the same pseudonyms. The key is
  read from a file or the ``NEUROML_PSEUDONYM_KEY`` environment variable and never written;
  a key file inside the output folder is refused. No mapping back to the real labels is written.
* No step opens a network connection (the tests run the pipeline with sockets blocked).

:func:`find_strings` searches a folder's files (gzip and PNG text decompressed) for given
strings (and file and folder names), to check outputs before sharing them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import logging
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroml._utils.fileio import (
    atomic_folder,
    read_json,
    save_nifti_atomic,
    write_json_atomic,
    write_text_atomic,
)
from neuroml._utils.types import PathLike
from neuroml.errors import ConfigError, InputError

if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "IDENTIFYING_HEADER_FIELDS",
    "IDENTIFYING_SIDECAR_FIELDS",
    "IDENTIFYING_KEY_WORDS",
    "PARTICIPANT_COLUMNS",
    "KEY_ENV",
    "scrub_header",
    "scrub_nifti",
    "clean_sidecar",
    "load_key",
    "pseudonym",
    "deidentify_bids",
    "find_strings",
]

log = logging.getLogger("neuroml")

#: NIfTI-1/2 header text fields that scanners and converters fill with free text.
IDENTIFYING_HEADER_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")

#: Sidecar keys dropped by :func:`clean_sidecar` (DICOM patient, study, date/time, institution,
#: staff, device and procedure fields), besides those matched by :data:`IDENTIFYING_KEY_WORDS`.
IDENTIFYING_SIDECAR_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "PatientPosition",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "DateOfBirth",
    "BirthDate",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "SeriesDate",
    "SeriesTime",
    "StudyDate",
    "StudyTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "ProcedureStepDescription",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageComments",
    "RequestingPhysician",
    "RequestingService",
    "OtherPatientIDs",
    "OtherPatientNames",
    "EthnicGroup",
    "MedicalRecordLocator",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "Occupation",
    "AdditionalPatientHistory",
)

#: A sidecar key (at any depth) is dropped when one of its words (CamelCase or ``_``-separated,
#: case-insensitive) is one of these; a key whose last word is ``Time`` is dropped when its
#: value is text (a time of day such as ``"10:11:12"``; ``RepetitionTime: 2.0`` is kept).
IDENTIFYING_KEY_WORDS = (
    "patient",
    "patients",
    "date",
    "birth",
    "institution",
    "institutional",
    "physician",
    "physicians",
    "operator",
    "operators",
    "serial",
    "address",
    "accession",
    "procedure",
    "station",
    "referring",
    "requesting",
    "performing",
    "uid",
    "ethnic",
    "telephone",
    "comments",
    "admitting",
    "admission",
)

#: participants.tsv columns kept by :func:`deidentify_bids` (others are dropped unless named
#: in ``keep_columns``): the label, grouping and demographic columns the toolkit uses.
PARTICIPANT_COLUMNS = (
    "participant_id",
    "diagnosis",
    "label",
    "group",
    "site",
    "scanner",
    "age",
    "sex",
    "gender",
    "handedness",
)

#: Environment variable holding the pseudonymization key.
KEY_ENV = "NEUROML_PSEUDONYM_KEY"

_MIN_KEY_BYTES = 16


def scrub_header(header: nib.Nifti1Header) -> nib.Nifti1Header:
    """Blank the free-text fields of a NIfTI header in place and return it.

    Examples
    --------
    >>> import nibabel as nib
    >>> h = nib.Nifti1Header(); h["descrip"] = b"Jane Doe 1970"
    >>> scrub_header(h)["descrip"].item()
    b''
    """
    for field in IDENTIFYING_HEADER_FIELDS:
        if field in header:
            header[field] = b""
    return header


def scrub_nifti(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A copy of a NIfTI image with free-text header fields blanked and extensions removed."""
    import nibabel as nib

    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"expected a NIfTI image, got {type(img).__name__}")
    header = img.header.copy()
    scrub_header(header)
    out = type(img)(np.asanyarray(img.dataobj), img.affine, header)
    out.header.extensions.clear()
    out.header["descrip"] = b""
    return out


_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z]|[^A-Za-z]|$)|[A-Z]?[a-z]+|[0-9]+")


def _identifying_key(key, value):
    key = str(key)
    if key in _DENY:
        return True
    words = [w.lower() for w in _WORD_RE.findall(key)]
    if any(w in _DENY_WORDS for w in words):
        return True
    return bool(words) and words[-1] == "time" and isinstance(value, str)


_DENY = frozenset(IDENTIFYING_SIDECAR_FIELDS)
_DENY_WORDS = frozenset(IDENTIFYING_KEY_WORDS)


def _clean(value, where, removed):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            if _identifying_key(k, v):
                removed.add(name)
            else:
                out[k] = _clean(v, name, removed)
        return out
    if isinstance(value, list):
        return [_clean(v, where, removed) for v in value]
    return value


def clean_sidecar(sidecar: Mapping[str, Any], removed: set[str] | None = None) -> dict[str, Any]:
    """A copy of a BIDS sidecar dict without identifying fields, at any depth.

    A key is dropped when it is in :data:`IDENTIFYING_SIDECAR_FIELDS`, when one of its words
    is in :data:`IDENTIFYING_KEY_WORDS` (``PatientFoo``, ``DateOfBirth``, ``DeviceSerialNumber``),
    or when it names a time (``...Time``) and holds text. Nested objects and lists are cleaned
    the same way. ``removed`` (a set), when given, receives the dotted names of dropped keys.

    Examples
    --------
    >>> clean_sidecar({"PatientName": "Doe^Jane", "RepetitionTime": 2.3, "InstitutionName": "X"})
    {'RepetitionTime': 2.3}
    >>> clean_sidecar({"Dcm2bidsConfig": {"PatientName": "Doe^Jane", "run": 1}})
    {'Dcm2bidsConfig': {'run': 1}}
    """
    return _clean(dict(sidecar), "", set() if removed is None else removed)


def load_key(key_file: PathLike | None = None, env: str = KEY_ENV) -> bytes:
    """The pseudonymization key: the bytes of ``key_file`` (stripped), else ``$NEUROML_PSEUDONYM_KEY``.

    Raises
    ------
    ConfigError
        When no key is given or it is shorter than 16 bytes.
    """
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise InputError("pseudonymization key file not found", path)
        key = path.read_bytes().strip()
        where = str(path)
    else:
        key = os.environ.get(env, "").encode()
        where = f"${env} (or a key file: --key-file FILE, key_file=)"
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(
            f"pseudonymization needs a secret key of at least {_MIN_KEY_BYTES} bytes in {where} "
            f'(got {len(key)}); e.g. `python -c "import secrets; print(secrets.token_hex(32))" '
            "> ~/neuroml.key` kept away from the data, then --key-file ~/neuroml.key"
        )
    return key


def pseudonym(participant_id: str, key: bytes, length: int = 12) -> str:
    """``sub-<hex>``: the first ``length`` hex digits of HMAC-SHA256(key, label).

    The same key and label always give the same pseudonym; without the key it cannot be
    recomputed or reversed. ``sub-01`` and ``01`` give the same pseudonym.

    Examples
    --------
    >>> pseudonym("sub-01", b"k" * 16) == pseudonym("01", b"k" * 16)
    True
    >>> pseudonym("sub-01", b"k" * 16).startswith("sub-")
    True
    """
    label = str(participant_id)
    label = label[4:] if label.startswith("sub-") else label
    if isinstance(key, str):
        key = key.encode()
    return "sub-" + hmac.new(key, label.encode("utf-8"), hashlib.sha256).hexdigest()[: int(length)]


def _inside(path, folder):
    """Whether ``path`` lies in ``folder`` (both resolved)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def _participants_table(table_path, rename, keep):
    """participants.tsv with only the ``keep`` columns and renamed labels, and the columns dropped.

    Raises
    ------
    InputError
        Without a participant_id column, for ``keep_columns`` it lacks, or when two labels
        get the same pseudonym.
    """
    import pandas as pd

    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        raise InputError("participants.tsv has no participant_id column", table_path)
    missing = [c for c in keep if c not in table.columns and c not in PARTICIPANT_COLUMNS]
    if missing:
        raise InputError(
            f"keep_columns {missing} not found in participants.tsv (columns: {list(table.columns)})",
            table_path,
        )
    kept = [c for c in table.columns if c in keep]
    dropped = [c for c in table.columns if c not in keep]
    if dropped:
        log.info(
            "de-identify: dropped participants.tsv columns %s (not in the allow-list %s; keep_columns= "
            "keeps more)",
            ", ".join(dropped),
            ", ".join(PARTICIPANT_COLUMNS),
        )
    table = table[kept].copy()
    table["participant_id"] = [rename(p) for p in table["participant_id"]]
    if table["participant_id"].duplicated().any():
        raise InputError("participant labels collide after pseudonymization", table_path)
    return table, dropped


def deidentify_bids(
    bids_dir: PathLike,
    out_dir: PathLike,
    key_file: PathLike | None = None,
    pseudonymize: bool = True,
    keep_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a de-identified copy of a raw BIDS dataset (anatomical and functional scans).

    NIfTI images and JSON sidecars under ``anat/`` and ``func/`` (and fMRIPrep's
    ``*_desc-confounds_timeseries.tsv`` tables) are copied with their
    identifying header fields blanked and sidecar fields dropped (:func:`clean_sidecar`), and
    so are the dataset-, subject- and session-level sidecars that apply to them under BIDS
    inheritance (e.g. a root ``task-rest_bold.json`` holding ``RepetitionTime``); other files
    (events, physiology, scans.tsv, sessions.tsv, other modalities) are left out.
    ``participants.tsv`` keeps only the columns in :data:`PARTICIPANT_COLUMNS` and
    ``keep_columns`` (the dropped ones are logged). With ``pseudonymize``, participant labels
    become :func:`pseudonym` and session labels ``ses-1``, ``ses-2``, ... per participant in
    sorted order of the original labels (which may be scan dates).

    The copy is written into a temporary sibling folder and renamed to ``out_dir`` at the
    end, so a failed run leaves nothing under ``out_dir`` and can simply be rerun.

    Parameters
    ----------
    bids_dir : str or Path
        Raw BIDS dataset.
    out_dir : str or Path
        New folder for the copy (must not exist or be empty).
    key_file : str or Path, optional
        File holding the secret key (default: ``$NEUROML_PSEUDONYM_KEY``). Refused when it
        lies inside ``out_dir``.
    pseudonymize : bool, default=True
        Replace participant and session labels (otherwise only scrub).
    keep_columns : list of str, optional
        More ``participants.tsv`` columns to keep (they must exist there).

    Returns
    -------
    dict
        ``out_dir``, ``n_participants``, ``n_images``, ``n_sidecars``, ``removed_sidecar_fields``,
        ``dropped_participant_columns``.

    Raises
    ------
    InputError, ConfigError
    """
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    keep = _check_request(bids_dir, out_dir, key_file, keep_columns)
    key = load_key(key_file) if pseudonymize else None
    plan = _plan_copy(bids_dir, key, keep)
    with atomic_folder(out_dir) as work:
        result = _write_copy(plan, work)
    log.info("de-identified copy of %d participants in %s", result["n_participants"], out_dir)
    return {"out_dir": str(out_dir), **result, "dropped_participant_columns": plan.dropped}


def _check_request(bids_dir, out_dir, key_file, keep_columns):
    """Refuse a bad :func:`deidentify_bids` request; return the participants.tsv columns kept."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError("not a BIDS dataset: dataset_description.json is missing", bids_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(
            f"out_dir {str(out_dir)!r} is not empty; choose a new folder for the de-identified copy"
        )
    if key_file is not None and _inside(key_file, out_dir):
        raise ConfigError(
            f"key_file {str(key_file)!r} lies inside out_dir: keep the key away from the data"
        )
    if isinstance(keep_columns, str) or not all(isinstance(c, str) for c in keep_columns or ()):
        raise ConfigError(
            f"keep_columns must be a list of participants.tsv column names. Got {keep_columns!r} "
            "instead."
        )
    return list(PARTICIPANT_COLUMNS) + [
        c for c in keep_columns or () if c not in PARTICIPANT_COLUMNS
    ]


@dataclass(frozen=True)
class _CopyPlan:
    """What a de-identified copy holds, read (and refused if bad) before anything is written.

    Attributes
    ----------
    bids_dir : Path
    files : list of Path
        Scans under ``anat/`` and ``func/``, then the inherited sidecars that apply to them.
    table : pandas.DataFrame or None
        The participants.tsv of the copy (columns kept, labels renamed).
    dropped : list of str
        participants.tsv columns left out.
    description : dict
        The original dataset_description.json.
    key : bytes or None
        Pseudonymization key (None: labels kept).
    keep : list of str
        participants.tsv (and participants.json) columns kept.
    sessions : dict
        ``(sub-label, ses label) -> new ses label``.
    """

    bids_dir: Path
    files: list
    table: object
    dropped: list
    description: dict
    key: bytes | None
    keep: list
    sessions: dict

    @property
    def pseudonymize(self):
        """Whether labels are replaced."""
        return self.key is not None

    def rename(self, participant_id):
        """The participant label of the copy."""
        return _new_label(participant_id, self.key)


def _new_label(participant_id, key):
    """:func:`pseudonym` of a participant label, or the label itself when ``key`` is None."""
    return participant_id if key is None else pseudonym(participant_id, key)


def _plan_copy(bids_dir, key, keep):
    """Read participants.tsv, dataset_description.json and the list of files to copy."""
    table_path = bids_dir / "participants.tsv"
    table, dropped = (
        _participants_table(table_path, functools.partial(_new_label, key=key), keep)
        if table_path.is_file()
        else (None, [])
    )
    description = read_json(bids_dir / "dataset_description.json")
    if not isinstance(description, dict):
        raise InputError(
            "dataset_description.json is not a JSON object", bids_dir / "dataset_description.json"
        )
    files = _files_to_copy(bids_dir)
    sessions = _session_labels(bids_dir, files, pseudonymize=key is not None)
    return _CopyPlan(bids_dir, files, table, dropped, description, key, keep, sessions)


def _files_to_copy(bids_dir):
    """Files under ``anat/`` and ``func/``, then the dataset-, subject- and session-level
    sidecars that apply to the images among them (BIDS inheritance)."""
    from neuroml.io.bids import sidecar_chain

    scans = [
        p
        for p in sorted(bids_dir.glob("sub-*/**/*"))
        if p.is_file() and {"anat", "func"} & set(p.relative_to(bids_dir).parts[:-1])
    ]
    inherited = {
        side for p in scans if p.name.endswith((".nii", ".nii.gz")) for side in sidecar_chain(p)
    }
    return scans + sorted(inherited - set(scans))


def _session_labels(bids_dir, files, pseudonymize):
    """``(sub-label, ses label) -> new label``: ``1``, ``2``, ... per participant in sorted
    order of the original labels (the labels themselves without ``pseudonymize``)."""
    sessions = {}
    for path in files:
        parts = path.relative_to(bids_dir).parts
        if len(parts) > 2 and parts[1].startswith("ses-"):
            sessions.setdefault(parts[0], set()).add(parts[1][4:])
    return {
        (sub, lab): (f"{i + 1}" if pseudonymize else lab)
        for sub, labs in sessions.items()
        for i, lab in enumerate(sorted(labs))
    }


def _write_copy(plan, out_dir):
    """Write the de-identified copy of ``plan`` into ``out_dir``; return its counts."""
    _write_dataset_files(plan, out_dir)
    removed, n_img, n_side, subjects = set(), 0, 0, set()
    for path in plan.files:
        rel = path.relative_to(plan.bids_dir)
        if len(rel.parts) == 1:  # dataset level: no sub- or ses- entity to rename
            target = out_dir / rel
        else:
            sub = rel.parts[0]
            new_sub = plan.rename(sub)
            subjects.add(new_sub)
            target = out_dir.joinpath(
                new_sub, *(_renamed_part(p, sub, new_sub, plan.sessions) for p in rel.parts[1:])
            )
        kind = _copy_file(path, target, removed)
        n_img += kind == "image"
        n_side += kind == "sidecar"
    write_json_atomic(out_dir / "deidentification.json", _deidentification_record(plan, removed))
    return {
        "n_participants": len(subjects),
        "n_images": n_img,
        "n_sidecars": n_side,
        "removed_sidecar_fields": sorted(removed),
    }


def _write_dataset_files(plan, out_dir):
    """Write participants.tsv, dataset_description.json and participants.json of the copy."""
    bids_dir = plan.bids_dir
    if plan.table is not None:
        write_text_atomic(out_dir / "participants.tsv", plan.table.to_csv(sep="\t", index=False))
    write_json_atomic(
        out_dir / "dataset_description.json",
        {
            k: v
            for k, v in plan.description.items()
            if k in ("Name", "BIDSVersion", "DatasetType", "License")
        },
    )
    if (bids_dir / "participants.json").is_file():
        meta = read_json(bids_dir / "participants.json")
        if not isinstance(meta, dict):
            raise InputError(
                "participants.json is not a JSON object", bids_dir / "participants.json"
            )
        write_json_atomic(
            out_dir / "participants.json", {k: v for k, v in meta.items() if k in plan.keep}
        )


def _renamed_part(part, sub, new_sub, sessions):
    """A file or folder name with its ``sub-`` label replaced and its ``ses-`` label mapped."""
    tokens = part.split("_")
    for i, tok in enumerate(tokens):
        if tok.startswith("sub-") and sub is not None and re.match(r"^sub-[A-Za-z0-9]+", tok):
            tokens[i] = re.sub(r"^sub-[A-Za-z0-9]+", new_sub, tok)
        elif tok.startswith("ses-") and sub is not None:
            m = re.match(r"^ses-([A-Za-z0-9]+)", tok)
            if m and (sub, m.group(1)) in sessions:
                tokens[i] = f"ses-{sessions[(sub, m.group(1))]}" + tok[m.end() :]
    return "_".join(tokens)


def _copy_file(path, target, removed):
    """Copy one file de-identified: ``"image"``, ``"sidecar"``, or None (table, or skipped).

    NIfTI images are scrubbed (an unreadable one is logged and skipped), sidecars cleaned
    (the dotted names of dropped fields are added to ``removed``), fMRIPrep confounds tables
    copied as they are.
    """
    import nibabel as nib

    if path.name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(str(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is named and skipped
            log.warning("de-identify: skipping unreadable %s (%s)", path, exc)
            return None
        save_nifti_atomic(scrub_nifti(img), target)
        return "image"
    if path.suffix == ".json":
        side = read_json(path)
        if not isinstance(side, dict):
            raise InputError("sidecar is not a JSON object", path)
        write_json_atomic(target, clean_sidecar(side, removed))
        return "sidecar"
    if path.name.endswith("_desc-confounds_timeseries.tsv"):
        # fMRIPrep's motion and noise regressors (numbers under column names): without them
        # the copy's BOLD series would be cleaned without confound regression
        write_text_atomic(target, path.read_text(encoding="utf-8"))
    return None


def _deidentification_record(plan, removed):
    """The content of ``deidentification.json``: how the copy was made (no key, no mapping)."""
    return {
        "method": "HMAC-SHA256 keyed pseudonyms (first 12 hex digits)"
        if plan.pseudonymize
        else "none (labels kept)",
        "sessions": "ses-1, ses-2, ... per participant in sorted order"
        if plan.pseudonymize
        else "labels kept",
        "key": "not stored",
        "mapping": "not stored",
        "nifti_fields_blanked": list(IDENTIFYING_HEADER_FIELDS) + ["extensions"],
        "sidecar_fields_removed": sorted(removed),
        "participant_columns_kept": [c for c in plan.table.columns]
        if plan.table is not None
        else [],
    }


def _png_texts(data):
    """Decoded text chunks (tEXt, zTXt, iTXt) of PNG bytes."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"tEXt":
            out.append(body)
        elif kind == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            out.append(keyword + b" " + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            flag, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, text = rest.partition(b"\0")
            out.append(keyword + b" " + (zlib.decompress(text) if flag else text))
        pos += 12 + n
    return out


def _readable_bytes(path):
    data = Path(path).read_bytes()
    chunks = [data]
    if data[:2] == b"\x1f\x8b":
        try:
            chunks.append(gzip.decompress(data))
        except (OSError, EOFError, zlib.error):
            pass
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        chunks.extend(_png_texts(data))
    return chunks


def find_strings(root: PathLike, strings: Iterable[str]) -> dict[str, list[str]]:
    """Files and folders under ``root`` whose names or bytes contain any of ``strings`` (case-insensitive).

    Relative paths (file and folder names) are searched, and file contents: gzip files
    compressed and decompressed (NIfTI headers), PNG text chunks decoded; also in UTF-16
    (some formats store text that way) and JSON-escaped.

    Returns
    -------
    dict of str to list of str
        Relative path -> strings found in its name or contents (empty when clean).
    """
    root = Path(root)
    needles = {s: [s.lower().encode("utf-8"), s.lower().encode("utf-16-le")] for s in strings}
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        name = rel.lower().encode("utf-8")
        hits = [s for s, forms in needles.items() if forms[0] in name]
        if path.is_file():
            blobs = [b.lower() for b in _readable_bytes(path)]
            hits += [
                s
                for s, forms in needles.items()
                if s not in hits and any(f in b for f in forms for b in blobs)
            ]
        if hits:
            found[rel] = [s for s in strings if s in hits]
    return found
