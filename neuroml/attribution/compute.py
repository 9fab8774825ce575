"""The maps of a call of :func:`~neuroml.attribution.attribute_run`, batch by batch.

:func:`explain_scans` explains the scans of an
:class:`~neuroml.attribution.plan.AttributionPlan` in batches of scans sharing their fold
models, writes each new map and its region tables, reads back the maps it keeps, and
collects each labelled scan's map of its true class for the group maps and trust checks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from neuroml._utils.fileio import save_nifti_atomic, sha256_file
from neuroml.attribution.files import _given, map_name, region_stem, remove_other_tables
from neuroml.attribution.group import _img
from neuroml.attribution.methods import Explainer
from neuroml.attribution.plan import _fold_ids
from neuroml.attribution.regions import region_table, write_region_table

if TYPE_CHECKING:
    import torch

    from neuroml.attribution.plan import AttributionCall, AttributionPlan, Sources

__all__ = ["EXPLAINER_BATCH_SIZE", "ExplainerSpec", "Explained", "explain_scans"]

#: Inputs per forward (and backward) pass of the :class:`Explainer` of a call.
EXPLAINER_BATCH_SIZE = 8


@dataclass(frozen=True)
class ExplainerSpec:
    """How every map of a call is made: the method, its layer, the classes and, for
    ``region_occlusion``, the atlas labels of the regions it hides (``feature_mask``)."""

    method: str
    target_layer: str | None
    classes: list[str]
    feature_mask: npt.NDArray[np.integer[Any]] | None = None

    def explainer(self, model: torch.nn.Module) -> Explainer:
        """The :class:`Explainer` of ``model``."""
        return Explainer(
            model,
            self.method,
            target_layer=self.target_layer,
            classes=self.classes,
            batch_size=EXPLAINER_BATCH_SIZE,
            feature_mask=self.feature_mask if self.method == "region_occlusion" else None,
        )

    def attribute(
        self, model: torch.nn.Module, x: npt.NDArray[Any], targets: Sequence[int] | npt.NDArray[Any]
    ) -> npt.NDArray[np.float32]:
        """Maps of ``x`` by ``model`` for the target indices ``targets``."""
        return self.explainer(model).attribute(x, target=targets)


def _explain(spec, models, xs, targets):
    """Maps and probabilities averaged over models (``xs``: each model's inputs), for given target indices."""
    maps, probs = 0.0, 0.0
    for model, x in zip(models, xs):
        ex = spec.explainer(model)
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


def _batch_maps(spec, models, xs, targets, true, redo, paths):
    """Maps of one batch for the requested targets (new ones for ``redo``, the others read
    back), and the maps explaining each subject's true class (for the group maps).
    ``xs``: the batch as each model takes it."""
    from neuroml.io.image import load_data

    n = len(xs[0])
    maps = np.zeros((n, *xs[0].shape[-3:]), dtype=np.float32)
    if redo:
        maps[redo] = _explain(spec, models, [x[redo] for x in xs], targets[redo])[0]
    for i in sorted(set(range(n)) - set(redo)):
        maps[i] = load_data(paths[i], allow_constant=True)
    true_maps = maps.copy()
    extra = [i for i in range(n) if true[i] >= 0 and true[i] != targets[i]]
    if extra:
        true_maps[extra] = _explain(spec, models, [x[extra] for x in xs], true[extra])[0]
    return maps, true_maps


def _top_regions(table, n=5):
    return [
        {"region": r, "hemisphere": h, "mean_attribution": round(float(m), 8)}
        for r, h, m in zip(
            table["region"][:n], table["hemisphere"][:n], table["mean_attribution"][:n]
        )
    ]


@dataclass
class Explained:
    """What :func:`explain_scans` computed.

    Attributes
    ----------
    entries : dict
        ``{map name: subject entry of attribution.json}``.
    maps : list of ndarray
        Each labelled scan's map of its true class.
    owners : list of tuple
        ``(participant_id, class)`` of each of ``maps``.
    pool : list of dict
        The labelled scans explained by one fold model (the trust checks' subjects): ``row``,
        ``fold``, ``target`` (class index), ``map`` (position in ``maps``), ``participant_id``.
    seconds : float
        Time taken.
    """

    entries: dict[str, Any] = field(default_factory=dict)
    maps: list[npt.NDArray[Any]] = field(default_factory=list)
    owners: list[tuple[str, str]] = field(default_factory=list)
    pool: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Batch:
    """One batch of scans sharing their fold models, explained."""

    rows: list
    folds: tuple
    how: str
    names: list
    keys: list
    probs: np.ndarray
    true: np.ndarray
    targets: np.ndarray
    redo: list
    maps: np.ndarray
    true_maps: np.ndarray
    seconds: float


def _batches(plan, batch_size):
    """``[((fold keys, how), scans), ...]``: the scans of each model use, ``batch_size`` at a time."""
    groups = {}
    for r in plan.rows.itertuples():
        groups.setdefault(plan.model_use[r.row], []).append(r)
    return [
        (fk, chunk[i : i + batch_size])
        for fk, chunk in groups.items()
        for i in range(0, len(chunk), batch_size)
    ]


def _target_indices(target, classes, probs, true):
    """Index of each scan's target class: predicted, true, or the named class."""
    tidx = {"predicted": probs.argmax(1), "true": true}.get(target)
    if tidx is None:
        tidx = np.full(len(probs), classes.index(target))
    return tidx


def _to_redo(call, plan, chunk, names, keys, fold_ids, target_labels):
    """Positions in the batch whose map is computed: all but the earlier call's maps of the
    same input, folds and target class, whose file is the one that call wrote."""
    out_dir, previous = call.out_dir, plan.previous
    return [
        i
        for i, n in enumerate(names)
        if not (
            n in previous
            and (out_dir / n).is_file()
            and previous[n].get("input_sha256") == keys[i]
            and previous[n].get("folds") == fold_ids
            and previous[n].get("target_label") == target_labels[i]
            # not replaced since (the earlier call's other scans were checked by _earlier_rows)
            and (
                chunk[i].row in plan.earlier
                or previous[n].get("map_sha256") == sha256_file(out_dir / n)
            )
        )
    ]


def _explain_batch(call, src, plan, spec, model_use, chunk):
    """Maps of the scans ``chunk``, explained by the fold models of ``model_use``."""
    folds, how = model_use
    classes = src.classes
    models = [src.fold_models[f] for f in folds]
    x = src.cache.load([r.row for r in chunk])
    xs = [plan.inputs.for_fold(f, x, [r.participant_id for r in chunk]) for f in folds]
    names = [map_name(r.participant_id, r.session, r.run, call.method) for r in chunk]
    t0 = time.perf_counter()
    probs = _predict(models, xs)
    true = np.array(
        [
            classes.index(plan.labels[r.participant_id])
            if plan.labels.get(r.participant_id) in classes
            else -1
            for r in chunk
        ]
    )
    targets = _target_indices(call.target, classes, probs, true)
    keys = [plan.inputs.key(r) for r in chunk]
    target_labels = [classes[t] for t in targets]
    redo = _to_redo(call, plan, chunk, names, keys, _fold_ids(folds), target_labels)
    paths = [call.out_dir / n for n in names]
    maps, true_maps = _batch_maps(spec, models, xs, targets, true, redo, paths)
    seconds = (time.perf_counter() - t0) / len(chunk)
    return _Batch(
        chunk, folds, how, names, keys, probs, true, targets, redo, maps, true_maps, seconds
    )


def _write_scan(call, src, batch, i):
    """Write the ``i``-th scan's new map (if computed) and its region tables (if computed or
    missing); return the region table and the map's checksum (None when it was kept)."""
    r, name, out_dir = batch.rows[i], batch.names[i], call.out_dir
    stem = region_stem(name, call.atlas)
    map_sha = None
    if i in batch.redo:
        save_nifti_atomic(_img(batch.maps[i], src.cache.affine), out_dir / name)
        map_sha = sha256_file(out_dir / name)
        remove_other_tables(out_dir, name, stem)  # they describe the map just replaced
    table = region_table(batch.maps[i], src.atlas_labels, src.atlas_names, src.voxel_ml)
    if i in batch.redo or not (out_dir / f"{stem}.tsv").is_file():
        write_region_table(
            table,
            out_dir / f"{stem}.tsv",
            out_dir / f"{stem}.json",
            {
                "participant_id": r.participant_id,
                "method": call.method,
                "atlas": call.atlas,
                "target_label": src.classes[batch.targets[i]],
            },
        )
    return table, map_sha


def _entry(call, src, plan, batch, i, table, map_sha):
    """The ``i``-th scan's entry of ``attribution.json`` (``subjects``)."""
    r, name, classes = batch.rows[i], batch.names[i], src.classes
    true, probs = batch.true[i], batch.probs[i]
    skipped = i not in batch.redo
    old = plan.previous.get(name, {})
    stem = region_stem(name, call.atlas)
    return {
        "participant_id": r.participant_id,
        "session": r.session if _given(r.session) else None,
        "run": r.run if _given(r.run) else None,
        "map": name,
        "regions_tsv": f"{stem}.tsv",
        "regions_json": f"{stem}.json",
        "folds": _fold_ids(batch.folds),
        "input_sha256": batch.keys[i],
        "map_sha256": map_sha or plan.previous[name]["map_sha256"],
        "model_use": batch.how,
        "true_label": classes[true] if true >= 0 else None,
        "target_label": classes[batch.targets[i]],
        "predicted_label": classes[int(probs.argmax())],
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
        "top_regions": _top_regions(table),
        "seconds": old.get("seconds")
        if skipped and old.get("seconds") is not None
        else round(batch.seconds, 3),
        "skipped": skipped,
    }


def _collect(out, src, batch, i):
    """Add the ``i``-th scan's map of its true class (if labelled) to the group maps, and to the
    trust checks' pool when one fold model explained it."""
    true, r = batch.true[i], batch.rows[i]
    if true < 0:
        return
    if len(batch.folds) == 1:
        out.pool.append(
            {
                "row": r.row,
                "fold": batch.folds[0],
                "target": int(true),
                "map": len(out.maps),
                "participant_id": r.participant_id,
            }
        )
    out.maps.append(batch.true_maps[i])
    out.owners.append((r.participant_id, src.classes[true]))


def explain_scans(
    call: AttributionCall,
    src: Sources,
    plan: AttributionPlan,
    spec: ExplainerSpec,
    batch_size: int = 4,
    show_progress: bool = True,
) -> Explained:
    """Explain (or read back) the maps of ``plan.rows``, write the new ones and every scan's
    region tables.

    Parameters
    ----------
    call : AttributionCall
    src : Sources
    plan : AttributionPlan
    spec : ExplainerSpec
    batch_size : int, default=4
        Scans per batch.
    show_progress : bool, default=True

    Returns
    -------
    Explained
    """
    from tqdm.auto import tqdm

    todo = _batches(plan, batch_size)
    out = Explained()
    t_start = time.perf_counter()
    bar = tqdm(
        total=sum(len(chunk) for _, chunk in todo),
        desc=f"attribution {call.method}",
        unit="scan",
        disable=not show_progress,
    )
    for model_use, chunk in todo:
        batch = _explain_batch(call, src, plan, spec, model_use, chunk)
        for i in range(len(chunk)):
            table, map_sha = _write_scan(call, src, batch, i)
            out.entries[batch.names[i]] = _entry(call, src, plan, batch, i, table, map_sha)
            _collect(out, src, batch, i)
        bar.update(len(chunk))  # scans, as the summary line counts them (not batches)
    bar.close()
    out.seconds = time.perf_counter() - t_start
    return out
