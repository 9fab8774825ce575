"""T1w preprocessing: N4, affine registration to MNI, resampling, normalization, QC.

Single scan: :func:`preprocess_t1w` (files) / :func:`preprocess_scan` (in memory) /
:class:`T1wPreprocessor` (scikit-learn style). A whole dataset is preprocessed by
:func:`neuroml.workflows.run_participant_level`. Output files follow ``docs/layout.md``.
"""

from neuroml.preprocessing.anat import (
    NORMALIZATIONS,
    check_plausible_t1w,
    n4_bias_correct,
    normalize_array,
    normalize_intensity,
    reorient_ras,
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
    "read_transform",
    "register_to_template",
    "registration_qc",
    "reorient_ras",
    "resample_to_grid",
    "robust_z",
]
