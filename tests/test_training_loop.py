"""Gradient accumulation in the training loop."""

import numpy as np
import pytest
import torch

from neuroml.data import VolumeDataset
from neuroml.training import TrainSettings, fit


class _Linear(torch.nn.Module):
    """No dropout, no normalisation: one optimiser step depends only on the gradient."""

    def __init__(self, n_in, n_classes):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _one_step(batch_size, grad_accum, x, y):
    torch.manual_seed(0)
    model = _Linear(int(np.prod(x.shape[1:])), 3)
    settings = TrainSettings(
        epochs=1,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=0.05,
        weight_decay=0.0,
        schedule="constant",
        patience=None,
        device="cpu",
        show_progress=False,
    )
    res = fit(model, VolumeDataset(x, y), None, settings, stream=(0,))
    return torch.cat([p.detach().flatten() for p in res.model.parameters()])


@pytest.mark.parametrize("batch_size, grad_accum", [(2, 4), (4, 2)])
def test_gradient_accumulation_equals_one_large_batch(batch_size, grad_accum):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 6, 7)).astype(np.float32)
    y = np.arange(8) % 3
    full = _one_step(8, 1, x, y)
    accumulated = _one_step(batch_size, grad_accum, x, y)
    no_accum = _one_step(batch_size, 1, x, y)  # several steps: a different result
    assert torch.allclose(accumulated, full, atol=1e-6)
    assert not torch.allclose(no_accum, full, atol=1e-4)


def test_a_last_partial_accumulation_group_still_steps():
    # 10 items, batch 2 -> 5 batches; accumulation 2 -> steps after batches 2, 4 and 5
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 4, 5, 3)).astype(np.float32)
    y = np.arange(10) % 3
    torch.manual_seed(0)
    model = _Linear(60, 3)
    settings = TrainSettings(
        epochs=1,
        batch_size=2,
        grad_accum=2,
        lr=0.05,
        weight_decay=0.0,
        schedule="constant",
        patience=None,
        device="cpu",
        show_progress=False,
    )
    steps = []
    opt_step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        steps.append(1)
        return opt_step(self, *a, **k)

    torch.optim.AdamW.step = counting_step
    try:
        fit(model, VolumeDataset(x, y), None, settings, stream=(0,))
    finally:
        torch.optim.AdamW.step = opt_step
    assert len(steps) == 3


def test_cli_train_passes_loop_options_to_the_library(monkeypatch, tmp_path, capsys):
    import logging

    import neuroml.workflows.pipeline
    from neuroml.cli import main

    log = logging.getLogger(
        "neuroml"
    )  # main() installs its own handler: restore the logger afterwards
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)

    calls = []
    monkeypatch.setattr(
        neuroml.workflows.pipeline, "run_step", lambda name, **params: calls.append((name, params))
    )
    assert (
        main(
            [
                "-q",
                "train",
                str(tmp_path),
                "--run-dir",
                str(tmp_path / "run"),
                "--lr",
                "0.01",
                "--grad-accum",
                "2",
                "--num-workers",
                "3",
            ]
        )
        == 0
    )
    ((name, params),) = calls
    assert (
        name == "train"
        and params["lr"] == 0.01
        and params["grad_accum"] == 2
        and params["num_workers"] == 3
    )
    assert params["input_pool"] == "auto" and params["amp"] is True and params["compile"] is False
    assert (
        main(
            ["-q", "train", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--input-pool", "2"]
        )
        == 0
    )
    assert calls[-1][1]["input_pool"] == 2
    assert (
        main(
            [
                "-q",
                "train",
                str(tmp_path),
                "--run-dir",
                str(tmp_path / "run"),
                "--precision",
                "fp32",
                "--compile",
            ]
        )
        == 0
    )
    assert calls[-1][1]["amp"] is False and calls[-1][1]["compile"] is True
    with pytest.raises(SystemExit):
        main(
            ["-q", "train", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--input-pool", "3"]
        )
    assert "expected auto, 1, 2 or 4, got '3'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "n, grad_accum", [(9, 1), (10, 2)]
)  # 9 % 4 == 1: the last batch is dropped
def test_preloaded_volumes_train_exactly_like_the_dataloader(n, grad_accum):
    from neuroml.models import build_model

    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 19, 23, 20)).astype(np.float16)  # like the float16 cache
    y = np.arange(n) % 3
    out = {}
    for preload in (False, True):
        torch.manual_seed(0)
        model = build_model("compact", 3, spatial_shape=(19, 23, 20))
        settings = TrainSettings(
            epochs=2,
            batch_size=4,
            grad_accum=grad_accum,
            device="cpu",
            show_progress=False,
            preload=preload,
            patience=None,
        )
        res = fit(
            model,
            VolumeDataset(x, y, rows=np.arange(n)[::-1]),
            None,
            settings,
            class_weights=[1, 2, 1],
            stream=(3,),
        )
        out[preload] = (
            [r["train_loss"] for r in res.history],
            torch.cat([p.detach().flatten() for p in res.model.parameters()]),
        )
    assert out[True][0] == out[False][0]
    assert torch.equal(out[True][1], out[False][1])


