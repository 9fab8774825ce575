"""Tests of neuroml.models: every network builds, runs, and works with MONAI GradCAM."""

import pytest
import torch

from neuroml.errors import ConfigError
from neuroml.models import MODELS, build_model, count_parameters, default_target_layer

# smallest inputs each network accepts (DenseNet121 pools 5 times; the ResNets pool globally)
_SHAPES = {
    "compact": (19, 23, 20),
    "densenet121": (32, 32, 32),
    "resnet10": (16, 16, 16),
    "resnet18": (16, 16, 16),
    "resnet34": (16, 16, 16),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", MODELS)
def test_every_model_forward_and_gradcam(name):
    from monai.visualize import GradCAM

    shape = _SHAPES[name]
    torch.manual_seed(0)
    model = build_model(name, 3, in_channels=1, spatial_shape=shape).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    layer = default_target_layer(name)
    assert layer in dict(model.named_modules())
    cam = GradCAM(build_model(name, 3, spatial_shape=shape).eval(), target_layers=layer)
    maps = cam(x)
    assert maps.shape == (2, 1, *shape)
    assert torch.isfinite(maps).all()


def test_compact_is_small_monai_network_with_spatial_target_map():
    from monai.networks.nets import Classifier

    model = build_model("compact", 3, spatial_shape=(73, 91, 78))  # the 2 mm grid
    assert isinstance(model, Classifier)
    assert 100_000 <= count_parameters(model) <= 300_000
    feats = {}
    layer = dict(model.named_modules())[default_target_layer("compact")]
    layer.register_forward_hook(lambda m, i, o: feats.setdefault("map", o))
    with torch.no_grad():
        model(torch.zeros(1, 1, 73, 91, 78))
    assert feats["map"].ndim == 5 and min(feats["map"].shape[2:]) > 1


def test_resnets_use_strided_first_convolution():
    model = build_model("resnet10", 2, spatial_shape=(16, 16, 16))
    assert tuple(model.conv1.stride) == (2, 2, 2)
    assert model.fc.out_features == 2


def test_two_input_channels():
    model = build_model("compact", 2, in_channels=2, spatial_shape=(19, 23, 20)).eval()
    assert model(torch.zeros(1, 2, 19, 23, 20)).shape == (1, 2)


@pytest.mark.parametrize(
    "bad, hint", [("densenet", "densenet121"), ("resnet81", "resnet18"), ("Compakt", "compact")]
)
def test_unknown_model_name_suggests(bad, hint):
    with pytest.raises(ConfigError, match=f"Did you mean '{hint}'"):
        build_model(bad, 3, spatial_shape=(19, 23, 20))
    with pytest.raises(ConfigError, match="Did you mean"):
        default_target_layer(bad)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="n_classes"):
        build_model("compact", 1, spatial_shape=(19, 23, 20))
    with pytest.raises(ConfigError, match="needs spatial_shape"):
        build_model("compact", 3)
    with pytest.raises(ConfigError, match="at least 17 voxels"):
        build_model("compact", 3, spatial_shape=(8, 9, 10))
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("resnet10", 3, in_channels=0)


# ---------------------------------------------------------------- input pooling


@pytest.mark.parametrize(
    "shape, name, expected",
    [
        ((73, 91, 78), "compact", 2),  # 2 mm MNI grid: the network sees ~4 mm
        ((146, 182, 156), "compact", 4),  # 1 mm
        ((97, 121, 104), "compact", 2),  # 1.5 mm: 4x would leave 25 voxels
        ((49, 61, 52), "compact", 1),  # 3 mm
        ((37, 46, 39), "compact", 1),  # 4 mm
        ((19, 23, 20), "compact", 1),  # 8 mm
        ((73, 91, 78), "densenet121", 1),  # the GPU networks are never pooled
    ],
)
def test_auto_input_pool_depends_on_the_grid_only(shape, name, expected):
    from neuroml.models import resolve_input_pool

    assert resolve_input_pool("auto", name, shape) == expected


def test_input_pool_argument_errors():
    from neuroml.models import resolve_input_pool

    for bad in (3, 0, True, "2", 2.5):
        with pytest.raises(ConfigError, match="'input_pool' parameter must be 'auto' or one of"):
            resolve_input_pool(bad, "compact", (73, 91, 78))
    with pytest.raises(ConfigError, match="compact network only, not 'resnet10'"):
        build_model("resnet10", 3, spatial_shape=(32, 32, 32), input_pool=2)
    with pytest.raises(ConfigError, match=r"after the input pooling by 4 \(\(10, 12, 10\)\)"):
        build_model("compact", 3, spatial_shape=(37, 46, 39), input_pool=4)


