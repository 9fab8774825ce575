"""What a call of :func:`~neuroml.attribution.attribute_run` explains, and with which models.

:func:`open_sources` opens what a call reads (the run, its fold models, the derivatives'
tensor cache, the atlas on its grid); :func:`plan_attribution` decides which fold models
explain each scan (:class:`ModelUse`: out of fold, never a model that trained on it), what
every map depends on (the call's ``identity``) and which maps of the earlier call into the
same folder are still valid and kept (:class:`AttributionPlan`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from neuroml._utils.fileio import remove_stale_temporaries, sha256_file
from neuroml._utils.options import look_up_option
from neuroml._utils.types import PathLike
from neuroml.attribution.files import map_name
from neuroml.attribution.methods import Explainer
from neuroml.errors import ConfigError, InputError, LeakageError
from neuroml.io.atlases import atlas_on_grid

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from neuroml.data.cache import TensorCache
    from neuroml.runs.folder import Run
    from neuroml.trust.harmonize import InputHarmonization

__all__ = [
    "AttributionCall",
    "Sources",
    "ModelUse",
    "ModelInputs",
    "AttributionPlan",
    "open_sources",
    "plan_attribution",
    "method_target_layer",
]

log = logging.getLogger("neuroml")

#: Settings of :class:`Explainer` each method's maps depend on (their values are part of a call's identity).
_METHOD_SETTINGS = {
    "integrated_gradients": ("n_steps", "baseline"),
    "smoothgrad": ("nt_samples", "noise_level", "seed"),
    "occlusion": ("n_blocks", "baseline"),
    "region_occlusion": ("baseline",),
}


@dataclass
class AttributionCall:
    """The checked arguments of one :func:`~neuroml.attribution.attribute_run` call."""

    run_dir: PathLike
    deriv_dir: PathLike
    out_dir: Path
    method: str
    atlas: str
    target: str = "predicted"
    force: bool = False
    participants: PathLike | None = None

    @property
    def deriv_key(self) -> str:
        """The derivatives folder as ``attribution.json`` records it (``deriv_dir``)."""
        return str(Path(self.deriv_dir).resolve())


@dataclass
class Sources:
    """What a call reads: the run, its fold models, the derivatives' tensor cache and the atlas
    (``atlas_labels``, ``atlas_names``) on the cache's grid."""

    run: Run
    classes: list[str]
    cache: TensorCache
    fold_models: dict[Any, torch.nn.Module]
    atlas_labels: npt.NDArray[np.integer[Any]]
    atlas_names: dict[int, str]

    @property
    def cfg(self) -> dict[str, Any]:
        """The run's ``config.json``."""
        return self.run.config

    @property
    def folds(self) -> list[Any]:
        """The fold keys, in the run's order."""
        return list(self.fold_models)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel of the grid, in millilitres."""
        return abs(float(np.linalg.det(self.cache.affine[:3, :3]))) / 1000.0


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


def _select(index, participants):
    if participants is None:
        return index
    from neuroml.io.bids import checked_labels

    wanted = {f"sub-{label}" for label in checked_labels(participants)}
    missing = sorted(wanted - set(index["participant_id"]))
    if missing:
        raise InputError(f"participants not in the derivatives: {missing}")
    return index[index["participant_id"].isin(wanted)]


def open_sources(
    run_dir: PathLike,
    deriv_dir: PathLike,
    atlas: str,
    target: str,
    participant_labels: str | Iterable[str] | None,
    device: str | torch.device | None,
) -> tuple[Sources, str, pd.DataFrame]:
    """What a call reads, its checked ``target`` and the requested scans.

    Returns
    -------
    (Sources, str, DataFrame)
        The sources, ``target`` (a class name as the run spells it, or ``"predicted"`` or
        ``"true"``) and the rows of the cache's index for ``participant_labels`` (all by default).
    """
    from neuroml.data.stack import open_inputs
    from neuroml.runs.folder import load_run

    run = load_run(run_dir)
    classes = [str(c) for c in run.classes]
    if target not in ("predicted", "true"):
        target = look_up_option("target", target, ["predicted", "true", *classes])
    cfg = run.config
    cache = open_inputs(deriv_dir, resolution=cfg.get("resolution"), inputs=cfg.get("inputs"))
    _check_grid(cache, cfg, deriv_dir)
    rows = _select(cache.index, participant_labels)
    fold_models = dict(run.fold_models(device))
    atlas_labels, atlas_names = atlas_on_grid(atlas, cache.affine, cache.shape)
    return Sources(run, classes, cache, fold_models, atlas_labels, atlas_names), target, rows


@dataclass
class ModelUse:
    """Which fold models may explain a participant without leakage.

    Attributes
    ----------
    run : Run
    folds : list
        The fold keys.
    used_by : dict
        ``{fold: participants its model trained or validated on}``.
    twins : dict
        ``{participant: training participant}`` for scans that are a training scan's raw scan
        under another ID (explained as that participant).
    """

    run: Run
    folds: list[Any]
    used_by: dict[Any, set[str]]
    twins: dict[str, str]

    @classmethod
    def of(cls, run: Run, folds: Iterable[Any], cache: TensorCache) -> ModelUse:
        """The model use of ``run``'s ``folds`` for the scans of ``cache`` (warns of each twin)."""
        from neuroml.runs.sources import training_twins

        used_by: dict[Any, set[str]] = {f: set() for f in folds}
        for entry in run.splits:
            f = entry.get("fold")
            if f in used_by:
                used_by[f] = set(entry.get("train", [])) | set(entry.get("val", []))
        twins = training_twins(
            run,
            cache.deriv_dir,
            cache.index["participant_id"].tolist(),
            cache.index["path"].tolist(),
        )
        # the same raw scan under another ID: its folds are the twin's
        for pid, twin in sorted(twins.items()):
            log.warning(
                "%s: its scan is the raw scan %s was trained with; explained as %s (by a fold model "
                "that did not train on it)",
                pid,
                twin,
                twin,
            )
        return cls(run, list(folds), used_by, twins)

    def folds_for(self, pid: str, force: bool, quiet: bool = False) -> tuple[tuple[Any, ...], str]:
        """(folds to use, how) for a participant; raise LeakageError if all trained on it.

        ``how`` is ``"out-of-fold"`` (the fold that tested it), ``"not-in-run"`` (every fold),
        ``"unseen-folds"`` (the folds that did not train on it) or, with ``force``,
        ``"trained-on"`` (every fold, although each trained on it).
        """
        pid = self.twins.get(pid, pid)
        k = self.run.test_fold_of(pid)
        if k is not None:
            return (k,), "out-of-fold"
        clean = tuple(f for f in self.folds if pid not in self.used_by.get(f, set()))
        if clean:
            return clean, "not-in-run" if len(clean) == len(self.folds) else "unseen-folds"
        if not force:
            raise LeakageError(
                f"{pid} was used to train every fold model and is in no fold's test set; "
                "its maps would explain training data (pass force=True to do it anyway)"
            )
        if not quiet:
            log.warning("%s: every model was trained on it; explaining it anyway (force=True)", pid)
        return tuple(self.folds), "trained-on"


