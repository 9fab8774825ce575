"""Privacy of participant data: header scrubbing, sidecar cleaning, keyed pseudonyms, and a
de-identified copy of a BIDS dataset.

What neuroml guarantees:

* Derivatives, run folders and reports are written from fresh headers: no NIfTI
  ``descrip``/``aux_file``/``db_name``/``intent_name`` or header extension of an input is
  copied, and no field of an input sidecar is copied (sidecars are written from scratch).
* Pictures show images on the template grid inside the template brain mask (QC slices,
  attribution maps over the MNI template); no raw head image is drawn.
* :func:`deidentify_bids` writes a copy of a raw dataset whose participant labels are
  keyed hashes (HMAC-SHA256) of the originals, with scrubbed NIfTI headers and sidecars
  without :data:`IDENTIFYING_SIDECAR_FIELDS`. Everything computed from the copy
  (derivatives, runs, attribution, reports) then carries the same pseudonyms. The key is
  read from a file or the ``NEUROML_PSEUDONYM_KEY`` environment variable and never written;
  a key file inside the output folder is refused. No mapping back to the real labels is written.
* No step opens a network connection (the tests run the pipeline with sockets blocked).

:func:`find_strings` searches a folder's files (gzip and PNG text decompressed) for given
strings, to check outputs before sharing them.
"""

import gzip
import hashlib
import hmac
import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np

from neuroml._utils.fileio import read_json, save_nifti_atomic, write_json_atomic, write_text_atomic
from neuroml.errors import ConfigError, InputError

__all__ = [
    "IDENTIFYING_HEADER_FIELDS",
    "IDENTIFYING_SIDECAR_FIELDS",
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

#: Sidecar keys dropped by :func:`clean_sidecar` (any key starting with "Patient" too).
IDENTIFYING_SIDECAR_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "PatientPosition", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime",
    "ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "StudyDate", "StudyTime", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "AccessionNumber",
    "StudyID", "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "RequestingPhysician", "OtherPatientIDs", "EthnicGroup", "MedicalRecordLocator",
)

#: Environment variable holding the pseudonymization key.
KEY_ENV = "NEUROML_PSEUDONYM_KEY"

_MIN_KEY_BYTES = 16


def scrub_header(header):
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


def scrub_nifti(img):
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


def clean_sidecar(sidecar):
    """A copy of a BIDS sidecar dict without identifying fields.

    Examples
    --------
    >>> clean_sidecar({"PatientName": "Doe^Jane", "RepetitionTime": 2.3, "InstitutionName": "X"})
    {'RepetitionTime': 2.3}
    """
    drop = set(IDENTIFYING_SIDECAR_FIELDS)
    return {k: v for k, v in sidecar.items() if k not in drop and not k.startswith("Patient")}


def load_key(key_file=None, env=KEY_ENV):
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
        where = f"${env}"
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"pseudonymization needs a secret key of at least {_MIN_KEY_BYTES} bytes in {where} "
                          f"(got {len(key)}); e.g. `python -c \"import secrets; print(secrets.token_hex(32))\" "
                          "> ~/neuroml.key` kept away from the data")
    return key


def pseudonym(participant_id, key, length=12):
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
    return "sub-" + hmac.new(key, label.encode("utf-8"), hashlib.sha256).hexdigest()[:int(length)]


