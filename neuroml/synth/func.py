"""A synthetic resting-state cohort: BOLD with network structure, fMRIPrep-style confounds,
patients differing in the amplitude and connectivity of planted regions, and the ground truth.

Every subject's series is made on ``target_grid(resolution)`` in MNI space (the grid of the
T1w pipeline, 4 mm by default so files stay small). AAL regions form networks (default
mode, salience, sensorimotor, visual, auditory); each network has a latent time course
band-limited to 0.01-0.1 Hz, each region its own latent as well, and every voxel mixes
the two (``coupling``) with white noise, a physiological (CSF/WM) signal, motion artefacts
and a few spike volumes. In patients the planted regions fluctuate with a larger amplitude
(``1 + amplitude_effect``: ALFF and fALFF rise) and decouple from their network (coupling
multiplied by ``1 - decoupling``) to couple with another (``rewire_to``, the default mode
network by default): their connectivity changes.

``layout="fmriprep"`` (default) writes what fMRIPrep would: the series as
``sub-X/func/sub-X_task-rest_space-MNI152NLin2009aSym_res-<r>_desc-preproc_bold.nii.gz``
with ``sub-X_task-rest_desc-confounds_timeseries.tsv/.json`` (motion with derivatives and
squares, csf, white_matter, global_signal, framewise_displacement, dvars, std_dvars,
cosine drifts, aCompCor). ``layout="raw"`` writes plain BOLD (``sub-X_task-rest_bold.nii.gz``,
no confounds) whose affine is moved by a known rigid transform, so it must be registered.
The truth (planted regions, networks, spike volumes, transforms) is under
``derivatives/groundtruth``.
"""

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from neuroml._utils.fileio import read_json, write_json_atomic, write_text_atomic
from neuroml._utils.options import check_in_range, look_up_option
from neuroml.errors import ConfigError
from neuroml.io.groundtruth import GROUNDTRUTH_SUBDIR, mask_filename
from neuroml.synth._checks import _as_int, _check_classes
from neuroml.synth._write import _write_nifti_gz

__all__ = [
    "FUNC_SYNTH_VERSION",
    "DEFAULT_NETWORKS",
    "DEFAULT_FUNC_PLANTED",
    "make_func_cohort",
    "bold_filename",
]

log = logging.getLogger("neuroml")

FUNC_SYNTH_VERSION = 1

#: Networks of AAL regions sharing a latent time course.
DEFAULT_NETWORKS = {
    "dmn": [
        "Cingulate_Post_L",
        "Cingulate_Post_R",
        "Precuneus_L",
        "Precuneus_R",
        "Angular_L",
        "Angular_R",
        "Frontal_Sup_Medial_L",
        "Frontal_Sup_Medial_R",
    ],
    "salience": [
        "Insula_L",
        "Insula_R",
        "Cingulate_Ant_L",
        "Cingulate_Ant_R",
        "Supp_Motor_Area_L",
        "Supp_Motor_Area_R",
    ],
    "sensorimotor": ["Precentral_L", "Precentral_R", "Postcentral_L", "Postcentral_R"],
    "visual": ["Calcarine_L", "Calcarine_R", "Cuneus_L", "Cuneus_R", "Lingual_L", "Lingual_R"],
    "auditory": ["Temporal_Sup_L", "Temporal_Sup_R", "Heschl_L", "Heschl_R"],
}

#: Planted regions per patient class (amplitude up, coupling to their network down).
DEFAULT_FUNC_PLANTED = {
    "MDD": ["Insula_L", "Insula_R", "Cingulate_Ant_L", "Cingulate_Ant_R"],
    "SCZ": ["Temporal_Sup_L", "Temporal_Sup_R", "Frontal_Sup_Medial_L", "Frontal_Sup_Medial_R"],
}

_TASK = "rest"
_NET_COUPLING = 0.85
_NET_AMP = 1.0
_OTHER_AMP = 0.5
_WHITE = 0.8


def bold_filename(pid, layout, resolution):
    """File name of a subject's BOLD series for a layout."""
    from neuroml.io.templates import TEMPLATE_SPACE, res_entity

    if layout == "raw":
        return f"{pid}_task-{_TASK}_bold.nii.gz"
    return f"{pid}_task-{_TASK}_space-{TEMPLATE_SPACE}_res-{res_entity(resolution)}_desc-preproc_bold.nii.gz"


