"""Attribution maps for every subject of a training run, without leakage.

Each subject is explained by the model of the fold where it was in the *test* set.
Subjects outside the run are explained by every fold model (maps and probabilities
averaged). A subject that every usable model was trained on raises
:class:`~neuroml.errors.LeakageError` unless ``force=True``.

Outputs (``docs/layout.md``), under ``RUN/attribution/<method>/`` (or ``out_dir``)::

    sub-X[_ses-Y][_run-Z]_desc-<method>_map.nii.gz    per scan, on the grid, grid affine
    group/class-<C>_desc-mean_map.nii.gz              mean over subjects of class C (target C)
    group/class-<C>_desc-tstat_map.nii.gz             one-sample t map (>= 2 subjects)
    sub-X..._desc-<method>_atlas-<atlas>_regions.tsv / .json   region table of each map
    regions_atlas-<atlas>_class-<C>.tsv / .json       region table of the class's mean map
    sanity.json                                       trust checks (:mod:`neuroml.attribution.sanity`)
    attribution.json                                  settings, subjects, timings, files, trust summary

A rerun reuses a subject's map only when everything it depends on is unchanged: the
call's ``identity`` (method, target, the method's settings and layer, the atlas for
``region_occlusion``, a digest of each fold model and of the ComBat files) and the
subject's input checksum, folds and target class, and the map file is the one that call
wrote (``map_sha256``); anything else is recomputed.
A call on some participants (``participant_labels``) adds or updates theirs and keeps the
other subjects of the folder whose maps are still valid as above (the same ``identity``, input
checksum and folds, the map file intact); the group maps, class region tables and trust checks
are computed again over every kept subject, and files the new ``attribution.json`` does not list
(maps of dropped subjects, a t map that can no longer be computed) are deleted. The folder holds
the attribution of one derivatives folder (``deriv_dir`` in ``attribution.json``): a call on
other derivatives is refused unless it writes elsewhere (``out_dir``).
Each call gets a new ``call_id``; ``sanity.json`` carries the ``call_id`` of the call that
wrote it (and ``attribution.json`` the same under ``sanity.call_id``). A call that does
not run the checks moves an earlier ``sanity.json`` aside to ``sanity_superseded.json``
and records why under ``sanity.reason``.

``region_occlusion`` paints each atlas region with the drop in the target's probability
when that region alone is hidden, so its region table ranks regions by exact importance.

``<method>`` in ``desc-`` loses its underscores (BIDS labels are alphanumeric).
"""

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

from neuroml._utils.fileio import (
    read_json,
    remove_stale_temporaries,
    save_nifti_atomic,
    sha256_file,
    write_json_atomic,
)
from neuroml._utils.options import look_up_option
from neuroml._utils.provenance import package_versions
from neuroml.attribution import sanity as checks
from neuroml.attribution.group import _img, class_entity, class_group_maps, write_group_maps
from neuroml.attribution.methods import ALL_METHODS, Explainer
from neuroml.attribution.regions import region_table, write_region_table
from neuroml.errors import ConfigError, InputError, LeakageError
from neuroml.io.atlases import atlas_on_grid, load_atlas

__all__ = ["attribute_run", "map_name"]

log = logging.getLogger("neuroml")


def map_name(participant_id, session=None, run=None, method="gradcam"):
    """File name of a subject's map: ``sub-X[_ses-Y][_run-Z]_desc-<method>_map.nii.gz``.

    Examples
    --------
    >>> map_name("sub-01", "a", None, "integrated_gradients")
    'sub-01_ses-a_desc-integratedgradients_map.nii.gz'
    """
    parts = [str(participant_id)]
    if _given(session):
        parts.append(f"ses-{session}")
    if _given(run):
        parts.append(f"run-{run}")
    return "_".join(parts) + f"_desc-{method.replace('_', '')}_map.nii.gz"


def _given(value):
    return (
        value is not None
        and not (isinstance(value, float) and np.isnan(value))
        and str(value) not in ("", "n/a")
    )


def _check_grid(cache, cfg, deriv_dir):
    grid = cfg.get("grid", cfg)
    if "shape" not in grid or "affine" not in grid:
        return
    if tuple(grid["shape"]) != cache.shape or not np.allclose(
        np.asarray(grid["affine"]), cache.affine, atol=1e-4
    ):
        mm = cfg.get("resolution_mm")
        how = f"--resolution {mm:g}" if isinstance(mm, (int, float)) else "the run's resolution"
        raise InputError(
            f"the derivatives' grid {cache.shape} differs from the run's {tuple(grid['shape'])}: "
            f"preprocess with {how} (res-{cfg.get('resolution')})",
            deriv_dir,
        )


def _true_labels(run, run_dir, deriv_dir):
    """participant_id -> label, from predictions.tsv and the participants.tsv of the data."""
    import pandas as pd

    labels = {}
    cfg = run.config
    column = cfg.get("label_column", "diagnosis")
    try:
        from neuroml.data import participants_file
        from neuroml.io.bids import read_participants

        table = read_participants(participants_file(deriv_dir, cfg.get("participants")))
        if column in table.columns:
            labels.update({p: str(v).strip() for p, v in table[column].dropna().items()})
    except InputError as exc:
        log.debug("no participants.tsv labels: %s", exc)
    pred = Path(run_dir) / "predictions.tsv"
    if pred.is_file():
        df = pd.read_csv(pred, sep="\t", dtype=str, keep_default_na=False)
        if {"participant_id", "true_label"} <= set(df.columns):
            labels.update(dict(zip(df["participant_id"], df["true_label"])))
    return labels


