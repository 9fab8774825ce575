"""The default augmentation, applied to whole batches: MONAI's random affine, intensity and noise, batched.

:class:`BatchAugmentation` draws the parameters of MONAI's ``RandAffine``,
``RandScaleIntensity``, ``RandShiftIntensity``, ``RandGaussianNoise`` (and optionally
``RandFlip``) with the same distributions and builds each affine matrix with MONAI's own
``create_rotate``/``create_translate``/``create_scale`` in ``RandAffine``'s order, but
resamples a whole batch in one ``torch.nn.functional.grid_sample`` over a sampling grid
built from three 1D terms (an affine map of a regular grid is separable). Per volume
MONAI's ``RandAffine`` builds and multiplies a dense coordinate grid in several passes:
at 2 mm it cost more than a training step of the compact network (README, Benchmarks).

:func:`~neuroml.training.fit` applies it to each training batch on the training device
(``apply_batch``); called on one ``(C, X, Y, Z)`` tensor it is an ordinary per-item
transform. Its random state is a ``torch.Generator`` reseeded by ``set_random_state``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """Random affine, intensity scaling and shift, Gaussian noise (and optional flip), per item, on batches.

    Each of the steps below is applied to an item with probability ``prob`` (the flip
    with 0.5), in this order, with MONAI's parameter distributions:

    * affine (``RandAffine``): rotation ``U(-rotate, rotate)`` radians about each axis,
      translation ``U(-translate_vox, translate_vox)`` voxels, scaling ``1 + U(-scale, scale)``
      per axis, about the volume centre; bilinear, border padding;
    * ``x * (1 + U(-intensity, intensity))`` (``RandScaleIntensity``);
    * ``x + U(-intensity, intensity)`` (``RandShiftIntensity``);
    * ``x + N(0, s)`` with ``s ~ U(0, noise_std)`` (``RandGaussianNoise``);
    * a flip of the first spatial axis when ``flip=True`` (``RandFlip``).

    Parameters are documented in :func:`~neuroml.data.make_augmentation`, which builds it.
    """

    def __init__(
        self,
        seed: int = 0,
        rotate_deg: float = 3.0,
        translate_vox: float = 2.0,
        scale: float = 0.03,
        intensity: float = 0.1,
        noise_std: float = 0.05,
        flip: bool = False,
        prob: float = 0.5,
    ) -> None:
        self.rotate = math.radians(float(rotate_deg))
        self.translate_vox, self.scale = float(translate_vox), float(scale)
        self.intensity, self.noise_std = float(intensity), float(noise_std)
        self.flip, self.prob = bool(flip), float(prob)
        self.generator = torch.Generator()
        self.set_random_state(seed)

    @property
    def steps(self) -> list[str]:
        """Names of the MONAI transforms this reproduces, in order."""
        names = ["RandAffine", "RandScaleIntensity", "RandShiftIntensity", "RandGaussianNoise"]
        return names + (["RandFlip"] if self.flip else [])

    def set_random_state(self, seed: int) -> BatchAugmentation:
        """Reseed the random state; returns self."""
        self.generator.manual_seed(int(seed) % (2**63))
        return self

    def __repr__(self):
        return f"BatchAugmentation({self.steps}, prob={self.prob})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment one ``(C, X, Y, Z)`` tensor."""
        return self.apply_batch(x[None])[0]

    def _uniform(self, shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def apply_batch(self, x: torch.Tensor, pooled: int = 1) -> torch.Tensor:
        """Augment a batch ``(N, C, X, Y, Z)`` (a new tensor, on ``x``'s device; ``x`` is not modified).

        The random draws come from the CPU generator in a fixed order, so a seed gives the
        same warp and intensity change on every device (up to floating-point rounding of the
        resampling); the noise comes from a generator on the batch's device, seeded from them.

        ``pooled``: ``x`` is the network's input average-pooled by this factor (a network with
        an :class:`~neuroml.models.factory.InputPool`). Translations are then divided by it
        and the noise by its 3/2 power, so the result matches in distribution the pooled
        augmentation of the full grid (same shift in mm; the mean of ``pooled**3`` independent
        noise voxels), while the warp resamples a grid ``pooled**3`` times smaller.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a batch (N, C, X, Y, Z), got shape {tuple(x.shape)}")
        n = x.shape[0]
        # every parameter is drawn for every item, whether or not its step applies: the draws
        # of one batch never depend on which items were transformed
        do = torch.rand((n, 5), generator=self.generator) < torch.tensor([self.prob] * 4 + [0.5])
        angles = self._uniform((n, 3), -self.rotate, self.rotate)
        shifts = self._uniform((n, 3), -self.translate_vox, self.translate_vox) / pooled
        scales = 1 + self._uniform((n, 3), -self.scale, self.scale)
        factor = 1 + self._uniform((n,), -self.intensity, self.intensity)
        offset = self._uniform((n,), -self.intensity, self.intensity)
        noise_sd = self._uniform((n,), 0.0, self.noise_std) / pooled**1.5
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))

        out = x.float().clone()
        dev = out.device
        warp = do[:, 0].nonzero().flatten()
        if len(warp):
            mats = torch.stack(
                [_monai_affine(angles[i], shifts[i], scales[i]) for i in warp.tolist()]
            )
            warp = _upload(warp, dev)
            out[warp] = warp_affine(out[warp], _upload(mats, dev))
        a = torch.where(do[:, 1], factor, 1.0)
        b = torch.where(do[:, 2], offset, 0.0)
        view = (n,) + (1,) * (x.ndim - 1)
        out.mul_(_upload(a.to(out.dtype), dev).view(view)).add_(
            _upload(b.to(out.dtype), dev).view(view)
        )
        noisy = do[:, 3].nonzero().flatten()
        if len(noisy):
            gen = torch.Generator(device=dev).manual_seed(noise_seed)
            sd = _upload(noise_sd[noisy].to(out.dtype), dev).view((-1,) + (1,) * (x.ndim - 1))
            noise = torch.randn(
                (len(noisy), *out.shape[1:]), generator=gen, device=dev, dtype=out.dtype
            )
            out[_upload(noisy, dev)] += noise.mul_(sd)
        if self.flip:
            flipped = do[:, 4].nonzero().flatten()
            if len(flipped):
                flipped = _upload(flipped, dev)
                out[flipped] = out[flipped].flip(2)
        return out


def _upload(t, device):
    """A small CPU tensor on ``device``; on CUDA through pinned memory and an asynchronous copy.

    A plain ``.to("cuda")`` from pageable memory waits for the GPU to finish its queue: a few
    of them per batch left a fast GPU idle between the steps of a small network.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _monai_affine(angles, shifts, scales):
    """4x4 matrix of MONAI's ``AffineGrid``: rotate @ translate @ scale (output to input voxel coordinates)."""
    from monai.transforms.utils import create_rotate, create_scale, create_translate

    return (
        create_rotate(3, angles.tolist(), backend="torch").double()
        @ create_translate(3, shifts.tolist(), backend="torch").double()
        @ create_scale(3, scales.tolist(), backend="torch").double()
    )


def warp_affine(x, matrices, mode="bilinear", padding_mode="border"):
    """Resample a batch ``(N, C, X, Y, Z)`` like MONAI's ``Affine``/``RandAffine`` for each item's matrix.

    ``matrices`` ``(N, 4, 4)`` map output voxel coordinates to input voxel coordinates, both
    centred on the volume (MONAI's convention); sampling uses ``align_corners=False`` as
    MONAI's ``Resample`` does. The sampling grid is the sum of three 1D terms (one per output
    axis) instead of a matrix product over every voxel.
    """
    n, _, *shape = x.shape
    mats = matrices.to(device=x.device, dtype=torch.float64)
    # normalised input coordinate of axis a: 2 * (M[a, :3] @ c + M[a, 3]) / shape[a]
    norm = _upload(torch.tensor([2.0 / max(2, s) for s in shape], dtype=torch.float64), x.device)
    lin, shift = (
        mats[:, :3, :3] * norm[:, None],
        mats[:, :3, 3] * norm,
    )  # (N, 3 in, 3 out), (N, 3 in)
    # grid_sample wants (x, y, z) = (last axis, ..., first axis): reverse the input-axis order
    lin, shift = lin.flip(1), shift.flip(1)
    terms = []
    for b, size in enumerate(shape):
        c = (
            torch.arange(size, dtype=torch.float64, device=x.device) - (size - 1) / 2
        )  # centred coordinates
        term = c[None, :, None] * lin[:, None, :, b]  # (N, size, 3)
        view = [n, 1, 1, 1, 3]
        view[1 + b] = size
        terms.append(term.view(view).to(x.dtype))
    grid = (terms[0] + shift.to(x.dtype).view(n, 1, 1, 1, 3) + terms[1]) + terms[2]
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
