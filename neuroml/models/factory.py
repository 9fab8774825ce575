"""Build MONAI 3D classification networks by name.

``compact`` is the CPU network (a MONAI :class:`~monai.networks.nets.Classifier`, about
0.2 M parameters at 2 mm, leaky ReLU activations, with :class:`~neuroml.models.layers.FastDropout`
and :class:`~neuroml.models.layers.FastInstanceNorm3d` for its dropout and norm layers, and each
block's norm, dropout and activation fused in training by :class:`~neuroml.models.layers.FastADN`),
optionally behind an average pooling of its input (``input_pool``: what
:func:`resolve_input_pool` picks by default pools the 2 mm grid 2x, so the network convolves
the brain at about 4 mm and a CPU training step is ~3.6x cheaper; README, Benchmarks); ``densenet121`` and
the ResNets are GPU networks (see ``/work/shared/MEASUREMENTS.md``: ResNet10 trains ~15x
slower than ``compact`` on CPU). No pretrained weights are ever downloaded.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Literal

import torch

from neuroml._utils.options import look_up_option
from neuroml.errors import ConfigError

__all__ = [
    "MODELS",
    "build_model",
    "default_target_layer",
    "count_parameters",
    "COMPACT_MIN_SIDE",
    "INPUT_POOLS",
    "AUTO_POOL_MIN_SIDE",
    "resolve_input_pool",
    "check_input",
    "InputPool",
    "input_pool_of",
    "COMPACT_ACTIVATIONS",
    "COMPACT_ACTIVATION",
    "LEAKY_SLOPE",
]

#: Network names accepted by :func:`build_model`.
MODELS = ("compact", "densenet121", "resnet10", "resnet18", "resnet34")

#: Channels and strides of the compact network: four stride-2 blocks, then a stride-1
#: block that keeps a spatial feature map for Grad-CAM (5 x 6 x 5 at 2 mm). Behind an input
#: pooling of p, the first log2(16 / p) blocks have stride 2, so the map keeps its size.
_COMPACT_CHANNELS = (8, 16, 32, 64, 64)
_COMPACT_STRIDES = (2, 2, 2, 2, 1)
#: Activations of the compact network: ``"leakyrelu"`` (the default: a leaky ReLU of the slope
#: :data:`LEAKY_SLOPE`; its backward pass is one element-wise kernel, PReLU's also reduces the
#: slope's gradient, ~10 % of a CPU step) and ``"prelu"`` (MONAI's default, one learnt slope
#: per layer, starting at 0.25). A checkpoint records its own.
COMPACT_ACTIVATIONS = ("leakyrelu", "prelu")
#: The compact network's activation unless one is asked for (the one runs and checkpoints record).
COMPACT_ACTIVATION = COMPACT_ACTIVATIONS[0]
#: Negative slope of the compact network's leaky ReLU: PReLU's initial slope, so that the network
#: starts as the PReLU network does (a plain ReLU scored 0.956 and 0.856 instead of 0.989 and 0.967
#: on the harder benchmark cohort at batch 4 and 8; README, Benchmarks).
LEAKY_SLOPE = 0.25
#: Smallest side the compact network accepts (after its input pooling): below it an
#: instance norm sees 1 voxel.
COMPACT_MIN_SIDE = 17
#: Input pooling factors of the compact network.
INPUT_POOLS = (1, 2, 4)
#: ``input_pool="auto"`` pools by the largest factor that leaves at least this many voxels on
#: the pooled grid's shortest side: 2x at 2 mm (73 x 91 x 78 -> 37 x 46 x 39), 4x at 1 mm,
#: none at 3 mm and coarser.
AUTO_POOL_MIN_SIDE = 32

_TARGET_LAYERS = {
    "compact": f"net.layer_{len(_COMPACT_CHANNELS) - 1}",
    "densenet121": "class_layers.relu",
    "resnet10": "layer4",
    "resnet18": "layer4",
    "resnet34": "layer4",
}


def _check_shape(spatial_shape, name):
    if spatial_shape is None:
        raise ConfigError(f"model {name!r} needs spatial_shape (the grid's (X, Y, Z)), got None")
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ConfigError(
            f"spatial_shape must be three positive sides (X, Y, Z), got {spatial_shape!r}"
        )
    return shape


class InputPool(torch.nn.AvgPool3d):
    """Average pooling of the network's input by an integer factor (a trailing partial block is
    averaged over its voxels, so none is dropped).

    The factor is also a buffer, so weights trained behind one factor are refused by a network
    built with another (or without pooling) instead of loading silently: the rest of the
    compact network has the same parameter shapes either way.

    A batch already on the pooled grid of ``in_shape`` (the full grid) passes through
    unchanged: :func:`~neuroml.training.fit` pools the training and validation volumes once
    with this module (or, when they cannot be held pooled, each batch before augmenting it),
    so that neither the pooling is repeated at every step nor the random warp runs on the
    full grid.
    """

    def __init__(self, factor: int, in_shape: Sequence[int]) -> None:
        factor = int(factor)
        super().__init__(kernel_size=factor, stride=factor, ceil_mode=True)
        self.register_buffer("factor", torch.tensor(factor))
        self.in_shape = tuple(int(n) for n in in_shape)
        self.pooled_shape = _pooled(in_shape, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.pooled_shape:
            return x
        return super().forward(x)


def _pooled(shape, factor):
    """The grid ``shape`` average-pooled by ``factor`` (ceil mode: a partial block is kept)."""
    return tuple(math.ceil(int(s) / factor) for s in shape)


def input_pool_of(model: torch.nn.Module) -> InputPool | None:
    """The :class:`InputPool` of a network (also inside a DDP or compiled wrapper), or None."""
    return next((m for m in model.modules() if isinstance(m, InputPool)), None)


def resolve_input_pool(
    input_pool: int | Literal["auto"], name: str, spatial_shape: Sequence[int] | None = None
) -> int:
    """The input pooling factor (an int of :data:`INPUT_POOLS`) for a network and a grid.

    ``"auto"``: for ``"compact"`` the largest factor that leaves at least
    :data:`AUTO_POOL_MIN_SIDE` voxels on the pooled grid's shortest side (2 at 2 mm, 4 at
    1 mm, 1 at 3 mm and coarser); 1 for the other networks. It depends on the grid only,
    never on the device, so a configuration builds the same network everywhere.

    Examples
    --------
    >>> resolve_input_pool("auto", "compact", (73, 91, 78)), resolve_input_pool("auto", "compact", (49, 61, 52))
    (2, 1)
    >>> resolve_input_pool("auto", "densenet121", (73, 91, 78))
    1
    """
    name = look_up_option("model", name, MODELS)
    if input_pool == "auto":
        if name != "compact" or spatial_shape is None:
            return 1
        side = min(_check_shape(spatial_shape, name))
        return max(p for p in INPUT_POOLS if p == 1 or math.ceil(side / p) >= AUTO_POOL_MIN_SIDE)
    if isinstance(input_pool, bool) or input_pool not in INPUT_POOLS:
        raise ConfigError(
            f"The 'input_pool' parameter must be 'auto' or one of {list(INPUT_POOLS)}. "
            f"Got {input_pool!r} instead."
        )
    if input_pool != 1 and name != "compact":
        raise ConfigError(
            f"input_pool={input_pool!r} applies to the compact network only, not {name!r} "
            "(use input_pool=1 or 'auto')"
        )
    return int(input_pool)


def check_input(
    name: str, spatial_shape: Sequence[int] | None = None, input_pool: int | Literal["auto"] = 1
) -> int:
    """Check that network ``name`` can take grids of ``spatial_shape`` with ``input_pool``; return the factor.

    Raises :class:`ConfigError` as :func:`build_model` would, without building anything.
    """
    name = look_up_option("model", name, MODELS)
    pool = resolve_input_pool(input_pool, name, spatial_shape)
    if name == "compact":
        shape = _check_shape(spatial_shape, name)
        inner = _pooled(shape, pool)
        if min(inner) < COMPACT_MIN_SIDE:
            pooled = f" after the input pooling by {pool} ({inner})" if pool > 1 else ""
            raise ConfigError(
                f"model 'compact' needs at least {COMPACT_MIN_SIDE} voxels per axis{pooled}, got spatial_shape "
                f"{shape}; use a finer resolution (the 8 mm grid is 19 x 23 x 20) or a smaller input_pool"
            )
    return pool


def build_model(
    name: str,
    n_classes: int,
    in_channels: int = 1,
    spatial_shape: Sequence[int] | None = None,
    input_pool: int | Literal["auto"] = 1,
    activation: str = COMPACT_ACTIVATION,
) -> torch.nn.Module:
    """Build a freshly initialised MONAI 3D classifier.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    n_classes : int
        Number of output logits (>= 2).
    in_channels : int, default=1
        Image channels.
    spatial_shape : tuple of 3 int, optional
        Input grid ``(X, Y, Z)``. Required by ``"compact"`` (its linear head is sized from
        it; every side must be at least :data:`COMPACT_MIN_SIDE` after the input pooling);
        ignored by the others, which pool globally.
    input_pool : int or "auto", default=1
        ``"compact"`` only: average-pool the input by this factor (1, 2 or 4) before the
        first convolution; ``"auto"``: :func:`resolve_input_pool`. The network still takes
        the full grid, and its Grad-CAM map keeps its size. 1 is the network without pooling.
    activation : {"leakyrelu", "prelu"}, default="leakyrelu"
        ``"compact"`` only (:data:`COMPACT_ACTIVATIONS`): ``"prelu"`` builds the network with
        MONAI's PReLU (one learnt slope per layer), for checkpoints that record it.

    Returns
    -------
    torch.nn.Module
        Outputs logits of shape ``(batch, n_classes)`` for input ``(batch, in_channels, X, Y, Z)``.

    Raises
    ------
    ConfigError
        For an unknown name (with a "did you mean" hint), fewer than 2 classes, a missing or
        too small ``spatial_shape`` for ``"compact"``, or a bad ``input_pool``.

    Examples
    --------
    >>> model = build_model("compact", 3, spatial_shape=(19, 23, 20))
    >>> model(torch.zeros(2, 1, 19, 23, 20)).shape
    torch.Size([2, 3])
    """
    name = look_up_option("model", name, MODELS)
    activation = look_up_option("activation", activation, COMPACT_ACTIVATIONS)
    if activation != COMPACT_ACTIVATION and name != "compact":
        raise ConfigError(
            f"activation={activation!r} applies to the compact network only, not {name!r}"
        )
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(
            f"The 'n_classes' parameter must be an integer >= 2. Got {n_classes!r} instead."
        )
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(
            f"The 'in_channels' parameter must be a positive integer. Got {in_channels!r} instead."
        )
    from monai.networks import nets

    pool = check_input(name, spatial_shape, input_pool)
    if name == "compact":
        shape = _check_shape(spatial_shape, name)
        from neuroml.models.layers import use_fast_layers

        n_down = _COMPACT_STRIDES.count(2) - int(math.log2(pool))
        strides = (2,) * n_down + (1,) * (len(_COMPACT_STRIDES) - n_down)
        model = use_fast_layers(
            nets.Classifier(
                in_shape=(in_channels, *_pooled(shape, pool)),
                classes=n_classes,
                channels=_COMPACT_CHANNELS,
                strides=strides,
                kernel_size=3,
                num_res_units=0,
                norm="INSTANCE",
                dropout=0.1,
                act=("LEAKYRELU", {"negative_slope": LEAKY_SLOPE})
                if activation == COMPACT_ACTIVATION
                else "PRELU",
            )
        )
        if pool > 1:  # first in model.net: the blocks keep their names (and state-dict keys)
            model.net = torch.nn.Sequential(
                collections.OrderedDict(
                    [("input_pool", InputPool(pool, shape)), *model.net.named_children()]
                )
            )
        return model
    if name == "densenet121":
        return nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=n_classes)
    depth = int(name[len("resnet") :])
    factory = {10: nets.resnet10, 18: nets.resnet18, 34: nets.resnet34}[depth]
    return factory(
        pretrained=False,
        spatial_dims=3,
        n_input_channels=in_channels,
        num_classes=n_classes,
        conv1_t_stride=2,
    )


def default_target_layer(name: str) -> str:
    """Name of the layer to give MONAI ``GradCAM`` as ``target_layers`` for a network.

    It is the last block that still produces a spatial feature map (the pooling and
    linear head cannot be used).

    Examples
    --------
    >>> default_target_layer("resnet18")
    'layer4'
    """
    return _TARGET_LAYERS[look_up_option("model", name, MODELS)]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters of a module."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