def _inside(path, folder):
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def deidentify_bids(bids_dir, out_dir, key_file=None, pseudonymize=True):
    """Write a de-identified copy of a raw BIDS dataset (anatomical and functional scans).

    NIfTI images and JSON sidecars under ``anat/`` and ``func/`` are copied with their
    identifying header fields blanked and sidecar fields dropped; other files (events,
    physiology, other modalities) are left out.

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
        Replace participant labels by :func:`pseudonym` (otherwise only scrub).

    Returns
    -------
    dict
        ``out_dir``, ``n_participants``, ``n_images``, ``n_sidecars``, ``removed_sidecar_fields``.

    Raises
    ------
    InputError, ConfigError
    """
    import nibabel as nib
    import pandas as pd

    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError("not a BIDS dataset: dataset_description.json is missing", bids_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"out_dir {str(out_dir)!r} is not empty; choose a new folder for the de-identified copy")
    if key_file is not None and _inside(key_file, out_dir):
        raise ConfigError(f"key_file {str(key_file)!r} lies inside out_dir: keep the key away from the data")
    key = load_key(key_file) if pseudonymize else None
    rename = (lambda p: pseudonym(p, key)) if pseudonymize else (lambda p: p)

    table_path = bids_dir / "participants.tsv"
    if table_path.is_file():
        table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
        if "participant_id" not in table.columns:
            raise InputError("participants.tsv has no participant_id column", table_path)
        table["participant_id"] = [rename(p) for p in table["participant_id"]]
        if table["participant_id"].duplicated().any():
            raise InputError("participant labels collide after pseudonymization", table_path)
        write_text_atomic(out_dir / "participants.tsv", table.to_csv(sep="\t", index=False))
    desc = read_json(bids_dir / "dataset_description.json")
    write_json_atomic(out_dir / "dataset_description.json", {k: v for k, v in desc.items()
                                                              if k in ("Name", "BIDSVersion", "DatasetType",
                                                                       "License")})
    if (bids_dir / "participants.json").is_file():
        write_json_atomic(out_dir / "participants.json", read_json(bids_dir / "participants.json"))

    removed, n_img, n_side, subjects = set(), 0, 0, set()
    label = re.compile(r"^sub-[A-Za-z0-9]+")
    for path in sorted(bids_dir.glob("sub-*/**/*")):
        if not path.is_file() or not {"anat", "func"} & set(path.relative_to(bids_dir).parts[:-1]):
            continue
        rel = path.relative_to(bids_dir)
        sub = rel.parts[0]
        new_sub = rename(sub)
        subjects.add(new_sub)
        parts = [new_sub] + [label.sub(new_sub, p) for p in rel.parts[1:]]
        target = out_dir.joinpath(*parts)
        if path.name.endswith((".nii", ".nii.gz")):
            try:
                img = nib.load(str(path))
            except Exception as exc:  # noqa: BLE001 - an unreadable file is named and skipped
                log.warning("de-identify: skipping unreadable %s (%s)", path, exc)
                continue
            save_nifti_atomic(scrub_nifti(img), target)
            n_img += 1
        elif path.suffix == ".json":
            side = read_json(path)
            if not isinstance(side, dict):
                raise InputError("sidecar is not a JSON object", path)
            removed |= set(side) - set(clean := clean_sidecar(side))
            write_json_atomic(target, clean)
            n_side += 1
    write_json_atomic(out_dir / "deidentification.json", {
        "method": "HMAC-SHA256 keyed pseudonyms (first 12 hex digits)" if pseudonymize else "none (labels kept)",
        "key": "not stored", "mapping": "not stored",
        "nifti_fields_blanked": list(IDENTIFYING_HEADER_FIELDS) + ["extensions"],
        "sidecar_fields_removed": sorted(removed),
    })
    log.info("de-identified copy of %d participants in %s", len(subjects), out_dir)
    return {"out_dir": str(out_dir), "n_participants": len(subjects), "n_images": n_img, "n_sidecars": n_side,
            "removed_sidecar_fields": sorted(removed)}


def _png_texts(data):
    """Decoded text chunks (tEXt, zTXt, iTXt) of PNG bytes."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
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


def find_strings(root, strings):
    """Files under ``root`` whose bytes contain any of ``strings`` (case-insensitive).

    Gzip files are searched compressed and decompressed (NIfTI headers), PNG text chunks
    decoded; also searched in UTF-16 (some formats store text that way) and JSON-escaped.

    Returns
    -------
    dict of str to list of str
        Relative path -> strings found in it (empty when clean).
    """
    root = Path(root)
    needles = {s: [s.lower().encode("utf-8"), s.lower().encode("utf-16-le")] for s in strings}
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = [b.lower() for b in _readable_bytes(path)]
        hits = [s for s, forms in needles.items() if any(f in b for f in forms for b in blobs)]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found
