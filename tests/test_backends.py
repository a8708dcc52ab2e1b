"""Every inference backend predicts what the eager network predicts: logits close, masks the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monetpipe.errors import MonetError
from monetpipe.inference.backends import (
    BACKENDS,
    ExpELU,
    InferenceModel,
    _SliceParallel,
    _StaticBatchRunner,
    available_backends,
    make_inference_model,
)
from monetpipe.networks import build_network, list_networks

# (H, W) per network: non-square, legal for its size divisor (4 for MoNet, 16 for the U-Nets)
SIZES = {"monet": (36, 28), "unet16": (48, 32), "unet64": (32, 48), "attention_unet": (32, 48)}


def trained_like(name: str, num_classes: int, seed: int = 0) -> nn.Module:
    """A network whose BatchNorm statistics and affine terms are not the identity, as after training.

    With default statistics (mean 0, var 1, gamma 1, beta 0) folding would be nearly a no-op and a
    wrong fold could pass unnoticed.
    """
    torch.manual_seed(seed)
    model = build_network(name, 1, num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def masks(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(1)


def assert_same_prediction(reference: torch.Tensor, logits: torch.Tensor) -> None:
    assert logits.shape == reference.shape and logits.dtype == torch.float32
    scale = reference.abs().max().item()
    torch.testing.assert_close(logits, reference, rtol=1e-3, atol=1e-3 * max(scale, 1.0))
    agreement = (masks(logits) == masks(reference)).float().mean().item()
    assert agreement >= 0.9999


def check_backend(name: str, backend: str, num_classes: int, workers: int = 1) -> InferenceModel:
    model = trained_like(name, num_classes)
    h, w = SIZES[name]
    x = torch.randn(3, 1, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    fn = make_inference_model(model, backend, workers=workers)
    assert_same_prediction(reference, fn(x))
    # a short batch (the last one of a volume) and channels_last input give the same answer
    assert_same_prediction(reference[:2], fn(x[:2].contiguous(memory_format=torch.channels_last)))
    assert fn(x).is_contiguous()
    return fn


@pytest.mark.parametrize("name", list_networks())
def test_torch_backend_matches_eager(name):
    check_backend(name, "torch", num_classes=3 if name == "monet" else 1)


def test_eager_backend_is_the_model():
    check_backend("monet", "eager", num_classes=1)


def test_torch_backend_folds_and_leaves_the_model_alone():
    model = trained_like("monet", 2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn = make_inference_model(model, "torch")
    assert model.training  # the caller's model is neither switched to eval nor changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fn.module.modules())
    assert fn.channels_last and fn.model_name == "monet" and fn.size_divisor == 4


def test_onnxruntime_backend_matches_eager():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fn = check_backend("monet", "onnxruntime", num_classes=2)
    assert fn.setup_s > 0  # the export is counted as set-up, not as inference time


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet16", "attention_unet"])
def test_onnxruntime_backend_matches_eager_unets(name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    check_backend(name, "onnxruntime", num_classes=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["monet", "unet16"])
def test_torch_compile_backend_matches_eager(name):
    check_backend(name, "torch_compile", num_classes=3)


def test_exp_elu_equals_elu():
    x = torch.linspace(-30, 10, 200_001)
    torch.testing.assert_close(ExpELU()(x), nn.functional.elu(x), rtol=0, atol=1e-7)
    torch.testing.assert_close(ExpELU(0.5)(x), nn.functional.elu(x, alpha=0.5), rtol=0, atol=1e-7)


def test_static_batch_runner_pads_short_and_splits_long_batches():
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2

    firsts = []
    runner = _StaticBatchRunner(fn, firsts.append)
    x = torch.arange(10.0).view(10, 1, 1, 1)
    assert torch.equal(runner(x[:4]), x[:4] * 2)
    assert torch.equal(runner(x[:3]), x[:3] * 2)  # padded to 4, cropped back
    assert torch.equal(runner(x), x * 2)  # split into 4 + 4 + 2 (padded)
    assert set(seen) == {4} and len(firsts) == 1  # one shape only: nothing to recompile


def test_unknown_or_unusable_backend_is_refused_with_the_choices():
    model = build_network("monet", 1, 1)
    with pytest.raises(MonetError, match="torch_compile"):
        make_inference_model(model, "tensorrt")
    with pytest.raises(MonetError, match="CPU"):
        make_inference_model(model, "onnxruntime", device="meta")
    assert set(available_backends()) <= set(BACKENDS)


def test_cli_lists_the_same_backends():
    from monetpipe.benchmark import cli

    assert tuple(cli.BACKENDS) == BACKENDS


@pytest.fixture
def keep_threads():
    """Workers set PyTorch's thread count process-wide; give the other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_slice_parallel_workers_predict_the_same(backend, keep_threads):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    torch.set_num_threads(2)
    fn = check_backend("monet", backend, num_classes=3, workers=2)  # batch 3 -> parts of 2 and 1
    assert fn.workers == 2 and torch.get_num_threads() == 1  # 2 threads over 2 workers: 1 each