def test_pooled_compact_is_the_classifier_on_the_averaged_grid():
    import torch.nn.functional as F

    shape = (73, 91, 78)
    torch.manual_seed(0)
    pooled = build_model("compact", 3, spatial_shape=shape, input_pool=2).eval()
    full = build_model("compact", 3, spatial_shape=shape).eval()
    assert count_parameters(pooled) == count_parameters(full)  # same blocks, same head size
    x = torch.randn(2, 1, *shape)
    # 2x2x2 means, the last partial block (73 -> 37) averaged over its own voxels
    padded = F.pad(x, (0, 78 % 2, 0, 91 % 2, 0, 73 % 2))
    counts = F.pad(torch.ones(1, 1, *shape), (0, 78 % 2, 0, 91 % 2, 0, 73 % 2))
    means = F.avg_pool3d(padded, 2) / F.avg_pool3d(counts, 2)
    blocks = torch.nn.Sequential(*list(pooled.net.children())[1:])
    with torch.no_grad():
        expected = pooled.reshape(pooled.final(blocks(means)))
        assert torch.allclose(pooled(x), expected, atol=1e-5)
    # the Grad-CAM target keeps the map of the unpooled network (5 x 6 x 5 at 2 mm)
    maps = {}
    for name, net in (("pooled", pooled), ("full", full)):
        layer = dict(net.named_modules())[default_target_layer("compact")]
        layer.register_forward_hook(lambda m, i, o, name=name: maps.update({name: o.shape}))
        with torch.no_grad():
            net(x)
    assert maps["pooled"] == maps["full"] == (2, 64, 5, 6, 5)


def test_pooled_network_passes_a_pooled_batch_through():
    import torch.nn.functional as F

    from neuroml.models.factory import input_pool_of

    shape = (37, 46, 39)
    torch.manual_seed(0)
    model = build_model("compact", 2, spatial_shape=shape, input_pool=2).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        assert torch.equal(model(F.avg_pool3d(x, 2, ceil_mode=True)), model(x))
    assert input_pool_of(model).pooled_shape == (19, 23, 20)
    assert input_pool_of(torch.nn.Sequential(model)) is input_pool_of(model)
    assert input_pool_of(build_model("compact", 2, spatial_shape=shape)) is None


def test_weights_never_load_across_input_pools():
    shape = (37, 46, 39)
    one = build_model("compact", 2, spatial_shape=shape)
    two = build_model("compact", 2, spatial_shape=shape, input_pool=2)
    assert int(two.state_dict()["net.input_pool.factor"]) == 2
    with pytest.raises(RuntimeError, match="Missing key.*input_pool.factor"):
        two.load_state_dict(one.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key.*input_pool.factor"):
        one.load_state_dict(two.state_dict())
    build_model("compact", 2, spatial_shape=shape, input_pool=2).load_state_dict(two.state_dict())


# ---------------------------------------------------------------- FastDropout


@pytest.mark.parametrize("activation", ["leakyrelu", "prelu"])
def test_compact_uses_fast_layers_with_monai_state_dict_keys(activation):
    from monai.networks import nets

    from neuroml.models.layers import FastDropout, FastInstanceNorm3d

    model = build_model("compact", 3, spatial_shape=(19, 23, 20), activation=activation)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 4 and all(type(m) is FastDropout and m.p == 0.1 for m in drops)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert len(norms) == 4 and all(type(m) is FastInstanceNorm3d and not m.affine for m in norms)
    acts = [
        m
        for m in model.modules()
        if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.PReLU))
    ]
    if activation == "leakyrelu":
        assert [(type(m), m.negative_slope) for m in acts] == [(torch.nn.LeakyReLU, 0.25)] * 4
    else:
        assert [type(m) for m in acts] == [torch.nn.PReLU] * 4
    act = ("LEAKYRELU", {"negative_slope": 0.25}) if activation == "leakyrelu" else "PRELU"
    plain = nets.Classifier(
        in_shape=(1, 19, 23, 20),
        classes=3,
        channels=(8, 16, 32, 64, 64),
        strides=(2, 2, 2, 2, 1),
        kernel_size=3,
        num_res_units=0,
        act=act,
        norm="INSTANCE",
        dropout=0.1,
    )
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    plain.load_state_dict(model.state_dict())
    plain.eval(), model.eval()
    x = torch.randn(2, 1, 19, 23, 20)
    assert torch.allclose(model(x), plain(x), atol=1e-5)


