"""A synthetic BIDS cohort with planted grey-matter "atrophy" and a stored ground truth.

Every subject is the 1 mm MNI152 2009a template that nilearn ships, modified in MNI space
(class-specific atrophy in planted AAL regions for patients; for everyone a random
grey-matter contrast, a smooth global intensity variation and a few small intensity blobs
away from the planted regions), then seen through a random smooth warp and a random
affine, resampled onto a site-specific scanner grid (voxel size and orientation vary by
site), multiplied by a smooth bias field, given Rician noise and stored as int16 with a
``scl_slope``.

The transform that made each scan is stored under ``derivatives/groundtruth`` so that a
registration can be scored (see :func:`neuroml.io.groundtruth.true_scanner_coords`).
Same seed and parameters give byte-identical files.
"""

import copy
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_dilation, map_coordinates

from neuroml._utils.fileio import read_json, write_json_atomic, write_text_atomic
from neuroml._utils.options import check_in_range, look_up_option
from neuroml.errors import ConfigError
from neuroml.io.groundtruth import GROUNDTRUTH_SUBDIR, mask_filename, warp_displacement
from neuroml.synth._checks import _as_int, _check_classes, _label
from neuroml.synth._write import _write_nifti_gz

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_PLANTED",
    "DEFAULT_SITES",
    "SYNTH_VERSION",
    "make_cohort",
    "mask_filename",
]

logger = logging.getLogger("neuroml")

#: Version of the generator; recorded with the parameters (a change means other data).
SYNTH_VERSION = 1

#: Default diagnostic classes; the first is the healthy class (no atrophy).
DEFAULT_CLASSES = ("control", "MDD", "SCZ")

#: Default planted AAL regions per patient class.
DEFAULT_PLANTED = {
    "MDD": [
        "Hippocampus_L",
        "Hippocampus_R",
        "Amygdala_L",
        "Amygdala_R",
        "Cingulate_Ant_L",
        "Cingulate_Ant_R",
    ],
    "SCZ": ["Insula_L", "Insula_R", "Temporal_Sup_L", "Temporal_Sup_R", "Thalamus_L", "Thalamus_R"],
}

#: Keys of a site description and their defaults (a site dict may give any subset).
_SITE_DEFAULTS = {
    "voxel_size": (1.0, 1.0, 1.0),  # mm along the array axes i, j, k (times voxel_scale)
    "orientation": "RAS",  # nibabel axis codes of the array axes
    "fov_mm": (192.0, 232.0, 208.0),  # extent along world x (L-R), y (P-A), z (I-S)
    "field_strength": 3.0,  # tesla, for the sidecar
    "noise": 0.02,  # Rician sigma relative to the template's full scale
    "bias": 0.12,  # largest log-amplitude of the bias field
    "gain": 1.0,  # scanner intensity gain
    "int_max": 1000,  # stored integer of the brightest voxel
}

#: Optional keys of a site description, absent from the defaults so that a site without them
#: records none: ``contrast`` adds to every subject's grey-matter contrast at that site, a
#: scanner effect that survives intensity normalization (for site-confound studies).
_SITE_OPTIONAL = {"contrast": 0.0}

#: Default scanner sites: voxel sizes and orientations differ.
DEFAULT_SITES = {
    "siteA": dict(
        _SITE_DEFAULTS,
        voxel_size=(1.0, 1.0, 1.0),
        orientation="RAS",
        field_strength=3.0,
        noise=0.02,
        bias=0.10,
        gain=1.0,
    ),
    "siteB": dict(
        _SITE_DEFAULTS,
        voxel_size=(1.2, 1.0, 1.0),
        orientation="LAS",
        field_strength=1.5,
        noise=0.03,
        bias=0.18,
        gain=0.8,
    ),
    "siteC": dict(
        _SITE_DEFAULTS,
        voxel_size=(1.0, 1.0, 1.2),
        orientation="PIR",
        field_strength=3.0,
        noise=0.025,
        bias=0.14,
        gain=1.25,
    ),
}

_ATLAS = "aal"
_TEMPLATE_SCALE = 1000.0  # template intensity 1.0 -> 1000 scanner units (times gains)
_WARP_SPACING_MM = 12.0  # spacing of the stored coarse displacement grid
_WARP_QUANTUM = 2.0**-8  # stored displacements are multiples of this (mm): compressible
_MIN_REGION_VOXELS = 500  # 1 mm voxels; smaller planted regions get a warning
_N_BLOBS = 4


# --------------------------------------------------------------------------- validation


def _check_planted(planted, classes, atlas_labels):
    patients = classes[1:]
    given = {} if planted is None else planted
    if not isinstance(given, dict):
        raise ConfigError(
            f"The 'planted' parameter must be a dict class -> list of AAL region names. Got {planted!r}."
        )
    for key in given:
        if key == classes[0]:
            raise ConfigError(
                f"The 'planted' parameter gives regions for {key!r}, the healthy class "
                "(first in 'classes'), which has no atrophy."
            )
        look_up_option("planted class", key, patients)
    names = sorted(atlas_labels.values())
    out = {}
    for c in patients:
        regions = given.get(c, DEFAULT_PLANTED.get(c))
        if regions is None:
            raise ConfigError(
                f"The 'planted' parameter has no regions for class {c!r}: classes other than "
                f"{sorted(DEFAULT_PLANTED)} need an entry, e.g. planted={{{c!r}: ['Hippocampus_L']}}."
            )
        if isinstance(regions, str) or not isinstance(regions, (list, tuple)) or not regions:
            raise ConfigError(
                f"The 'planted' entry of {c!r} must be a non-empty list of AAL region names. "
                f"Got {regions!r}."
            )
        checked = []
        for r in regions:
            r = look_up_option(f"planted region of {c!r}", r, names)
            if r not in checked:
                checked.append(r)
        out[c] = checked
    return out


