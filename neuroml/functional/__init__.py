"""Resting-state fMRI: BOLD cleaning (nilearn), 3D maps on the T1w's MNI grid (mean, ALFF,
fALFF, ReHo, seed/network connectivity), atlas time series and a connectome baseline."""

from neuroml.functional.bold import (
    FUNC_DEFAULT_PARAMS,
    BoldResult,
    check_func_params,
    compute_maps,
    map_names,
    preprocess_bold_scan,
    repetition_time,
)
from neuroml.functional.clean import STRATEGIES, clean_series, find_confounds_file, load_confounds
from neuroml.functional.files import (
    find_bold_scans,
    func_output_paths,
    is_func_complete,
    preprocess_bold,
)
from neuroml.functional.maps import (
    alff_array,
    amplitude_spectrum,
    falff_array,
    reho_array,
    seed_connectivity_array,
)

__all__ = [
    "FUNC_DEFAULT_PARAMS",
    "STRATEGIES",
    "BoldResult",
    "alff_array",
    "amplitude_spectrum",
    "check_func_params",
    "clean_series",
    "compute_maps",
    "falff_array",
    "find_bold_scans",
    "find_confounds_file",
    "func_output_paths",
    "is_func_complete",
    "load_confounds",
    "map_names",
    "preprocess_bold",
    "preprocess_bold_scan",
    "reho_array",
    "repetition_time",
    "seed_connectivity_array",
]
