"""Deterministic NIfTI files of the synthetic cohorts: same data, same bytes."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from neuroml._utils.fileio import atomic_path


def _nifti_bytes(data, affine, slope=None, descrip="", zooms=None, qform_code=1, sform_code=1):
    """Uncompressed single-file NIfTI-1 bytes, written field by field (deterministic).

    nibabel recomputes scaling when it saves; writing the header ourselves keeps the
    chosen ``scl_slope`` of int16 data.
    """
    data = np.asarray(data)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_qform(affine, code=int(qform_code))
    hdr.set_sform(affine, code=int(sform_code))
    if zooms is not None:
        hdr.set_zooms(tuple(float(z) for z in zooms))
    hdr.set_xyzt_units("mm", "sec")
    hdr["scl_slope"] = 1.0 if slope is None else float(slope)
    hdr["scl_inter"] = 0.0
    hdr["vox_offset"] = 352.0
    hdr["descrip"] = descrip[:79].encode("ascii")
    hdr["magic"] = b"n+1"
    le = data.astype(data.dtype.newbyteorder("<"), copy=False)
    hdr = hdr.as_byteswapped("<") if hdr.endianness != "<" else hdr
    return hdr.binaryblock + b"\x00" * 4 + le.tobytes(order="F")


def _write_nifti_gz(path, data, affine, **kwargs):
    """Write a ``.nii.gz`` atomically and reproducibly (gzip mtime 0, no file name)."""
    raw = _nifti_bytes(data, affine, **kwargs)
    buf = gzip.compress(raw, compresslevel=3, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf)
    return Path(path)