def _check_sites(sites, voxel_scale):
    """The site descriptions, checked and completed: site name -> every key of a site."""
    return {name: _resolve_site(name, d, voxel_scale) for name, d in _site_specs(sites).items()}


def _site_specs(sites):
    """Site name -> description (defaults filled in) from None, a list of names or a dict."""
    if sites is None:
        return copy.deepcopy(DEFAULT_SITES)
    if isinstance(sites, (list, tuple)):
        if not sites:
            raise ConfigError("The 'sites' parameter must name at least one site.")
        spec = {}
        for s in sites:
            s = look_up_option("sites", s, list(DEFAULT_SITES))
            spec[s] = copy.deepcopy(DEFAULT_SITES[s])
        return spec
    if isinstance(sites, dict):
        if not sites:
            raise ConfigError("The 'sites' parameter must describe at least one site.")
        return {name: _site_from_dict(name, desc) for name, desc in sites.items()}
    raise ConfigError(
        f"The 'sites' parameter must be None, a list of site names or a dict. Got {sites!r}."
    )


def _site_from_dict(name, desc):
    """One site of a ``sites`` dict: its keys over those of the default site of that name."""
    if not isinstance(name, str) or not _label(name) or _label(name) != name:
        raise ConfigError(f"Site names must be alphanumeric. Got {name!r}.")
    if desc is None:
        desc = {}
    if not isinstance(desc, dict):
        raise ConfigError(f"The description of site {name!r} must be a dict. Got {desc!r}.")
    for key in desc:
        look_up_option(f"key of site {name!r}", key, list(_SITE_DEFAULTS) + list(_SITE_OPTIONAL))
    base = DEFAULT_SITES.get(name, _SITE_DEFAULTS)
    return dict(copy.deepcopy(base), **desc)


def _resolve_site(name, d, voxel_scale):
    """Check one site's values; return them as plain floats, ints and lists (voxel size scaled)."""
    for key in ("voxel_size", "fov_mm"):
        _check_three_positive(name, key, d[key])
    _check_orientation(name, d["orientation"])
    for key, low, high in (
        ("field_strength", 0.1, 20.0),
        ("noise", 0.0, 0.5),
        ("bias", 0.0, 1.0),
        ("gain", 0.01, 100.0),
        ("int_max", 10, 32000),
    ):
        check_in_range(f"{key} of site {name!r}", d[key], low, high)
    vox = [round(float(v) * voxel_scale, 6) for v in d["voxel_size"]]
    if min(vox) < 0.5:
        raise ConfigError(
            f"Site {name!r}: voxel size {vox} mm is below 0.5 mm; raise 'voxel_scale'."
        )
    resolved = {
        "voxel_size": vox,
        "orientation": d["orientation"].upper(),
        "fov_mm": [float(v) for v in d["fov_mm"]],
        "field_strength": float(d["field_strength"]),
        "noise": float(d["noise"]),
        "bias": float(d["bias"]),
        "gain": float(d["gain"]),
        "int_max": int(d["int_max"]),
    }
    if "contrast" in d:
        resolved["contrast"] = float(
            check_in_range(f"contrast of site {name!r}", d["contrast"], -0.5, 0.5)
        )
    return resolved


def _check_three_positive(name, key, val):
    if (
        isinstance(val, (str, bytes))
        or not hasattr(val, "__len__")
        or len(val) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in val)
    ):
        raise ConfigError(f"The {key!r} of site {name!r} must be 3 positive numbers. Got {val!r}.")


def _check_orientation(name, orient):
    if (
        not isinstance(orient, str)
        or len(orient) != 3
        or sorted(_axis_of(c) for c in orient.upper()) != [0, 1, 2]
    ):
        raise ConfigError(
            f"The 'orientation' of site {name!r} must be 3 axis codes, one of each of "
            f"L/R, P/A, I/S (e.g. 'RAS', 'LPS', 'PIR'). Got {orient!r}."
        )


def _axis_of(code):
    for i, pair in enumerate(("LR", "PA", "IS")):
        if code in pair:
            return i
    return -1


# --------------------------------------------------------------------------- geometry helpers


def _site_grid(site):
    """Scanner grid (affine, shape) of a site, centred on the isocentre (world 0)."""
    ornt = nib.orientations.axcodes2ornt(tuple(site["orientation"]))
    vox = np.asarray(site["voxel_size"], dtype=float)
    fov = np.asarray(site["fov_mm"], dtype=float)
    rot = np.zeros((3, 3))
    shape = []
    for i, (ax, flip) in enumerate(ornt):
        ax = int(ax)
        rot[ax, i] = flip * vox[i]
        shape.append(max(2, int(round(fov[ax] / vox[i]))))
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = -rot @ ((np.asarray(shape) - 1) / 2.0)
    return affine, tuple(shape)


def _rotation(angles_deg):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _cosine_bases(shape, n_freq):
    return [np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, np.arange(n_freq))) for n in shape]


def _smooth_field(weights, shape):
    """Low-frequency field: a separable cosine series with ``weights`` (K, K, K) on ``shape``."""
    bx, by, bz = _cosine_bases(shape, weights.shape[0])
    return np.einsum("ia,jb,kc,abc->ijk", bx, by, bz, weights, optimize=True)


def _random_weights(rng, n_freq=3, decay=1.0):
    k = np.arange(n_freq)
    damp = 1.0 / (1.0 + k[:, None, None] + k[None, :, None] + k[None, None, :]) ** decay
    w = rng.standard_normal((n_freq, n_freq, n_freq)) * damp
    w[0, 0, 0] = 0.0
    return w


def _interp_matrix(n, knots):
    """(n, len(knots)) matrix interpolating linearly from values at integer ``knots``."""
    x = np.arange(n, dtype=float)
    j = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    t = (x - knots[j]) / (knots[j + 1] - knots[j])
    m = np.zeros((n, len(knots)))
    m[np.arange(n), j] = 1.0 - t
    m[np.arange(n), j + 1] = t
    return m


