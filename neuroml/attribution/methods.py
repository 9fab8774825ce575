"""Voxel attribution maps for a 3D classifier, through MONAI ``visualize`` and Captum.

:class:`Explainer` has one face for every method and never touches the model it is
given: each call works on a :func:`copy.deepcopy` (MONAI's ``GradCAM`` registers hooks
and turns ``inplace`` flags off on the module it wraps, and ``eval()`` flips the mode).

=======================  ==========================================================
method                   what it runs
=======================  ==========================================================
``gradcam``              :class:`monai.visualize.GradCAM`, raw (not min-max scaled)
``gradcampp``            :class:`monai.visualize.GradCAMpp`
``hirescam``             :class:`captum.attr.LayerGradientXActivation` summed over channels
                         (HiResCAM, Draelos & Carin 2020: Grad-CAM without averaging the
                         gradients over space, exact for a flatten + linear head), signed,
                         upsampled trilinearly; default layer: the last one at most 4x
                         coarser than the input (fine enough for atlas regions)
``saliency``             :class:`captum.attr.Saliency` (absolute gradient)
``integrated_gradients`` :class:`captum.attr.IntegratedGradients`, baseline 0, 32 steps
``smoothgrad``           :class:`captum.attr.NoiseTunnel` over Saliency, seeded noise
``occlusion``            :class:`captum.attr.FeatureAblation` over a grid of blocks
``region_occlusion``     the same over atlas regions (``feature_mask`` = labels);
                         background (label 0) is not occluded and maps to 0
=======================  ==========================================================

Occlusion replaces one block at a time by 0 (the normalized mean) and records the drop
in the target's softmax probability; blocks tile the volume exactly (about 1/6 of each
side, stride = block, the last block per axis takes the remainder), so every voxel is
covered once. It is Captum's ``Occlusion`` with stride equal to the window, written as a
feature mask so that sides that are not multiples of the window (73 at 2 mm) are covered.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from neuroml._utils.options import check_in_range, look_up_option
from neuroml.errors import ConfigError, InputError

__all__ = ["METHODS", "ALL_METHODS", "Explainer", "block_mask", "guess_target_layer"]

log = logging.getLogger("neuroml")

#: Method names accepted by :class:`Explainer`.
METHODS = (
    "gradcam",
    "gradcampp",
    "hirescam",
    "saliency",
    "integrated_gradients",
    "smoothgrad",
    "occlusion",
)
#: :data:`METHODS` and ``"region_occlusion"`` (which needs atlas labels as ``feature_mask``).
ALL_METHODS = METHODS + ("region_occlusion",)
#: Default layer of ``hirescam``: the last whose sides are at least 1/4 of the input's
#: (8 mm cells at 2 mm), so that regions of a few ml are resolved.
HIRESCAM_MAX_STRIDE = 4


def block_mask(shape: Sequence[int], n_blocks: int = 6) -> npt.NDArray[np.int64]:
    """Integer mask that tiles a grid with ``n_blocks`` blocks per axis.

    Parameters
    ----------
    shape : tuple of 3 int
    n_blocks : int, default=6
        Blocks per axis; a block is ``ceil(side / n_blocks)`` voxels.

    Returns
    -------
    ndarray of int64, shape ``shape``
        Block ids ``0 .. n-1``.

    Examples
    --------
    >>> m = block_mask((4, 5, 6), 2)
    >>> int(m.max()) + 1, int(m[0, 0, 0]), int(m[3, 4, 5])
    (8, 0, 7)
    """
    shape = tuple(int(s) for s in shape)
    sizes = [max(1, -(-s // int(n_blocks))) for s in shape]
    axes = [np.arange(s) // w for s, w in zip(shape, sizes)]
    counts = [int(a.max()) + 1 for a in axes]
    ids = (axes[0][:, None, None] * counts[1] + axes[1][None, :, None]) * counts[2] + axes[2][
        None, None, :
    ]
    return ids.astype(np.int64)


def _working_copy(model):
    """A deep copy in eval mode, frozen, with in-place operations switched off."""
    work = copy.deepcopy(model)
    work.eval()
    for p in work.parameters():
        p.requires_grad_(False)
    for mod in work.modules():
        if getattr(mod, "inplace", False) is True:
            mod.inplace = False
    return work


def guess_target_layer(
    model: torch.nn.Module, x: torch.Tensor, max_stride: int | None = None
) -> str:
    """Name of the last module whose output is still a spatial feature map.

    Runs one forward pass of ``x`` (a copy of the model is used) and returns the module
    that produced the last 5D output with more than one voxel, which skips the pooling
    and linear head that GradCAM cannot use.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor of shape (N, C, X, Y, Z)
    max_stride : int, optional
        Only outputs whose every side is at least ``side / max_stride`` of the input's.

    Returns
    -------
    str
    """
    work = _working_copy(model)
    last = {"name": None, "out": None}  # the latest 5D output and the module that made it
    handles = []
    for name, mod in work.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, name=name):
            # a container returns its last child's tensor: keep the name of the child that made it
            fine = max_stride is None or all(
                o * max_stride >= i for o, i in zip(out.shape[2:], x.shape[2:])
            )
            if (
                isinstance(out, torch.Tensor)
                and out.ndim == 5
                and int(np.prod(out.shape[2:])) > 1
                and out is not last["out"]
                and fine
            ):
                last.update(name=name, out=out)

        handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        work(x[:1])
    for h in handles:
        h.remove()
    if last["name"] is None:
        raise ConfigError(
            "no layer of the model outputs a 3D feature map; pass target_layer= explicitly"
        )
    return last["name"]


def _as_input(x: Any, device: torch.device | str | None) -> torch.Tensor:
    if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim == 4:
        x = x[:, None]
    if x.ndim != 5:
        raise InputError(
            f"expected x of shape (N, X, Y, Z) or (N, C, X, Y, Z), got shape {tuple(x.shape)}"
            " (for one volume use x[None])"
        )
    return x.to(device=device, dtype=torch.float32)


def _batches(indices, size):
    for i in range(0, len(indices), size):
        yield indices[i : i + size]


class Explainer:
    """Attribution maps of a 3D classifier; the model itself is never modified.

    Parameters
    ----------
    model : torch.nn.Module
        Takes ``(N, C, X, Y, Z)`` and returns logits ``(N, n_classes)``.
    method : str, default="gradcam"
        One of :data:`ALL_METHODS` (``"region_occlusion"`` needs ``feature_mask``).
    target_layer : str, optional
        Layer for the CAM methods; default: :func:`guess_target_layer` (for a network
        built by name, pass :func:`neuroml.models.default_target_layer` to Grad-CAM); for
        ``hirescam`` the last layer at most :data:`HIRESCAM_MAX_STRIDE` times coarser.
    classes : sequence of str, optional
        Class names, so that targets can be given by name.
    batch_size : int, default=8
        Most volumes sent through the model at once (subjects, integration steps, noisy
        copies or occluded copies).
    n_steps : int, default=32
        Integrated-gradients steps.
    nt_samples : int, default=16
        SmoothGrad noisy samples; the noise sd is ``noise_level * (max - min)`` of the input.
    noise_level : float, default=0.15
    n_blocks : int, default=6
        Occlusion blocks per axis.
    feature_mask : array of int, optional
        Occlusion groups instead of blocks (for example atlas labels), shape ``(X, Y, Z)``;
        required by ``"region_occlusion"``, where label 0 is background.
    baseline : float, default=0.0
        Reference input of integrated gradients and fill value of occlusion
        (0 = the normalized mean intensity).
    seed : int, default=0
        Seed of the SmoothGrad noise (the global generators are left as they were).

    Attributes
    ----------
    targets_ : ndarray of int, shape (N,)
        Class index each map of the last :meth:`attribute` call explains.
    probabilities_ : ndarray, shape (N, n_classes)
        Softmax output of the model for the last input.
    target_layer_ : str or None
        Layer the CAM methods used.

    Examples
    --------
    >>> from monai.networks.nets import Classifier
    >>> net = Classifier((1, 16, 20, 18), 2, channels=(4, 8), strides=(2, 1))
    >>> x = torch.randn(2, 1, 16, 20, 18)
    >>> Explainer(net, "saliency").attribute(x, target=1).shape
    (2, 16, 20, 18)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: str = "gradcam",
        target_layer: str | None = None,
        classes: Sequence[str] | None = None,
        batch_size: int = 8,
        n_steps: int = 32,
        nt_samples: int = 16,
        noise_level: float = 0.15,
        n_blocks: int = 6,
        feature_mask: npt.NDArray[np.integer[Any]] | None = None,
        baseline: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.method = method
        self.target_layer = target_layer
        self.classes = classes
        self.batch_size = batch_size
        self.n_steps = n_steps
        self.nt_samples = nt_samples
        self.noise_level = noise_level
        self.n_blocks = n_blocks
        self.feature_mask = feature_mask
        self.baseline = baseline
        self.seed = seed

    # -- targets -----------------------------------------------------------------
    def _class_index(self, t, n_classes):
        if isinstance(t, (bool, np.bool_)):
            raise ConfigError(f"target must be a class index or name, got {t!r}")
        if isinstance(t, (int, np.integer)):
            if not 0 <= int(t) < n_classes:
                raise ConfigError(f"target class index {int(t)} is outside 0..{n_classes - 1}")
            return int(t)
        if isinstance(t, str):
            if self.classes is None:
                raise ConfigError(f"target {t!r} is a class name but the Explainer got no classes=")
            return list(self.classes).index(look_up_option("target", t, list(self.classes)))
        raise ConfigError(f"target must be 'predicted', a class index or a class name, got {t!r}")

    def _resolve_targets(self, target, probs):
        n, n_classes = probs.shape
        if target is None or (isinstance(target, str) and target == "predicted"):
            return probs.argmax(1).astype(np.int64)
        if isinstance(target, (str, int, np.integer)):
            return np.full(n, self._class_index(target, n_classes), dtype=np.int64)
        target = (
            list(np.asarray(target).tolist())
            if isinstance(target, (np.ndarray, torch.Tensor))
            else list(target)
        )
        if len(target) != n:
            raise ConfigError(f"got {len(target)} targets for {n} inputs")
        return np.array([self._class_index(t, n_classes) for t in target], dtype=np.int64)

    # -- methods -------------------------------------------------------------------
    def _cam(self, work, x, targets, cls):
        layer = self.target_layer_
        cam = cls(nn_module=work, target_layers=layer, postprocessing=lambda a: a)
        out = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.float32)
        # MONAI's GradCAMpp broadcasts its class score wrongly for a batch above 1
        step = 1 if cls.__name__ == "GradCAMpp" else int(self.batch_size)
        for c in np.unique(targets):
            for idx in _batches(np.flatnonzero(targets == c), step):
                xi = x[idx].clone().requires_grad_(True)
                out[idx] = cam(xi, class_idx=int(c))[:, 0].detach().float().cpu()
        return out

    def _hirescam(self, work, x, targets):
        from captum.attr import LayerAttribution, LayerGradientXActivation

        layer = dict(work.named_modules())[self.target_layer_]
        out = []
        for idx in _batches(np.arange(x.shape[0]), int(self.batch_size)):
            a = LayerGradientXActivation(work, layer).attribute(
                x[idx], target=torch.as_tensor(targets[idx], device=x.device)
            )
            a = LayerAttribution.interpolate(
                a.sum(1, keepdim=True), tuple(x.shape[2:]), interpolate_mode="trilinear"
            )
            out.append(a.detach()[:, 0].float().cpu())
        return torch.cat(out)

    def _captum(self, work, x, targets):
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        out = []
        step = self.batch_size if self.method == "saliency" else 1
        for idx in _batches(np.arange(x.shape[0]), step):
            xi = x[idx].clone().requires_grad_(True)
            ti = torch.as_tensor(targets[idx], device=x.device)
            if self.method == "saliency":
                a = Saliency(work).attribute(xi, target=ti, abs=True)
            elif self.method == "integrated_gradients":
                a = IntegratedGradients(work).attribute(
                    xi,
                    baselines=float(self.baseline),
                    target=ti,
                    n_steps=int(self.n_steps),
                    internal_batch_size=max(int(self.batch_size), 1),
                )
            else:  # smoothgrad
                sd = float(self.noise_level) * float(x[idx].max() - x[idx].min())
                devices = [xi.device.index or 0] if xi.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(int(self.seed))
                    a = NoiseTunnel(Saliency(work)).attribute(
                        xi,
                        nt_type="smoothgrad",
                        nt_samples=int(self.nt_samples),
                        nt_samples_batch_size=max(int(self.batch_size), 1),
                        stdevs=sd,
                        target=ti,
                        abs=True,
                    )
            out.append(a.detach().sum(1).float().cpu())
        return torch.cat(out)

    def _occlusion(self, work, x, targets, regions=False):
        from captum.attr import FeatureAblation

        if regions and self.feature_mask is None:
            raise ConfigError(
                "method 'region_occlusion' needs feature_mask= (atlas labels on the input grid)"
            )
        if self.feature_mask is None:
            ids = block_mask(x.shape[2:], check_in_range("n_blocks", self.n_blocks, 1, 64, int))
        else:
            mask = np.asarray(self.feature_mask)
            if mask.shape != tuple(x.shape[2:]):
                raise InputError(
                    f"feature_mask has shape {mask.shape}, the input grid is {tuple(x.shape[2:])}"
                )
            if regions and (not np.issubdtype(mask.dtype, np.integer) or mask.min(initial=0) < 0):
                raise InputError(
                    f"feature_mask must hold integer labels >= 0 (0 = background), got dtype "
                    f"{mask.dtype} and minimum {mask.min(initial=0)}"
                )
            ids = np.unique(mask, return_inverse=True)[1].reshape(mask.shape)  # contiguous 0..K-1
        mask_t = torch.as_tensor(ids, device=x.device)[None, None]

        def prob(inp):
            return torch.softmax(work(inp), dim=1)

        out = []
        per_subject = max(1, int(self.batch_size))
        for idx in _batches(np.arange(x.shape[0]), per_subject):
            per_eval = max(1, int(self.batch_size) // len(idx))
            a = FeatureAblation(prob).attribute(
                x[idx],
                baselines=float(self.baseline),
                target=torch.as_tensor(targets[idx], device=x.device),
                feature_mask=mask_t,
                perturbations_per_eval=per_eval,
            )
            out.append(a.detach()[:, 0].float().cpu())
        out = torch.cat(out)
        if regions:  # background (label 0) is reported as 0, whatever hiding it did
            out[:, torch.as_tensor(np.asarray(self.feature_mask) == 0)] = 0.0
        return out

    def attribute(
        self,
        x: npt.NDArray[Any] | torch.Tensor,
        target: str | int | Sequence[int | str] | npt.NDArray[np.integer[Any]] = "predicted",
    ) -> npt.NDArray[np.float32]:
        """Attribution maps of ``x`` for the target classes.

        Parameters
        ----------
        x : ndarray or torch.Tensor, shape (N, X, Y, Z) or (N, C, X, Y, Z)
            Normalized volumes (a 4D input gets a channel axis).
        target : "predicted", int, str or sequence, default="predicted"
            The model's predicted class, one class (index or name) for all inputs, or one
            class per input (for example the true labels).

        Returns
        -------
        ndarray of float32, shape (N, X, Y, Z)
            On the input grid (CAMs are upsampled trilinearly). Saliency and SmoothGrad
            are absolute gradients, Grad-CAM(++) maps are non-negative, HiResCAM, integrated gradients and
            occlusion (drop in class probability) are signed.

        Raises
        ------
        ConfigError
            For an unknown method or target.
        InputError
            For an input that is not 4D/5D.
        """
        method = look_up_option("method", self.method, ALL_METHODS)
        check_in_range("batch_size", self.batch_size, 1, None, int)
        try:
            device = next(self.model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        x = _as_input(x, device)
        work = _working_copy(self.model)
        with torch.no_grad():
            probs = torch.cat(
                [
                    torch.softmax(work(x[i : i + self.batch_size]), 1).float().cpu()
                    for i in range(0, x.shape[0], self.batch_size)
                ]
            )
        self.probabilities_ = probs.numpy()
        self.targets_ = self._resolve_targets(target, self.probabilities_)
        self.target_layer_ = None
        if method in ("gradcam", "gradcampp", "hirescam"):
            layers = [n for n, _ in work.named_modules() if n]
            stride = HIRESCAM_MAX_STRIDE if method == "hirescam" else None
            self.target_layer_ = (
                look_up_option("target_layer", self.target_layer, layers)
                if self.target_layer
                else guess_target_layer(work, x, stride)
            )
            if method == "hirescam":
                maps = self._hirescam(work, x, self.targets_)
            else:
                from monai.visualize import GradCAM, GradCAMpp

                maps = self._cam(
                    work, x, self.targets_, GradCAM if method == "gradcam" else GradCAMpp
                )
        elif method in ("occlusion", "region_occlusion"):
            maps = self._occlusion(work, x, self.targets_, regions=method == "region_occlusion")
        else:
            maps = self._captum(work, x, self.targets_)
        return maps.numpy().astype(np.float32, copy=False)