def _inductor_flags() -> tuple[bool, bool]:
    import torch._inductor.config as inductor_config

    return inductor_config.freezing, inductor_config.cpp_wrapper


@pytest.mark.slow
def test_slice_parallel_torch_compile_predicts_the_same(keep_threads):
    before = _inductor_flags()
    check_backend("monet", "torch_compile", num_classes=3, workers=2)
    assert _inductor_flags() == before  # Inductor's process-wide config is back as it was


def test_torch_compile_patches_inductor_config_only_while_compiling(keep_threads, monkeypatch):
    """Workers compile a new shape once, under a lock, with freezing/cpp_wrapper on; every later call
    runs with the config as it was, and it is restored afterwards (a stand-in replaces the compiler)."""
    seen = []  # (batch size, freezing, cpp_wrapper) at each call of the "compiled" graph

    def fake_compile(module, dynamic=False):
        def graph(x):
            seen.append((x.shape[0], *_inductor_flags()))
            return module(x)

        return graph

    monkeypatch.setattr(torch, "compile", fake_compile)
    before = _inductor_flags()
    assert before == (False, False)
    torch.set_num_threads(2)
    fn = make_inference_model(build_network("monet", 1, 3).eval(), "torch_compile", workers=2)
    x = torch.randn(8, 1, 32, 32)
    for _ in range(5):
        fn(x)
    assert _inductor_flags() == before
    assert seen[0][1:] == (True, True)  # the first call of the shape compiled with the options
    assert all(tuple(flags) == (False, False) for _, *flags in seen[1:])  # later calls left the config alone


def test_slice_parallel_keeps_order_and_runs_a_new_shape_alone_first():
    import threading
    import time

    calls = []  # (shape, running-at-once count)
    running = [0]
    lock = threading.Lock()
    both_running = threading.Event()
    wait_for_partner = [False]

    def fn(x):
        with lock:
            running[0] += 1
            calls.append((tuple(x.shape), running[0]))
            if running[0] == 2:
                both_running.set()
        if wait_for_partner[0]:  # run in parallel, the first part sees the second arrive (a busy host is slow)
            both_running.wait(10)
        else:
            time.sleep(0.05)
        with lock:
            running[0] -= 1
        return x * 2

    runner = _SliceParallel(fn, workers=2, threads=1)
    x = torch.arange(10.0).view(10, 1, 1, 1)
    assert torch.equal(runner(x[:4]), x[:4] * 2)  # first call for this shape: part 1 alone, then part 2
    assert calls[0] == ((2, 1, 1, 1), 1)
    calls.clear()
    wait_for_partner[0] = True
    assert torch.equal(runner(x[:5]), x[:5] * 2)  # known shape: both parts (3 + 2) at once
    assert sorted(c[0][0] for c in calls) == [2, 3] and max(c[1] for c in calls) == 2
    assert torch.equal(runner(x[:1]), x[:1] * 2)  # a single slice is not split


def test_bad_worker_counts_are_refused(keep_threads):
    model = build_network("monet", 1, 1)
    with pytest.raises(MonetError, match="at least 1"):
        make_inference_model(model, "torch", workers=0)
    with pytest.raises(MonetError, match="CPU"):
        make_inference_model(model, "torch", device="meta", workers=2)


def test_compile_cache_is_persistent_and_respects_the_users_choice(tmp_path, monkeypatch):
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from monetpipe.inference.backends import INDUCTOR_CACHE_ENV, compile_cache_dir, use_compile_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # importing torch._inductor writes its /tmp default into the environment: that is not a user's choice
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, default_cache_dir())
    assert use_compile_cache() == tmp_path / "xdg" / "monetpipe" / "inductor"
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "xdg" / "monetpipe" / "inductor")
    assert (tmp_path / "xdg" / "monetpipe" / "inductor").is_dir()
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "mine"))
    assert use_compile_cache() == compile_cache_dir() == tmp_path / "mine"