def _band_noise(rng, n, tr, lo=0.01, hi=0.1, size=()):
    """Unit-variance Gaussian noise with its spectrum limited to [lo, hi] Hz (last axis time)."""
    x = rng.normal(size=(*size, n))
    f = np.fft.rfftfreq(n, tr)
    spec = np.fft.rfft(x, axis=-1)
    spec[..., (f < lo) | (f > hi)] = 0
    y = np.fft.irfft(spec, n=n, axis=-1)
    return y / y.std(axis=-1, keepdims=True)


def _cosines(n, tr, cutoff_s=128.0):
    k = int(np.floor(2 * n * tr / cutoff_s))
    t = np.arange(n)
    return (
        np.stack(
            [np.sqrt(2.0 / n) * np.cos(np.pi * (t + 0.5) * j / n) for j in range(1, k + 1)], axis=1
        )
        if k
        else np.zeros((n, 0))
    )


def _with_expansions(df, names):
    for c in names:
        d = np.r_[np.nan, np.diff(df[c].to_numpy())]
        df[f"{c}_derivative1"] = d
        df[f"{c}_power2"] = df[c] ** 2
        df[f"{c}_derivative1_power2"] = d**2
    return df


def _fmt(v):
    return "n/a" if not np.isfinite(v) else f"{v:.6g}"