def test_preload_is_validated_and_skipped_with_a_transform():
    from neuroml.data import make_augmentation
    from neuroml.errors import ConfigError
    from neuroml.training.trainer import _preload

    with pytest.raises(ConfigError, match="'preload'"):
        TrainSettings(preload="yes").validate()
    data = VolumeDataset(np.zeros((4, 19, 23, 20), np.float32), np.arange(4) % 2)
    on = TrainSettings(preload=True, device="cpu").validate()
    assert _preload(data, on, torch.device("cpu"))[0].shape == (4, 1, 19, 23, 20)
    assert (
        _preload(data, TrainSettings(device="cpu").validate(), torch.device("cpu")) is None
    )  # auto: CUDA only
    augmented = VolumeDataset(data.volumes, data.labels, transform=make_augmentation(seed=0))
    assert _preload(augmented, on, torch.device("cpu")) is None


def test_channels_last_is_the_default_on_cpu_and_cuda_and_is_validated():
    from neuroml.errors import ConfigError
    from neuroml.training.trainer import resolve_channels_last

    assert TrainSettings().channels_last == "auto"
    assert resolve_channels_last("auto", "cpu") is True
    assert resolve_channels_last("auto", "cuda") is True
    assert (
        resolve_channels_last(False, "cpu") is False and resolve_channels_last(True, "cpu") is True
    )
    with pytest.raises(ConfigError, match="'channels_last'"):
        TrainSettings(channels_last="yes").validate()


def _blobs(n, shape=(19, 23, 20), seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 3 + 5 * c : 7 + 5 * c, 5:12, 4:10] += 2.0
    return x, y


def _fit_compact(x, y, tmp_path=None, hook=None, **options):
    from neuroml.models import build_model

    torch.manual_seed(0)
    model = build_model("compact", 3, spatial_shape=x.shape[1:])
    if hook is not None:
        model.net.layer_1.conv.register_forward_hook(hook)
    settings = TrainSettings(
        epochs=3, batch_size=4, device="cpu", show_progress=False, patience=None, **options
    )
    n = len(x) * 2 // 3
    return fit(
        model,
        VolumeDataset(x[:n], y[:n]),
        VolumeDataset(x[n:], y[n:]),
        settings,
        stream=(1,),
        checkpoint_path=None if tmp_path is None else tmp_path / "last.pt",
    )


def test_fit_trains_channels_last_on_cpu_and_hands_back_contiguous_weights(tmp_path):
    from neuroml.runs import load_checkpoint

    cl = torch.channels_last_3d
    seen = []  # (training?, weight channels-last?, output channels-last?) of a 8 -> 16 channel convolution

    def channels_last(t):
        return t.is_contiguous(memory_format=cl) and not t.is_contiguous()

    def hook(module, inputs, output):
        seen.append((module.training, channels_last(module.weight), channels_last(output)))

    x, y = _blobs(12)
    res = _fit_compact(x, y, tmp_path, hook)  # the default settings
    assert {s[0] for s in seen} == {True, False}  # training steps and validation passes
    assert all(s[1] and s[2] for s in seen)  # both in channels-last memory
    for name, p in res.model.state_dict().items():
        assert p.is_contiguous(), name  # handed back in the default format
    for name, p in load_checkpoint(tmp_path / "last.pt")["model"].items():
        assert p.is_contiguous(), name
    seen.clear()
    _fit_compact(x, y, channels_last=False, hook=hook)
    assert seen and not any(s[1] or s[2] for s in seen)


def test_channels_last_fit_equals_the_contiguous_fit():
    from neuroml.training.trainer import evaluate

    x, y = _blobs(12)
    runs = {cl: _fit_compact(x, y, channels_last=cl) for cl in (True, False)}
    losses = {cl: [h["train_loss"] for h in r.history] for cl, r in runs.items()}
    assert losses[True] == pytest.approx(
        losses[False], rel=1e-5
    )  # same batches, same dropout masks
    assert losses[True][0] != losses[True][-1]
    proba = {cl: evaluate(r.model, VolumeDataset(x, y))[0] for cl, r in runs.items()}
    assert np.abs(proba[True] - proba[False]).max() < 1e-5


