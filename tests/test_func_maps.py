"""ALFF, fALFF, ReHo and seed connectivity against small cases computed by hand."""

import itertools

import numpy as np
import pytest

from neuroml.errors import ConfigError, InputError
from neuroml.functional.maps import (
    alff_array,
    amplitude_spectrum,
    falff_array,
    reho_array,
    seed_connectivity_array,
    sphere_mask,
    zscore_in_mask,
)

TR = 2.0
T = 100  # frequency grid: k / (T * TR) = k * 0.005 Hz


def _sin(freq, amp=1.0, phase=0.0):
    t = np.arange(T) * TR
    return amp * np.sin(2 * np.pi * freq * t + phase)


def test_amplitude_of_a_sinusoid_is_its_amplitude():
    f, a = amplitude_spectrum(_sin(0.05, 3.0, 0.4), TR)
    assert f[0] == pytest.approx(0.005) and f[-1] == pytest.approx(0.25)
    k = np.argmin(abs(f - 0.05))
    assert a[k] == pytest.approx(3.0)
    assert np.delete(a, k).max() < 1e-9


def test_alff_falff_of_pure_sinusoids():
    x = np.zeros((3, 4, 5, T))
    x[0, 0, 0] = _sin(0.05, 2.0)  # in band
    x[1, 1, 1] = _sin(0.15, 2.0)  # out of band
    x[2, 3, 4] = _sin(0.05, 3.0) + _sin(0.20, 1.0)  # both
    n_band = sum(0.01 <= k * 0.005 <= 0.08 for k in range(1, 51))  # 0.010 .. 0.080 -> 15 bins
    assert n_band == 15
    alff = alff_array(x, TR)
    falff = falff_array(x, TR)
    assert alff.shape == (3, 4, 5) and alff.dtype == np.float32
    assert alff[0, 0, 0] == pytest.approx(2.0 / n_band, rel=1e-5)
    assert alff[1, 1, 1] == pytest.approx(0.0, abs=1e-7)
    assert alff[2, 3, 4] == pytest.approx(3.0 / n_band, rel=1e-5)
    assert falff[0, 0, 0] == pytest.approx(1.0, rel=1e-6)
    assert falff[1, 1, 1] == pytest.approx(0.0, abs=1e-7)
    assert falff[2, 3, 4] == pytest.approx(3.0 / 4.0, rel=1e-5)
    assert falff[0, 1, 2] == 0.0  # flat voxel


def test_alff_scales_linearly_and_respects_mask_and_band():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 6, T))
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    a1 = alff_array(x, TR, mask=mask)
    a2 = alff_array(3 * x, TR, mask=mask)
    np.testing.assert_allclose(a2[mask], 3 * a1[mask], rtol=1e-5)
    assert (a1[~mask] == 0).all() and (a1[mask] > 0).all()
    wide = falff_array(x, TR, band=(0.0, 1.0), mask=mask)
    np.testing.assert_allclose(wide[mask], 1.0, rtol=1e-6)
    with pytest.raises(ConfigError, match="band 0.3-0.4 Hz lies above the Nyquist frequency"):
        alff_array(x, TR, band=(0.3, 0.4))
    with pytest.raises(InputError, match="band"):
        alff_array(x, TR, band=(0.04, 0.02))


def _kendall_w(series):
    """Kendall's W by its definition: K series of n ranks."""
    from scipy.stats import rankdata

    r = np.array([rankdata(s) for s in series])
    k, n = r.shape
    rt = r.sum(0)
    s = ((rt - rt.mean()) ** 2).sum()
    return 12 * s / (k**2 * (n**3 - n))


def test_reho_is_kendalls_w_over_the_27_neighbourhood():
    rng = np.random.default_rng(1)
    shape, n = (5, 4, 3), 12
    x = rng.normal(size=(*shape, n))
    mask = np.ones(shape, bool)
    mask[0, 0, 0] = False
    mask[4, 3, 2] = False
    out = reho_array(x, mask)
    for i, j, k in itertools.product(*map(range, shape)):
        if not mask[i, j, k]:
            assert out[i, j, k] == 0
            continue
        neigh = [
            x[a, b, c]
            for a, b, c in itertools.product(
                range(i - 1, i + 2), range(j - 1, j + 2), range(k - 1, k + 2)
            )
            if 0 <= a < shape[0] and 0 <= b < shape[1] and 0 <= c < shape[2] and mask[a, b, c]
        ]
        assert out[i, j, k] == pytest.approx(_kendall_w(neigh), rel=1e-5, abs=1e-6), (i, j, k)


def test_reho_extremes_and_neighbourhoods():
    n = 10
    base = np.arange(n, dtype=float)
    same = np.broadcast_to(base, (3, 4, 5, n)).copy()
    np.testing.assert_allclose(reho_array(same), 1.0, rtol=1e-6)
    pair = np.zeros((2, 1, 1, n))
    pair[0, 0, 0], pair[1, 0, 0] = base, base[::-1]
    np.testing.assert_allclose(reho_array(pair), 0.0, atol=1e-9)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5, 6, n))
    for nb in (7, 19):
        assert not np.allclose(reho_array(x, neighbourhood=nb), reho_array(x))
    with pytest.raises(InputError, match="neighbourhood"):
        reho_array(x, neighbourhood=9)


def test_seed_connectivity_recovers_correlation():
    rng = np.random.default_rng(3)
    s = rng.normal(size=T)
    noise = rng.normal(size=T)
    noise -= noise.mean()
    noise -= (noise @ (s - s.mean())) / ((s - s.mean()) @ (s - s.mean())) * (s - s.mean())
    x = np.zeros((3, 4, 5, T))
    x[0, 0, 0] = s
    x[0, 0, 1] = s  # seed of two identical voxels
    x[2, 3, 4] = -2 * s + 7
    x[1, 2, 3] = noise
    x[2, 2, 2] = (s - s.mean()) / np.std(s) + noise / np.std(noise)  # r = 1/sqrt(2)
    seed = np.zeros((3, 4, 5), bool)
    seed[0, 0, :2] = True
    z = seed_connectivity_array(x, seed)
    assert z[2, 3, 4] == pytest.approx(np.arctanh(-0.999999), rel=1e-6)
    assert z[1, 2, 3] == pytest.approx(0.0, abs=1e-9)
    assert z[2, 2, 2] == pytest.approx(np.arctanh(1 / np.sqrt(2)), rel=1e-6)
    assert z[1, 1, 1] == 0  # flat voxel
    with pytest.raises(InputError, match="seed"):
        seed_connectivity_array(x, np.zeros((3, 4, 5), bool))


def test_sphere_and_zscore_and_shape_errors():
    m = sphere_mask(np.diag([2.0, 2.0, 2.0, 1.0]), (7, 8, 9), (6.0, 6.0, 6.0), 2.0)
    assert m.sum() == 7 and m[3, 3, 3]
    v = np.arange(24.0).reshape(2, 3, 4)
    z = zscore_in_mask(v, v > 5)
    assert z[v > 5].mean() == pytest.approx(0, abs=1e-6) and z[v > 5].std() == pytest.approx(
        1, rel=1e-5
    )
    assert (z[v <= 5] == 0).all()
    with pytest.raises(InputError, match="4D"):
        alff_array(np.zeros((3, 4, 5)), TR)
    with pytest.raises(InputError, match="repetition time"):
        alff_array(np.zeros((3, 4, 5, 10)), 0)
    with pytest.raises(InputError, match="mask shape"):
        reho_array(np.zeros((3, 4, 5, 10)), np.ones((3, 4, 6), bool))
