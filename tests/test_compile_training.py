"""monet_train --compile: the training step through torch.compile computes what the eager step computes."""

from __future__ import annotations

import pytest
import torch

from monetpipe.networks import build_network
from monetpipe.training.losses import build_loss
from monetpipe.training.trainer import compiled_training_loss, training_loss


def test_the_flag_reaches_the_config():
    from monetpipe.training.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["-t", "4", "-m", "monet"])).compile_step is False
    assert config_from_args(build_parser().parse_args(["-t", "4", "-m", "monet", "--compile"])).compile_step is True


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
