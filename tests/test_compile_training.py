"""monet_train --compile: the training step through torch.compile computes what the eager step computes."""

from __future__ import annotations

import math

import pytest
import torch

from monetpipe.networks import build_network
from monetpipe.training.losses import build_loss
from monetpipe.training.trainer import compiled_training_loss, training_loss


def test_the_flag_reaches_the_config():
    from monetpipe.training.cli import build_parser, config_from_args

    def compile_step(*flags):
        return config_from_args(build_parser().parse_args(["-t", "4", "-m", "monet", *flags])).compile_step

    assert compile_step() is None  # decided at run time
    assert compile_step("--compile") is True
    assert compile_step("--no-compile") is False


def test_the_default_compiles_only_long_single_process_bf16_cpu_runs():
    from monetpipe.training.config import COMPILE_MIN_SECONDS, COMPILE_MIN_STEPS, is_long_run, resolve_compile

    def never_asked():
        raise AssertionError("the compiler is looked for only when everything else says compile")

    found, missing = (lambda: True), (lambda: False)
    assert resolve_compile(None, "monet", "cpu", "bf16", False, True, found)
    assert not resolve_compile(None, "monet", "cpu", "bf16", False, True, missing)  # no C++ compiler: eager
    assert not resolve_compile(None, "unet16", "cpu", "bf16", False, True, never_asked)  # it gained nothing
    assert not resolve_compile(None, "monet", "cpu", "fp32", False, True, never_asked)  # not faster everywhere
    assert not resolve_compile(None, "monet", "cuda", "bf16", False, True, never_asked)  # not measured on GPUs
    assert not resolve_compile(None, "monet", "cpu", "bf16", True, True, never_asked)  # torchrun: unsupported
    assert not resolve_compile(None, "monet", "cpu", "bf16", False, False, never_asked)  # too short to pay back
    assert resolve_compile(True, "unet16", "cpu", "fp32", False, False, never_asked)  # asked for: kept
    assert not resolve_compile(False, "monet", "cpu", "bf16", False, True, never_asked)

    assert is_long_run(60 * 60.0, math.inf) and is_long_run(None, COMPILE_MIN_STEPS)
    assert not is_long_run(COMPILE_MIN_SECONDS - 1, math.inf)  # a short budget
    assert not is_long_run(60 * 60.0, COMPILE_MIN_STEPS - 1)  # an hour's budget capped at few epochs
    assert not is_long_run(None, COMPILE_MIN_STEPS - 1)


def test_what_is_left_of_a_continued_run_decides():
    from monetpipe.training.config import TrainConfig
    from monetpipe.training.session import _long_run
    from monetpipe.training.trainer import TrainingState

    hour = TrainConfig(time_budget=3600.0)
    assert _long_run(hour, TrainingState(), iterations=141)
    assert not _long_run(hour, TrainingState(epoch=50, elapsed=3000.0), iterations=141)  # 10 minutes left
    assert _long_run(TrainConfig(), TrainingState(), iterations=141)  # 100 epochs x 141 steps
    assert not _long_run(TrainConfig(), TrainingState(epoch=90), iterations=141)  # 10 epochs left
    assert not _long_run(TrainConfig(epochs=2), TrainingState(), iterations=250)


def _parts(cpu_parts, step_loss, fallback):
    torch.manual_seed(0)
    return cpu_parts(build_network("monet", 1, 3), step_loss=step_loss, compile_fallback=fallback)


def _batches(n):
    rng = torch.Generator().manual_seed(1)
    for i in range(n):
        data = torch.randn(2, 1, 32, 48, generator=rng).numpy()
        yield {"batch": i, "data": data, "seg": torch.randint(0, 3, (2, 1, 32, 48), generator=rng).int().numpy()}


def _failing_compile(*args):
    raise RuntimeError("C++ compile error: cannot build kernel\n(details)")


def test_a_compile_that_fails_by_default_trains_eagerly_and_says_so(cpu_parts, caplog):
    from monetpipe.training.trainer import train_epoch

    parts = _parts(cpu_parts, _failing_compile, fallback=True)
    before = [p.detach().clone() for p in parts.model.parameters()]
    with caplog.at_level("WARNING", logger="monetpipe.training.trainer"):
        loss = train_epoch(parts, _batches(3), iterations=3, first_batch=0, progress=False)
    assert math.isfinite(loss) and parts.step_loss is None and parts.compile_seconds is not None
    assert any(not torch.equal(a, p) for a, p in zip(before, parts.model.parameters(), strict=True))
    assert "compiling the training step failed (RuntimeError: C++ compile error: cannot build kernel)" in caplog.text
    assert "--no-compile" in caplog.text


def test_a_compile_that_was_asked_for_fails_loudly(cpu_parts):
    from monetpipe.training.trainer import train_epoch

    with pytest.raises(RuntimeError, match="cannot build kernel"):
        parts = _parts(cpu_parts, _failing_compile, fallback=False)
        train_epoch(parts, _batches(1), iterations=1, first_batch=0, progress=False)


def test_the_first_compiled_step_is_timed_once(cpu_parts, caplog):
    from monetpipe.training.trainer import train_epoch

    calls = []

    def counting(*args):  # stands in for the compiled step: the eager one, counted
        calls.append(1)
        return training_loss(*args)

    parts = _parts(cpu_parts, counting, fallback=True)
    with caplog.at_level("INFO", logger="monetpipe.training.trainer"):
        train_epoch(parts, _batches(3), iterations=3, first_batch=0, progress=False)
    assert len(calls) == 3 and parts.step_loss is counting and parts.compile_seconds is not None
    assert caplog.text.count("compiled the training step in") == 1


def _loss_and_grads(step_loss, dtype):
    torch.manual_seed(0)
    net = build_network("monet", 1, 3).to(memory_format=torch.channels_last).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 64, 48, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (4, 64, 48), generator=gen)
    loss = step_loss(net, build_loss("dice_ce"), x, y, "cpu", dtype)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    stats = {n: b.clone() for n, b in net.named_buffers() if n.endswith("running_mean")}
    return float(loss), grads, stats


@pytest.mark.slow  # compiling MoNet's forward and backward takes about a minute on 2 cores
def test_compiled_step_matches_the_eager_step_in_fp32():
    eager_loss, eager_grads, eager_stats = _loss_and_grads(training_loss, None)
    loss, grads, stats = _loss_and_grads(compiled_training_loss(), None)
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, g in eager_grads.items():  # every parameter's gradient, to float32 rounding
        assert torch.allclose(grads[name], g, rtol=1e-3, atol=1e-6), name
    for name, b in eager_stats.items():  # BatchNorm's running statistics update inside the compiled graph too
        assert torch.allclose(stats[name], b, rtol=1e-4, atol=1e-6), name


def test_a_one_off_compile_is_left_out_of_the_epoch_time_that_plans_a_budget():
    from monetpipe.training.schedule import EpochPlanner

    planner = EpochPlanner(600.0, None)
    history = [{"seconds": 80.0, "compile_seconds": 60.0}, {"seconds": 21.0}]  # epoch 1 compiled for 60 s
    assert planner.epoch_seconds(history) == pytest.approx(21.0)