def _knots(n, step):
    k = list(range(0, n, step))
    if k[-1] != n - 1:
        k.append(n - 1)
    if len(k) < 2:
        k = [0, max(n - 1, 1)]
    return np.asarray(k, dtype=float)


# --------------------------------------------------------------------------- template context


@functools.lru_cache(maxsize=1)
def _atlas_on_template():
    """The AAL labels on the 1 mm template grid (nearest neighbour) and name -> index."""
    from nilearn.image import resample_to_img

    from neuroml.io.atlases import load_atlas
    from neuroml.io.templates import mni_template

    atlas = load_atlas(_ATLAS)
    lab_img = resample_to_img(
        atlas.img, mni_template(), interpolation="nearest", force_resample=True, copy_header=True
    )
    labels = np.asarray(lab_img.dataobj).astype(np.int32)
    labels.setflags(write=False)
    return labels, {name: k for k, name in atlas.labels.items()}


class _Context:
    """Template arrays (cropped to the head), planted masks and sites shared by all subjects."""

    def __init__(self, classes, planted, sites):
        from neuroml.io.templates import mni_brain_mask, mni_gm_map, mni_template

        tpl = mni_template()
        self.full_affine = np.asarray(tpl.affine, dtype=float)
        self.full_shape = tuple(tpl.shape)
        t_full = np.asarray(tpl.dataobj, dtype=np.float32)
        gm_full = np.clip(np.asarray(mni_gm_map().dataobj, dtype=np.float32), 0.0, 1.0)
        brain_full = np.asarray(mni_brain_mask().dataobj) > 0
        labels_full, index = _atlas_on_template()

        nz = np.argwhere(t_full > 0)
        lo = np.maximum(nz.min(0) - 2, 0)
        hi = np.minimum(nz.max(0) + 3, self.full_shape)
        self.crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.affine = self.full_affine.copy()
        self.affine[:3, 3] = self.full_affine[:3, :3] @ lo + self.full_affine[:3, 3]
        self.template = np.ascontiguousarray(t_full[self.crop])
        self.gm = np.ascontiguousarray(gm_full[self.crop])
        self.shape = self.template.shape
        self.brain_full = brain_full

        self.region_voxels = {}
        self.masks_full = {}
        self.masks = {}
        union = np.zeros(self.full_shape, dtype=bool)
        for c, regions in planted.items():
            m = np.zeros(self.full_shape, dtype=bool)
            for r in regions:
                rm = labels_full == index[r]
                self.region_voxels[r] = int(rm.sum())
                if self.region_voxels[r] < _MIN_REGION_VOXELS:
                    logger.warning(
                        "planted region %s has only %d voxels of 1 mm: it may not be "
                        "detectable at 2-4 mm",
                        r,
                        self.region_voxels[r],
                    )
                m |= rm
            self.masks_full[c] = m.astype(np.uint8)
            self.masks[c] = m[self.crop]
            union |= m
        # blobs of nuisance intensity change: centred in grey matter away from planted regions
        away = ~binary_dilation(union, iterations=8)[self.crop]
        self.blob_candidates = np.flatnonzero((self.gm > 0.5) & away & brain_full[self.crop])
        self.mask_bbox = {}
        for c, m in self.masks.items():
            idx = np.argwhere(m)
            self.mask_bbox[c] = tuple(
                slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0))
            )

        # brain centre (mm), which the subject affine puts near the scanner isocentre
        bidx = np.argwhere(brain_full)
        corners = nib.affines.apply_affine(
            self.full_affine, np.array([bidx.min(0), bidx.max(0)], float)
        )
        self.brain_centre = corners.mean(0)

        # coarse MNI grid of the stored warp: covers the whole template box
        tl = nib.affines.apply_affine(self.full_affine, np.zeros(3))
        th = nib.affines.apply_affine(self.full_affine, np.asarray(self.full_shape, float) - 1)
        wlo, whi = np.minimum(tl, th), np.maximum(tl, th)
        self.warp_shape = tuple(
            int(np.ceil((h - lo) / _WARP_SPACING_MM)) + 1 for lo, h in zip(wlo, whi)
        )
        self.warp_affine = np.diag([_WARP_SPACING_MM] * 3 + [1.0])
        self.warp_affine[:3, 3] = wlo
        nodes = nib.affines.apply_affine(
            self.warp_affine, np.indices(self.warp_shape).reshape(3, -1).T
        )
        inside = np.all((nodes >= corners.min(0) - 5) & (nodes <= corners.max(0) + 5), axis=1)
        self.warp_brain_nodes = inside.reshape(self.warp_shape)

        self.classes = classes
        self.planted = planted
        self.sites = sites
        self.site_grids = {s: _site_grid(d) for s, d in sites.items()}


# --------------------------------------------------------------------------- one subject


