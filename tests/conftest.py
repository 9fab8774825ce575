"""Shared fixtures: tiny seeded images with unequal sides, so swapped axes fail."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def img_3d(rng):
    """A 7x8x9 float image with a non-trivial affine."""
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-10, -20, -30]
    return nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32), affine)


@pytest.fixture(autouse=True)
def _restore_neuroml_logger():
    """`neuroml.cli.main` installs its own handler and stops propagation: undo it after each
    test, so later tests' caplog still sees neuroml's records whatever the test order."""
    log = logging.getLogger("neuroml")
    saved = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:] = saved[0]
    log.propagate, log.level = saved[1], saved[2]


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after): small models run faster and
    results do not depend on the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