def _folds_for(pid, run, folds, used_by, force, quiet=False):
    """(folds to use, how) for a participant; raise LeakageError if all trained on it."""
    k = run.test_fold_of(pid)
    if k is not None:
        return (k,), "out-of-fold"
    clean = tuple(f for f in folds if pid not in used_by.get(f, set()))
    if clean:
        return clean, "not-in-run" if len(clean) == len(folds) else "unseen-folds"
    if not force:
        raise LeakageError(
            f"{pid} was used to train every fold model and is in no fold's test set; "
            "its maps would explain training data (pass force=True to do it anyway)"
        )
    if not quiet:
        log.warning("%s: every model was trained on it; explaining it anyway (force=True)", pid)
    return tuple(folds), "trained-on"


def _used_by(run, folds):
    out = {f: set() for f in folds}
    for entry in run.splits:
        f = entry.get("fold")
        if f in out:
            out[f] = set(entry.get("train", [])) | set(entry.get("val", []))
    return out


def _select(index, participants):
    if participants is None:
        return index
    from neuroml.io.bids import checked_labels

    wanted = {f"sub-{label}" for label in checked_labels(participants)}
    missing = sorted(wanted - set(index["participant_id"]))
    if missing:
        raise InputError(f"participants not in the derivatives: {missing}")
    return index[index["participant_id"].isin(wanted)]


def _explain(models, xs, targets, method, target_layer, classes, feature_mask=None):
    """Maps and probabilities averaged over models (``xs``: each model's inputs), for given target indices."""
    maps, probs = 0.0, 0.0
    for model, x in zip(models, xs):
        ex = Explainer(
            model,
            method,
            target_layer=target_layer,
            classes=classes,
            batch_size=8,
            feature_mask=feature_mask if method == "region_occlusion" else None,
        )
        maps = maps + ex.attribute(x, target=targets)
        probs = probs + ex.probabilities_
    return maps / len(models), probs / len(models)


def _predict(models, xs):
    import torch

    with torch.no_grad():
        probs = 0.0
        for model, x in zip(models, xs):
            was = model.training
            model.eval()
            device = next(model.parameters()).device
            xt = torch.as_tensor(x if x.ndim == 5 else x[:, None], device=device)  # (N, C, X, Y, Z)
            probs = probs + torch.softmax(model(xt), 1).cpu().numpy()
            model.train(was)
    return probs / len(models)


def _as_tensor(x, model):
    """``x`` as ``(N, C, X, Y, Z)`` on the model's device (a stacked cache already has the channel axis)."""
    import torch

    return torch.as_tensor(x if x.ndim == 5 else x[:, None], device=next(model.parameters()).device)


def method_target_layer(method, model_name, model, x):
    """The layer :func:`attribute_run` gives ``method``: HiResCAM's own default (the last layer at most
    :data:`~neuroml.attribution.methods.HIRESCAM_MAX_STRIDE` times coarser than ``x``, one scan as
    ``(N, [C,] X, Y, Z)``), else the network's Grad-CAM layer (None if unknown: the Explainer guesses)."""
    if method == "hirescam" and x is not None and len(x):
        from neuroml.attribution.methods import HIRESCAM_MAX_STRIDE, guess_target_layer

        return guess_target_layer(model, _as_tensor(x, model), HIRESCAM_MAX_STRIDE)
    try:
        from neuroml.models import default_target_layer

        return default_target_layer(model_name)
    except (ImportError, ConfigError, KeyError, TypeError):
        return None


#: Settings of :class:`Explainer` each method's maps depend on (their values are part of a call's identity).
_METHOD_SETTINGS = {
    "integrated_gradients": ("n_steps", "baseline"),
    "smoothgrad": ("nt_samples", "noise_level", "seed"),
    "occlusion": ("n_blocks", "baseline"),
    "region_occlusion": ("baseline",),
}


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _identity(method, target, atlas, atlas_labels, target_layer, run_dir, folds, cfg):
    """What every map of a call depends on besides the subject's own input (``attribution.json`` ``identity``)."""
    ex = Explainer(None, method)
    run_dir = Path(run_dir)
    ident = {
        "method": method,
        "target": target,
        "target_layer": target_layer if method in ("gradcam", "gradcampp", "hirescam") else None,
        "settings": {k: getattr(ex, k) for k in _METHOD_SETTINGS.get(method, ())},
        "models": {str(f): sha256_file(run_dir / f"fold-{f}" / "model.pt") for f in folds},
        "inputs": cfg.get("inputs"),
    }
    if method == "region_occlusion":  # its atlas's regions are what is hidden
        ident["atlas"] = atlas
        ident["atlas_labels_sha256"] = hashlib.sha256(
            np.ascontiguousarray(atlas_labels).tobytes()
        ).hexdigest()
    if cfg.get("harmonized_inputs"):
        from neuroml.trust.harmonize import FOLD_FILE

        ident["harmonized_inputs"] = cfg["harmonized_inputs"]
        ident["combat"] = {
            str(f): sha256_file(run_dir / f"fold-{f}" / FOLD_FILE)
            if (run_dir / f"fold-{f}" / FOLD_FILE).is_file()
            else None
            for f in folds
        }
    return ident