def _plan_subject(rng, params, ctx, diagnosis, site):
    """Draw every random parameter of one subject (not the noise)."""
    plan = {}
    plan["age"] = int(rng.integers(18, 66))
    plan["sex"] = "M" if rng.random() < 0.5 else "F"
    if diagnosis != ctx.classes[0]:
        jit = float(np.clip(rng.normal(0.0, params["effect_jitter"]), -0.5, 0.5))
        plan["atrophy"] = float(np.clip(params["effect_size"] * (1.0 + jit), 0.0, 0.95))
    else:
        plan["atrophy"] = 0.0
    plan["gm_contrast"] = float(rng.normal(0.0, 0.03))
    plan["global_amp"] = float(rng.uniform(0.02, 0.06))
    plan["global_weights"] = _random_weights(rng, 3)
    blobs = []
    for _ in range(_N_BLOBS):
        v = int(ctx.blob_candidates[rng.integers(len(ctx.blob_candidates))])
        blobs.append(
            {
                "centre_voxel": [int(i) for i in np.unravel_index(v, ctx.shape)],
                "sigma_mm": float(rng.uniform(4.0, 8.0)),
                "amplitude": float(rng.uniform(0.04, 0.12) * (1 if rng.random() < 0.5 else -1)),
            }
        )
    plan["blobs"] = blobs
    mr, mt = params["max_rotation_deg"], params["max_translation_mm"]
    plan["rotation_deg"] = rng.uniform(-mr, mr, 3)
    plan["translation_mm"] = rng.uniform(-mt, mt, 3)
    plan["scale"] = rng.uniform(0.95, 1.05, 3)
    plan["shear"] = rng.uniform(-0.02, 0.02, 3)
    plan["warp_max_mm"] = float(params["warp_mm"] * rng.uniform(0.6, 1.0))
    plan["warp_weights"] = [_random_weights(rng, 4, decay=1.5) for _ in range(3)]
    plan["bias_weights"] = _random_weights(rng, 3)
    plan["bias_amp"] = float(ctx.sites[site]["bias"] * rng.uniform(0.5, 1.0))
    plan["gain"] = float(ctx.sites[site]["gain"] * rng.uniform(0.9, 1.1))
    if ctx.sites[site].get("contrast"):
        plan["gm_contrast"] += float(ctx.sites[site]["contrast"])
    return plan


def _subject_affine(plan, ctx):
    """4x4 MNI mm -> scanner mm (applied after the warp)."""
    sh = plan["shear"]
    shear = np.array([[1.0, sh[0], sh[1]], [0.0, 1.0, sh[2]], [0.0, 0.0, 1.0]])
    lin = _rotation(plan["rotation_deg"]) @ shear @ np.diag(plan["scale"])
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = plan["translation_mm"] - lin @ ctx.brain_centre
    return a


def _subject_warp(plan, ctx):
    """Displacement field (mm, float32, quantized) on the coarse MNI grid."""
    field = np.stack([_smooth_field(w, ctx.warp_shape) for w in plan["warp_weights"]], axis=-1)
    peak = np.sqrt((field**2).sum(-1))[ctx.warp_brain_nodes].max()
    field *= plan["warp_max_mm"] / max(peak, 1e-12)
    return (np.round(field / _WARP_QUANTUM) * _WARP_QUANTUM).astype(np.float32)


def _subject_mni_image(plan, ctx, diagnosis):
    """The template with this subject's atrophy and nuisance variation (cropped MNI grid)."""
    img = ctx.template * (1.0 + plan["gm_contrast"] * ctx.gm)
    field = _smooth_field(plan["global_weights"], ctx.shape)
    field *= plan["global_amp"] / max(float(np.abs(field).max()), 1e-12)
    field += 1.0
    img *= field.astype(np.float32)
    del field
    if plan["atrophy"] > 0:
        bb = ctx.mask_bbox[diagnosis]
        img[bb] *= 1.0 - plan["atrophy"] * ctx.gm[bb] * ctx.masks[diagnosis][bb]
    for blob in plan["blobs"]:
        c = np.asarray(blob["centre_voxel"])
        r = int(np.ceil(3 * blob["sigma_mm"]))
        sl = tuple(
            slice(max(int(ci) - r, 0), min(int(ci) + r + 1, n)) for ci, n in zip(c, ctx.shape)
        )
        g = [
            np.exp(-0.5 * ((np.arange(s.start, s.stop) - ci) / blob["sigma_mm"]) ** 2)
            for s, ci in zip(sl, c)
        ]
        gauss = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        img[sl] *= (1.0 + blob["amplitude"] * ctx.gm[sl] * gauss).astype(np.float32)
    return img.astype(np.float32, copy=False)


def _inverse_warp_points(field, field_affine, q, n_iter=6):
    """Solve ``p + d(p) = q`` for p (fixed point; d is small and smooth)."""
    p = q.copy()
    for _ in range(n_iter):
        p = q - warp_displacement(field, field_affine, p)
    return p


def _render(plan, ctx, diagnosis, site, affine_mni2scan, warp, noise_rng):
    """Resample the subject's MNI image onto the site grid, add bias and Rician noise."""
    scan_affine, shape = ctx.site_grids[site]
    mni_img = _subject_mni_image(plan, ctx, diagnosis)
    # scanner voxel -> MNI-warped mm (before inverting the warp) is affine
    vox2q = np.linalg.inv(affine_mni2scan) @ scan_affine
    mm2tpl = np.linalg.inv(ctx.affine)
    # inverse warp on a coarse subset of scanner voxels (about every 5 mm), upsampled linearly
    step = max(1, int(round(5.0 / min(ctx.sites[site]["voxel_size"]))))
    knots = [_knots(n, step) for n in shape]
    kk = np.stack(np.meshgrid(*knots, indexing="ij"), axis=-1).reshape(-1, 3)
    q = kk @ vox2q[:3, :3].T + vox2q[:3, 3]
    resid = (_inverse_warp_points(warp, ctx.warp_affine, q) - q).reshape(
        *[len(k) for k in knots], 3
    )
    mats = [_interp_matrix(n, k) for n, k in zip(shape, knots)]
    vox2tpl = mm2tpl @ vox2q
    ii = [np.arange(n, dtype=np.float64) for n in shape]
    coords = np.empty((3,) + shape, dtype=np.float64)
    for d in range(3):
        rd = sum(mm2tpl[d, e] * resid[..., e] for e in range(3) if mm2tpl[d, e] != 0)
        coords[d] = np.einsum("ia,jb,kc,abc->ijk", *mats, rd, optimize=True)
        coords[d] += (
            vox2tpl[d, 0] * ii[0][:, None, None]
            + vox2tpl[d, 1] * ii[1][None, :, None]
            + vox2tpl[d, 2] * ii[2][None, None, :]
            + vox2tpl[d, 3]
        )
    out = map_coordinates(
        mni_img, coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
    )
    del coords
    # smooth multiplicative bias field (scanner space) and scanner gain
    bias = _smooth_field(plan["bias_weights"], shape)
    bias *= plan["bias_amp"] / max(np.abs(bias).max(), 1e-12)
    out *= (np.exp(bias) * (_TEMPLATE_SCALE * plan["gain"])).astype(np.float32)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    sigma = ctx.sites[site]["noise"] * _TEMPLATE_SCALE * plan["gain"] * plan["noise_scale"]
    if sigma > 0:
        re_ = out + noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        im_ = noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        out = np.sqrt(re_ * re_ + im_ * im_)
    slope = float(np.float32(max(float(out.max()), 1e-6) / ctx.sites[site]["int_max"]))
    ints = np.clip(np.rint(out / slope), 0, 32767).astype(np.int16)
    return ints, slope, scan_affine, sigma


