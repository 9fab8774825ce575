"""Synthetic BIDS cohorts with planted grey-matter atrophy and a stored ground truth.

:func:`make_cohort` (T1w) and :func:`make_func_cohort` (fMRIPrep-style BOLD) write the dataset
and its ground truth, which :mod:`neuroml.io.groundtruth` reads.
"""

from neuroml.synth.cohort import (
    DEFAULT_CLASSES,
    DEFAULT_PLANTED,
    DEFAULT_SITES,
    SYNTH_VERSION,
    make_cohort,
)
from neuroml.synth.func import DEFAULT_FUNC_PLANTED, DEFAULT_NETWORKS, make_func_cohort

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_PLANTED",
    "DEFAULT_SITES",
    "SYNTH_VERSION",
    "make_cohort",
    "make_func_cohort",
    "DEFAULT_FUNC_PLANTED",
    "DEFAULT_NETWORKS",
]
