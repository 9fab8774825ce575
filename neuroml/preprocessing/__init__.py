"""T1w preprocessing: N4, affine registration to MNI, resampling, normalization, QC.

Single scan: :func:`preprocess_t1w` (files) / :func:`preprocess_scan` (in memory) /
:class:`T1wPreprocessor` (scikit-learn style). Whole dataset:
:func:`run_participant_level` (resumable, parallel) and :func:`run_group_level` (QC table
and page). Output files follow ``docs/layout.md``.
"""

from neuroml.preprocessing.anat import (
    NORMALIZATIONS,
    check_plausible_t1w,
    n4_bias_correct,
    normalize_array,
    normalize_intensity,
    reorient_ras,
)
from neuroml.preprocessing.batch import (
    BatchResult,
    Failure,
    read_failures,
    run_group_level,
    run_participant_level,
    write_dataset_description,
)
from neuroml.preprocessing.qc import registration_qc, robust_z
from neuroml.preprocessing.registration import (
    RegistrationResult,
    mni_to_scanner,
    read_transform,
    register_to_template,
    resample_to_grid,
)
from neuroml.preprocessing.t1w import (
    DEFAULT_PARAMS,
    T1wPreprocessor,
    T1wResult,
    is_complete,
    output_paths,
    preprocess_scan,
    preprocess_t1w,
)

__all__ = [
    "NORMALIZATIONS",
    "DEFAULT_PARAMS",
    "BatchResult",
    "Failure",
    "RegistrationResult",
    "T1wPreprocessor",
    "T1wResult",
    "check_plausible_t1w",
    "is_complete",
    "mni_to_scanner",
    "n4_bias_correct",
    "normalize_array",
    "normalize_intensity",
    "output_paths",
    "preprocess_scan",
    "preprocess_t1w",
    "read_failures",
    "read_transform",
    "register_to_template",
    "registration_qc",
    "reorient_ras",
    "resample_to_grid",
    "robust_z",
    "run_group_level",
    "run_participant_level",
    "write_dataset_description",
]