@dataclass
class ModelInputs:
    """What each fold model takes: the scans, or the scans harmonized with the fold's saved ComBat.

    Attributes
    ----------
    sha : dict
        ``{cache row: checksum of its volume}``.
    harmonized : InputHarmonization or None
        For a run trained on harmonized inputs.
    """

    sha: dict[int, str]
    harmonized: InputHarmonization | None = None

    def key(self, r: Any) -> str:
        """The subject's input: its volume's checksum (and, harmonized, its site and covariates)."""
        if self.harmonized is None:
            return str(self.sha[r.row])
        cov = self.harmonized.cov.get(r.participant_id)
        return _digest(
            [
                str(self.sha[r.row]),
                self.harmonized.site.get(r.participant_id),
                None if cov is None else np.asarray(cov).tolist(),
            ]
        )

    def for_fold(self, fold: Any, x: npt.NDArray[Any], pids: Sequence[str]) -> npt.NDArray[Any]:
        """What fold ``fold``'s model was trained on: ``x`` itself, or harmonized with the fold's ComBat."""
        if self.harmonized is None:
            return x
        return self.harmonized.apply(fold, x, np.arange(len(x)), pids)

    def unseen_sites(self) -> dict[str, Any]:
        """``{fold: sites its ComBat did not see}`` for the folds with any."""
        return {
            str(k): h.unseen_sites_
            for k, h in cast("InputHarmonization", self.harmonized)._folds.items()
            if h.unseen_sites_
        }


@dataclass
class AttributionPlan:
    """What a call computes, and what it keeps of the earlier call into its folder.

    Attributes
    ----------
    rows : DataFrame
        The scans the call lists (rows of the cache's index): the requested ones and the kept
        earlier ones, in the index's order.
    model_use : dict
        ``{row: (fold keys, how)}`` (see :meth:`ModelUse.folds_for`).
    labels : dict
        ``{participant_id: class label}``.
    target_layer : str or None
        The layer of the CAM methods.
    identity, identity_sha256 : dict, str
        What every map of the call depends on besides its subject's input, and its digest.
    previous : dict
        ``{map name: subject entry}`` of the earlier call with the same identity.
    earlier : dict
        ``{row: (fold keys, how)}`` of that call's scans outside the requested ones whose maps
        are still valid (kept as they are).
    inputs : ModelInputs
    call_id : str
    """

    rows: pd.DataFrame
    model_use: dict[Any, tuple[tuple[Any, ...], str]]
    labels: dict[str, str]
    target_layer: str | None
    identity: dict[str, Any]
    identity_sha256: str
    previous: dict[str, Any]
    earlier: dict[int, tuple[tuple[Any, ...], str]]
    inputs: ModelInputs
    call_id: str


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


def _check_labelled(rows, labels, classes):
    """Raise :class:`InputError` if a scan of ``rows`` has no class label (``target="true"``)."""
    unlabeled = sorted(
        {r.participant_id for r in rows.itertuples() if labels.get(r.participant_id) not in classes}
    )
    if unlabeled:
        raise InputError(
            f"target='true' but these participants have no class label: {unlabeled[:10]}"
        )


def _as_tensor(x, model):
    """``x`` as ``(N, C, X, Y, Z)`` on the model's device (a stacked cache already has the channel axis)."""
    import torch

    return torch.as_tensor(x if x.ndim == 5 else x[:, None], device=next(model.parameters()).device)