def _top_regions(table, n=5):
    return [
        {"region": r, "hemisphere": h, "mean_attribution": round(float(m), 8)}
        for r, h, m in zip(
            table["region"][:n], table["hemisphere"][:n], table["mean_attribution"][:n]
        )
    ]


def attribute_run(
    run_dir,
    deriv_dir,
    method="region_occlusion",
    atlas="aal",
    target="predicted",
    participant_labels=None,
    force=False,
    device="cpu",
    show_progress=True,
    batch_size=4,
    sanity=True,
    n_sanity=8,
    seed=0,
    participants=None,
    out_dir=None,
):
    """Attribution maps, group maps and region tables for the subjects of a run.

    Parameters
    ----------
    run_dir : str or Path
        Output folder of ``neuroml train``.
    deriv_dir : str or Path
        Output folder of ``neuroml preprocess`` (its tensor cache is built if needed).
    method : str, default="region_occlusion"
        One of :data:`~neuroml.attribution.methods.ALL_METHODS`. The default hides each
        region of ``atlas`` in turn (one batched forward pass per region): the only method
        that met the ground-truth, randomization and deletion targets on the synthetic
        benchmark (``scripts/bench_attribution.py``); voxel methods give finer maps.
    atlas : str, default="aal"
        One of :data:`~neuroml.io.atlases.ATLASES`.
    target : str, default="predicted"
        ``"predicted"``, ``"true"`` (the subject's label) or a class name.
    participant_labels : list of str, optional
        Participant labels (``sub-01`` or ``01``); default every scan of the derivatives. The
        other subjects already in the output folder (for the same ``deriv_dir``) are kept while
        their maps are valid, and the group maps, tables and checks cover them all.
    force : bool, default=False
        Explain subjects every usable model was trained on (flagged in the output).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda[:N]"`` or ``"auto"`` (CUDA when available).
    show_progress : bool, default=True
    batch_size : int, default=4
        Subjects per batch.
    sanity : bool, default=True
        Compute the trust checks (:mod:`neuroml.attribution.sanity`) into ``sanity.json``.
    n_sanity : int, default=8
        Subjects (out-of-fold, labelled, classes in turn) for the model-randomization and
        deletion checks, which explain them again.
    seed : int, default=0
        Seeds the choice of those subjects, the randomized weights and the random orders.
    participants : str or Path, optional
        For a run trained with ``harmonize="combat"``: ``participants.tsv`` holding the subjects'
        site (and age, sex); default the raw dataset's of ``deriv_dir``. Each fold model
        explains the scans harmonized with its fold's saved ComBat (what it was trained and
        tested on); a site its training participants did not hold is left unharmonized for
        it, with a warning. Must be an existing file when given.
    out_dir : str or Path, optional
        Folder for the whole result set (maps, group maps, tables, ``sanity.json``,
        ``attribution.json``); default ``RUN/attribution/<method>``, which holds the
        attribution of one derivatives folder (another one is refused: give it its own
        ``out_dir``). ``neuroml report`` reads ``RUN/attribution/*`` only.

    Returns
    -------
    Path
        ``<out_dir>/attribution.json`` (default ``RUN/attribution/<method>/attribution.json``).

    Raises
    ------
    LeakageError
        If a subject was used to train every model that would explain it and not ``force``.
    InputError
        If the derivatives' grid differs from the run's, a participant is unknown, the
        ``participants`` file does not exist, or the output folder holds the attribution of
        other derivatives.
    ConfigError
        For an unknown method, atlas, target or device (or CUDA asked for and absent).
    """
    from tqdm.auto import tqdm

    from neuroml._utils.device import resolve_device
    from neuroml.data.stack import open_inputs
    from neuroml.runs.folder import load_run

    method = look_up_option("method", method, ALL_METHODS)
    atlas = load_atlas(
        atlas
    ).name  # checks the name ("did you mean"); atlas_on_grid reads it again from the cache
    if isinstance(participants, (list, tuple, set)):
        raise ConfigError(
            "participants= is the participants.tsv path (site, age, sex of new subjects); "
            "participant labels go in participant_labels="
        )
    if participants is not None and not Path(participants).is_file():
        raise InputError("participants file not found", participants)
    device = resolve_device(device)
    out_dir = Path(run_dir) / "attribution" / method if out_dir is None else Path(out_dir)
    json_path = out_dir / "attribution.json"
    deriv_key = str(Path(deriv_dir).resolve())
    earlier_doc = _read_doc(json_path)
    if earlier_doc.get("method") not in (None, method):
        raise InputError(
            f"holds the {earlier_doc.get('method')} attribution, not {method}: one method per "
            "folder (give another --out DIR)",
            out_dir,
        )
    foreign = _foreign_files(
        out_dir, method
    )  # unlisted files are removed at the end: only ever ours
    if foreign:
        raise InputError(
            f"holds files attribute did not write ({', '.join(foreign[:3])}): give attribute an empty "
            "or new folder",
            out_dir,
        )
    recorded = earlier_doc.get("deriv_dir")
    if recorded is not None and str(recorded) != deriv_key:
        raise InputError(
            f"holds the attribution of the derivatives {recorded}, not of {deriv_key}: "
            "pass out_dir=... (--out DIR) to write the attribution of these derivatives elsewhere "
            "(or remove that folder first)",
            json_path,
        )
    run = load_run(run_dir)
    classes = [str(c) for c in run.classes]
    if target not in ("predicted", "true"):
        target = look_up_option("target", target, ["predicted", "true", *classes])
    cfg = run.config
    cache = open_inputs(deriv_dir, resolution=cfg.get("resolution"), inputs=cfg.get("inputs"))
    _check_grid(cache, cfg, deriv_dir)
    rows = _select(cache.index, participant_labels)
    fold_models = dict(run.fold_models(device))
    folds = list(fold_models)
    used_by = _used_by(run, folds)
    from neuroml.runs.sources import training_twins

    twins = training_twins(
        run, cache.deriv_dir, cache.index["participant_id"].tolist(), cache.index["path"].tolist()
    )
    for pid, twin in sorted(
        twins.items()
    ):  # the same raw scan under another ID: its folds are the twin's
        log.warning(
            "%s: its scan is the raw scan %s was trained with; explained as %s (by a fold model that did "
            "not train on it)",
            pid,
            twin,
            twin,
        )
    plan = {
        r.row: _folds_for(twins.get(r.participant_id, r.participant_id), run, folds, used_by, force)
        for r in rows.itertuples()
    }
    labels = _true_labels(run, run_dir, deriv_dir)
    if target == "true":
        unlabeled = sorted(
            {
                r.participant_id
                for r in rows.itertuples()
                if labels.get(r.participant_id) not in classes
            }
        )
        if unlabeled:
            raise InputError(
                f"target='true' but these participants have no class label: {unlabeled[:10]}"
            )
    target_layer = method_target_layer(
        method,
        cfg.get("model"),
        next(iter(fold_models.values())),
        cache.load([rows["row"].iloc[0]]) if len(rows) else None,
    )

    for folder in (out_dir, out_dir / "group"):
        remove_stale_temporaries(folder)  # left by a killed run
    atlas_labels, atlas_names = atlas_on_grid(atlas, cache.affine, cache.shape)
    call_id = uuid.uuid4().hex
    identity = _identity(method, target, atlas, atlas_labels, target_layer, run_dir, folds, cfg)
    identity_sha256 = _digest(identity)
    previous = _previous_entries(earlier_doc, identity_sha256) if recorded is not None else {}
    earlier = _earlier_rows(
        previous,
        rows,
        cache.index,
        method,
        out_dir,
        run,
        folds,
        used_by,
        force,
        target,
        labels,
        twins,
    )
    for row, how in earlier.items():
        plan[row] = how
    harmonized = None
    if cfg.get("harmonized_inputs"):
        from neuroml.trust.harmonize import InputHarmonization

        try:
            harmonized = InputHarmonization(
                run,
                rows["participant_id"].tolist()
                + [r.participant_id for r in cache.index.itertuples() if r.row in earlier],
                deriv_dir,
                participants,
            )
        except InputError:
            if not earlier:
                raise
            harmonized = InputHarmonization(
                run, rows["participant_id"].tolist(), deriv_dir, participants
            )
            log.warning(
                "attribution %s: the earlier subjects of %s cannot be harmonized any more; dropped",
                method,
                out_dir,
            )
            earlier = {}
    sha = dict(zip(cache.index["row"], cache.index["sha256"]))

    def input_key(r):
        """The subject's input: its volume's checksum (and, harmonized, its site and covariates)."""
        if harmonized is None:
            return str(sha[r.row])
        cov = harmonized.cov.get(r.participant_id)
        return _digest(
            [
                str(sha[r.row]),
                harmonized.site.get(r.participant_id),
                None if cov is None else np.asarray(cov).tolist(),
            ]
        )

    earlier = {
        r.row: earlier[r.row]
        for r in cache.index.itertuples()  # kept while the input is the one explained
        if r.row in earlier
        and previous[map_name(r.participant_id, r.session, r.run, method)].get("input_sha256")
        == input_key(r)
    }
    if earlier:
        log.info("attribution %s: keeping %d earlier scan(s) of %s", method, len(earlier), out_dir)
    rows = cache.index[cache.index["row"].isin(set(rows["row"]) | set(earlier))]

    def inputs_for(fold, x, pids):
        """What fold ``fold``'s model was trained on: ``x`` itself, or harmonized with the fold's ComBat."""
        return x if harmonized is None else harmonized.apply(fold, x, np.arange(len(x)), pids)

    voxel_ml = abs(float(np.linalg.det(cache.affine[:3, :3]))) / 1000.0

    feature_mask = atlas_labels if method == "region_occlusion" else None
    entries, group_maps, group_owner, pool, map_sha = {}, [], [], [], {}
    batches = {}
    for r in rows.itertuples():
        batches.setdefault(plan[r.row], []).append(r)
    todo = [
        (fk, chunk[i : i + batch_size])
        for fk, chunk in batches.items()
        for i in range(0, len(chunk), batch_size)
    ]
    t_start = time.perf_counter()
    bar = tqdm(
        total=sum(len(chunk) for _, chunk in todo),
        desc=f"attribution {method}",
        unit="scan",
        disable=not show_progress,
    )
    for fk, chunk in todo:
        models = [fold_models[f] for f in fk[0]]
        x = cache.load([r.row for r in chunk])
        xs = [inputs_for(f, x, [r.participant_id for r in chunk]) for f in fk[0]]
        names = [map_name(r.participant_id, r.session, r.run, method) for r in chunk]
        t0 = time.perf_counter()
        probs = _predict(models, xs)
        true = np.array(
            [
                classes.index(labels[r.participant_id])
                if labels.get(r.participant_id) in classes
                else -1
                for r in chunk
            ]
        )
        tidx = {"predicted": probs.argmax(1), "true": true}.get(target)
        if tidx is None:
            tidx = np.full(len(chunk), classes.index(target))
        keys = [input_key(r) for r in chunk]
        fold_ids = _fold_ids(fk[0])
        redo = [
            i
            for i, n in enumerate(names)
            if not (
                n in previous
                and (out_dir / n).is_file()
                and previous[n].get("input_sha256") == keys[i]
                and previous[n].get("folds") == fold_ids
                and previous[n].get("target_label") == classes[tidx[i]]
                # not replaced since (the earlier call's other scans were checked by _earlier_rows)
                and (
                    chunk[i].row in earlier
                    or previous[n].get("map_sha256") == sha256_file(out_dir / n)
                )
            )
        ]
        maps, true_maps = _batch_maps(
            models,
            xs,
            tidx,
            true,
            redo,
            [out_dir / n for n in names],
            method,
            target_layer,
            classes,
            feature_mask,
        )
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, r in enumerate(chunk):
            stem = names[i].replace(
                "_map.nii.gz", "_atlas-" + "".join(ch for ch in atlas if ch.isalnum()) + "_regions"
            )
            if i in redo:
                save_nifti_atomic(_img(maps[i], cache.affine), out_dir / names[i])
                map_sha[names[i]] = sha256_file(out_dir / names[i])
                _remove_other_tables(out_dir, names[i], stem)  # they describe the map just replaced
            table = region_table(maps[i], atlas_labels, atlas_names, voxel_ml)
            if i in redo or not (out_dir / f"{stem}.tsv").is_file():
                write_region_table(
                    table,
                    out_dir / f"{stem}.tsv",
                    out_dir / f"{stem}.json",
                    {
                        "participant_id": r.participant_id,
                        "method": method,
                        "atlas": atlas,
                        "target_label": classes[tidx[i]],
                    },
                )
            old = previous.get(names[i], {})
            entries[names[i]] = {
                "participant_id": r.participant_id,
                "session": r.session if _given(r.session) else None,
                "run": r.run if _given(r.run) else None,
                "map": names[i],
                "regions_tsv": f"{stem}.tsv",
                "regions_json": f"{stem}.json",
                "folds": fold_ids,
                "input_sha256": keys[i],
                "map_sha256": map_sha.get(names[i]) or previous[names[i]]["map_sha256"],
                "model_use": fk[1],
                "true_label": classes[true[i]] if true[i] >= 0 else None,
                "target_label": classes[tidx[i]],
                "predicted_label": classes[int(probs[i].argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs[i])},
                "top_regions": _top_regions(table),
                "seconds": old.get("seconds")
                if i not in redo and old.get("seconds") is not None
                else round(seconds, 3),
                "skipped": i not in redo,
            }
            if true[i] >= 0:
                if len(fk[0]) == 1:
                    pool.append(
                        {
                            "row": r.row,
                            "fold": fk[0][0],
                            "target": int(true[i]),
                            "map": len(group_maps),
                            "participant_id": r.participant_id,
                        }
                    )
                group_maps.append(true_maps[i])
                group_owner.append((r.participant_id, classes[true[i]]))
        bar.update(len(chunk))  # scans, as the summary line counts them (not batches)
    bar.close()
    total = time.perf_counter() - t_start

    group_info, groups, tables = _write_groups(
        group_maps,
        group_owner,
        classes,
        cache.affine,
        out_dir,
        atlas,
        atlas_labels,
        atlas_names,
        voxel_ml,
        method,
    )
    trust = None
    sanity_path, superseded = out_dir / "sanity.json", out_dir / "sanity_superseded.json"
    if sanity and group_maps:
        t0 = time.perf_counter()
        trust = _trust_checks(
            method,
            target_layer,
            classes,
            cache,
            cfg,
            deriv_dir,
            fold_models,
            pool,
            group_maps,
            groups,
            tables,
            atlas_labels,
            feature_mask,
            n_sanity,
            seed,
            inputs_for,
        )
        trust["seconds"] = round(time.perf_counter() - t0, 3)
        trust.update(
            call_id=call_id, identity_sha256=identity_sha256, attribution="attribution.json"
        )
        write_json_atomic(sanity_path, trust)
        superseded.unlink(missing_ok=True)
        sanity_doc = {
            "run": True,
            "reason": None,
            "file": "sanity.json",
            "call_id": call_id,
            "superseded": None,
        }
    else:
        reason = (
            "sanity=False (--no-sanity)"
            if not sanity
            else "no explained scan has a class label (the checks explain each subject's true class)"
        )
        moved = None
        if (
            sanity_path.is_file()
        ):  # an earlier call's checks: never left where readers take them as this call's
            os.replace(sanity_path, superseded)
            moved = superseded.name
        elif superseded.is_file():
            moved = superseded.name
        sanity_doc = {
            "run": False,
            "reason": reason,
            "file": None,
            "call_id": None,
            "superseded": moved,
        }
        log.info(
            "attribution %s: trust checks not run (%s)%s",
            method,
            reason,
            f"; the earlier sanity.json is now {moved}" if moved else "",
        )
    doc = {
        "call_id": call_id,
        "identity": identity,
        "identity_sha256": identity_sha256,
        "method": method,
        "target": target,
        "atlas": atlas,
        "target_layer": target_layer,
        "classes": classes,
        "grid": {"affine": cache.affine.tolist(), "shape": list(cache.shape)},
        "deriv_dir": deriv_key,
        "n_subjects": len(entries),
        "subjects": [entries[k] for k in sorted(entries)],
        "group": group_info,
        "timing": {
            "total_seconds": round(total, 3),
            "seconds_per_subject": {n: entries[n]["seconds"] for n in sorted(entries)},
        },
        "sanity": sanity_doc,
        "trust": _trust_summary(trust),
        **(
            {
                "harmonized_inputs": {
                    "method": cfg["harmonized_inputs"].get("method"),
                    "unseen_sites": {
                        str(k): h.unseen_sites_
                        for k, h in harmonized._folds.items()
                        if h.unseen_sites_
                    },
                }
            }
            if harmonized is not None
            else {}
        ),
        "versions": package_versions(),
    }
    write_json_atomic(json_path, doc)
    _remove_unlisted(
        out_dir, doc
    )  # after the new list: a killed call leaves extra files, never missing ones
    log.info("attribution %s: %d scans, %.1f s; %s", method, len(entries), total, out_dir)
    return json_path