def _subject_files(root, pid):
    gt = root / GROUNDTRUTH_SUBDIR / pid
    anat = root / pid / "anat"
    return {
        "t1w": anat / f"{pid}_T1w.nii.gz",
        "sidecar": anat / f"{pid}_T1w.json",
        "warp": gt / f"{pid}_desc-warp_xfm.nii.gz",
        "xfm": gt / f"{pid}_xfm.json",
    }


def _make_subject(root, ctx, params, subj):
    """Generate and write one subject's scan, sidecar and ground truth."""
    files = _subject_files(root, subj.participant_id)
    affine = _subject_affine(subj.plan, ctx)
    warp = _subject_warp(subj.plan, ctx)
    plan = dict(subj.plan, noise_scale=params["noise_scale"])
    ints, slope, scan_affine, sigma = _render(
        plan, ctx, subj.diagnosis, subj.site, affine, warp, np.random.default_rng(subj.noise_seed)
    )
    sdesc = ctx.sites[subj.site]
    _write_nifti_gz(
        files["t1w"],
        ints,
        scan_affine,
        slope=slope,
        zooms=sdesc["voxel_size"],
        descrip=f"neuroml synthetic T1w {subj.site}",
    )
    write_json_atomic(files["sidecar"], _sidecar(subj.site, sdesc))
    _write_nifti_gz(
        files["warp"],
        warp,
        ctx.warp_affine,
        zooms=[_WARP_SPACING_MM] * 3 + [1.0],
        descrip="displacement mm, MNI coarse grid",
    )
    scanner = {
        "affine": scan_affine,
        "shape": list(ints.shape),
        "voxel_size_mm": sdesc["voxel_size"],
        "orientation": sdesc["orientation"],
        "bias_amplitude": plan["bias_amp"],
        "gain": plan["gain"],
        "noise_sigma": sigma,
        "scl_slope": slope,
    }
    xfm = _transform_record(subj, plan, ctx, affine, warp, files["warp"].name, scanner)
    write_json_atomic(files["xfm"], xfm)
    return subj.participant_id


def _sidecar(site, sdesc):
    """The JSON sidecar of a T1w scan made at ``site``."""
    return {
        "Manufacturer": "synthetic",
        "ManufacturersModelName": f"neuroml-synth-{site}",
        "InstitutionName": site,
        "MagneticFieldStrength": sdesc["field_strength"],
        "PulseSequenceType": "synthetic (MNI152 template based)",
        "ConversionSoftware": "neuroml.synth",
        "ConversionSoftwareVersion": str(SYNTH_VERSION),
    }


def _transform_record(subj, plan, ctx, affine, warp, warp_file, scanner):
    """The ground truth of one subject (``<pid>_xfm.json``): its transforms, effect and nuisance."""
    displacement = np.sqrt((warp.astype(float) ** 2).sum(-1))
    return {
        "participant_id": subj.participant_id,
        "diagnosis": subj.diagnosis,
        "site": subj.site,
        "convention": (
            "scanner_mm = affine_mni_to_scanner @ (p + d(p)), p in MNI152NLin2009aSym mm, "
            "d the displacement field (mm) of 'warp.file' interpolated trilinearly "
            "(nearest grid value outside the grid)"
        ),
        "affine_mni_to_scanner": affine,
        "warp": {
            "file": warp_file,
            "space": "MNI152NLin2009aSym",
            "units": "mm",
            "grid_spacing_mm": _WARP_SPACING_MM,
            "max_displacement_mm": float(displacement.max()),
            "max_displacement_brain_mm": float(displacement[ctx.warp_brain_nodes].max()),
        },
        "rotation_deg": plan["rotation_deg"],
        "translation_mm": plan["translation_mm"],
        "scale": plan["scale"],
        "shear": plan["shear"],
        "effect": {
            "atrophy": plan["atrophy"],
            "regions": ctx.planted.get(subj.diagnosis, []),
            "model": "I *= 1 - atrophy * gm_probability inside the planted regions (MNI space)",
        },
        "nuisance": {
            "gm_contrast": plan["gm_contrast"],
            "global_amplitude": plan["global_amp"],
            "blobs": plan["blobs"],
        },
        "scanner": scanner,
    }


# --------------------------------------------------------------------------- cohort


def _assign(n_subjects, classes, sites, entanglement=0.0, seed=0):
    """Round-robin classes; sites rotated per class so that diagnosis and site are balanced.

    With ``entanglement`` > 0, each subject is moved to its class's "home" site
    (class ``c`` -> site ``c mod n_sites``) with that probability (seeded draws), so
    diagnosis and site become associated (1: every subject at its class's home site).
    """
    site_names = list(sites)
    out = []
    draws = (
        np.random.default_rng([int(seed) % (2**32), 8]).random(n_subjects) if entanglement else None
    )
    for i in range(n_subjects):
        c = i % len(classes)
        r = i // len(classes)
        site = site_names[(r + c) % len(site_names)]
        if draws is not None and draws[i] < entanglement:
            site = site_names[c % len(site_names)]
        out.append((classes[c], site))
    return out