class _Grid:
    def __init__(self, resolution, networks, planted):
        from nilearn.image import resample_img

        from neuroml.io.atlases import atlas_on_grid
        from neuroml.io.templates import (
            brain_mask_on_grid,
            mni_gm_map,
            target_grid,
            template_on_grid,
        )

        self.affine, self.shape = target_grid(resolution)
        self.brain = np.asarray(brain_mask_on_grid(resolution).dataobj) > 0
        self.template = np.asarray(template_on_grid(resolution).dataobj, dtype=np.float32)
        gm = resample_img(
            mni_gm_map(),
            target_affine=self.affine,
            target_shape=self.shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
        self.gm = np.clip(np.asarray(gm.dataobj, dtype=np.float32), 0, 1)
        labels, names = atlas_on_grid("aal", self.affine, self.shape)
        self.labels = np.where(self.brain, labels, 0)
        self.names = names
        self.index = {v: k for k, v in names.items()}
        for group in (networks, planted):
            for key, regions in group.items():
                missing = [r for r in regions if r not in self.index]
                if missing:
                    raise ConfigError(
                        f"{key!r}: regions {missing} are not AAL regions present on the "
                        f"{resolution:g} mm grid"
                    )
        self.vox = np.flatnonzero(self.brain.reshape(-1))
        self.vox_labels = self.labels.reshape(-1)[self.vox]
        ijk = np.argwhere(self.brain)
        c = (ijk - ijk.mean(0)) / (np.abs(ijk - ijk.mean(0)).max(0) + 1e-9)
        self.gradients = c  # (V, 3) in [-1, 1]
        self.base = 100.0 + 600.0 * self.template.reshape(-1)[self.vox] / max(
            self.template.max(), 1e-6
        )
        self.vox_gm = self.gm.reshape(-1)[self.vox]


def _subject(rng, grid, params, diagnosis, networks, planted):
    """Generate one subject: (bold 4D float32, confounds DataFrame, aCompCor metadata, truth)."""
    n = params["n_volumes"]
    fluct, region_truth, global_amp = _region_fluctuations(
        rng, grid, params, diagnosis, networks, planted
    )
    fluct += _WHITE * rng.normal(size=(len(grid.vox), n))
    # physiological noise: strongest outside grey matter
    physio = rng.normal(size=n)
    physio = np.convolve(physio, np.ones(2) / np.sqrt(2), mode="same")
    fluct += 0.6 * (1 - grid.vox_gm)[:, None] * physio[None, :]
    trans, rot, spikes = _head_motion(rng, n, params["n_spikes"], params["motion_scale"])
    motion = np.concatenate([trans, rot], axis=1)
    mz = (motion - motion.mean(0)) / (motion.std(0) + 1e-12)
    beta = np.concatenate([grid.gradients, grid.gradients], axis=1) * 0.4 * params["motion_scale"]
    fluct += beta @ mz.T
    for s in spikes:
        fluct[:, s] += 4.0
    bold = grid.base[:, None] * (1.0 + 0.01 * fluct)
    df, comp_meta = _confounds(rng, grid, bold, physio, trans, rot, params["tr"])
    out = np.zeros((*grid.shape, n), dtype=np.float32)
    out.reshape(-1, n)[grid.vox] = bold
    truth = {
        "diagnosis": diagnosis,
        "spike_volumes": spikes,
        "global_amplitude": round(global_amp, 4),
        "planted_regions": planted.get(diagnosis, []),
        "regions": region_truth,
    }
    return out, df, comp_meta, truth


def _region_fluctuations(rng, grid, params, diagnosis, networks, planted):
    """The neural signal of every brain voxel: network and region latents mixed per region.

    Returns the (V, T) fluctuations (% signal before scaling), the truth of each region
    and the subject-wide amplitude.
    """
    n, tr = params["n_volumes"], params["tr"]
    region_ids = sorted(set(grid.vox_labels.tolist()) - {0})
    net_of = {grid.index[r]: k for k, rs in networks.items() for r in rs}
    planted_ids = {grid.index[r] for r in planted.get(diagnosis, [])}
    lat_net = {k: _band_noise(rng, n, tr) for k in networks}
    lat_reg = {r: _band_noise(rng, n, tr) for r in region_ids}
    global_amp = float(np.exp(rng.normal(0, params["subject_jitter"])))
    fluct = np.zeros((len(grid.vox), n), dtype=np.float64)
    region_truth = {}
    for r in region_ids:
        sel = grid.vox_labels == r
        net = net_of.get(r)
        amp = (
            (_NET_AMP if net else _OTHER_AMP)
            * global_amp
            * float(np.exp(rng.normal(0, params["region_jitter"])))
        )
        amp, coup, other, c_other = _region_mixing(amp, net, r in planted_ids, params)
        sig = lat_reg[r] * np.sqrt(max(1 - coup**2 - c_other**2, 0.0))
        if net:
            sig = sig + coup * lat_net[net]
        if other:
            sig = sig + c_other * lat_net[other]
        fluct[sel] = amp * grid.vox_gm[sel, None] * sig[None, :]
        region_truth[grid.names[r]] = {
            "amplitude": round(amp, 4),
            "coupling": round(coup, 4),
            "network": net,
            **({"rewired_to": other, "rewired_coupling": round(c_other, 4)} if other else {}),
        }
    return fluct, region_truth, global_amp


def _region_mixing(amp, net, is_planted, params):
    """A region's amplitude, coupling to its network, and the network it is rewired to (with
    that coupling): a planted region of a patient fluctuates more and decouples."""
    coup = _NET_COUPLING if net else 0.0
    other, c_other = None, 0.0
    if is_planted:
        amp *= 1.0 + params["amplitude_effect"]
        other = params["rewire_to"] if params["rewire_to"] != net else None
        c_other = coup * params["decoupling"] if other else 0.0
        coup *= 1.0 - params["decoupling"]
    return amp, coup, other, c_other


def _head_motion(rng, n, n_spikes, motion_scale):
    """Translations (mm) and rotations (rad), (T, 3) each: a slow random walk plus spikes
    (a jump at one volume, back at the next); and the spike volumes."""
    trans = np.cumsum(rng.normal(0, 0.015 * motion_scale, size=(n, 3)), axis=0)
    rot = np.cumsum(rng.normal(0, 0.0002 * motion_scale, size=(n, 3)), axis=0)
    spikes = (
        sorted(rng.choice(np.arange(8, n - 8), size=n_spikes, replace=False).tolist())
        if n_spikes
        else []
    )
    for s in spikes:
        trans[s] += rng.choice([-1, 1], size=3) * rng.uniform(0.4, 0.8, size=3)
    return trans, rot, spikes


def _confounds(rng, grid, bold, physio, trans, rot, tr):
    """The fMRIPrep-style confounds table of a series, and the metadata of its aCompCor."""
    import pandas as pd

    n = bold.shape[1]
    fd = np.r_[
        np.nan, np.abs(np.diff(trans, axis=0)).sum(1) + 50.0 * np.abs(np.diff(rot, axis=0)).sum(1)
    ]
    dv = np.r_[np.nan, np.sqrt(np.mean(np.diff(bold, axis=1) ** 2, axis=0))]
    std_dv = dv / np.nanmedian(dv)
    wm = grid.vox_gm < 0.2
    wm_sig = bold[wm].mean(0)
    csf = 1000.0 + 30.0 * physio + rng.normal(0, 3, size=n)
    df = pd.DataFrame({"global_signal": bold.mean(0), "csf": csf, "white_matter": wm_sig})
    df = _with_expansions(df, ["global_signal", "csf", "white_matter"])
    motion = np.concatenate([trans, rot], axis=1)
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    for j, c in enumerate(names):
        df[c] = motion[:, j]
    df = _with_expansions(df, names)
    df["framewise_displacement"] = fd
    df["dvars"] = dv
    df["std_dvars"] = std_dv
    cos = _cosines(n, tr)
    for j in range(cos.shape[1]):
        df[f"cosine{j:02d}"] = cos[:, j]
    comp_meta = _add_acompcor(df, bold[wm])
    return df, comp_meta


def _add_acompcor(df, wm_bold):
    """Add the first 5 aCompCor components of the white-matter series to ``df``; return their
    metadata (the confounds JSON)."""
    x = wm_bold - wm_bold.mean(1, keepdims=True)
    evals, evecs = np.linalg.eigh(x.T @ x)  # (T, T): the left singular vectors of x.T
    order = np.argsort(evals)[::-1]
    u, sv = evecs[:, order], np.sqrt(np.clip(evals[order], 0, None))
    var = sv**2 / (sv**2).sum()
    comp_meta = {}
    for j in range(min(5, u.shape[1])):
        df[f"a_comp_cor_{j:02d}"] = u[:, j]
        comp_meta[f"a_comp_cor_{j:02d}"] = {
            "Method": "aCompCor",
            "Mask": "combined",
            "Retained": True,
            "SingularValue": float(sv[j]),
            "VarianceExplained": float(var[j]),
            "CumulativeVarianceExplained": float(var[: j + 1].sum()),
        }
    return comp_meta


def _rigid(rng, max_rot_deg, max_trans_mm):
    from scipy.spatial.transform import Rotation

    ang = rng.uniform(-max_rot_deg, max_rot_deg, size=3)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", ang, degrees=True).as_matrix()
    m[:3, 3] = rng.uniform(-max_trans_mm, max_trans_mm, size=3)
    return m


def make_func_cohort(
    out_dir,
    n_subjects=20,
    seed=0,
    classes=("control", "MDD"),
    planted=None,
    networks=None,
    resolution=4.0,
    n_volumes=100,
    tr=2.0,
    amplitude_effect=0.8,
    decoupling=0.8,
    n_spikes=3,
    layout="fmriprep",
    *,
    rewire_to="dmn",
    subject_jitter=0.15,
    region_jitter=0.15,
    motion_scale=1.0,
    overwrite=False,
    show_progress=False,
):
    """Write a synthetic resting-state cohort (see the module docstring) and its ground truth.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write (new, empty, or a cohort made earlier with the same parameters).
    n_subjects : int, default=20
        Classes are assigned round-robin (``sub-001`` is the first class).
    seed : int, default=0
        Same seed and parameters give identical files.
    classes : tuple of str, default=("control", "MDD")
        The first is healthy.
    planted : dict, optional
        Class -> AAL regions (default :data:`DEFAULT_FUNC_PLANTED`).
    networks : dict, optional
        Network -> AAL regions (default :data:`DEFAULT_NETWORKS`).
    resolution : float, default=4.0
        Voxel size of the MNI grid (``target_grid``).
    n_volumes : int, default=100
    tr : float, default=2.0
        Repetition time (s).
    amplitude_effect : float, default=0.8
        Planted regions of patients fluctuate ``1 + amplitude_effect`` times more.
    decoupling : float, default=0.8
        Their coupling ``c`` to their network becomes ``c (1 - decoupling)``, and they couple with
        ``c decoupling`` to the network ``rewire_to`` instead.
    rewire_to : str or None, default="dmn"
        The network planted regions of patients couple to (None: they only decouple).
    n_spikes : int, default=3
        Volumes with a head jerk (FD > 0.5 mm) and an intensity spike, per subject.
    layout : {"fmriprep", "raw"}, default="fmriprep"
        fMRIPrep outputs in MNI space with confounds, or plain BOLD off MNI (rigidly moved).
    subject_jitter, region_jitter : float, default=0.15
        Log-normal spread of subject-wide and per-region amplitudes.
    motion_scale : float, default=1.0
    overwrite : bool, default=False
    show_progress : bool, default=False

    Returns
    -------
    dict
        ``out_dir``, ``groundtruth_dir``, ``participants``, ``classes``, ``planted``,
        ``networks``, ``parameters``, ``skipped``, ``seconds``.

    Raises
    ------
    ConfigError
        For a bad parameter, or a non-empty ``out_dir`` holding something else.
    """
    t0 = time.perf_counter()
    params = _checked_parameters(
        n_subjects,
        seed,
        classes,
        planted,
        networks,
        layout,
        rewire_to,
        resolution=resolution,
        n_volumes=n_volumes,
        tr=tr,
        amplitude_effect=amplitude_effect,
        decoupling=decoupling,
        n_spikes=n_spikes,
        subject_jitter=subject_jitter,
        region_jitter=region_jitter,
        motion_scale=motion_scale,
    )
    root = Path(out_dir)
    record = root / GROUNDTRUTH_SUBDIR / "planted_regions.json"
    if _prepare_out_dir(root, record, params, overwrite):
        log.info("synthetic func cohort in %s exists with the same parameters: nothing to do", root)
        return _summary(root, params, _participants(root), True, t0)
    grid = _Grid(params["resolution"], params["networks"], params["planted"])
    subject_seqs = np.random.SeedSequence(params["seed"]).spawn(params["n_subjects"])
    width = max(3, len(str(params["n_subjects"])))
    classes = params["classes"]
    participants = []
    write_json_atomic(record, {"status": "incomplete", "parameters": params})
    from tqdm.auto import tqdm

    for i in tqdm(
        range(params["n_subjects"]), desc="synthetic func subjects", disable=not show_progress
    ):
        pid = f"sub-{i + 1:0{width}d}"
        rng = np.random.default_rng(subject_seqs[i])
        participants.append(_make_subject(root, grid, params, pid, classes[i % len(classes)], rng))
    _write_dataset_files(root, params, participants, grid)
    write_json_atomic(record, _record(params))
    return _summary(root, params, participants, False, t0)


def _checked_parameters(n_subjects, seed, classes, planted, networks, layout, rewire_to, **numbers):
    """Check the parameters of :func:`make_func_cohort` (``numbers``: the others, by name).

    Returns them as they are recorded in the ground truth (plain JSON values).
    """
    n_subjects = _as_int("n_subjects", n_subjects, 1, 9999)
    seed = _as_int("seed", seed, 0, 2**63 - 1)
    classes = _check_classes(classes)
    layout = look_up_option("layout", layout, ["fmriprep", "raw"])
    planted = _check_planted(planted, classes)
    networks = {k: list(v) for k, v in (networks or DEFAULT_NETWORKS).items()}
    if rewire_to is not None and rewire_to not in networks:
        raise ConfigError(
            f"The 'rewire_to' parameter must be one of the networks {sorted(networks)} or None. "
            f"Got {rewire_to!r} instead."
        )
    params = {
        "n_subjects": n_subjects,
        "seed": seed,
        "classes": list(classes),
        "planted": planted,
        "networks": networks,
        "resolution": float(check_in_range("resolution", numbers["resolution"], 2.0, 8.0)),
        "n_volumes": _as_int("n_volumes", numbers["n_volumes"], 30, 2000),
        "tr": float(check_in_range("tr", numbers["tr"], 0.3, 5.0)),
        "amplitude_effect": float(
            check_in_range("amplitude_effect", numbers["amplitude_effect"], 0.0, 5.0)
        ),
        "decoupling": float(check_in_range("decoupling", numbers["decoupling"], 0.0, 1.0)),
        "n_spikes": _as_int("n_spikes", numbers["n_spikes"], 0, 20),
        "layout": layout,
        "rewire_to": rewire_to,
        "subject_jitter": float(
            check_in_range("subject_jitter", numbers["subject_jitter"], 0.0, 1.0)
        ),
        "region_jitter": float(check_in_range("region_jitter", numbers["region_jitter"], 0.0, 1.0)),
        "motion_scale": float(check_in_range("motion_scale", numbers["motion_scale"], 0.0, 10.0)),
        "generator_version": FUNC_SYNTH_VERSION,
    }
    spike_room = (
        params["n_volumes"] - 16
    )  # spikes go to distinct volumes, none in the first or last 8
    if params["n_spikes"] > spike_room:
        raise ConfigError(
            f"The 'n_spikes' parameter must be at most n_volumes - 16 = {spike_room} (spikes go to "
            f"distinct volumes, none in the first or last 8). Got {params['n_spikes']} instead."
        )
    return json.loads(json.dumps(params))


def _check_planted(planted, classes):
    """Class -> planted regions (lists); every patient class needs an entry."""
    given = planted or {
        c: DEFAULT_FUNC_PLANTED[c] for c in classes[1:] if c in DEFAULT_FUNC_PLANTED
    }
    planted = {c: list(v) for c, v in given.items()}
    missing = [c for c in classes[1:] if c not in planted]
    if missing:
        raise ConfigError(
            f"no planted regions for patient class(es) {missing}: pass planted={{class: [AAL regions]}}"
        )
    return planted


def _prepare_out_dir(root, record, params, overwrite):
    """Make ``root`` ready for a cohort with ``params``; return True when it holds that cohort
    complete already.

    A cohort with the same parameters that was interrupted is generated again over the files
    already there (generation is deterministic and each file is rewritten atomically); another
    cohort is removed when ``overwrite`` is True.
    """
    if not (root.exists() and any(not p.name.startswith(".") for p in root.iterdir())):
        return False
    old = read_json(record) if record.is_file() else None
    if old is not None and old.get("parameters") == params:
        if old.get("status") == "complete":
            return True
        log.info("synthetic func cohort in %s was interrupted: generating it again", root)
        return False
    if old is None or not overwrite:
        raise _not_this_cohort(root, old, params)
    for p in root.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return False


def _not_this_cohort(root, old, params):
    """The error for a non-empty ``out_dir`` that holds no cohort with ``params``."""
    if isinstance(old, dict) and isinstance(old.get("parameters"), dict):
        diff = sorted(
            k
            for k in set(params) | set(old["parameters"])
            if old["parameters"].get(k) != params.get(k)
        )
        return ConfigError(
            f"out_dir {str(root)!r} holds a synthetic func cohort made with other parameters "
            f"(differing: {', '.join(diff)}); choose a new folder or pass overwrite=True"
        )
    return ConfigError(
        f"out_dir {str(root)!r} is not empty and holds "
        f"{'another' if old else 'no'} neuroml synthetic cohort; choose a new folder"
        + (" or pass overwrite=True" if old else "")
    )


def _make_subject(root, grid, params, pid, diagnosis, rng):
    """Generate and write one subject's series, sidecar, confounds and truth; return its
    ``participants.tsv`` row."""
    bold, conf, comp_meta, truth = _subject(
        rng, grid, params, diagnosis, params["networks"], params["planted"]
    )
    layout = params["layout"]
    affine = grid.affine
    if layout == "raw":
        move = _rigid(rng, 6.0, 8.0)
        affine = move @ grid.affine
        truth["scanner_from_mni"] = move.tolist()
    func = root / pid / "func"
    _write_bold(func, pid, bold, affine, params)
    if layout == "fmriprep":
        _write_confounds(func, pid, conf, comp_meta)
    write_json_atomic(root / GROUNDTRUTH_SUBDIR / pid / f"{pid}_task-{_TASK}_truth.json", truth)
    return {
        "participant_id": pid,
        "diagnosis": diagnosis,
        "age": int(rng.integers(20, 65)),
        "sex": str(rng.choice(["F", "M"])),
    }


def _write_bold(func, pid, bold, affine, params):
    """The BOLD series (int16 with a slope) and its JSON sidecar in the folder ``func``."""
    layout = params["layout"]
    slope = float(np.abs(bold).max() / 30000.0) or 1.0
    data = np.round(bold / slope).astype(np.int16)
    name = bold_filename(pid, layout, params["resolution"])
    _write_nifti_gz(
        func / name,
        data,
        affine,
        slope=slope,
        zooms=[params["resolution"]] * 3 + [params["tr"]],
        qform_code=4 if layout != "raw" else 1,
        sform_code=4 if layout != "raw" else 1,
        descrip="neuroml synthetic BOLD",
    )
    side = {"RepetitionTime": params["tr"], "TaskName": _TASK, "SkullStripped": False}
    if layout == "fmriprep":
        side["SpatialReference"] = "MNI152NLin2009aSym"
    write_json_atomic(func / f"{name.replace('.nii.gz', '')}.json", side)


def _write_confounds(func, pid, conf, comp_meta):
    """The fMRIPrep-style confounds table (``n/a`` for missing values) and its JSON."""
    stem = f"{pid}_task-{_TASK}_desc-confounds_timeseries"
    write_text_atomic(
        func / f"{stem}.tsv",
        "\t".join(conf.columns)
        + "\n"
        + "".join("\t".join(_fmt(v) for v in row) + "\n" for row in conf.to_numpy()),
    )
    write_json_atomic(func / f"{stem}.json", comp_meta)


def _write_dataset_files(root, params, participants, grid):
    """``participants.tsv``, the dataset descriptions and the planted masks."""
    write_text_atomic(
        root / "participants.tsv",
        "participant_id\tdiagnosis\tage\tsex\n"
        + "".join(
            f"{p['participant_id']}\t{p['diagnosis']}\t{p['age']}\t{p['sex']}\n"
            for p in participants
        ),
    )
    fmriprep = params["layout"] == "fmriprep"
    write_json_atomic(
        root / "dataset_description.json",
        {
            "Name": "neuroml synthetic resting-state cohort",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative" if fmriprep else "raw",
            "License": "CC0",
            "GeneratedBy": [
                {
                    "Name": "neuroml",
                    "Description": "neuroml.synth.make_func_cohort "
                    + ("(fMRIPrep-style outputs)" if fmriprep else "(plain BOLD)"),
                    "Version": f"synth-func-{FUNC_SYNTH_VERSION}",
                }
            ],
        },
    )
    gt = root / GROUNDTRUTH_SUBDIR
    write_json_atomic(
        gt / "dataset_description.json",
        {
            "Name": "neuroml synthetic resting-state cohort: ground truth",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "neuroml"}],
        },
    )
    for c, regions in params["planted"].items():
        m = np.isin(grid.labels, [grid.index[r] for r in regions]).astype(np.uint8)
        _write_nifti_gz(
            gt / mask_filename(c),
            m,
            grid.affine,
            zooms=[params["resolution"]] * 3,
            qform_code=4,
            sform_code=4,
            descrip=f"planted regions of {c}",
        )