def test_fit_augments_whole_batches_identically_with_and_without_preloading():
    from neuroml.data import make_augmentation
    from neuroml.models import build_model

    x, y = _blobs(10)
    out = {}
    for name, preload, augment in (
        ("loader", False, True),
        ("preloaded", True, True),
        ("plain", False, False),
    ):
        torch.manual_seed(0)
        model = build_model("compact", 3, spatial_shape=x.shape[1:])
        data = VolumeDataset(
            x, y, transform=make_augmentation(seed=4, prob=1.0) if augment else None
        )
        settings = TrainSettings(
            epochs=2,
            batch_size=4,
            device="cpu",
            show_progress=False,
            preload=preload,
            patience=None,
        )
        res = fit(model, data, None, settings, stream=(2,))
        assert (data.transform is not None) == augment  # the caller's dataset keeps its transform
        out[name] = [r["train_loss"] for r in res.history]
    assert out["loader"] == out["preloaded"]  # same batches, same draws, same order
    assert out["loader"] != out["plain"]


def test_fit_warps_the_pooled_batch_for_a_pooled_network(monkeypatch):
    import neuroml.data.augment as augment_module
    from neuroml.data import VolumeDataset, make_augmentation
    from neuroml.models import build_model

    seen = []
    warp = augment_module.warp_affine
    monkeypatch.setattr(
        augment_module,
        "warp_affine",
        lambda x, m, **kw: seen.append(tuple(x.shape[2:])) or warp(x, m, **kw),
    )
    rng = np.random.default_rng(0)
    shape = (37, 46, 39)
    x = rng.normal(size=(8, *shape)).astype(np.float32)
    y = np.arange(8) % 2
    settings = TrainSettings(
        epochs=2, batch_size=4, patience=None, device="cpu", show_progress=False
    )
    weights = []
    for pool in (2, 2, 1):
        seen.clear()
        torch.manual_seed(0)
        net = build_model("compact", 2, spatial_shape=shape, input_pool=pool)
        res = fit(
            net,
            VolumeDataset(x, y, transform=make_augmentation(seed=1, prob=1.0)),
            None,
            settings,
            class_weights=np.ones(2),
            stream=(0,),
        )
        assert seen and set(seen) == {(19, 23, 20) if pool == 2 else shape}
        weights.append(torch.cat([p.detach().flatten() for p in res.model.parameters()]))
    assert torch.equal(weights[0], weights[1])  # seeded: the same fit twice


@pytest.mark.parametrize("augment", [False, True])
def test_fit_pools_the_volumes_once_and_trains_exactly_as_pooling_every_batch(monkeypatch, augment):
    import neuroml.training.trainer as trainer
    from neuroml.data import make_augmentation
    from neuroml.models import build_model
    from neuroml.models.factory import InputPool

    x, y = _blobs(12, shape=(37, 46, 39))
    shapes, results = [], {}
    for prepool in (True, False):
        monkeypatch.setattr(trainer, "PREPOOL_MAX_BYTES", 4 * 2**30 if prepool else 0)
        torch.manual_seed(0)
        model = build_model("compact", 3, spatial_shape=x.shape[1:], input_pool=2)
        pool = next(m for m in model.modules() if isinstance(m, InputPool))
        calls = []  # (grid, batch size) of every call of the network's pooling module
        pool.register_forward_pre_hook(
            lambda m, inp: calls.append((tuple(inp[0].shape[2:]), len(inp[0])))  # noqa: B023
        )
        real = torch.nn.AvgPool3d.forward
        pooled_here = []
        monkeypatch.setattr(
            torch.nn.AvgPool3d,
            "forward",
            lambda m, t: pooled_here.append(len(t)) or real(m, t),  # noqa: B023
        )
        settings = TrainSettings(
            epochs=3, batch_size=4, device="cpu", show_progress=False, patience=None
        )
        data = VolumeDataset(
            x[:9], y[:9], transform=make_augmentation(seed=1, prob=1.0) if augment else None
        )
        res = fit(model, data, VolumeDataset(x[9:], y[9:]), settings, stream=(3,))
        monkeypatch.setattr(torch.nn.AvgPool3d, "forward", real)
        results[prepool] = (
            [h["train_loss"] for h in res.history],
            [h["val_loss"] for h in res.history],
            torch.cat([p.detach().flatten() for p in res.model.parameters()]),
        )
        shapes.append((prepool, calls, sum(pooled_here)))
    (_, calls_pre, n_pre), (_, calls_every, n_every) = shapes
    # pooled once: one call per dataset (9 training, 3 validation volumes); every batch after that
    # reached the network on the pooled grid
    assert [c for c in calls_pre if c[0] == (37, 46, 39)] == [((37, 46, 39), 9), ((37, 46, 39), 3)]
    assert {c[0] for c in calls_pre} == {(37, 46, 39), (19, 23, 20)}
    assert n_pre == 12  # each of the 12 volumes pooled once, whatever the number of epochs
    assert n_every == 3 * (
        8 + 3
    )  # else pooled again in each epoch: 8 training volumes (9 % 4 == 1: the last
    # batch of one is dropped) and 3 validation volumes
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-6)
    assert torch.allclose(results[True][2], results[False][2], atol=1e-6)