def _is_complete(root, pid):
    return all(p.exists() for p in _subject_files(root, pid).values())


def _write_dataset_files(root, params, subjects, ctx):
    """Write the dataset-level files: BIDS description, README, CHANGES, participants, truth."""
    _write_description(root)
    _write_readme(root, params, ctx)
    _write_participants(root, params, subjects, ctx)
    _write_groundtruth_files(root, ctx)


def _write_description(root):
    """``dataset_description.json`` of the raw dataset."""
    write_json_atomic(
        root / "dataset_description.json",
        {
            "Name": "neuroml synthetic cohort",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["neuroml synthetic data generator"],
            "GeneratedBy": [
                {
                    "Name": "neuroml",
                    "Description": "neuroml.synth.make_cohort",
                    "Version": f"synth-{SYNTH_VERSION}",
                }
            ],
            "HowToAcknowledge": "Derived from the MNI152 2009a template (McGill) as shipped by nilearn.",
        },
    )


def _write_readme(root, params, ctx):
    """README and CHANGES: what the cohort holds and how it was made."""
    planted_lines = "\n".join(f"- {c}: {', '.join(r)}" for c, r in ctx.planted.items())
    write_text_atomic(
        root / "README",
        (
            "neuroml synthetic cohort\n"
            "========================\n\n"
            "Synthetic T1-weighted scans made from the MNI152 2009a template shipped by nilearn.\n"
            f"Classes: {', '.join(params['classes'])} (the first is healthy). Patients have grey-matter\n"
            f"'atrophy' (intensity reduced by about {params['effect_size']:g} x the grey-matter probability)\n"
            "in planted AAL regions:\n"
            f"{planted_lines}\n\n"
            "Each scan is the template seen through a random affine and a smooth warp, resampled onto\n"
            "a site-specific grid, with a bias field and Rician noise. The true transforms and the\n"
            "planted masks are in derivatives/groundtruth. Not real data: for testing only.\n"
            f"Generated with seed {params['seed']}.\n"
        ),
    )
    write_text_atomic(
        root / "CHANGES",
        (
            "1.0.0\n"
            f"  - Synthetic cohort generated by neuroml.synth.make_cohort (seed {params['seed']}, "
            f"generator version {SYNTH_VERSION}).\n"
        ),
    )


def _write_participants(root, params, subjects, ctx):
    """``participants.tsv`` and its data dictionary ``participants.json``."""
    lines = ["participant_id\tdiagnosis\tsite\tage\tsex"]
    for s in subjects:
        lines.append(
            f"{s.participant_id}\t{s.diagnosis}\t{s.site}\t{s.plan['age']}\t{s.plan['sex']}"
        )
    write_text_atomic(root / "participants.tsv", "\n".join(lines) + "\n")
    write_json_atomic(
        root / "participants.json",
        {
            "participant_id": {"Description": "Unique participant identifier"},
            "diagnosis": {
                "Description": "Diagnostic group (synthetic)",
                "Levels": {
                    c: (
                        "healthy control (no planted atrophy)"
                        if c == params["classes"][0]
                        else f"patient, atrophy in {', '.join(ctx.planted[c])}"
                    )
                    for c in params["classes"]
                },
            },
            "site": {
                "Description": "Acquisition site (scanner grid, orientation, noise, bias)",
                "Levels": {
                    s: f"{d['voxel_size']} mm voxels, {d['orientation']} orientation, "
                    f"{d['field_strength']:g} T"
                    for s, d in ctx.sites.items()
                },
            },
            "age": {"Description": "Age of the participant", "Units": "year"},
            "sex": {
                "Description": "Sex of the participant",
                "Levels": {"M": "male", "F": "female"},
            },
        },
    )


def _write_groundtruth_files(root, ctx):
    """The ground truth's own description and the planted masks (1 mm template grid)."""
    from neuroml.io.templates import TEMPLATE_SPACE

    gt = root / GROUNDTRUTH_SUBDIR
    write_json_atomic(
        gt / "dataset_description.json",
        {
            "Name": "neuroml synthetic cohort: ground truth",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "neuroml",
                    "Description": "neuroml.synth.make_cohort",
                    "Version": f"synth-{SYNTH_VERSION}",
                }
            ],
        },
    )
    for c in ctx.planted:
        _write_nifti_gz(
            gt / mask_filename(c),
            ctx.masks_full[c],
            ctx.full_affine,
            zooms=[1.0, 1.0, 1.0],
            qform_code=4,
            sform_code=4,
            descrip=f"planted regions of {c} ({TEMPLATE_SPACE})",
        )


def _record(params, ctx, status):
    from neuroml.io.templates import TEMPLATE_SPACE

    return {
        "status": status,
        "generator": "neuroml.synth.make_cohort",
        "generator_version": SYNTH_VERSION,
        "atlas": _ATLAS,
        "space": TEMPLATE_SPACE,
        "healthy_class": params["classes"][0],
        "planted": ctx.planted,
        "masks": {c: mask_filename(c) for c in ctx.planted},
        "region_voxels_1mm": {r: ctx.region_voxels[r] for rs in ctx.planted.values() for r in rs},
        "effect_size": params["effect_size"],
        "effect_model": (
            "I *= 1 - a * gm_probability in the planted regions; "
            "a = effect_size * (1 + N(0, effect_jitter))"
        ),
        "seed": params["seed"],
        "parameters": params,
    }


def _resolve_jobs(n_jobs):
    if n_jobs == -1:
        return max(1, os.cpu_count() or 1)
    return _as_int("n_jobs", n_jobs, 1, 256)