def _record(params):
    """The record of a complete cohort (``planted_regions.json``)."""
    return {
        "status": "complete",
        "modality": "func",
        "generator": "neuroml.synth.make_func_cohort",
        "generator_version": FUNC_SYNTH_VERSION,
        "atlas": "aal",
        "space": "MNI152NLin2009aSym",
        "healthy_class": params["classes"][0],
        "planted": params["planted"],
        "masks": {c: mask_filename(c) for c in params["planted"]},
        "networks": params["networks"],
        "effect_model": (
            "voxel % signal = amp * gm * (c * network_latent + c_other * other_network_latent + "
            "sqrt(1 - c^2 - c_other^2) * region_latent) + noise (c_other = 0 outside planted regions); "
            f"planted regions of patients: amp *= 1 + {params['amplitude_effect']}, c_other = c * "
            f"{params['decoupling']} to the {params['rewire_to']!r} network (0 when it is their own network), "
            f"then c *= 1 - {params['decoupling']}"
        ),
        "seed": params["seed"],
        "parameters": params,
    }


def _participants(root):
    lines = (root / "participants.tsv").read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def _summary(root, params, participants, skipped, t0):
    return {
        "out_dir": str(root),
        "groundtruth_dir": str(root / GROUNDTRUTH_SUBDIR),
        "participants": participants,
        "classes": params["classes"],
        "planted": params["planted"],
        "networks": params["networks"],
        "parameters": params,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }
