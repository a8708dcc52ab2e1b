"""The networks: exact to the paper's official code, any legal size, trainable, foldable, exportable.

The 31M-parameter U-Nets are built once per module and only see small inputs (48x80, 32x32).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from monetpipe.networks import (
    build_network,
    count_parameters,
    export_onnx,
    flops_per_slice,
    fuse_for_inference,
    list_networks,
)
from monetpipe.networks.attention_unet import AttentionGate
from monetpipe.networks.monet import RDDC

NAMES = list_networks()
BIG = {"unet64", "attention_unet"}
# (params_trainable, params_keras) for in_channels=1, num_classes=1: the paper's Table 3 / Keras summary
EXPECTED_PARAMS = {
    "monet": (401_666, 403_556),
    "unet16": (1_943_761, 1_946_705),
    "unet64": (31_042_369, 31_054_145),
    "attention_unet": (31_741_573, 31_753_349),
}
DIVISOR = {"monet": 4, "unet16": 16, "unet64": 16, "attention_unet": 16}


@cache
def base_model(name: str) -> nn.Module:
    """One C=1, K=1 model per name for the whole module (the 31M-parameter U-Nets are slow to build)."""
    torch.manual_seed(0)
    return build_network(name, 1, 1)


def _randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm statistics and affine parameters far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 3 - 1.5)  # includes negative scales
                m.bias.copy_(torch.rand(c, generator=g) * 2 - 1)


# ---------------------------------------------------------------- registry and sizes


def test_registry_names_and_helpful_errors():
    assert NAMES == ["monet", "unet16", "unet64", "attention_unet"]
    with pytest.raises(ValueError) as err:
        build_network("unet32", 1, 1)
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ValueError, match="dropout_enc"):
        build_network("monet", 1, 1, dropout=0.5)  # U-Net's option name, not MoNet's
    assert build_network("MoNet", 1, 1, dropout_enc=0.1).encoders[0].rddc.drop1.p == 0.1


@pytest.mark.parametrize("name", NAMES)
def test_exact_parameter_counts(name):
    counts = count_parameters(base_model(name))
    trainable, keras = EXPECTED_PARAMS[name]
    assert counts == {"params_trainable": trainable, "params_keras": keras}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,classes", [(1, 1), (4, 3)])
def test_logits_shape_on_non_square_legal_size(name, channels, classes):
    model = base_model(name) if (channels, classes) == (1, 1) else build_network(name, channels, classes)
    assert model.size_divisor == DIVISOR[name]
    with torch.no_grad():
        out = model.eval()(torch.randn(2, channels, 48, 80))
    assert out.shape == (2, classes, 48, 80)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_illegal_size_or_channels_says_what_to_do(name):
    model = base_model(name)
    d = DIVISOR[name]
    with pytest.raises(ValueError, match=f"pad the input to {4 * d}x80"):
        model(torch.zeros(1, 1, 3 * d + 2, 80))
    with pytest.raises(ValueError, match=f"pad the input to 48x{2 * d}"):
        model(torch.zeros(1, 1, 48, d + 1))
    with pytest.raises(ValueError, match="built for 1 input channel"):
        model(torch.zeros(1, 3, 48, 80))


# ---------------------------------------------------------------- training and inference forms


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = base_model(name).train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    out = model(torch.randn(2, 1, 32, 48))
    (out.square().mean() + out.mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient (not on the forward path?)"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [n if n not in BIG else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_every_network_learns_under_monet_trains_loss_and_optimiser(name, disks):
    """Each network, with monet_train's default loss and NAdam learning rate, segments disks it has not
    seen after 40 steps on others: the check that training a network learns at all, deterministic
    (the demo's short smoke runs of the 31M-parameter U-Nets are too noisy for it). Those two take about
    25 s each on 2 cores, so they run with the slow tests."""
    from monetpipe.evaluation.metrics import dice as dice_score
    from monetpipe.training.config import TrainConfig
    from monetpipe.training.losses import build_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model, config = build_network(name, 1, 1).train(), TrainConfig()
    loss_fn, optimizer = build_loss(config.loss), torch.optim.NAdam(model.parameters(), lr=config.lr)
    for _ in range(40):
        x, y = disks(4, 32, gen)
        loss = loss_fn(model(x), y[:, 0].long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # BatchNorm's running statistics move at Keras' momentum (0.01 a step): after 40 steps they are still
    # mostly their initial values, so measure them afresh over unseen batches before evaluating.
    torch.optim.swa_utils.update_bn([disks(16, 32, gen)[0] for _ in range(4)], model)
    x, truth = disks(16, 32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model.eval()(x) > 0
    dice = dice_score(truth.bool().numpy(), predicted.numpy())
    assert dice > 0.8, f"{name} after 40 steps on disks: Dice {dice:.3f} on unseen disks"


@pytest.mark.parametrize("name", NAMES)
def test_fused_inference_form_matches_eval(name):
    model = base_model(name)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 1, 48, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
        fused = fuse_for_inference(model)
        got = fused(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()

    def count(m, kind):
        return sum(isinstance(s, kind) for s in m.modules())

    assert count(fused, nn.modules.dropout._DropoutNd) == 0
    assert not fused.training and fused.size_divisor == model.size_divisor
    bn_before = count(model, nn.BatchNorm2d)
    if name == "monet":
        assert bn_before == 30 and count(fused, nn.BatchNorm2d) == 0  # every BN follows a conv
    else:
        # ReLU -> BN -> padded conv: only the last BN (feeding the 1x1 head) folds exactly
        assert count(fused, nn.BatchNorm2d) == bn_before - 1
    assert count(model, nn.BatchNorm2d) == bn_before  # the original is untouched


# ---------------------------------------------------------------- MoNet is the paper's MoNet


def _rddc_blocks(model):
    return [m for m in model.modules() if isinstance(m, RDDC)]


def test_monet_rddc_layers_and_keras_details():
    model = base_model("monet")
    blocks = _rddc_blocks(model)
    assert [b.cbe1.conv.in_channels for b in blocks] == [16, 32, 64, 32, 16]  # enc0 enc1 mid dec1 dec0
    for block in blocks:
        convs = [block.cbe1.conv, block.cbe2.conv, block.cbe3.conv, block.cbe4.conv]
        assert [c.dilation for c in convs] == [(4, 4), (3, 3), (2, 2), (1, 1)]
        assert [c.padding for c in convs] == [(4, 4), (3, 3), (2, 2), (1, 1)]  # Keras "same"
        assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
        drops = [block.drop1, block.drop2, block.drop3]
        assert all(type(d) is nn.Dropout2d and d.p == 0.2 for d in drops)
        assert not block.outer_residual
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    for stage in model.encoders:
        down = stage.down.conv
        assert (down.kernel_size, down.stride, down.padding) == ((4, 4), (2, 2), (1, 1))
    for stage in model.decoders:
        up = stage.up.conv
        assert isinstance(up, nn.ConvTranspose2d) and up.in_channels == up.out_channels  # keeps channels
        assert (up.kernel_size, up.stride, up.padding, up.bias) == ((4, 4), (2, 2), (1, 1), None)
    head = model.head
    assert head.conv.kernel_size == (1, 1) and head.conv.bias is None
    assert isinstance(head.norm, nn.BatchNorm2d) and isinstance(head.act, nn.Identity)


def test_monet_he_uniform_init():
    """Keras he_uniform: U(+-sqrt(6 / fan_in)); PyTorch's default would be 2.4x narrower."""
    torch.manual_seed(0)
    model = build_network("monet", 1, 1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.weight.numel() >= 4096:
            fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
            limit = math.sqrt(6 / fan_in)
            w = m.weight.detach()
            assert w.abs().max() <= limit
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.05)


def _keras_fans(layer: nn.Conv2d | nn.ConvTranspose2d) -> tuple[int, int]:
    """Fan-in and fan-out as Keras computes them from its kernel shape (kh, kw, a, b): kh * kw * a, kh * kw * b.

    Keras' Conv2D kernel is (kh, kw, in / groups, out); its Conv2DTranspose kernel is (kh, kw, out, in).
    """
    kh, kw = layer.kernel_size
    if isinstance(layer, nn.ConvTranspose2d):
        a, b = layer.out_channels, layer.in_channels
    else:
        a, b = layer.in_channels // layer.groups, layer.out_channels
    return kh * kw * a, kh * kw * b


@pytest.mark.parametrize("name", NAMES)
def test_init_draws_from_keras_he_and_glorot_ranges(name):
    """he_uniform_ / glorot_uniform_ (torch's kaiming / xavier) draw exactly U(+-limit) with Keras' limits."""
    import copy

    from monetpipe.networks.blocks import glorot_uniform_, he_uniform_

    layers = [m for m in base_model(name).modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    kinds = {(type(m), m.in_channels, m.out_channels, m.kernel_size, m.groups): m for m in layers}
    assert any(isinstance(m, nn.ConvTranspose2d) for m in kinds.values())
    for layer in kinds.values():
        fan_in, fan_out = _keras_fans(layer)
        for init, limit in ((he_uniform_, math.sqrt(6 / fan_in)), (glorot_uniform_, math.sqrt(6 / (fan_in + fan_out)))):
            ours = copy.deepcopy(layer)
            torch.manual_seed(7)
            init(ours)
            torch.manual_seed(7)
            keras = torch.empty_like(layer.weight).uniform_(-limit, limit)
            torch.testing.assert_close(ours.weight.detach(), keras, rtol=1e-6, atol=0)
            assert ours.weight.abs().max() <= limit
            assert ours.bias is None or not ours.bias.any()


class _Recorder:
    """Forward hooks recording (name, inputs, output) in call order."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.calls: list[tuple[str, tuple, object]] = []
        self.handles = [
            model.get_submodule(n).register_forward_hook(lambda mod, args, out, n=n: self.calls.append((n, args, out)))
            for n in names
        ]

    def __getitem__(self, name: str) -> tuple[tuple, object]:
        (hit,) = [(args, out) for n, args, out in self.calls if n == name]
        return hit

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _names_under(model: nn.Module, kind: type) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, kind)]


@pytest.mark.parametrize("outer_residual", [False, True])
def test_monet_rddc_residual_sums(outer_residual):
    torch.manual_seed(0)
    model = build_network("monet", 1, 1, outer_residual=outer_residual).eval()
    _randomize_bn(model)
    rddcs = _names_under(model, RDDC)
    assert len(rddcs) == 5
    cbes = [f"{r}.cbe{i}" for r in rddcs for i in range(1, 5)]
    rec = _Recorder(model, rddcs + cbes)
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 48))
    rec.close()
    close = torch.testing.assert_close
    for r in rddcs:
        (x,), out = rec[r]
        (in1,), c1 = rec[f"{r}.cbe1"]
        (in2,), c2 = rec[f"{r}.cbe2"]
        (in3,), c3 = rec[f"{r}.cbe3"]
        (in4,), c4 = rec[f"{r}.cbe4"]
        close(in1, x)
        close(in2, x + c1)  # first residual: block input + d=4 branch
        close(in3, c2)
        close(in4, c2 + c3)  # second residual: d=3 output + d=2 output
        close(out, x + c4 if outer_residual else c4)


def test_monet_stage_shapes_and_skip_order():
    model = base_model("monet").eval()
    stages = ["encoders.0", "encoders.1", "bottleneck", "decoders.0.up", "decoders.0", "decoders.1.up"]
    stages += [
        "decoders.1",
        "head",
        "encoders.0.rddc",
        "encoders.1.rddc",
        "decoders.0.stem",
        "decoders.1.stem",
    ]
    rec = _Recorder(model, stages)
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    rec.close()

    def shape(t):
        return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(tuple(s.shape) for s in t)

    main_path = [(n, shape(out)) for n, _, out in rec.calls if n in stages[:8]]
    assert main_path == [
        ("encoders.0", ((1, 16, 64, 64), (1, 16, 32, 32))),  # (skip0, stride-2 down)
        ("encoders.1", ((1, 32, 32, 32), (1, 32, 16, 16))),  # (skip1, down)
        ("bottleneck", (1, 64, 16, 16)),
        ("decoders.0.up", (1, 64, 32, 32)),  # transposed conv keeps 64 channels
        ("decoders.0", (1, 32, 32, 32)),
        ("decoders.1.up", (1, 32, 64, 64)),
        ("decoders.1", (1, 16, 64, 64)),
        ("head", (1, 1, 64, 64)),
    ]
    # cat[skip, up]: the deepest skip meets the first decoder, skip channels first
    for dec, enc, c in [("decoders.0", "encoders.1", 32), ("decoders.1", "encoders.0", 16)]:
        (stem_in,), _ = rec[f"{dec}.stem"]
        torch.testing.assert_close(stem_in[:, :c], rec[f"{enc}.rddc"][1])
        torch.testing.assert_close(stem_in[:, c:], rec[f"{dec}.up"][1])


# ---------------------------------------------------------------- the U-Net baselines


@pytest.mark.parametrize("name", ["unet16", "attention_unet"])
def test_unet_block_order_shapes_and_concat(name):
    model = base_model(name).eval()
    f = 16 if name == "unet16" else 64
    inner = ["conv1", "act1", "norm1", "drop", "conv2", "act2", "norm2"]
    names = [f"encoders.0.{n}" for n in inner] + [f"encoders.{i}" for i in range(4)] + ["bottleneck"]
    names += [f"decoders.{i}.{n}" for i in range(4) for n in ("up", "block")]
    if name == "attention_unet":
        names += [f"decoders.{i}.gate" for i in range(4)]
    rec = _Recorder(model, names)
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    rec.close()
    # keras-unet order: Conv -> ReLU -> BN (-> SpatialDropout) -> Conv -> ReLU -> BN
    assert [n.split(".")[-1] for n, _, _ in rec.calls[:7]] == inner
    assert type(model.encoders[0].drop) is nn.Dropout2d and model.encoders[0].drop.p == 0.3
    assert type(model.bottleneck.drop) is nn.Dropout2d
    assert all(isinstance(d.block.drop, nn.Identity) for d in model.decoders)  # no decoder dropout
    for i in range(4):
        assert tuple(rec[f"encoders.{i}"][1].shape) == (1, f * 2**i, 32 >> i, 32 >> i)
    assert tuple(rec["bottleneck"][1].shape) == (1, 16 * f, 2, 2)
    for i in range(4):
        level = 3 - i
        up = rec[f"decoders.{i}.up"][1]
        skip = rec[f"encoders.{level}"][1]
        assert tuple(up.shape) == (1, f * 2**level, 32 >> level, 32 >> level)
        (block_in,), _ = rec[f"decoders.{i}.block"]
        c = up.shape[1]
        torch.testing.assert_close(block_in[:, :c], up)  # cat[up, skip]
        if name == "attention_unet":
            (gate_skip, gate_up), gated = rec[f"decoders.{i}.gate"]
            torch.testing.assert_close(gate_skip, skip)
            torch.testing.assert_close(gate_up, up)  # gated by the already up-sampled map
            torch.testing.assert_close(block_in[:, c:], gated)
        else:
            torch.testing.assert_close(block_in[:, c:], skip)


def test_attention_gate_formula_and_size():
    torch.manual_seed(0)
    gate = AttentionGate(8, 8, 8)
    assert sum(p.numel() for p in gate.parameters()) == 2 * 8 * 8 + 3 * 8 + 1
    skip, up = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    a = torch.sigmoid(gate.psi(torch.relu(gate.wx(skip) + gate.wg(up))))
    assert a.shape == (2, 1, 6, 6)
    torch.testing.assert_close(gate(skip, up), skip * a)


# ---------------------------------------------------------------- FLOPs


def _monet_macs(h: int, w: int, c: int = 1, k: int = 1) -> int:
    """MoNet's multiply-accumulates by hand, from the layer list in docs/networks.md."""

    def conv(cin, cout, ksize, hw):
        return cin * cout * ksize * ksize * hw

    def rddc(ch, hw):
        return 4 * conv(ch, ch, 3, hw)

    p0, p1, p2 = h * w, h * w // 4, h * w // 16
    enc = conv(c, 16, 3, p0) + rddc(16, p0) + conv(16, 16, 4, p1)
    enc += conv(16, 32, 3, p1) + rddc(32, p1) + conv(32, 32, 4, p2)
    mid = conv(32, 64, 3, p2) + rddc(64, p2)
    dec = 64 * 64 * 16 * p2 + conv(96, 32, 3, p1) + rddc(32, p1)  # transposed conv: per input pixel
    dec += 32 * 32 * 16 * p1 + conv(48, 16, 3, p0) + rddc(16, p0)
    return enc + mid + dec + conv(16, k, 1, p0)


def _unet_macs(f: int, h: int, w: int, attention: bool) -> int:
    """U-Net-f multiply-accumulates by hand (1 channel in, 1 class out)."""
    total, cin = 0, 1
    for level in range(5):
        c, hw = f * 2**level, h * w >> (2 * level)
        total += 9 * hw * (cin * c + c * c)
        cin = c
    for level in reversed(range(4)):
        c, hw = f * 2**level, h * w >> (2 * level)
        total += (hw // 4) * 2 * c * c * 4 + 9 * hw * (2 * c * c + c * c)
        if attention:
            total += hw * (2 * c * c + c)
    return total + h * w * f


def test_flops_match_hand_counts():
    assert flops_per_slice("monet") == 2 * _monet_macs(256, 256) == 9_516_875_776  # ~4.76 GMAC
    assert flops_per_slice("monet", 48, 80, in_channels=4, num_classes=3) == 2 * _monet_macs(48, 80, 4, 3)
    assert flops_per_slice("unet16") == 2 * _unet_macs(16, 256, 256, attention=False)
    assert flops_per_slice("unet64") == 2 * _unet_macs(64, 256, 256, attention=False)
    assert flops_per_slice("attention_unet") == 2 * _unet_macs(64, 256, 256, attention=True)
    model = build_network("monet", 2, 1)
    assert flops_per_slice(model, 128, 128) == 2 * _monet_macs(128, 128, 2)
    assert model.training  # counting leaves the model's mode alone


# flops_per_slice before it counted with torch.utils.flop_counter (forward hooks, 2 x MACs of every conv):
# the same numbers, for every network, at other sizes and channel counts too
FLOPS_BEFORE_FLOP_COUNTER_MODE = {
    ("monet", 256, 256, 1, 1): 9_516_875_776,
    ("monet", 48, 80, 4, 3): 561_192_960,
    ("monet", 512, 512, 1, 2): 38_075_891_712,
    ("monet", 64, 48, 2, 1): 446_988_288,
    ("unet16", 256, 256, 1, 1): 6_027_214_848,
    ("unet16", 48, 80, 4, 3): 356_720_640,
    ("unet16", 512, 512, 1, 2): 24_117_248_000,
    ("unet16", 64, 48, 2, 1): 283_410_432,
    ("unet64", 256, 256, 1, 1): 96_183_779_328,
    ("unet64", 48, 80, 4, 3): 5_650_022_400,
    ("unet64", 512, 512, 1, 2): 384_768_671_744,
    ("unet64", 64, 48, 2, 1): 4_512_153_600,
    ("attention_unet", 256, 256, 1, 1): 100_494_475_264,
    ("attention_unet", 48, 80, 4, 3): 5_902_602_240,
    ("attention_unet", 512, 512, 1, 2): 402_011_455_488,
    ("attention_unet", 64, 48, 2, 1): 4_714_217_472,
}


@pytest.mark.parametrize("key", FLOPS_BEFORE_FLOP_COUNTER_MODE)
def test_flop_counter_mode_counts_what_the_hooks_counted(key):
    name, h, w, c, k = key
    assert flops_per_slice(name, h, w, in_channels=c, num_classes=k) == FLOPS_BEFORE_FLOP_COUNTER_MODE[key]


# ---------------------------------------------------------------- ONNX


def _check_onnx_round_trip(model: nn.Module, path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    _randomize_bn(model)
    channels = model.in_channels
    written = export_onnx(model.train(), path, channels, 32, 48)
    assert model.training  # mode restored
    assert written.is_file() and not list(path.parent.glob(".*.tmp"))
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    x = torch.randn(3, channels, 32, 48)  # batch 3: not the batch of 2 used for export
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["monet", "attention_unet"])
def test_onnx_round_trip_with_dynamic_batch(name, tmp_path):
    """Every op type: MoNet's, and the U-Nets' plus the gate (narrowed to filters=8 to export fast)."""
    torch.manual_seed(0)
    overrides = {"filters": 8} if name == "attention_unet" else {}
    _check_onnx_round_trip(build_network(name, 2, 3, **overrides), tmp_path / f"{name}.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet16", "unet64", "attention_unet"])
def test_onnx_round_trip_full_size(name, tmp_path):
    _check_onnx_round_trip(base_model(name), tmp_path / f"{name}.onnx")


def test_onnx_export_refuses_illegal_size(tmp_path):
    with pytest.raises(ValueError, match="pad the input to 52x48"):
        export_onnx(base_model("monet"), tmp_path / "m.onnx", 1, 50, 48)
    assert not (tmp_path / "m.onnx").exists()