def method_target_layer(
    method: str, model_name: str | None, model: torch.nn.Module, x: npt.NDArray[Any] | None
) -> str | None:
    """The layer :func:`attribute_run` gives ``method``: HiResCAM's own default (the last layer at most
    :data:`~neuroml.attribution.methods.HIRESCAM_MAX_STRIDE` times coarser than ``x``, one scan as
    ``(N, [C,] X, Y, Z)``), else the network's Grad-CAM layer (None if unknown: the Explainer guesses)."""
    if method == "hirescam" and x is not None and len(x):
        from neuroml.attribution.methods import HIRESCAM_MAX_STRIDE, guess_target_layer

        return guess_target_layer(model, _as_tensor(x, model), HIRESCAM_MAX_STRIDE)
    try:
        from neuroml.models import default_target_layer

        return default_target_layer(cast(str, model_name))  # None: a ConfigError, caught
    except (ImportError, ConfigError, KeyError, TypeError):
        return None


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _identity(call, src, target_layer):
    """What every map of a call depends on besides the subject's own input (``attribution.json`` ``identity``)."""
    method, cfg, run_dir, folds = call.method, src.cfg, Path(call.run_dir), src.folds
    ex = Explainer(None, method)
    ident = {
        "method": method,
        "target": call.target,
        "target_layer": target_layer if method in ("gradcam", "gradcampp", "hirescam") else None,
        "settings": {k: getattr(ex, k) for k in _METHOD_SETTINGS.get(method, ())},
        "models": {str(f): sha256_file(run_dir / f"fold-{f}" / "model.pt") for f in folds},
        "inputs": cfg.get("inputs"),
    }
    if method == "region_occlusion":  # its atlas's regions are what is hidden
        ident["atlas"] = call.atlas
        ident["atlas_labels_sha256"] = hashlib.sha256(
            np.ascontiguousarray(src.atlas_labels).tobytes()
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


def _previous_entries(doc, identity_sha256):
    """Subjects of an earlier call with the same identity (method, target, settings, models...), by map name."""
    if doc.get("identity_sha256") != identity_sha256:
        return {}
    return {s["map"]: s for s in doc.get("subjects", []) if isinstance(s, dict) and "map" in s}


def _fold_ids(folds):
    """Fold keys as ``attribution.json`` records them (``folds`` of each subject): ints and strings
    kept, anything else as its string."""
    return [f if isinstance(f, (int, str)) else str(f) for f in folds]


def _earlier_rows(call, use, previous, rows, index, labels):
    """``{row: (folds, how)}`` of the earlier call's scans outside ``rows`` that are still valid:
    in the derivatives, explained by the same folds, the map file the one that call wrote
    (``map_sha256``) and, for ``target="true"``, the same label (the input is checked later)."""
    wanted = set(rows["row"])
    out = {}
    for r in index.itertuples():
        name = map_name(r.participant_id, r.session, r.run, call.method)
        e = previous.get(name)
        if r.row in wanted or e is None or e.get("participant_id") != r.participant_id:
            continue
        try:  # a subject explained with force=True stays (flagged "trained-on")
            how = use.folds_for(
                r.participant_id, call.force or e.get("model_use") == "trained-on", quiet=True
            )
        except LeakageError:
            continue
        if _fold_ids(how[0]) != e.get("folds"):
            continue
        if call.target == "true" and labels.get(r.participant_id) != e.get("target_label"):
            continue
        path = call.out_dir / name
        if path.is_file() and e.get("map_sha256") == sha256_file(path):
            out[r.row] = how
    return out


def _harmonization(call, src, rows, earlier):
    """The run's :class:`~neuroml.trust.harmonize.InputHarmonization` of the requested and the
    earlier scans (None for a run on raw inputs), and the earlier scans still kept: none when
    they cannot be harmonized any more."""
    if not src.cfg.get("harmonized_inputs"):
        return None, earlier
    from neuroml.trust.harmonize import InputHarmonization

    wanted = rows["participant_id"].tolist()
    kept = [r.participant_id for r in src.cache.index.itertuples() if r.row in earlier]
    try:
        return InputHarmonization(
            src.run, wanted + kept, call.deriv_dir, call.participants
        ), earlier
    except InputError:
        if not earlier:
            raise
    harmonized = InputHarmonization(src.run, wanted, call.deriv_dir, call.participants)
    log.warning(
        "attribution %s: the earlier subjects of %s cannot be harmonized any more; dropped",
        call.method,
        call.out_dir,
    )
    return harmonized, {}


def _same_inputs(earlier, previous, inputs, index, method):
    """The earlier scans kept while their input is the one explained (``input_sha256``)."""
    return {
        r.row: earlier[r.row]
        for r in index.itertuples()
        if r.row in earlier
        and previous[map_name(r.participant_id, r.session, r.run, method)].get("input_sha256")
        == inputs.key(r)
    }


def plan_attribution(
    call: AttributionCall, src: Sources, rows: pd.DataFrame, earlier_doc: Mapping[str, Any]
) -> AttributionPlan:
    """What ``call`` computes for the scans ``rows`` and keeps of ``earlier_doc`` (the folder's
    earlier ``attribution.json``, {} when none); removes temporaries a killed call left.

    Raises
    ------
    LeakageError
        If a scan's participant trained every fold model that could explain it and not ``force``.
    InputError
        If ``target="true"`` and a scan has no class label, or its inputs cannot be harmonized.
    """
    use = ModelUse.of(src.run, src.folds, src.cache)
    model_use = {
        r.row: use.folds_for(cast(str, r.participant_id), call.force) for r in rows.itertuples()
    }
    labels = _true_labels(src.run, call.run_dir, call.deriv_dir)
    if call.target == "true":
        _check_labelled(rows, labels, src.classes)
    target_layer = method_target_layer(
        call.method,
        src.cfg.get("model"),
        next(iter(src.fold_models.values())),
        src.cache.load([rows["row"].iloc[0]]) if len(rows) else None,
    )
    for folder in (call.out_dir, call.out_dir / "group"):
        remove_stale_temporaries(folder)  # left by a killed run
    identity = _identity(call, src, target_layer)
    identity_sha256 = _digest(identity)
    previous = _previous_entries(earlier_doc, identity_sha256)
    earlier = _earlier_rows(call, use, previous, rows, src.cache.index, labels)
    harmonized, earlier = _harmonization(call, src, rows, earlier)
    index = src.cache.index
    inputs = ModelInputs(dict(zip(index["row"], index["sha256"])), harmonized)
    earlier = _same_inputs(earlier, previous, inputs, index, call.method)
    if earlier:
        log.info(
            "attribution %s: keeping %d earlier scan(s) of %s",
            call.method,
            len(earlier),
            call.out_dir,
        )
    model_use.update(earlier)
    rows = index[index["row"].isin(set(rows["row"]) | set(earlier))]
    return AttributionPlan(
        rows,
        model_use,
        labels,
        target_layer,
        identity,
        identity_sha256,
        previous,
        earlier,
        inputs,
        uuid.uuid4().hex,
    )
