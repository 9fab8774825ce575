"""Attribution: voxel maps of what drove a prediction, summarised per atlas region.

:class:`Explainer` (MONAI Grad-CAM/Grad-CAM++, Captum saliency, integrated gradients,
SmoothGrad, occlusion) never modifies the model it explains; :func:`region_table` and
:func:`region_occlusion` summarise per region; :func:`class_group_maps` gives per-class
mean and t maps; :mod:`~neuroml.attribution.sanity` holds the trust checks (model
randomization, deletion curve, fold stability, synthetic ground truth);
:func:`attribute_run` does all of it for a training run, out of fold.
"""

from neuroml.attribution.group import (
    class_entity,
    class_group_maps,
    group_statistics,
    write_group_maps,
)
from neuroml.attribution.methods import (
    ALL_METHODS,
    METHODS,
    Explainer,
    block_mask,
    guess_target_layer,
)
from neuroml.attribution.regions import (
    REGION_COLUMNS,
    read_region_table,
    region_occlusion,
    region_table,
    region_table_img,
    write_region_table,
)
from neuroml.attribution.run import attribute_run, map_name
from neuroml.attribution.sanity import (
    deletion_curve,
    fold_stability,
    ground_truth_scores,
    model_randomization,
    planted_ground_truth,
    randomize_weights,
)

__all__ = [
    "METHODS",
    "ALL_METHODS",
    "Explainer",
    "block_mask",
    "guess_target_layer",
    "REGION_COLUMNS",
    "region_table",
    "region_table_img",
    "region_occlusion",
    "write_region_table",
    "read_region_table",
    "group_statistics",
    "class_group_maps",
    "class_entity",
    "write_group_maps",
    "attribute_run",
    "map_name",
    "randomize_weights",
    "model_randomization",
    "deletion_curve",
    "fold_stability",
    "ground_truth_scores",
    "planted_ground_truth",
]
