"""Build MONAI 3D classification networks by name.

``compact`` is the CPU network (a MONAI :class:`~monai.networks.nets.Classifier`, about
0.2 M parameters at 2 mm, with :class:`~neuroml.models.layers.FastDropout` for its dropout
layers); ``densenet121`` and the ResNets are GPU networks (see
``/work/shared/MEASUREMENTS.md``: ResNet10 trains ~15x slower than ``compact`` on CPU).
No pretrained weights are ever downloaded.
"""

import torch  # noqa: F401  (used by the doctest)

from neuroml._utils.options import look_up_option
from neuroml.errors import ConfigError

__all__ = ["MODELS", "build_model", "default_target_layer", "count_parameters", "COMPACT_MIN_SIDE"]

#: Network names accepted by :func:`build_model`.
MODELS = ("compact", "densenet121", "resnet10", "resnet18", "resnet34")

#: Channels and strides of the compact network: four stride-2 blocks, then a stride-1
#: block that keeps a spatial feature map for Grad-CAM (5 x 6 x 5 at 2 mm).
_COMPACT_CHANNELS = (8, 16, 32, 64, 64)
_COMPACT_STRIDES = (2, 2, 2, 2, 1)
#: Smallest side the compact network accepts: below it an instance norm sees 1 voxel.
COMPACT_MIN_SIDE = 17

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
        raise ConfigError(f"spatial_shape must be three positive sides (X, Y, Z), got {spatial_shape!r}")
    return shape


def build_model(name, n_classes, in_channels=1, spatial_shape=None):
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
        it; every side must be at least :data:`COMPACT_MIN_SIDE`); ignored by the others,
        which pool globally.

    Returns
    -------
    torch.nn.Module
        Outputs logits of shape ``(batch, n_classes)`` for input ``(batch, in_channels, X, Y, Z)``.

    Raises
    ------
    ConfigError
        For an unknown name (with a "did you mean" hint), fewer than 2 classes, or a
        missing or too small ``spatial_shape`` for ``"compact"``.

    Examples
    --------
    >>> model = build_model("compact", 3, spatial_shape=(19, 23, 20))
    >>> model(torch.zeros(2, 1, 19, 23, 20)).shape
    torch.Size([2, 3])
    """
    name = look_up_option("model", name, MODELS)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"The 'n_classes' parameter must be an integer >= 2. Got {n_classes!r} instead.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"The 'in_channels' parameter must be a positive integer. Got {in_channels!r} instead.")
    from monai.networks import nets

    if name == "compact":
        shape = _check_shape(spatial_shape, name)
        if min(shape) < COMPACT_MIN_SIDE:
            raise ConfigError(
                f"model 'compact' needs at least {COMPACT_MIN_SIDE} voxels per axis, got spatial_shape "
                f"{shape}; use a finer resolution (the 8 mm grid is 19 x 23 x 20)")
        from neuroml.models.layers import use_fast_dropout

        return use_fast_dropout(nets.Classifier(in_shape=(in_channels, *shape), classes=n_classes,
                                                channels=_COMPACT_CHANNELS, strides=_COMPACT_STRIDES,
                                                kernel_size=3, num_res_units=0, act="PRELU", norm="INSTANCE",
                                                dropout=0.1))
    if name == "densenet121":
        return nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=n_classes)
    depth = int(name[len("resnet"):])
    factory = {10: nets.resnet10, 18: nets.resnet18, 34: nets.resnet34}[depth]
    return factory(pretrained=False, spatial_dims=3, n_input_channels=in_channels,
                   num_classes=n_classes, conv1_t_stride=2)


def default_target_layer(name):
    """Name of the layer to give MONAI ``GradCAM`` as ``target_layers`` for a network.

    It is the last block that still produces a spatial feature map (the pooling and
    linear head cannot be used).

    Examples
    --------
    >>> default_target_layer("resnet18")
    'layer4'
    """
    return _TARGET_LAYERS[look_up_option("model", name, MODELS)]


def count_parameters(model):
    """Number of trainable parameters of a module."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
