"""Layers swapped into MONAI networks for speed, with the same function and no parameters.

:class:`FastDropout` is ``torch.nn.Dropout`` with a cheaper random mask on the CPU. On this
project's CPUs ``torch.nn.Dropout`` draws one Bernoulli variate per activation from torch's
single-threaded Mersenne Twister (oneMKL's vectorised path is taken on Intel CPUs only): in
the compact network at 2 mm that is a quarter of a training step (README, Benchmarks).

:class:`FastInstanceNorm3d` is ``torch.nn.InstanceNorm3d`` (without affine parameters or
running statistics) computed on the CPU in the input's own memory layout. torch's CPU
instance norm runs batch norm over a ``(1, batch * channels, ...)`` view, which needs a
C-contiguous tensor, so a channels-last network (:func:`~neuroml.training.fit` on the CPU)
would pay a layout copy of the activations and of their gradients at every norm layer.

:class:`FastADN` is MONAI's ``ADN`` block "instance norm, dropout, leaky ReLU" (the compact
network's) with the three computed by one autograd function when training on the CPU: the
same function, with fewer passes over the activations and fewer temporaries (~1.1x a CPU
training step; README, Benchmarks). It keeps the children ``N``, ``D`` and ``A``, which
run one after the other in eval mode, so hooks and attribution see the same modules.
"""

from __future__ import annotations

import collections
from typing import TypeVar

import torch
from torch.autograd.function import once_differentiable

__all__ = ["FastADN", "FastDropout", "FastInstanceNorm3d", "use_fast_dropout", "use_fast_layers"]

_M = TypeVar("_M", bound=torch.nn.Module)

#: Resolution of the drop probability: each mask element is a uniform 16-bit integer.
_LEVELS = 1 << 16


def _keep_mask(x, p):
    """Dropout mask for ``x``: a float32 tensor of its shape, 1 where an element is kept, 0 where dropped.

    Each element is a uniform 16-bit integer, four per full-range 64-bit draw of torch's
    seeded CPU generator (``random_()`` without a range would leave each draw's top bit 0
    and bias one lane in four), dropped when it is below ``round(p * 2**16) - 2**15``: the
    drop probability is ``p`` to within ``2**-17``. For a 5D ``x`` the integers fill the
    mask in channels-last order (batch, then space, then channel), whatever ``x``'s layout:
    the same seed gives the same mask to a contiguous and a channels-last ``x`` (so
    ``fit(channels_last=...)`` does not change a run), and the mask has the layout
    :func:`~neuroml.training.fit` trains in, so multiplying by it is one vectorised pass
    (a permuting copy of the mask cost more than the rest of it); other tensors in C order.
    """
    n = x.numel()
    bits = (
        torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None).view(torch.int16)[:n]
    )
    if x.ndim == 5:
        b, c, *spatial = x.shape
        bits = bits.view(b, *spatial, c).permute(0, 4, 1, 2, 3)
    else:
        bits = bits.view(x.shape)
    threshold = (
        round(p * _LEVELS) - _LEVELS // 2
    )  # up to 2**15, above every int16: in float32, not int16
    # integers in float32 are exact: bits - threshold + 1 is >= 1 where kept and <= 0 where dropped
    return bits.to(torch.float32).sub_(threshold - 1).clamp_(0, 1)


class FastDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` whose CPU training mask comes from 16-bit integers, four per 64-bit draw.

    An element is zeroed with probability ``p`` (to within ``2**-17``, from torch's seeded
    CPU generator, so ``torch.manual_seed`` fixes the mask) and kept scaled by
    ``1 / (1 - p)``. In eval mode, on other devices, in place or with ``p`` of 0 or 1 it is
    ``torch.nn.Dropout``. A channels-last input gets the same mask as a contiguous one
    (:func:`_keep_mask`), and the output keeps the input's layout.

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

    def _fast(self, x):
        return (
            self.training
            and not self.inplace
            and 0 < self.p < 1
            and x.device.type == "cpu"
            and x.numel() > 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            return super().forward(x)
        return x * _keep_mask(x, self.p).to(x.dtype).div_(
            1 - self.p
        )  # what torch's CPU dropout multiplies by


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

    def _fast(self, x):
        return not (
            self.affine
            or self.track_running_stats
            or x.ndim != 5
            or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.float64)
            or x.shape[1] != self.num_features
            or not x.shape[0]
            or x.shape[2:].numel() < 2
        )  # else torch's errors and empty results

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            return super().forward(x)
        return _InstanceNorm.apply(x, self.eps)


class _NormDropAct(torch.autograd.Function):
    """Instance norm, dropout and leaky ReLU of a 5D tensor in one function, in its own memory layout.

    Forward: ``y = (x - mean) / sqrt(var + eps) / (1 - p)`` per sample and channel, then
    ``out = leaky_relu(y)`` with the dropped elements zeroed (the mask of
    :func:`_keep_mask`, as :class:`FastDropout` draws it). Backward, with ``m`` the leaky
    ReLU's gradient of the kept elements (0 on the dropped ones), ``r = 1 / sqrt(var + eps)``
    and ``s = 1 / (1 - p)``: ``dx = r s m - r s mean(m) - y r / s mean(m y)``, the instance
    norm's closed form (:class:`_InstanceNorm`) through the dropout's scale.
    """

    @staticmethod
    def forward(ctx, x, eps, p, slope):
        dims = (2, 3, 4)
        y = x - x.mean(dim=dims, keepdim=True)  # two passes, as _InstanceNorm
        rstd = (y * y).mean(dim=dims, keepdim=True).add_(eps).rsqrt_()
        scale = 1 / (1 - p)
        y.mul_(rstd * scale)
        keep = _keep_mask(x, p).to(x.dtype)
        ctx.save_for_backward(y, keep, rstd)
        ctx.scale, ctx.slope = scale, slope
        return torch.nn.functional.leaky_relu(y, slope).mul_(keep)

    @staticmethod
    @once_differentiable  # the closed form treats rstd as a constant: a double backward would be wrong
    def backward(ctx, g):
        y, keep, rstd = ctx.saved_tensors
        dims = (2, 3, 4)
        m = torch.ops.aten.leaky_relu_backward(g, y, ctx.slope, False).mul_(keep)
        gain = rstd * ctx.scale
        shift = m.mean(dim=dims, keepdim=True).mul_(gain)
        tilt = (m * y).mean(dim=dims, keepdim=True).mul_(rstd / ctx.scale)
        return torch.addcmul(shift.neg_(), m, gain).addcmul_(y, tilt, value=-1), None, None, None


class FastADN(torch.nn.Sequential):
    """MONAI's ``ADN`` block of a norm ``N``, a dropout ``D`` and an activation ``A``, fused when training on the CPU.

    With ``N`` a :class:`FastInstanceNorm3d`, ``D`` a :class:`FastDropout` and ``A`` a
    ``torch.nn.LeakyReLU``, in training mode, on an input both would take their fast
    paths for, the block is one autograd function (:class:`_NormDropAct`): the same values
    and gradients (to rounding; the same dropout mask for the same seed) as the three in
    turn, in fewer passes. Otherwise (eval mode, other devices or dtypes) the children run
    one after the other. No parameters or buffers: the state dict is the ``ADN``'s.

    Examples
    --------
    >>> from monai.networks.blocks import ADN
    >>> adn = ADN("NDA", 4, norm="INSTANCE", norm_dim=3, dropout=0.1, dropout_dim=1,
    ...           act=("LEAKYRELU", {"negative_slope": 0.25}))
    >>> block = FastADN.from_adn(use_fast_layers(adn))
    >>> x = torch.randn(2, 4, 5, 6, 7)
    >>> _ = torch.manual_seed(0); fused = block(x)
    >>> _ = torch.manual_seed(0); one_by_one = block.A(block.D(block.N(x)))
    >>> torch.allclose(fused, one_by_one, atol=1e-5)
    True
    """

    N: FastInstanceNorm3d
    D: FastDropout
    A: torch.nn.LeakyReLU

    @classmethod
    def from_adn(cls, adn: torch.nn.Module) -> FastADN | None:
        """The block with the children of ``adn`` (the same modules), or None where it does not apply."""
        kids = collections.OrderedDict(adn.named_children())
        if (
            list(kids) != ["N", "D", "A"]
            or type(kids["N"]) is not FastInstanceNorm3d
            or type(kids["D"]) is not FastDropout
            or type(kids["A"]) is not torch.nn.LeakyReLU
        ):
            return None
        return cls(kids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.N._fast(x) and self.D._fast(x):
            return _NormDropAct.apply(x, self.N.eps, self.D.p, self.A.negative_slope)
        return super().forward(x)


def _fast_dropout(child):
    return FastDropout(child.p, inplace=child.inplace) if type(child) is torch.nn.Dropout else None


def _fast_norm(child):
    if (
        type(child) is torch.nn.InstanceNorm3d
        and not child.affine
        and not child.track_running_stats
    ):
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


def _fast_adn(child):
    from monai.networks.blocks import ADN

    return FastADN.from_adn(child) if type(child) is ADN else None


def use_fast_layers(model: _M) -> _M:
    """Swap in :class:`FastDropout`, :class:`FastInstanceNorm3d` and then :class:`FastADN` for the
    plain torch layers and MONAI's ``ADN`` blocks they make up (in place); return ``model``.

    The state dict is unchanged (none of them has parameters or buffers).
    """
    return _swap(_swap(model, _fast_dropout, _fast_norm), _fast_adn)


def use_fast_dropout(model: _M) -> _M:
    """Replace every plain ``torch.nn.Dropout`` of ``model`` by :class:`FastDropout` (in place); return it.

    The state dict is unchanged (dropout has no parameters or buffers).
    """
    return _swap(model, _fast_dropout)