def test_activation_argument():
    leaky = build_model("compact", 3, spatial_shape=(19, 23, 20))
    prelu = build_model("compact", 3, spatial_shape=(19, 23, 20), activation="prelu")
    with pytest.raises(
        RuntimeError, match="Unexpected key.*adn.A.weight"
    ):  # the two never mix silently
        leaky.load_state_dict(prelu.state_dict())
    with pytest.raises(ConfigError, match="activation.*'leakyrelu'"):
        build_model("compact", 3, spatial_shape=(19, 23, 20), activation="leaky_relu")
    with pytest.raises(ConfigError, match="compact network only"):
        build_model("resnet10", 3, activation="prelu")


# ---------------------------------------------------------------- FastInstanceNorm3d


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_instance_norm_matches_torch_in_value_gradient_and_layout(channels_last):
    from neuroml.models.layers import FastInstanceNorm3d, _InstanceNorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 8, 9, dtype=torch.float64, generator=gen) * 5 + 40  # an offset mean
    x[1, 2] *= 1e-3  # and a nearly flat channel
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    fast, ref = FastInstanceNorm3d(4), torch.nn.InstanceNorm3d(4)
    y, y_ref = fast(x), ref(x)
    assert y.grad_fn is not None and "InstanceNorm" in type(y.grad_fn).__name__  # the fast path ran
    assert y.is_contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format
    )
    assert torch.allclose(y, y_ref, atol=1e-10)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    assert torch.allclose(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], atol=1e-9
    )
    assert torch.autograd.gradcheck(
        lambda t: _InstanceNorm.apply(t, 1e-5),
        (x[:2, :2, :4, :3, :3].detach().clone().requires_grad_(True),),
    )
    x32 = x.detach().float()
    assert torch.allclose(fast.eval()(x32), ref(x32), atol=1e-4)  # float32, eval mode too


def test_fast_instance_norm_falls_back_to_torch():
    from neuroml.models.layers import FastInstanceNorm3d

    affine = FastInstanceNorm3d(2, affine=True)
    with torch.no_grad():
        affine.weight.fill_(3.0)
    x = torch.randn(2, 2, 4, 5, 6)
    ref = torch.nn.InstanceNorm3d(2, affine=True)
    with torch.no_grad():
        ref.weight.fill_(3.0)
    assert torch.allclose(affine(x), ref(x), atol=1e-6)  # torch's own kernel, with the scale
    unbatched = torch.randn(2, 4, 5, 6)
    assert torch.allclose(
        FastInstanceNorm3d(2)(unbatched), torch.nn.InstanceNorm3d(2)(unbatched), atol=1e-6
    )
    assert FastInstanceNorm3d(2)(x.bfloat16()).dtype == torch.bfloat16


def test_fast_instance_norm_edge_cases_behave_as_torch():
    from neuroml.models.layers import FastInstanceNorm3d

    fast, ref = FastInstanceNorm3d(2), torch.nn.InstanceNorm3d(2)
    empty = torch.zeros(0, 2, 4, 5, 6)
    assert (
        fast(empty).shape == ref(empty).shape == empty.shape
    )  # an empty batch (was an IndexError)
    for m in (fast, ref):  # one voxel: torch refuses rather than returning zeros
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            m(torch.randn(2, 2, 1, 1, 1))
    # the closed-form backward is not differentiable again: a double backward must fail, not be wrong
    x = torch.randn(2, 2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((fast(x) ** 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.pow(2).sum(), x)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_rate_scale_gradient_and_seeding(p):
    from neuroml.models.layers import FastDropout

    drop = FastDropout(p)
    x = torch.randn(3, 4, 50, 60, 7, requires_grad=True)
    torch.manual_seed(5)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # 252,000 draws: sd < 0.001
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))
    torch.manual_seed(5)
    assert torch.equal(drop(x), y)  # torch's seed fixes the mask
    assert not torch.equal(drop(x), y)  # and the stream moves on
    # all four 16-bit lanes of a 64-bit draw are used alike (a 5D mask is drawn in channels-last
    # order: with 4 channels, lane k is channel k); 63,000 draws a lane: sd < 0.002
    lanes = kept.permute(0, 2, 3, 4, 1).reshape(-1, 4).float().mean(0)
    assert ((lanes - (1 - p)).abs() < 0.008).all()


def test_fast_dropout_same_mask_in_channels_last_and_bf16_and_identity_in_eval():
    from neuroml.models.layers import FastDropout

    drop = FastDropout(0.2)
    x = torch.randn(2, 3, 5, 6, 7)
    torch.manual_seed(1)
    ref = drop(x)
    torch.manual_seed(1)
    cl = drop(x.contiguous(memory_format=torch.channels_last_3d))
    assert cl.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(cl, ref)
    # a 5D mask is drawn in channels-last order: the same draws as for the permuted tensor
    torch.manual_seed(1)
    flat = drop(x.permute(0, 2, 3, 4, 1).reshape(-1)).view(2, 5, 6, 7, 3).permute(0, 4, 1, 2, 3)
    assert torch.equal(flat != 0, ref != 0) and torch.allclose(ref[ref != 0], x[ref != 0] / 0.8)
    torch.manual_seed(1)
    half = drop(x.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.equal(half != 0, ref != 0)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))


