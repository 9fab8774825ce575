"""
Fit a NeuroClassifier on small synthetic volumes
================================================

:class:`neuroml.training.NeuroClassifier` is the MONAI 3D CNN of ``neuroml train`` behind the
scikit-learn interface: ``fit(X, y)`` returns the estimator, ``predict`` and
``predict_proba`` take volumes of the same shape. ``X`` is an array of shape
``(n_volumes, X, Y, Z)`` (or ``(n_volumes, channels, X, Y, Z)``).

The volumes here are small noise cubes; the patients' cubes hold a brighter blob in one
corner, so a network can learn the difference in a few epochs.
"""

# %%
# Make 24 training and 12 test volumes of 17 x 18 x 19 voxels (unequal sides, so that
# swapped axes would fail).
import matplotlib.pyplot as plt
import numpy as np

from neuroml.training import NeuroClassifier

rng = np.random.default_rng(0)


def make_volumes(n):
    X = rng.normal(size=(n, 17, 18, 19)).astype("float32")
    y = np.array(["control", "patient"] * (n // 2))
    X[y == "patient", 2:7, 2:7, 2:7] += 1.5
    return X, y


X_train, y_train = make_volumes(24)
X_test, y_test = make_volumes(12)

# %%
# Fit the compact network for a few epochs on the CPU, without augmentation and without
# a validation split (``val_fraction=0`` trains every epoch and keeps the last weights).
clf = NeuroClassifier(epochs=8, val_fraction=0, augment=False, seed=0, device="cpu")
clf.fit(X_train, y_train)
print("classes:", clf.classes_)
print("test accuracy:", clf.score(X_test, y_test))

# %%
# The predicted probability of ``patient`` for each test volume.
proba = clf.predict_proba(X_test)[:, list(clf.classes_).index("patient")]
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(
    np.arange(len(proba)),
    proba,
    color=["tab:blue" if t == "control" else "tab:red" for t in y_test],
)
ax.axhline(0.5, color="grey", linewidth=0.8)
ax.set_xlabel("test volume (blue: control, red: patient)")
ax.set_ylabel("P(patient)")
plt.show()