def _read_doc(json_path):
    """An earlier ``attribution.json`` as a dict ({} when there is none or it is unreadable)."""
    if not json_path.is_file():
        return {}
    try:
        doc = read_json(json_path)
    except InputError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _previous_entries(doc, identity_sha256):
    """Subjects of an earlier call with the same identity (method, target, settings, models...), by map name."""
    if (
        doc.get("identity_sha256") != identity_sha256
    ):  # also an older file without one: maps recomputed
        return {}
    return {s["map"]: s for s in doc.get("subjects", []) if isinstance(s, dict) and "map" in s}


def _fold_ids(folds):
    """Fold keys as ``attribution.json`` records them (``folds`` of each subject): ints and strings
    kept, anything else as its string."""
    return [f if isinstance(f, (int, str)) else str(f) for f in folds]


def _earlier_rows(
    previous, rows, index, method, out_dir, run, folds, used_by, force, target, labels, twins=None
):
    """``{row: (folds, how)}`` of the earlier call's scans outside ``rows`` that are still valid:
    in the derivatives, explained by the same folds, the map file the one that call wrote
    (``map_sha256``) and, for ``target="true"``, the same label (the input is checked later)."""
    wanted = set(rows["row"])
    out = {}
    for r in index.itertuples():
        name = map_name(r.participant_id, r.session, r.run, method)
        e = previous.get(name)
        if r.row in wanted or e is None or e.get("participant_id") != r.participant_id:
            continue
        try:  # a subject explained with force=True stays (flagged "trained-on")
            how = _folds_for(
                (twins or {}).get(r.participant_id, r.participant_id),
                run,
                folds,
                used_by,
                force or e.get("model_use") == "trained-on",
                quiet=True,
            )
        except LeakageError:
            continue
        if _fold_ids(how[0]) != e.get("folds"):
            continue
        if target == "true" and labels.get(r.participant_id) != e.get("target_label"):
            continue
        path = out_dir / name
        if path.is_file() and e.get("map_sha256") == sha256_file(path):
            out[r.row] = how
    return out