# ---------------------------------------------------------------- FastADN


def _adn(channels=4, p=0.3, act=("LEAKYRELU", {"negative_slope": 0.25})):
    from monai.networks.blocks import ADN

    from neuroml.models.layers import FastADN, use_fast_layers

    return FastADN.from_adn(
        use_fast_layers(
            ADN("NDA", channels, norm="INSTANCE", norm_dim=3, dropout=p, dropout_dim=1, act=act)
        )
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_adn_is_norm_dropout_leaky_relu_in_value_gradient_mask_and_layout(channels_last):
    block = _adn()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 8, 9, dtype=torch.float64, generator=gen) * 5 + 40
    x[1, 2] *= 1e-3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    torch.manual_seed(3)
    y = block(x)
    assert type(y.grad_fn).__name__.startswith("_NormDropAct")  # the fused path ran
    torch.manual_seed(3)
    y_ref = block.A(block.D(block.N(x)))  # the three children in turn, the same seed
    assert "NormDropAct" not in type(y_ref.grad_fn).__name__
    assert torch.equal(y == 0, y_ref == 0)  # the same dropout mask
    dropped = (y == 0).double().mean().item()
    assert 0.27 < dropped < 0.33  # p = 0.3 over 2,016 values (sd 0.01; no input is exactly 0)
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format
    )
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    (grad,) = torch.autograd.grad(y, x, g)
    (grad_ref,) = torch.autograd.grad(y_ref, x, g)
    assert torch.allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)
    assert grad.is_contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format
    )

    def seeded(t):  # gradcheck evaluates many times: the same mask each time
        torch.manual_seed(4)
        return block(t)

    small = x[:2, :, :4, :3, :3].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(seeded, (small,))


def test_fast_adn_runs_its_children_in_eval_mode_and_on_other_inputs():
    from neuroml.models.layers import FastADN

    block = _adn()
    calls = []
    block.A.register_forward_hook(lambda *_: calls.append("A"))
    x = torch.randn(2, 4, 5, 6, 7)
    block.train()
    block(x)
    assert calls == []  # fused: the activation module itself did not run
    block.eval()
    y = block(x)
    assert calls == ["A"] and torch.allclose(
        y, torch.nn.functional.leaky_relu(torch.nn.InstanceNorm3d(4)(x), 0.25), atol=1e-5
    )  # eval: no dropout, hooks fire
    block.train()
    half = block(x.bfloat16())  # torch's norm for bf16: the children in turn
    assert half.dtype == torch.bfloat16 and calls == ["A", "A"]
    with pytest.raises(RuntimeError):  # a double backward through the closed form fails loudly
        xx = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad((block(xx) ** 3).sum(), xx, create_graph=True)
        torch.autograd.grad(g.pow(2).sum(), xx)
    assert _adn(act="PRELU") is None  # only the leaky ReLU is fused
    no_drop = _adn(p=0.0).train()(x)  # p = 0: the children in turn, nothing dropped
    assert torch.allclose(
        no_drop, torch.nn.functional.leaky_relu(torch.nn.InstanceNorm3d(4)(x), 0.25), atol=1e-5
    )
    leaky = build_model("compact", 3, spatial_shape=(19, 23, 20))
    prelu = build_model("compact", 3, spatial_shape=(19, 23, 20), activation="prelu")
    assert sum(type(m) is FastADN for m in leaky.modules()) == 4
    assert not any(type(m) is FastADN for m in prelu.modules())


def test_fast_dropout_near_p_zero_and_one_and_in_float64():
    from neuroml.models.layers import FastADN, FastDropout

    x = torch.ones(100_000)
    assert torch.equal(
        FastDropout(1 - 1e-7)(x), torch.zeros_like(x)
    )  # all dropped, none scaled by 1e7
    assert torch.equal(FastDropout(1e-7)(x), x / (1 - 1e-7))  # none dropped
    block = _adn(p=1 - 1e-7)
    assert type(block) is FastADN and torch.equal(
        block(torch.randn(2, 4, 5, 6, 7)), torch.zeros(2, 4, 5, 6, 7)
    )
    x64 = torch.randn(1000, dtype=torch.float64)
    y = FastDropout(0.1)(x64)
    kept = y != 0
    assert torch.equal(y[kept], x64[kept] * (1 / 0.9))  # scaled in float64, as torch's dropout
