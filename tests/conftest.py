"""Shared fixtures: tiny seeded images with unequal sides, so swapped axes fail; and the
session's cohorts (built once by :mod:`_cohorts`, read-only: a test that writes copies them)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging

import nibabel as nib
import numpy as np
import pytest
from _cohorts import copy_cohort, make_derivatives, small_raw_cohort


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


# -- the session's cohorts: built once, never written to (copy_cohort / shutil.copytree first) --
@pytest.fixture(scope="session")
def synthetic_derivatives(tmp_path_factory):
    """``(raw, deriv, ids)``: :func:`_cohorts.make_derivatives` (8 participants, control/MDD,
    8 mm grid). Training writes the tensor cache into ``deriv``: train on a
    ``copy_cohort(raw.parent, ...)``."""
    return make_derivatives(tmp_path_factory.mktemp("synthetic_derivatives"), n=8, res=8.0)


@pytest.fixture(scope="session")
def trained_run(synthetic_derivatives, tmp_path_factory):
    """``(root, deriv, run)``: a 1-epoch 2-fold run (no baseline) on a copy of
    :func:`synthetic_derivatives`, whose ``deriv`` now holds the cache. Copy ``run`` (and
    ``deriv``) before writing into them."""
    import torch

    from neuroml.workflows import train_run

    root = copy_cohort(
        synthetic_derivatives[0].parent, tmp_path_factory.mktemp("trained_run") / "cohort"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(
            root / "deriv",
            root / "run",
            epochs=1,
            folds=2,
            batch_size=2,
            n_bootstrap=10,
            show_progress=False,
            device="cpu",
            baseline=False,
        )
    finally:
        torch.set_num_threads(threads)
    return root, root / "deriv", root / "run"


@pytest.fixture(scope="session")
def synthetic_bids(tmp_path_factory):
    """Raw BIDS of two coarse synthetic subjects (:func:`_cohorts.small_raw_cohort`, seed 1)."""
    return small_raw_cohort(tmp_path_factory.mktemp("synthetic_bids"), seed=1)


#: The test files that take longest, run first: with two workers taking one file each at a time
#: (``--dist loadfile``), a long file started last would keep one worker busy alone at the end.
_LONGEST_FIRST = (
    "test_cli_end_to_end.py",
    "test_docs.py",
    "test_reliability_crash.py",
    "test_preprocessing.py",
    "test_trust_e2e.py",
    "test_attribution.py",
    "test_reports.py",
    "test_func_training.py",
    "test_trust_harmonize.py",
    "test_reliability_corpus.py",
    "test_training.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