def make_cohort(
    out_dir,
    n_subjects=30,
    seed=0,
    classes=DEFAULT_CLASSES,
    planted=None,
    sites=None,
    voxel_scale=1.0,
    effect_size=0.35,
    n_jobs=1,
    show_progress=False,
    *,
    effect_jitter=0.15,
    noise_scale=1.0,
    warp_mm=1.5,
    max_rotation_deg=8.0,
    max_translation_mm=10.0,
    overwrite=False,
    site_entanglement=0.0,
):
    """Write a synthetic BIDS cohort with planted atrophy and its ground truth.

    Parameters
    ----------
    out_dir : str or Path
        Root of the BIDS dataset to write (created if needed; must be new, empty, or a cohort
        made earlier by this function).
    n_subjects : int, default=30
        Number of subjects (``sub-001``, ``sub-002``, ...). Classes are assigned round-robin.
    seed : int, default=0
        Seed of every random step; same seed and parameters give byte-identical files.
    classes : tuple of str, default=("control", "MDD", "SCZ")
        Diagnostic classes; the first is healthy (no atrophy).
    planted : dict of str to list of str, optional
        Class -> AAL region names with atrophy. Defaults to :data:`DEFAULT_PLANTED`; classes
        other than ``MDD``/``SCZ`` need an entry.
    sites : None, list of str or dict, optional
        ``None``: the three :data:`DEFAULT_SITES`. A list picks some of them. A dict maps
        site names to descriptions (keys ``voxel_size``, ``orientation``, ``fov_mm``,
        ``field_strength``, ``noise``, ``bias``, ``gain``, ``int_max``; missing keys take
        the default site's values).
    voxel_scale : float, default=1.0
        Multiplies every site's voxel size (2 gives ~2 mm scans, 8x fewer voxels).
    effect_size : float, default=0.35
        Mean fraction ``a`` of the atrophy ``I *= 1 - a * gm``.
    n_jobs : int, default=1
        Subjects generated in parallel (threads); -1 uses every CPU.
    show_progress : bool, default=False
        Show a tqdm progress bar.
    effect_jitter : float, default=0.15
        Relative standard deviation of ``a`` across patients.
    noise_scale : float, default=1.0
        Multiplies every site's noise level.
    warp_mm : float, default=1.5
        Largest displacement of the nonlinear warp over the brain (mm); each subject's is
        between 0.6 and 1 times this (it may be a little larger far outside the brain).
    max_rotation_deg, max_translation_mm : float, default=8.0, 10.0
        Range of the random subject rotations (per axis) and translations.
    overwrite : bool, default=False
        If ``out_dir`` holds a cohort made with other parameters, delete it and generate
        anew instead of raising.
    site_entanglement : float, default=0.0
        Probability that a subject is scanned at its class's "home" site (class ``c`` at
        site ``c mod n_sites``) instead of the balanced rotation: 0 keeps diagnosis and
        site independent, 1 confounds them completely. For testing site-confound checks
        (combine with a site ``contrast`` so that the site is visible in the images).

    Returns
    -------
    dict
        ``out_dir``, ``groundtruth_dir``, ``participants`` (list of dicts with
        participant_id, diagnosis, site, age, sex), ``classes``, ``planted``, ``sites``,
        ``parameters``, ``skipped`` (True when the cohort existed already),
        ``n_generated`` and ``seconds``.

    Raises
    ------
    ConfigError
        For a bad parameter (named in the message), or when ``out_dir`` is not empty and
        holds something else than a cohort made with the same parameters.

    Examples
    --------
    >>> summary = make_cohort("/tmp/cohort", n_subjects=6, voxel_scale=3.0)  # doctest: +SKIP
    >>> summary["participants"][1]["diagnosis"]  # doctest: +SKIP
    'MDD'
    """
    t0 = time.perf_counter()
    params, n_jobs = _checked_parameters(
        n_subjects=n_subjects,
        seed=seed,
        classes=classes,
        voxel_scale=voxel_scale,
        effect_size=effect_size,
        effect_jitter=effect_jitter,
        noise_scale=noise_scale,
        warp_mm=warp_mm,
        max_rotation_deg=max_rotation_deg,
        max_translation_mm=max_translation_mm,
        site_entanglement=site_entanglement,
        n_jobs=n_jobs,
        planted=planted,
        sites=sites,
    )
    root = Path(out_dir)
    record_path = root / GROUNDTRUTH_SUBDIR / "planted_regions.json"
    old = _prepare_out_dir(root, record_path, params, overwrite)
    resume = old is not None
    pids = _participant_ids(params["n_subjects"])
    if resume and old.get("status") == "complete" and all(_is_complete(root, p) for p in pids):
        logger.info(
            "synthetic cohort in %s is complete with the same parameters: nothing to do", root
        )
        participants = _read_participants(root)
        return _summary(root, participants, params, skipped=True, n_generated=0, t0=t0)

    ctx = _Context(tuple(params["classes"]), params["planted"], params["sites"])
    subjects = _plan_subjects(params, ctx, pids)
    write_json_atomic(record_path, _record(params, ctx, "incomplete"))
    _write_dataset_files(root, params, subjects, ctx)
    todo = [s for s in subjects if not (resume and _is_complete(root, s.participant_id))]
    logger.info("generating %d synthetic subjects in %s", len(todo), root)
    _make_subjects(root, ctx, params, todo, n_jobs, show_progress)
    write_json_atomic(record_path, _record(params, ctx, "complete"))
    participants = [s.participant_row() for s in subjects]
    return _summary(root, participants, params, skipped=False, n_generated=len(todo), t0=t0)


