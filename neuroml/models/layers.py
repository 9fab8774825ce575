"""Layers swapped into MONAI networks for speed, with the same function and no parameters.

:class:`FastDropout` is ``torch.nn.Dropout`` with a cheaper random mask on the CPU. On this
project's CPUs ``torch.nn.Dropout`` draws one Bernoulli variate per activation from torch's
single-threaded Mersenne Twister (oneMKL's vectorised path is taken on Intel CPUs only): in
the compact network at 2 mm that was a quarter of a training step (README, Benchmarks).
"""

import torch

__all__ = ["FastDropout", "use_fast_dropout"]

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
        keep = torch.bitwise_and(bits, _LEVELS - 1) >= round(self.p * _LEVELS)
        noise = keep.to(x.dtype).div_(1 - self.p).view(x.shape)  # what torch's CPU dropout multiplies by
        return x * noise


def use_fast_dropout(model):
    """Replace every plain ``torch.nn.Dropout`` of ``model`` by :class:`FastDropout` (in place); return it.

    The state dict is unchanged (dropout has no parameters or buffers).
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p, inplace=child.inplace))
    return model
