"""The CUDA paths: bf16 autocast, channels-last, the GPU preload, torch.compile, torchrun with NCCL.

Skipped where torch sees no GPU (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
Each test compares the GPU against a reference it could disagree with (the CPU, fp32, the
DataLoader path, the eager network), so a broken GPU path fails rather than merely runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroml.data import VolumeDataset
from neuroml.runs import load_checkpoint, load_run
from neuroml.training import TrainSettings, fit
from neuroml.training.metrics import balanced_accuracy
from neuroml.training.trainer import evaluate
from neuroml.workflows import train_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cohorts import make_cohort  # noqa: E402
from test_training_loop import _blobs  # noqa: E402  (three classes told apart by a bright block)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TESTS = Path(__file__).resolve().parent


def _fit(x, y, n_train, hook=None, checkpoint_path=None, **options):
    from neuroml.models import build_model

    torch.manual_seed(0)
    model = build_model("compact", 3, spatial_shape=x.shape[1:])
    if hook is not None:
        model.net.layer_1.conv.register_forward_hook(hook)
    opts = dict(epochs=8, batch_size=4, device="cuda", show_progress=False, patience=None)
    opts.update(options)
    return fit(
        model,
        VolumeDataset(x[:n_train], y[:n_train]),
        VolumeDataset(x[n_train:], y[n_train:]),
        TrainSettings(**opts),
        stream=(1,),
        checkpoint_path=checkpoint_path,
    )


def test_bf16_channels_last_training_learns_and_its_checkpoint_predicts_like_fp32_on_the_cpu(
    tmp_path,
):
    seen = []  # (training?, autocast dtype of the output, output channels-last?)

    def hook(module, inputs, output):
        seen.append(
            (
                module.training,
                output.dtype,
                output.is_contiguous(memory_format=torch.channels_last_3d)
                and not output.is_contiguous(),
            )
        )

    x, y = _blobs(36)
    res = _fit(x, y, 24, hook=hook, checkpoint_path=tmp_path / "last.pt")
    assert {s[0] for s in seen} == {True, False}
    assert {s[1] for s in seen} == {torch.bfloat16}  # autocast on in training and validation
    assert all(s[2] for s in seen)  # channels-last on the GPU
    losses = [h["train_loss"] for h in res.history]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    assert res.best_val_balanced_accuracy >= 0.9

    # the checkpoint (written from the GPU) loads on the CPU, weights only, and agrees with the GPU
    from neuroml.models import build_model

    cpu = build_model("compact", 3, spatial_shape=x.shape[1:])
    cpu.load_state_dict(load_checkpoint(tmp_path / "last.pt")["model"])
    held_out = VolumeDataset(x[24:], y[24:])
    p_gpu_bf16, _ = evaluate(res.model, held_out, device="cuda", amp=True)
    p_gpu_fp32, _ = evaluate(res.model, held_out, device="cuda", amp=False)
    res.model.cpu()
    cpu.load_state_dict(res.model.state_dict())  # the best weights, as fit hands them back
    p_cpu, _ = evaluate(cpu, held_out, device="cpu")
    assert np.abs(p_gpu_fp32 - p_cpu).max() < 1e-3
    assert np.abs(p_gpu_bf16 - p_cpu).max() < 0.05  # bf16 rounding, not a different model
    assert balanced_accuracy(y[24:], p_cpu.argmax(1), 3) >= 0.9


def test_the_gpu_preload_trains_like_the_dataloader():
    x, y = _blobs(20)
    torch.backends.cudnn.deterministic = True
    try:
        runs = {p: _fit(x, y, 14, epochs=3, amp=False, preload=p) for p in (True, False)}
    finally:
        torch.backends.cudnn.deterministic = False
    losses = {p: [h["train_loss"] for h in r.history] for p, r in runs.items()}
    assert losses[True] == pytest.approx(
        losses[False], rel=1e-4
    )  # same batches, same dropout masks
    assert losses[True][0] != losses[True][-1]


def test_torch_compile_trains_and_hands_back_the_plain_module():
    # compiled dropout draws from its own random stream: compare with the data, not the eager losses
    x, y = _blobs(30)
    res = _fit(x, y, 21, epochs=6, amp=False, compile=True)
    losses = [h["train_loss"] for h in res.history]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    assert res.best_val_balanced_accuracy >= 0.8
    for name in res.model.state_dict():  # the plain module's weights, not OptimizedModule's
        assert not name.startswith("_orig_mod"), name
    proba, _ = evaluate(
        res.model, VolumeDataset(x[21:], y[21:]), device="cuda", amp=False
    )  # eager, best weights
    assert balanced_accuracy(y[21:], proba.argmax(1), 3) >= 0.8


def test_gpu_augmentation_warps_and_scales_like_the_cpu():
    from neuroml.data import make_augmentation

    x = torch.from_numpy(_blobs(6)[0])[:, None]
    out = {}
    for dev in ("cpu", "cuda"):
        aug = make_augmentation(
            seed=3, noise_std=0.0, prob=0.9
        )  # noise is drawn on the batch's device
        aug.set_random_state(5)
        out[dev] = aug.apply_batch(x.to(dev)).cpu()
    assert not torch.equal(out["cpu"], x)  # something was applied
    assert (out["cuda"] - out["cpu"]).abs().max() < 1e-3 * x.abs().max()


def _cohort(tmp_path):
    return make_cohort(tmp_path, n_per_class=6)


def test_train_run_on_cuda_records_the_gpu_and_its_fold_models_load_on_the_cpu(tmp_path):
    deriv = _cohort(tmp_path)
    summary = train_run(
        deriv,
        tmp_path / "run",
        epochs=6,
        folds=2,
        batch_size=4,
        device="cuda",
        show_progress=False,
        n_bootstrap=50,
    )
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["runtime"]["device"].startswith("cuda") and cfg["runtime"]["amp"] is True
    assert summary["balanced_accuracy"] >= 0.8
    run = load_run(tmp_path / "run")
    model = run.fold_model(0)  # CPU by default
    assert next(model.parameters()).device.type == "cpu"


def test_torchrun_single_gpu_joins_nccl_and_trains(tmp_path):
    deriv = _cohort(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "neuroml",
        "-q",
        "train",
        str(deriv),
        "--run-dir",
        str(tmp_path / "run"),
        "--device",
        "cuda",
        "--epochs",
        "4",
        "--folds",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "cnn" in metrics and "baseline" in metrics
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["runtime"]["device"].startswith("cuda")


@pytest.mark.parametrize(
    "method", ["saliency", "hirescam", "integrated_gradients", "region_occlusion"]
)
def test_attribution_on_the_gpu_matches_the_cpu(method):
    from neuroml.attribution import Explainer
    from neuroml.models import build_model

    x, y = _blobs(4)
    torch.manual_seed(0)
    model = build_model("compact", 3, spatial_shape=x.shape[1:]).eval()
    labels = np.zeros(x.shape[1:], dtype=np.int32)  # three slabs as "regions" for region occlusion
    labels[:6], labels[6:13], labels[13:] = 1, 2, 3
    maps = {}
    for dev in ("cpu", "cuda"):
        explainer = Explainer(
            model.to(dev),
            method,
            feature_mask=labels if method == "region_occlusion" else None,
            n_steps=8,
        )
        maps[dev] = explainer.attribute(x, target=y)
        assert maps[dev].shape == x.shape and np.isfinite(maps[dev]).all()
    assert np.abs(maps["cpu"]).max() > 0
    scale = np.abs(maps["cpu"]).max()
    # fp32 on both, up to cuDNN's TF32 convolutions: the same map, not a different explanation
    assert np.abs(maps["cuda"] - maps["cpu"]).max() < 2e-2 * scale
    assert np.corrcoef(maps["cuda"].ravel(), maps["cpu"].ravel())[0, 1] > 0.999
