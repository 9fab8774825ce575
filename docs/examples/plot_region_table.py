"""
A region table from a map and an atlas
======================================

``neuroml attribute`` summarises every attribution map per atlas region:
:func:`neuroml.attribution.region_table_img` resamples the atlas onto the map's grid and
gives, per region, its hemisphere, volume, mean attribution, share of the positive
attribution and rank.

Here the map is made by hand on the 3 mm MNI grid: positive values in two AAL regions,
noise elsewhere. The table should rank those two regions first.
"""

# %%
# Build a map on the MNI grid that every preprocessed scan shares.
import nibabel as nib
import numpy as np
from nilearn import plotting

from neuroml.attribution import region_table_img
from neuroml.io.atlases import atlas_on_grid
from neuroml.io.templates import target_grid

affine, shape = target_grid(3.0)
labels, names = atlas_on_grid("aal", affine, shape)
index = {name: label for label, name in names.items()}

rng = np.random.default_rng(0)
data = rng.normal(scale=0.05, size=shape).astype("float32")
data[labels == index["Insula_L"]] += 1.0
data[labels == index["Hippocampus_R"]] += 0.6
data[labels == 0] = 0
img = nib.Nifti1Image(data, affine)

# %%
# The region table, sorted by rank (1 = highest mean attribution).
table = region_table_img(img, atlas="aal")
print(table.head(5).to_string(index=False))

# %%
# The map over the MNI template.
plotting.plot_stat_map(img, threshold=0.3, display_mode="z", cut_coords=5, colorbar=True)
plotting.show()
