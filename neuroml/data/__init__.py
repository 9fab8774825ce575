"""Data: the float16 tensor cache of preprocessed volumes, the labelled cohort, torch Datasets."""

from neuroml.data.augment import BatchAugmentation
from neuroml.data.cache import TensorCache, build_cache, find_preprocessed, resolution_key
from neuroml.data.dataset import (
    Augmentation,
    Cohort,
    VolumeDataset,
    load_cohort,
    make_augmentation,
    participants_file,
)
from neuroml.data.stack import StackedCache, open_inputs

__all__ = [
    "TensorCache",
    "StackedCache",
    "open_inputs",
    "build_cache",
    "find_preprocessed",
    "resolution_key",
    "Cohort",
    "load_cohort",
    "participants_file",
    "VolumeDataset",
    "Augmentation",
    "BatchAugmentation",
    "make_augmentation",
]