def _own_patterns(method):
    """Glob patterns of the files a call of ``method`` writes in its folder, besides ``attribution.json``."""
    desc = map_name("sub-x", method=method)[
        len("sub-x_") : -len("_map.nii.gz")
    ]  # desc-<method entity>
    return (
        f"*_{desc}_map.nii.gz",
        f"*_{desc}_atlas-*_regions.tsv",
        f"*_{desc}_atlas-*_regions.json",
        "regions_atlas-*.tsv",
        "regions_atlas-*.json",
        "sanity.json",
        "sanity_superseded.json",
        "group/*_map.nii.gz",
    )


def _foreign_files(out_dir, method):
    """Files of ``out_dir`` (relative names) that a call of ``method`` would not have written."""
    if not out_dir.is_dir():
        return []
    ours = {p for pattern in _own_patterns(method) for p in out_dir.glob(pattern)}
    return sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file()
        and p not in ours
        and p.name != "attribution.json"
        and not p.name.startswith(".")
    )


def _remove_unlisted(out_dir, doc):
    """Delete the attribution files of ``out_dir`` that ``doc`` (its ``attribution.json``) does not list."""
    keep = {"attribution.json"}
    for s in doc["subjects"]:
        keep.update((s["map"], s["regions_tsv"], s["regions_json"]))
    for g in doc["group"].values():
        keep.update(
            v
            for k, v in g.items()
            if k in ("mean_map", "tstat_map", "regions_tsv", "regions_json") and v
        )
    keep.update(v for v in (doc["sanity"]["file"], doc["sanity"]["superseded"]) if v)
    for pattern in _own_patterns(doc["method"]):
        for path in out_dir.glob(pattern):
            if path.is_file() and path.relative_to(out_dir).as_posix() not in keep:
                path.unlink(missing_ok=True)
                log.info("removed %s (no longer listed in attribution.json)", path)


