"""
Preprocess one T1w scan and look at its QC picture
==================================================

:func:`neuroml.preprocessing.preprocess_t1w` takes one raw T1w scan to the MNI grid:
N4 bias correction, rigid then affine registration to the MNI152 2009a template,
intensity normalization inside the template brain mask, and resampling to a fixed grid.
It writes the derivatives of that scan (see :doc:`/layout`) and returns their paths with
the QC figures.

Here it runs on the first subject of the sample dataset, on the coarse 3 mm grid the demo
uses.
"""

# %%
# Find the sample dataset and preprocess its first subject into a temporary folder.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib

from neuroml.preprocessing import preprocess_t1w

root = Path.cwd().resolve()
while not (root / "data_samples").is_dir():
    root = root.parent
bids = root / "data_samples"
scan = bids / "sub-001" / "anat" / "sub-001_T1w.nii.gz"

out = Path(tempfile.mkdtemp(prefix="neuroml-example-"))
result = preprocess_t1w(scan, out / "derivatives", resolution=3.0, bids_dir=bids)
print(Path(result["preproc"]).relative_to(out))
print(nib.load(result["preproc"]).shape)

# %%
# The QC measures: the correlation of the registered scan with the template and the
# share of the template brain it covers. ``qc_pass`` is what the group QC table reports.
for key, value in result["qc"].items():
    print(f"{key}: {value}")

# %%
# The QC picture: slices of the registered scan with the template's edges drawn over it.
# The edges should follow the brain's outline and the ventricles.
picture = plt.imread(result["figure"])
fig, ax = plt.subplots(figsize=(9, 4))
ax.imshow(picture)
ax.set_axis_off()
plt.show()
