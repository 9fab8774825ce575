"""Layers swapped into MONAI networks for speed, with the same function and no parameters.

:class:`FastDropout` is ``torch.nn.Dropout`` with a cheaper random mask on the CPU. On this
project's CPUs ``torch.nn.Dropout`` draws one Bernoulli variate per activation from torch's
single-threaded Mersenne Twister (oneMKL's vectorised path is taken on Intel CPUs only): in
the compact network at 2 mm that was a quarter of a training step (README, Benchmarks).

:class:`FastInstanceNorm3d` is ``torch.nn.InstanceNorm3d`` (without affine parameters or
running statistics) computed on the CPU in the input's own memory layout. torch's CPU
instance norm runs batch norm over a ``(1, batch * channels, ...)`` view, which needs a
C-contiguous tensor, so a channels-last network (:func:`~neuroml.training.fit` on the CPU)
paid a layout copy of the activations and of their gradients at every norm layer.
"""

import torch
from torch.autograd.function import once_differentiable

__all__ = ["FastDropout", "FastInstanceNorm3d", "use_fast_dropout", "use_fast_layers"]

#: Resolution of the drop probability: each mask element is a 15-bit uniform integer.
_LEVELS = 1 << 15


class FastDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` whose CPU training mask comes from 15-bit integers, four per 64-bit draw.

    An element is zeroed when its 15-bit uniform integer (from torch's seeded CPU
    generator, so ``torch.manual_seed`` fixes it) is below ``round(p * 2**15)``, and kept
    scaled by ``1 / (1 - p)``: the drop probability is ``p`` to within ``2**-16``. In eval
    mode, on other devices, in place or with ``p`` of 0 or 1 it is ``torch.nn.Dropout``.
    The mask is drawn in the logical (C-contiguous) element order, so a channels-last input
    gets the same mask as a contiguous one (and the output keeps the input's layout).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> drop = FastDropout(0.25)
    >>> y = drop(torch.ones(100_000))
    >>> y.unique()
    tensor([0.0000, 1.3333])
    >>> round(float((y == 0).float().mean()), 2)
    0.25
    """

    def forward(self, x):
        if not self.training or self.inplace or not 0 < self.p < 1 or x.device.type != "cpu" or not x.numel():
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n]
        keep = torch.bitwise_and(bits, _LEVELS - 1) >= round(self.p * _LEVELS)  # random_() leaves the top bit 0
        noise = keep.to(x.dtype).div_(1 - self.p).view(x.shape)  # what torch's CPU dropout multiplies by
        return x * noise


class _InstanceNorm(torch.autograd.Function):
    """Instance norm over the spatial axes of a 5D tensor, in its own memory layout.

    Forward: ``y = (x - mean) / sqrt(var + eps)`` per sample and channel (biased variance, as
    torch, from the centred values). Backward: ``dx = (g - mean(g) - y * mean(g * y)) / sqrt(var + eps)``. Both are
    reductions and element-wise passes, which keep a channels-last layout.
    """

    @staticmethod
    def forward(ctx, x, eps):
        # two passes (mean, then the centred squares) rather than torch.var_mean, whose CPU
        # reduction over these axes is ~60x slower than a mean (torch 2.13)
        dims = (2, 3, 4)
        y = x - x.mean(dim=dims, keepdim=True)
        rstd = (y * y).mean(dim=dims, keepdim=True).add_(eps).rsqrt_()
        y.mul_(rstd)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable  # the closed form treats rstd as a constant: a double backward would be wrong
    def backward(ctx, g):
        y, rstd = ctx.saved_tensors
        g_mean = g.mean(dim=(2, 3, 4), keepdim=True)
        gy_mean = (g * y).mean(dim=(2, 3, 4), keepdim=True)
        return torch.addcmul(g, y, gy_mean, value=-1).sub_(g_mean).mul_(rstd), None


class FastInstanceNorm3d(torch.nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` that keeps the input's memory layout on the CPU.

    Without affine parameters and running statistics (MONAI's ``"INSTANCE"`` norm), on a
    batched float32/float64 CPU tensor, it normalises with :class:`_InstanceNorm`: the same
    function and gradient as torch's (to rounding), without the two layout copies torch's
    CPU kernel makes of a channels-last input and of its gradient. Otherwise it is
    ``torch.nn.InstanceNorm3d``. No parameters or buffers: the state dict is unchanged.

    Examples
    --------
    >>> x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    >>> torch.allclose(FastInstanceNorm3d(3)(x), torch.nn.InstanceNorm3d(3)(x), atol=1e-5)
    True
    """

    def forward(self, x):
        if (self.affine or self.track_running_stats or x.ndim != 5 or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.float64) or x.shape[1] != self.num_features
                or not x.shape[0] or x.shape[2:].numel() < 2):  # torch's errors and empty results
            return super().forward(x)
        return _InstanceNorm.apply(x, self.eps)


def _fast_dropout(child):
    return FastDropout(child.p, inplace=child.inplace) if type(child) is torch.nn.Dropout else None


def _fast_norm(child):
    if type(child) is torch.nn.InstanceNorm3d and not child.affine and not child.track_running_stats:
        return FastInstanceNorm3d(child.num_features, eps=child.eps)
    return None


def _swap(model, *replacements):
    """Replace each child module of ``model`` (at any depth) for which one of ``replacements``
    returns a module (in place); return ``model``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            new = next((m for m in (r(child) for r in replacements) if m is not None), None)
            if new is not None:
                setattr(module, name, new)
    return model


def use_fast_layers(model):
    """Swap in :class:`FastDropout` and :class:`FastInstanceNorm3d` for the plain torch layers (in place); return ``model``.

    The state dict is unchanged (neither layer has parameters or buffers).
    """
    return _swap(model, _fast_dropout, _fast_norm)


def use_fast_dropout(model):
    """Replace every plain ``torch.nn.Dropout`` of ``model`` by :class:`FastDropout` (in place); return it.

    The state dict is unchanged (dropout has no parameters or buffers).
    """
    return _swap(model, _fast_dropout)