def _remove_other_tables(out_dir, name, keep_stem):
    """Delete a subject's region tables of other atlases (left by an earlier call; they describe an older map)."""
    prefix = name.replace("_map.nii.gz", "_atlas-")
    for path in out_dir.glob(f"{prefix}*_regions.*"):
        if path.name.split(".")[0] != keep_stem and path.suffix in (".tsv", ".json"):
            path.unlink(missing_ok=True)


def _batch_maps(
    models, xs, targets, true, redo, paths, method, target_layer, classes, feature_mask=None
):
    """Maps of one batch for the requested targets (new ones for ``redo``, the others read
    back), and the maps explaining each subject's true class (for the group maps).
    ``xs``: the batch as each model takes it."""
    from neuroml.io.image import load_data

    n = len(xs[0])
    maps = np.zeros((n, *xs[0].shape[-3:]), dtype=np.float32)
    if redo:
        maps[redo] = _explain(
            models,
            [x[redo] for x in xs],
            targets[redo],
            method,
            target_layer,
            classes,
            feature_mask,
        )[0]
    for i in sorted(set(range(n)) - set(redo)):
        maps[i] = load_data(paths[i], allow_constant=True)
    true_maps = maps.copy()
    extra = [i for i in range(n) if true[i] >= 0 and true[i] != targets[i]]
    if extra:
        true_maps[extra] = _explain(
            models, [x[extra] for x in xs], true[extra], method, target_layer, classes, feature_mask
        )[0]
    return maps, true_maps


