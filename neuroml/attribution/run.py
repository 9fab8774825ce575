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

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from neuroml._utils.fileio import write_json_atomic
from neuroml._utils.options import look_up_option
from neuroml._utils.types import PathLike
from neuroml.attribution.checks_run import CheckInputs, trust_checks
from neuroml.attribution.compute import ExplainerSpec, explain_scans
from neuroml.attribution.files import check_folder, map_name, remove_unlisted
from neuroml.attribution.methods import ALL_METHODS
from neuroml.attribution.plan import (
    AttributionCall,
    _check_grid,  # noqa: F401  (the grid check, for callers of run)
    method_target_layer,
    open_sources,
    plan_attribution,
)
from neuroml.attribution.writing import (
    attribution_doc,
    supersede_sanity,
    write_groups,
    write_sanity,
)
from neuroml.errors import ConfigError, InputError
from neuroml.io.atlases import load_atlas

if TYPE_CHECKING:
    import torch

__all__ = ["attribute_run", "map_name", "method_target_layer"]

log = logging.getLogger("neuroml")


def attribute_run(
    run_dir: PathLike,
    deriv_dir: PathLike,
    method: str = "region_occlusion",
    atlas: str = "aal",
    target: str = "predicted",
    participant_labels: str | Iterable[str] | None = None,
    force: bool = False,
    device: str | torch.device | None = "cpu",
    show_progress: bool = True,
    batch_size: int = 4,
    sanity: bool = True,
    n_sanity: int = 8,
    seed: int = 0,
    participants: PathLike | None = None,
    out_dir: PathLike | None = None,
) -> Path:
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
    from neuroml._utils.device import resolve_device

    method, atlas = _checked_arguments(method, atlas, participants)
    device = resolve_device(device)
    out_dir = Path(run_dir) / "attribution" / method if out_dir is None else Path(out_dir)
    earlier_doc = check_folder(out_dir, method, str(Path(deriv_dir).resolve()))
    src, target, rows = open_sources(run_dir, deriv_dir, atlas, target, participant_labels, device)
    call = AttributionCall(run_dir, deriv_dir, out_dir, method, atlas, target, force, participants)
    plan = plan_attribution(call, src, rows, earlier_doc)
    feature_mask = src.atlas_labels if method == "region_occlusion" else None
    spec = ExplainerSpec(method, plan.target_layer, src.classes, feature_mask)
    explained = explain_scans(call, src, plan, spec, batch_size, show_progress)
    group_info, groups, tables = write_groups(call, src, explained)
    trust = None
    if sanity and explained.maps:
        t0 = time.perf_counter()
        ci = CheckInputs(spec, src, plan.inputs, deriv_dir, explained, groups, tables)
        trust = trust_checks(ci, n_sanity, seed)
        trust["seconds"] = round(time.perf_counter() - t0, 3)
        sanity_doc = write_sanity(out_dir, trust, plan)
    else:
        sanity_doc = supersede_sanity(out_dir, method, sanity)
    doc = attribution_doc(call, src, plan, explained, group_info, sanity_doc, trust)
    json_path = out_dir / "attribution.json"
    write_json_atomic(json_path, doc)
    # after the new list: a killed call leaves extra files, never missing ones
    remove_unlisted(out_dir, doc)
    n, seconds = len(explained.entries), explained.seconds
    log.info("attribution %s: %d scans, %.1f s; %s", method, n, seconds, out_dir)
    return json_path


def _checked_arguments(method, atlas, participants):
    """``method`` and ``atlas`` as neuroml names them, after checking ``participants``."""
    method = look_up_option("method", method, ALL_METHODS)
    # checks the name ("did you mean"); atlas_on_grid reads it again from the cache
    atlas = load_atlas(atlas).name
    if isinstance(participants, (list, tuple, set)):
        raise ConfigError(
            "participants= is the participants.tsv path (site, age, sex of new subjects); "
            "participant labels go in participant_labels="
        )
    if participants is not None and not Path(participants).is_file():
        raise InputError("participants file not found", participants)
    return method, atlas
