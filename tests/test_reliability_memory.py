"""Memory behaviour of the input path (figures for a 512 x 512 x 400 scan: scripts/bench_memory.py).

Checked here on small volumes, with tracemalloc (numpy's allocations are traced): a scaled
integer file is read without a whole-volume float64 copy, and scans with voxels much finer
than the target grid are block-averaged before the expensive steps.
"""

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from neuroml.io import check_img
from neuroml.preprocessing.t1w import downsample_fine


def _scaled_file(tmp_path, shape=(150, 160, 170), slope=0.37, inter=5.0):
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(
        rng.integers(0, 3000, shape).astype(np.int16), np.diag([0.5, 0.5, 0.5, 1.0])
    )
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    return path


def test_scaled_read_is_exact_and_has_no_float64_copy(tmp_path):
    path = _scaled_file(tmp_path)
    expected = np.asanyarray(nib.load(str(path)).dataobj).astype(
        np.float32
    )  # nibabel's float64 route
    tracemalloc.start()
    try:
        out = check_img(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = np.asarray(out.dataobj)
    np.testing.assert_array_equal(data, expected)
    # int16 raw (0.5x) + float32 result (1x) + one boolean mask (0.25x) + small slabs;
    # nibabel's route adds a whole float64 copy (2x) on top
    assert peak < 2.4 * data.nbytes, peak / data.nbytes


@pytest.mark.parametrize(
    "zoom, resolution, factors",
    [(0.5, 2.0, (2, 2, 2)), (1.0, 2.0, (1, 1, 1)), (0.25, 2.0, (4, 4, 4)), (0.9, 2.0, (1, 1, 1))],
)
def test_fine_voxels_are_block_averaged(zoom, resolution, factors):
    rng = np.random.default_rng(1)
    shape = (36, 40, 44)
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = [-5, 7, 11]
    img = nib.Nifti1Image(rng.random(shape).astype(np.float32), affine)
    out = downsample_fine(img, resolution)
    if factors == (1, 1, 1):
        assert out is img
        return
    f = factors[0]
    assert out.shape == tuple(s // f for s in shape)
    data = np.asarray(img.dataobj)
    np.testing.assert_allclose(
        np.asarray(out.dataobj)[1, 2, 3],
        data[f : 2 * f, 2 * f : 3 * f, 3 * f : 4 * f].mean(),
        rtol=1e-6,
    )
    # the reduced voxel's centre is the centre of its block, in world coordinates
    block = np.array(
        [
            [i, j, k, 1]
            for i in range(f, 2 * f)
            for j in range(2 * f, 3 * f)
            for k in range(3 * f, 4 * f)
        ]
    )
    np.testing.assert_allclose(
        out.affine @ [1, 2, 3, 1], (affine @ block.T).mean(axis=1), atol=1e-9
    )


def test_an_anisotropic_scan_is_reduced_only_where_fine():
    affine = np.diag([0.5, 1.0, 0.4, 1.0])
    img = nib.Nifti1Image(np.random.default_rng(2).random((40, 30, 50)).astype(np.float32), affine)
    out = downsample_fine(img, 2.0)
    assert out.shape == (20, 30, 25)
    np.testing.assert_allclose(
        np.sqrt((out.affine[:3, :3] ** 2).sum(0)), [1.0, 1.0, 0.8]
    )  # 0.4 mm: x2
