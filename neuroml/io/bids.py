"""A small, strict reader of BIDS raw datasets and writer of BIDS derivative names.

Only what neuroml needs: finding T1w (and BOLD) scans per participant, session and
run; reading ``participants.tsv``; naming derivatives. Every problem becomes an
:class:`~neuroml.errors.InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from neuroml._utils.types import PathLike
from neuroml.errors import InputError

__all__ = [
    "Scan",
    "ENTITY_ORDER",
    "check_label",
    "parse_entities",
    "find_scans",
    "read_participants",
    "derivative_name",
    "scan_entities",
    "sidecar_chain",
]

#: Order of entities in BIDS file names (the BIDS specification's entity table); the transform
#: entities of BIDS derivatives (``from``, ``to``, ``mode``) come before ``desc``, which is last.
ENTITY_ORDER = (
    "sub",
    "ses",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "seg",
    "res",
    "den",
    "label",
    "from",
    "to",
    "mode",
    "desc",
)

#: Cells of a participants table read as missing: BIDS's ``n/a``, an empty cell, and the spellings
#: that R and pandas write (``NA``, ``N/A``, ``NaN``, ``nan``).
MISSING_VALUES = frozenset({"", "n/a", "N/A", "NA", "NaN", "nan"})
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_NIFTI_EXT = (".nii.gz", ".nii")


def check_label(label: object, what: str = "participant label") -> str:
    """Return a BIDS label without its prefix (``sub-01`` -> ``01``); reject unsafe ones.

    Labels must be alphanumeric: this refuses ``../``, path separators and other
    characters that could make an output path escape its folder.

    Raises
    ------
    InputError
    """
    text = str(label)
    for prefix in ("sub-", "ses-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if not _LABEL_RE.match(text):
        raise InputError(
            f"invalid {what} {str(label)!r}: BIDS labels contain only letters and digits"
        )
    return text


def parse_entities(filename: PathLike) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into its entities, suffix and extension.

    Examples
    --------
    >>> parse_entities("sub-01_ses-a_run-2_T1w.nii.gz")
    ({'sub': '01', 'ses': 'a', 'run': '2'}, 'T1w', '.nii.gz')
    """
    name = Path(filename).name
    ext = ""
    for candidate in (
        ".nii.gz",
        ".nii",
        ".json",
        ".tsv",
        ".tsv.gz",
        ".mnc",
        ".mgz",
        ".PAR",
        ".txt",
        ".h5",
        ".png",
        ".npy",
    ):
        if name.endswith(candidate):
            ext = candidate
            name = name[: -len(candidate)]
            break
    parts = name.split("_")
    suffix = parts[-1] if parts and "-" not in parts[-1] else ""
    entities: dict[str, str] = {}
    for part in parts[:-1] if suffix else parts:
        if "-" not in part:
            continue
        key, _, value = part.partition("-")
        entities[key] = value
    return entities, suffix, ext


@dataclasses.dataclass(frozen=True)
class Scan:
    """One raw scan of a BIDS dataset."""

    path: Path
    subject: str
    session: str | None
    entities: dict[str, str]
    suffix: str

    @property
    def participant_id(self) -> str:
        return f"sub-{self.subject}"

    def key(self) -> dict[str, str]:
        """Entities identifying this scan (sub, ses, task, acq, run...)."""
        return {k: v for k, v in self.entities.items()}


def sidecar_chain(path: PathLike) -> list[Path]:
    """The JSON sidecars that apply to a BIDS file (BIDS inheritance), nearest first.

    Each folder from the file's own up to the dataset root (the folder above ``sub-<label>``)
    is searched for ``*.json`` files of the same suffix whose entities are all the file's
    (``task-rest_bold.json`` at the root applies to ``sub-01_task-rest_run-1_bold.nii.gz``);
    within a folder the one naming more entities comes first. Symbolic links are not resolved.
    """
    path = Path(path)
    entities, suffix, _ = parse_entities(path.name)
    if not suffix:
        return []
    parents = list(path.parents)
    folders = parents[:1]
    for i, folder in enumerate(parents):
        if folder.name.startswith("sub-"):
            folders = parents[: i + 2]  # up to the dataset root
            break
    chain: list[Path] = []
    for folder in folders:
        try:
            candidates = sorted(folder.glob(f"*_{suffix}.json")) + sorted(
                folder.glob(f"{suffix}.json")
            )
        except OSError:
            continue
        found: list[tuple[int, Path]] = []
        for side in candidates:
            ents, sfx, ext = parse_entities(side.name)
            if (
                sfx == suffix
                and ext == ".json"
                and all(entities.get(k) == v for k, v in ents.items())
            ):
                found.append((len(ents), side))
        chain += [side for _, side in sorted(found, key=lambda t: (-t[0], t[1].name))]
    return chain


def checked_labels(participant_labels):
    """Participant labels, checked (:func:`check_label`, ``sub-`` dropped) and each once
    (``01 sub-01 01``: ``['01']``); a single string is one label (e.g. from YAML), not its characters.

    >>> checked_labels("sub-01"), checked_labels(["01", "sub-02", "sub-01"])
    (['01'], ['01', '02'])
    """
    if isinstance(participant_labels, str):
        participant_labels = [participant_labels]
    return list(dict.fromkeys(check_label(p) for p in participant_labels))


def subject_dirs(bids_dir, participant_labels):
    """The ``sub-<label>`` folders of ``bids_dir``: those of ``participant_labels``, or all."""
    if participant_labels:
        dirs = []
        for lab in checked_labels(participant_labels):
            d = bids_dir / f"sub-{lab}"
            if not d.is_dir():
                raise InputError(
                    f"participant 'sub-{lab}' not found (no folder {d.name})", bids_dir
                )
            dirs.append(d)
        return dirs
    return sorted(p for p in bids_dir.glob("sub-*") if p.is_dir())