def test_fit_uses_the_fused_adamw_which_updates_like_the_default(monkeypatch):
    from neuroml.training.trainer import make_optimizer

    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
        for _ in range(2)
    ]
    x = torch.randn(4, 1, 6, 7, 5)
    for net in nets:
        net(x)  # materialise the lazy layer
    nets[1].load_state_dict(nets[0].state_dict())
    before = [p.detach().clone() for p in nets[0].parameters()]
    opts = [
        make_optimizer(nets[0].parameters(), 1e-2, 1e-2),
        torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=1e-2),
    ]
    assert opts[0].param_groups[0]["fused"] is True and not opts[1].param_groups[0]["fused"]
    for _ in range(5):
        for net, opt in zip(nets, opts):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    moved = [not torch.equal(a, b) for a, b in zip(nets[0].parameters(), before)]
    assert all(moved)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    # where torch has no fused kernel (an older torch, another device) the default serves
    real = torch.optim.AdamW

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices"
            )
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = make_optimizer(nets[0].parameters(), 1e-3, 0.0)
    assert not opt.param_groups[0]["fused"] and opt.defaults["lr"] == 1e-3


def test_fit_leaves_volumes_on_another_grid_to_the_network(monkeypatch):
    import neuroml.training.trainer as trainer
    from neuroml.models import build_model

    model = build_model("compact", 3, spatial_shape=(37, 46, 39), input_pool=2)
    pool = trainer.input_pool_of(model)
    right, _ = _blobs(3, shape=(37, 46, 39))
    wrong, _ = _blobs(
        3, shape=(41, 46, 39)
    )  # pools to (21, 23, 20), not the network's (19, 23, 20)
    assert trainer._prepooled(VolumeDataset(right, np.arange(3)), pool).volumes.shape == (
        3,
        1,
        19,
        23,
        20,
    )
    data = VolumeDataset(wrong, np.arange(3))
    assert trainer._prepooled(data, pool) is data
    monkeypatch.setattr(
        trainer, "PREPOOL_MAX_BYTES", 10
    )  # too large to hold pooled: pooled per batch
    data = VolumeDataset(right, np.arange(3))
    assert trainer._prepooled(data, pool) is data


def test_seed_for_takes_numpy_integers_as_their_python_values():
    from neuroml.training.trainer import seed_for

    assert seed_for(np.int64(5), 1, "fold") == seed_for(5, 1, "fold")
    assert seed_for(np.int32(-3)) == seed_for(-3)
    assert seed_for(np.uint64(2**64 - 1)) == seed_for(2**64 - 1)  # used to raise OverflowError
    assert seed_for(5, 1) != seed_for(5, 2)


@pytest.mark.parametrize("extra, resume_hint", [([], True), (["--resume"], False)])
def test_an_interrupted_train_says_to_rerun_it_with_resume(
    monkeypatch, tmp_path, capsys, extra, resume_hint
):
    # "rerun the same command" alone restarts the interrupted fold: the hint must name --resume
    import logging

    import neuroml.workflows.pipeline
    from neuroml.cli import main

    log = logging.getLogger("neuroml")
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)

    def interrupted(name, **params):
        raise KeyboardInterrupt

    monkeypatch.setattr(neuroml.workflows.pipeline, "run_step", interrupted)
    assert main(["-q", "train", str(tmp_path), "--run-dir", str(tmp_path / "run")] + extra) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and ("with --resume" in err) == resume_hint


def test_after_an_interrupt_a_failing_worker_thread_prints_no_traceback(
    monkeypatch, tmp_path, capsys
):
    # Ctrl-C reaches the whole process group, so joblib's pool manager thread can fail while the
    # command winds down (its `pgrep` child was interrupted too): only the one line may show
    import logging
    import threading
    import warnings

    import neuroml.workflows.pipeline
    from neuroml.cli import main

    log = logging.getLogger("neuroml")
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))

    def interrupted(name, **params):
        raise KeyboardInterrupt

    monkeypatch.setattr(neuroml.workflows.pipeline, "run_step", interrupted)
    assert (
        main(
            [
                "-q",
                "preprocess",
                str(tmp_path),
                str(tmp_path / "out"),
                "participant",
                "--n-jobs",
                "2",
            ]
        )
        == 130
    )

    def manager():
        raise AttributeError("'Popen' object has no attribute 'kill'")

    thread = threading.Thread(target=manager, name="ExecutorManagerThread")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and "Popen" not in err