def _write_groups(
    maps, owners, classes, affine, out_dir, atlas, atlas_labels, atlas_names, voxel_ml, method
):
    """Average each participant's scans, then class group maps and their region tables."""
    if not maps:
        return {}, {}, {}
    keys = list(dict.fromkeys(owners))
    pos = {k: i for i, k in enumerate(keys)}
    sums = np.zeros((len(keys), *maps[0].shape), dtype=np.float32)
    counts = np.zeros(len(keys))
    for m, o in zip(maps, owners):
        sums[pos[o]] += m
        counts[pos[o]] += 1
    per_participant = sums / counts[:, None, None, None]
    groups = class_group_maps(per_participant, [k[1] for k in keys], classes)
    written = write_group_maps(groups, affine, out_dir / "group", classes)
    atlas_key = "".join(ch for ch in atlas if ch.isalnum())
    info, tables = {}, {}
    for c, g in groups.items():
        stem = f"regions_atlas-{atlas_key}_class-{class_entity(c, classes)}"
        table = tables[c] = region_table(g["mean"], atlas_labels, atlas_names, voxel_ml)
        meta = {
            "method": method,
            "atlas": atlas,
            "class": c,
            "n_subjects": g["n"],
            "map": f"group/{written[c]['mean'].name}",
        }
        write_region_table(table, out_dir / f"{stem}.tsv", out_dir / f"{stem}.json", meta)
        info[c] = {
            "n": g["n"],
            "participants": sorted(k[0] for k in keys if k[1] == c),
            "mean_map": f"group/{written[c]['mean'].name}",
            "tstat_map": f"group/{written[c]['tstat'].name}" if written[c]["tstat"] else None,
            "regions_tsv": f"{stem}.tsv",
            "regions_json": f"{stem}.json",
        }
    return info, groups, tables


def _brain(cache, cfg, atlas_labels):
    """The template brain mask on the cache grid, or the atlas's extent when the grid is not a standard one."""
    from neuroml.io.templates import brain_mask_on_grid

    try:
        img = brain_mask_on_grid(float(cfg.get("resolution_mm") or abs(cache.affine[0, 0])))
        if img.shape == cache.shape and np.allclose(img.affine, cache.affine, atol=1e-3):
            return np.asarray(img.dataobj) > 0
    except (TypeError, ValueError, InputError, ConfigError):
        pass
    return atlas_labels > 0


def _pick(pool, n, seed):
    """Up to ``n`` pool entries, classes in turn, seeded order within each class."""
    rng = np.random.default_rng(seed)
    by_class = {}
    for e in pool:
        by_class.setdefault(e["target"], []).append(e)
    queues = [list(rng.permutation(len(v))) for v in by_class.values()]
    lists = list(by_class.values())
    out = []
    while len(out) < n and any(queues):
        for q, lst in zip(queues, lists):
            if q and len(out) < n:
                out.append(lst[q.pop(0)])
    return out


