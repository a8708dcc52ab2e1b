"""monet_federated --time-budget: rounds fitted to a wall-clock budget with a poly LR decay to the floor.

The planning is checked with simulated round times (no Flower, no torch); a real local federation under a
budget of seconds is in test_federated.py.
"""

from __future__ import annotations

import json
import time

import pytest

from monetpipe.errors import MonetError
from monetpipe.federated.budget import RoundBudget
from monetpipe.federated.settings import FederatedConfig


def _simulate(budget: RoundBudget, round_s: float, val_s: float, history: list | None = None, spent: float = 0.0):
    """Run rounds of ``round_s`` seconds (``val_s`` of them inner validation) on a simulated clock, as the
    server loop does; returns the history and the simulated seconds spent in this call."""
    history = [] if history is None else history
    start = time.perf_counter()
    budget.planner.started = start
    while (left := budget.rounds_left(len(history), history)) is None or left > 0:
        lr = budget.round_lr(history)
        spent += round_s
        history.append({"epoch": len(history) + 1, "lr": lr, "seconds": round_s, "val_seconds": val_s})
        budget.planner.started = start - spent  # the clock moved on by the round
        budget.round_saved(0.0)
        if len(history) > 1000:
            raise AssertionError("the budget never ran out")
    return history, spent


def test_without_a_budget_the_rounds_are_counted_and_the_lr_is_constant():
    settings = FederatedConfig()
    assert settings.rounds is None and settings.max_rounds == 10 and settings.describe_rounds() == "10 round(s)"
    budget = RoundBudget.create(None, settings.max_rounds, 5e-4, 5e-6, inner_val_cases=2, val_cases=3)
    history, _ = _simulate(budget, round_s=10.0, val_s=1.0)
    assert len(history) == 10 and {r["lr"] for r in history} == {5e-4}


def test_a_budget_fits_the_rounds_and_ends_at_the_lr_floor():
    # 100 s; rounds of 10 s whose inner validation of 1 case takes 1 s; 2 val cases: the final validation's
    # reserve is 2 x 1 s x 2 cases + 2 s = 6 s, so 9 rounds fit (90 + 6 <= 100) and a tenth would not
    settings = FederatedConfig(time_budget="100s")
    assert settings.time_budget == 100.0 and settings.max_rounds is None
    assert settings.describe_rounds() == "as many rounds as fit in 1m40s"
    budget = RoundBudget.create(100.0, None, 5e-4, 5e-6, inner_val_cases=1, val_cases=2)
    history, spent = _simulate(budget, round_s=10.0, val_s=1.0)
    lrs = [r["lr"] for r in history]
    assert len(history) == 9 and spent + 6.0 <= 100.0
    assert lrs[0] == 5e-4  # the first round measures a round, at --lr
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[1] < lrs[0]
    assert lrs[-1] == pytest.approx(5e-6)  # the last round at the floor


def test_rounds_caps_a_budget():
    settings = FederatedConfig(time_budget=100.0, rounds=4)
    assert settings.max_rounds == 4 and settings.describe_rounds() == "up to 4 rounds within 1m40s"
    budget = RoundBudget.create(100.0, 4, 5e-4, 5e-6, inner_val_cases=1, val_cases=2)
    history, _ = _simulate(budget, round_s=10.0, val_s=1.0)
    assert len(history) == 4


def test_continue_keeps_the_budget_and_the_lr_progress():
    budget = RoundBudget.create(100.0, None, 5e-4, 5e-6, inner_val_cases=1, val_cases=2)
    history = []
    start = time.perf_counter()
    budget.planner.started = start
    for _ in range(4):  # four rounds, then the server stops (a site died)
        lr = budget.round_lr(history)
        history.append({"epoch": len(history) + 1, "lr": lr, "seconds": 10.0, "val_seconds": 1.0})
        budget.planner.started = start - 10.0 * len(history)
    saved = json.loads(json.dumps(budget.state_dict()))  # as the checkpoint keeps it
    assert saved["elapsed_seconds"] == pytest.approx(40.0, abs=0.5)

    resumed = RoundBudget.create(100.0, None, 5e-4, 5e-6, inner_val_cases=1, val_cases=2, saved=saved)
    assert resumed.elapsed() == pytest.approx(40.0, abs=0.5)
    history, spent = _simulate(resumed, round_s=10.0, val_s=1.0, history=history)
    lrs = [r["lr"] for r in history]
    assert len(history) == 9 and 40.0 + spent + 6.0 <= 100.0  # the same 9 rounds as without the restart
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] == pytest.approx(5e-6)


def test_a_round_slower_than_measured_still_ends_at_the_floor():
    budget = RoundBudget.create(200.0, None, 5e-4, 5e-6, inner_val_cases=1, val_cases=0)
    history, spent = _simulate(budget, round_s=10.0, val_s=1.0)
    assert spent <= 200.0 and history[-1]["lr"] == pytest.approx(5e-6)


def test_budget_settings_are_checked():
    with pytest.raises(MonetError, match="--time-budget 'soon': not a duration"):
        FederatedConfig(time_budget="soon")
    with pytest.raises(MonetError, match="--lr-floor must lie in"):
        FederatedConfig(lr=1e-4, lr_floor=1e-3)
    with pytest.raises(MonetError, match="--rounds must be >= 1"):
        FederatedConfig(rounds=0)


def test_cli_flags_reach_the_settings():
    from monetpipe.federated.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["-t", "4", "-m", "monet", "--time-budget", "1h30m", "--lr-floor", "1e-5"])
    settings = settings_from_args(args)
    assert (settings.time_budget, settings.lr_floor, settings.rounds, settings.max_rounds) == (5400.0, 1e-5, None, None)
    args = build_parser().parse_args(["-t", "4", "-m", "monet", "--rounds", "3"])
    assert settings_from_args(args).max_rounds == 3 and settings_from_args(args).time_budget is None