def find_scans(
    bids_dir: PathLike,
    suffix: str = "T1w",
    datatype: str = "anat",
    participant_labels: str | Iterable[str] | None = None,
) -> list[Scan]:
    """Find the raw scans of a BIDS dataset.

    Parameters
    ----------
    bids_dir : str or Path
        Root of a BIDS raw dataset (must contain ``dataset_description.json``).
    suffix : str, default="T1w"
        BIDS suffix (``T1w``, ``bold``).
    datatype : str, default="anat"
        BIDS datatype folder (``anat``, ``func``).
    participant_labels : list of str or str, optional
        Restrict to these participants (with or without ``sub-``); a single string is one label.

    Returns
    -------
    list of Scan
        Sorted by participant, session and file name.

    Raises
    ------
    InputError
        If the folder is not a BIDS dataset or a requested participant is missing.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError("BIDS folder not found", bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError("not a BIDS dataset: dataset_description.json is missing", bids_dir)
    scans: list[Scan] = []
    for sub_dir in subject_dirs(bids_dir, participant_labels):
        try:
            subject = check_label(sub_dir.name)
        except InputError:
            continue  # a stray folder such as 'sub-01 copy' is not a subject
        session_dirs = sorted(p for p in sub_dir.glob("ses-*") if p.is_dir()) or [sub_dir]
        for ses_dir in session_dirs:
            folder = ses_dir / datatype
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                entities, sfx, ext = parse_entities(path.name)
                if sfx != suffix or ext not in _NIFTI_EXT + (".mnc", ".mgz", ".PAR"):
                    continue
                if entities.get("sub") != subject:
                    continue
                scans.append(
                    Scan(
                        path=path,
                        subject=subject,
                        session=entities.get("ses"),
                        entities=entities,
                        suffix=sfx,
                    )
                )
    return scans


def _check_table_shape(path):
    """Refuse a TSV whose rows do not have as many fields as its header (pandas would shift columns)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("cannot parse as a tab-separated table (not UTF-8 text)", path) from None
    if not lines or not lines[0].strip():
        raise InputError(
            "cannot parse as a tab-separated table (empty file or empty header line)", path
        )
    n = len(lines[0].split("\t"))
    for i, line in enumerate(lines[1:], start=2):
        if line.strip() and len(line.split("\t")) != n:
            raise InputError(
                f"cannot parse as a tab-separated table (line {i} has {len(line.split(chr(9)))} "
                f"fields, the header has {n})",
                path,
            )


def read_participants(
    path: PathLike, required: Sequence[str] = ("participant_id",)
) -> pd.DataFrame:
    """Read a ``participants.tsv`` into a DataFrame indexed by ``participant_id``.

    Every column is read as text; a cell in :data:`MISSING_VALUES` (``n/a``, empty, ``NA``, ``NaN``
    ...) is missing (NaN).

    Raises
    ------
    InputError
        If the file is missing, not tab-separated text, lacks a required column, or
        lists a participant twice.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "participants.tsv"
    if not path.is_file():
        raise InputError("participants file not found", path)
    _check_table_shape(path)
    try:
        df = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, na_values=sorted(MISSING_VALUES)
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot parse as a tab-separated table ({str(exc).splitlines()[0]})", path
        ) from None
    for col in required:
        if col not in df.columns:
            raise InputError(f"missing column {col!r} (columns: {list(df.columns)})", path)
    df["participant_id"] = df["participant_id"].astype(str).str.strip()
    bad = [p for p in df["participant_id"] if not re.match(r"^sub-[A-Za-z0-9]+$", p)]
    if bad:
        raise InputError(
            f"invalid participant_id values {bad[:3]} (expected 'sub-<alphanumeric>')", path
        )
    dup = df["participant_id"][df["participant_id"].duplicated()].unique().tolist()
    if dup:
        raise InputError(f"participants listed more than once: {dup[:5]}", path)
    return df.set_index("participant_id")


def derivative_name(
    entities: Mapping[str, str], suffix: str, ext: str = ".nii.gz", **extra: Any
) -> str:
    """Build a BIDS derivative file name from raw entities plus derivative entities.

    Examples
    --------
    >>> derivative_name({"sub": "01", "ses": "a"}, "T1w", space="MNI152NLin2009aSym", res="2", desc="preproc")
    'sub-01_ses-a_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz'
    """
    merged = dict(entities)
    merged.update({k: v for k, v in extra.items() if v is not None})
    keys = [k for k in ENTITY_ORDER if k in merged] + [k for k in merged if k not in ENTITY_ORDER]
    return "_".join(f"{k}-{merged[k]}" for k in keys) + f"_{suffix}{ext}"


def scan_entities(
    scan: Scan | PathLike, participant_label: str | None = None
) -> tuple[Path, dict[str, str]]:
    """``(path, entities)`` of a :class:`~neuroml.io.bids.Scan` or a BIDS-named file; every
    entity label checked, ``participant_label`` replacing ``sub``."""
    if isinstance(scan, Scan):
        return scan.path, dict(scan.entities)
    path = Path(scan)
    entities, _, _ = parse_entities(path.name)
    if participant_label is not None:
        entities = {
            "sub": check_label(participant_label),
            **{k: v for k, v in entities.items() if k != "sub"},
        }
    if "sub" not in entities:
        raise InputError(
            "cannot name the outputs: the file name has no 'sub-<label>' entity "
            "(pass participant_label)",
            path,
        )
    for key, value in entities.items():
        check_label(value, what=f"'{key}' entity")
    return path, entities