def _trust_checks(
    method,
    target_layer,
    classes,
    cache,
    cfg,
    deriv_dir,
    fold_models,
    pool,
    group_maps,
    groups,
    tables,
    atlas_labels,
    feature_mask,
    n_sanity,
    seed,
    inputs_for=None,
):
    """The four trust checks of :mod:`neuroml.attribution.sanity` for one method (``sanity.json``)."""
    brain = _brain(cache, cfg, atlas_labels)
    doc = {
        "method": method,
        "target": "true class of each subject",
        "n_subjects_pool": len(pool),
        "thresholds": {
            "randomization_rho": checks.RANDOMIZATION_RHO,
            "stability_rho": checks.STABILITY_RHO,
            "stability_overlap_p": checks.STABILITY_OVERLAP_P,
            "mass_enrichment": checks.MASS_ENRICHMENT,
            "top_k": checks.TOP_K,
        },
    }

    def explain(model, x, targets):
        return Explainer(
            model,
            method,
            target_layer=target_layer,
            classes=classes,
            batch_size=8,
            feature_mask=feature_mask,
        ).attribute(x, target=targets)

    chosen = _pick(pool, int(n_sanity), seed)
    rand, dele = [], []
    for fold in dict.fromkeys(e["fold"] for e in chosen):
        part = [e for e in chosen if e["fold"] == fold]
        x = cache.load([e["row"] for e in part])
        if inputs_for is not None:
            x = inputs_for(fold, x, [e["participant_id"] for e in part])
        maps = np.stack([group_maps[e["map"]] for e in part])
        targets = np.array([e["target"] for e in part])
        rand.append(
            checks.model_randomization(
                explain, fold_models[fold], x, maps, targets, brain, seed=seed
            )
        )
        dele.append(
            checks.deletion_curve(fold_models[fold], x, maps, targets, atlas_labels, seed=seed)
        )
    doc["subjects"] = [e["participant_id"] for e in chosen]
    if rand:
        rho = [r for d in rand for r in d["rho"]]
        doc["randomization"] = {
            **{k: v for k, v in rand[0].items() if k != "note"},
            "rho": rho,
            **checks.randomization_summary(rho),
        }  # over every fold's subjects
        w = np.array([len(d["auc_per_subject"]) for d in dele], dtype=float)
        curves = {
            k: np.round(np.average([d[k] for d in dele], axis=0, weights=w), 4).tolist()
            for k in ("fraction_removed", "probability", "probability_random")
        }
        auc = [a for d in dele for a in d["auc_per_subject"]]
        auc_r = [a for d in dele for a in d["auc_random_per_subject"]]
        doc["deletion"] = {
            **dele[0],
            **curves,
            "auc_per_subject": auc,
            "auc_random_per_subject": auc_r,
            "auc": round(float(np.mean(auc)), 4),
            "auc_random": round(float(np.mean(auc_r)), 4),
            "passed": bool(np.mean(auc) < np.mean(auc_r)),
        }
    else:
        doc["randomization"] = doc["deletion"] = None

    ids = np.array(sorted(set(np.unique(atlas_labels).tolist()) - {0}), dtype=np.int64)
    stability = {}
    for c in range(len(classes)):
        by_fold = {}
        for e in pool:
            if e["target"] == c:
                by_fold.setdefault(e["fold"], []).append(group_maps[e["map"]])
        scores = {
            f: checks.region_scores(np.mean(m, 0)[None], atlas_labels, ids)[0]
            for f, m in by_fold.items()
        }
        if len(scores) >= 2:
            stability[classes[c]] = checks.fold_stability(scores)
    doc["stability"] = stability or None

    truth = checks.planted_ground_truth(deriv_dir, cache.affine, cache.shape)
    gt = {}
    for c, info in (truth or {}).items():
        if c not in groups:
            continue
        entry = checks.ground_truth_scores(
            groups[c]["mean"], info["mask"], brain, tables.get(c), info["regions"]
        )
        members = [group_maps[e["map"]] for e in pool if classes[e["target"]] == c]
        per = [checks.ground_truth_scores(m, info["mask"], brain) for m in members]
        entry["per_subject_median"] = (
            {
                k: float(np.median([p[k] for p in per if p[k] is not None]))
                for k in ("mass_accuracy", "mass_enrichment", "roc_auc")
            }
            if per
            else None
        )
        entry["planted_regions"] = info["regions"]
        gt[c] = entry
    doc["ground_truth"] = gt or None
    return doc


def _trust_summary(trust):
    """The pass/fail lines of ``sanity.json`` kept in ``attribution.json``."""
    if not trust:
        return None
    out = {"file": "sanity.json", "call_id": trust.get("call_id")}
    if trust.get("randomization"):
        out["randomization"] = {k: trust["randomization"][k] for k in ("median_abs_rho", "passed")}
    if trust.get("deletion"):
        out["deletion"] = {k: trust["deletion"][k] for k in ("auc", "auc_random", "passed")}
    if trust.get("stability"):
        out["stability"] = {
            c: {k: v.get(k) for k in ("median_rho", "median_top_overlap", "passed")}
            for c, v in trust["stability"].items()
        }
    if trust.get("ground_truth"):
        out["ground_truth"] = {
            c: {k: v.get(k) for k in ("mass_enrichment", "roc_auc", "top_k_planted", "passed")}
            for c, v in trust["ground_truth"].items()
        }
    return out
