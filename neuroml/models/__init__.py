"""MONAI 3D networks by name: :func:`build_model` and their Grad-CAM target layers."""

from neuroml.models.factory import (
    MODELS,
    build_model,
    count_parameters,
    default_target_layer,
    resolve_input_pool,
)

__all__ = [
    "MODELS",
    "build_model",
    "default_target_layer",
    "count_parameters",
    "resolve_input_pool",
]
