"""The model-randomization check on maps without signal: undecided, never passed."""

import numpy as np
import torch

from neuroml.attribution import sanity

SHAPE = (6, 7, 5)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(SHAPE)), 2))


def _random_maps(m, x, t):
    return np.random.default_rng(1).normal(size=(len(x), *SHAPE))


def test_constant_trained_maps_leave_the_randomization_check_undecided():
    """A map that is zero everywhere (e.g. region occlusion of a saturated model) has no ranking
    for randomized weights to destroy: its rho used to count as 0, a pass."""
    x = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    res = sanity.model_randomization(
        _random_maps, _model(), x, np.zeros((3, *SHAPE)), np.array([0, 1, 0])
    )
    assert res["rho"] == [None, None, None] and res["n_constant"] == 3
    assert res["passed"] is None and res["median_abs_rho"] is None and "no signal" in res["note"]


def test_constant_maps_are_left_out_of_the_median():
    x = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    trained = _random_maps(None, x, None).copy()  # identical to the "randomized" maps: rho 1
    trained[1] = 5.0
    res = sanity.model_randomization(_random_maps, _model(), x, trained, np.array([0, 1, 0]))
    assert res["rho"][1] is None and res["rho"][0] == 1.0 and res["rho"][2] == 1.0
    assert res["median_abs_rho"] == 1.0 and res["passed"] is False and res["n_constant"] == 1
    summary = sanity.randomization_summary([0.1, None, -0.05, 0.3])
    assert summary == {
        "median_abs_rho": 0.1,
        "threshold": sanity.RANDOMIZATION_RHO,
        "passed": True,
        "n_constant": 1,
    }
