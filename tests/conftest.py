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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module (restored after): small models run faster and
    results do not depend on the machine's core count. Module-scoped, so module fixtures
    that train can use it too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def neuroml_log(caplog):
    """caplog that sees the "neuroml" logger even after the CLI made it stop propagating."""
    logger = logging.getLogger("neuroml")
    state = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers[:] = [caplog.handler]
    logger.setLevel(logging.INFO)
    yield caplog
    logger.setLevel(state[0])
    logger.propagate = state[1]
    logger.handlers[:] = state[2]


@pytest.fixture
def interrupt_fold(monkeypatch):
    """``interrupt_fold(fold, epoch)``: the next ``train_run`` raises KeyboardInterrupt after
    ``epoch`` of training fold ``fold`` (1-based, as in the progress bar), like a killed run;
    ``fit`` is restored once the fixture ends."""
    from neuroml.workflows import train as run_module

    real_fit = run_module.fit

    def arm(fold, epoch):
        def crashing_fit(*args, **kwargs):
            if kwargs.get("desc", "").startswith(f"fold {fold}/"):

                def crash(done, record):
                    if done == epoch:
                        raise KeyboardInterrupt

                kwargs["callback"] = crash
            return real_fit(*args, **kwargs)

        monkeypatch.setattr(run_module, "fit", crashing_fit)
        return lambda: monkeypatch.setattr(run_module, "fit", real_fit)  # disarm

    return arm