def _checked_parameters(n_subjects, seed, classes, n_jobs, planted, sites, **numbers):
    """Check the parameters of :func:`make_cohort` (``numbers``: its float parameters by name).

    Returns the parameters as they are recorded in the ground truth (plain JSON values) and
    the number of threads.
    """
    from neuroml.io.atlases import load_atlas

    n_subjects = _as_int("n_subjects", n_subjects, 1, 9999)
    seed = _as_int("seed", seed, 0, 2**63 - 1)
    classes = _check_classes(classes)
    numbers = {
        key: float(check_in_range(key, numbers[key], low, high))
        for key, low, high in _NUMBER_RANGES
    }
    n_jobs = _resolve_jobs(n_jobs)
    planted = _check_planted(planted, classes, load_atlas(_ATLAS).labels)
    sites = _check_sites(sites, numbers["voxel_scale"])
    entanglement = numbers.pop("site_entanglement")
    params = {
        "n_subjects": n_subjects,
        "seed": seed,
        "classes": list(classes),
        "planted": planted,
        "sites": sites,
        **numbers,
        "generator_version": SYNTH_VERSION,
        # recorded only when set: a cohort without entanglement has no such parameter
        **({"site_entanglement": entanglement} if entanglement else {}),
    }
    return json.loads(json.dumps(params)), n_jobs


#: The float parameters of :func:`make_cohort` and their ranges, in the order they are checked.
_NUMBER_RANGES = (
    ("voxel_scale", 0.5, 8.0),
    ("effect_size", 0.0, 0.95),
    ("effect_jitter", 0.0, 1.0),
    ("noise_scale", 0.0, 10.0),
    ("warp_mm", 0.0, 10.0),
    ("max_rotation_deg", 0.0, 30.0),
    ("max_translation_mm", 0.0, 30.0),
    ("site_entanglement", 0.0, 1.0),
)


def _prepare_out_dir(root, record_path, params, overwrite):
    """Make ``root`` ready for a cohort with ``params``.

    Returns the record of the cohort already there with the same parameters (to resume it),
    or None when the cohort is to be generated from scratch (a new or empty folder, or another
    cohort removed because ``overwrite`` is True).
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(f"The 'out_dir' parameter must be a folder; {str(root)!r} is a file.")
    if not (root.exists() and any(not p.name.startswith(".") for p in root.iterdir())):
        return None
    if not record_path.exists():
        raise ConfigError(
            f"out_dir {str(root)!r} is not empty and holds no neuroml synthetic cohort; "
            "choose a new or empty folder."
        )
    old = read_json(record_path)
    if old.get("parameters") == params:
        return old
    if not overwrite:
        old_params = old.get("parameters") or {}
        diff = sorted(
            k for k in set(params) | set(old_params) if old_params.get(k) != params.get(k)
        )
        raise ConfigError(
            f"out_dir {str(root)!r} holds a synthetic cohort made with other parameters "
            f"(differing: {', '.join(diff)}); choose another folder or pass overwrite=True."
        )
    logger.info("removing the synthetic cohort in %s (overwrite=True)", root)
    _remove_cohort(root)
    return None


#: The files :func:`make_cohort` writes at the root of a dataset, besides the subject folders.
_DATASET_FILES = (
    "dataset_description.json",
    "README",
    "CHANGES",
    "participants.tsv",
    "participants.json",
)


def _remove_cohort(root):
    """Delete what :func:`make_cohort` wrote in ``root`` (and nothing else)."""
    for p in root.iterdir():
        if p.name.startswith("sub-") and p.is_dir():
            shutil.rmtree(p)
        elif p.name in _DATASET_FILES:
            p.unlink()
    shutil.rmtree(root / GROUNDTRUTH_SUBDIR)


def _participant_ids(n_subjects):
    """``sub-001``, ``sub-002``, ... (more digits for more than 999 subjects)."""
    width = max(3, len(str(n_subjects)))
    return [f"sub-{i + 1:0{width}d}" for i in range(n_subjects)]


@dataclasses.dataclass(frozen=True)
class _Subject:
    """One planned subject: its class and site, every random draw but the noise, and the
    seed of its noise."""

    participant_id: str
    diagnosis: str
    site: str
    plan: dict
    noise_seed: np.random.SeedSequence

    def participant_row(self):
        """The subject's row of ``participants.tsv`` as a dict."""
        return {
            "participant_id": self.participant_id,
            "diagnosis": self.diagnosis,
            "site": self.site,
            "age": self.plan["age"],
            "sex": self.plan["sex"],
        }


def _plan_subjects(params, ctx, pids):
    """Plan every subject (cheap): classes, sites and all per-subject random draws."""
    seed = params["seed"]
    assignment = _assign(
        len(pids), ctx.classes, ctx.sites, params.get("site_entanglement", 0.0), seed
    )
    subject_root = np.random.SeedSequence(seed).spawn(1)[0]
    subjects = []
    for pid, (diagnosis, site), ss in zip(pids, assignment, subject_root.spawn(len(pids))):
        plan_ss, noise_ss = ss.spawn(2)
        plan = _plan_subject(np.random.default_rng(plan_ss), params, ctx, diagnosis, site)
        subjects.append(_Subject(pid, diagnosis, site, plan, noise_ss))
    return subjects


def _make_subjects(root, ctx, params, todo, n_jobs, show_progress):
    """Generate the subjects ``todo``, in ``n_jobs`` threads, with an optional progress bar."""
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="synthetic subjects", unit="subject")
    try:
        if n_jobs == 1 or len(todo) <= 1:
            for s in todo:
                _make_subject(root, ctx, params, s)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=n_jobs) as ex:
                for _ in ex.map(functools.partial(_make_subject, root, ctx, params), todo):
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _read_participants(root):
    rows = (root / "participants.tsv").read_text(encoding="utf-8").splitlines()
    head = rows[0].split("\t")
    out = []
    for line in rows[1:]:
        rec = dict(zip(head, line.split("\t")))
        rec["age"] = int(rec["age"])
        out.append(rec)
    return out


def _summary(root, participants, params, skipped, n_generated, t0):
    return {
        "out_dir": str(root),
        "groundtruth_dir": str(root / GROUNDTRUTH_SUBDIR),
        "participants": participants,
        "classes": list(params["classes"]),
        "planted": params["planted"],
        "sites": params["sites"],
        "parameters": params,
        "skipped": skipped,
        "n_generated": n_generated,
        "seconds": round(time.perf_counter() - t0, 3),
    }
