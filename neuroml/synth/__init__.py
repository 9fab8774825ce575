"""Synthetic BIDS cohorts with planted grey-matter atrophy and a stored ground truth.

:func:`make_cohort` writes the dataset; :func:`true_scanner_coords` maps MNI points to
where they truly are in a subject's scan.
"""

from neuroml.synth.cohort import (
    DEFAULT_CLASSES,
    DEFAULT_PLANTED,
    DEFAULT_SITES,
    SYNTH_VERSION,
    make_cohort,
    mask_filename,
)
from neuroml.synth.func import DEFAULT_FUNC_PLANTED, DEFAULT_NETWORKS, make_func_cohort
from neuroml.synth.groundtruth import (
    GROUNDTRUTH_SUBDIR,
    load_subject_transform,
    planted_mask_path,
    true_scanner_coords,
    warp_displacement,
)

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_PLANTED",
    "DEFAULT_SITES",
    "SYNTH_VERSION",
    "GROUNDTRUTH_SUBDIR",
    "make_cohort",
    "make_func_cohort",
    "DEFAULT_FUNC_PLANTED",
    "DEFAULT_NETWORKS",
    "mask_filename",
    "load_subject_transform",
    "planted_mask_path",
    "true_scanner_coords",
    "warp_displacement",
]
