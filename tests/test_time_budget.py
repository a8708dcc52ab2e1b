"""monet_train --time-budget, --schedule, --recipe and --precision: the budget string, the LR schedules,
the epoch planner, and short real runs on the synthetic CT task (a few seconds each).

The runs measure wall-clock time on a shared machine, so their bounds carry a stated slack
(:data:`SLACK_S`); the planner keeps the final validation's time inside the budget itself.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.training.config import PAPER_RECIPE, TrainConfig, resolve_precision
from monetpipe.training.progress import read_log_csv
from monetpipe.training.schedule import (
    EpochPlanner,
    ProgressSchedule,
    decayed_lr,
    format_duration,
    parse_duration,
    plan_epochs,
)

TASK = "Task901_SyntheticCT"
TINY = TrainConfig(iters_per_epoch=2, batch_size=4, num_workers=0, num_threads=1, val_batch_size=16, output_prior=False)
BUDGET_S = 12.0
TICKING_BUDGET_S = 14.0  # on the ticking clock: 6 s kept for the final validation, about 5 epochs
# what a run may take beyond its budget: the last epoch longer than measured, the final checkpoint, and
# the final validation longer than its reserve, on a machine shared with other jobs
SLACK_S = 6.0


# ---- budget strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("45m", 2700), ("1.5h", 5400), ("1h30m", 5400), (" 2m 30s ", 150), ("60M", 3600), (".5h", 1800)],
)
def test_budget_strings_are_read_in_seconds(text, seconds):
    assert parse_duration(text) == seconds
    assert TrainConfig(time_budget=text).time_budget == seconds  # from Python or a hand-written config.json


@pytest.mark.parametrize("text", ["", "60", "an hour", "1h30", "-5m", "0m", "5 minutes", "1d"])
def test_a_bad_budget_string_is_refused_with_an_example(text):
    with pytest.raises(MonetError, match=r"--time-budget .*90s, 45m, 1\.5h or 1h30m"):
        parse_duration(text)


def test_a_bad_budget_on_the_command_line_is_one_line_without_traceback(capsys):
    from monetpipe.training.cli import main

    assert main(["-t", "4", "-m", "monet", "--time-budget", "an hour"]) != 0
    err = capsys.readouterr().err
    assert "--time-budget 'an hour': not a duration" in err and "1h30m" in err and "Traceback" not in err


def test_durations_print_readably():
    assert [format_duration(s) for s in (7.25, 95.4, 3725)] == ["7.2s", "1m35s", "1h02m05s"]


# ---- schedules and the planner ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_schedules_start_at_lr_end_at_the_floor_and_only_fall(schedule):
    lrs = [decayed_lr(schedule, i / 100, 5e-4, 5e-6) for i in range(101)]
    assert lrs[0] == 5e-4 and lrs[-1] == 5e-6
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    with pytest.raises(ValueError):
        decayed_lr("plateau", 0.5, 5e-4, 5e-6)


def test_progress_schedule_reaches_the_floor_at_the_last_planned_step_and_never_goes_back():
    s = ProgressSchedule("poly", 1e-3, 1e-5)
    s.plan(10)  # first plan: 10 steps, the first at lr
    first = [s.next_lr() for _ in range(4)]
    assert first[0] == 1e-3
    s.plan(20)  # the run got faster: more steps fit; the LR goes on falling from where it was
    more = [s.next_lr() for _ in range(20)]
    lrs = first + more
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] == pytest.approx(1e-5)
    s.plan(3)  # past the plan (an extra epoch): stays at the floor
    assert [s.next_lr() for _ in range(3)] == [pytest.approx(1e-5)] * 3
    again = ProgressSchedule("poly", 1e-3, 1e-5)
    again.load_state_dict(s.state_dict())
    assert again.progress == 1.0


def test_plan_epochs_fits_whole_epochs_into_what_is_left():
    assert plan_epochs(3, 100) == 97 and plan_epochs(3, None) is None  # no budget: the cap
    assert plan_epochs(0, None, budget=60, epoch_seconds=None) == 1  # nothing measured: one, to measure it
    assert plan_epochs(2, None, budget=100, elapsed=30, epoch_seconds=10, reserve=15) == 5
    assert plan_epochs(2, 4, budget=100, elapsed=30, epoch_seconds=10) == 2  # --epochs still caps
    assert plan_epochs(2, None, budget=100, elapsed=95, epoch_seconds=10) == 0


def test_the_planner_reserves_the_final_validation_from_the_inner_validation_time():
    planner = EpochPlanner(
        600.0, None, inner_val_cases=4, val_cases=20, elapsed_before=100.0, started=time.perf_counter()
    )
    history = [{"seconds": 30.0, "val_seconds": 2.0}, {"seconds": 50.0, "val_seconds": 2.0}]
    reserve = planner.reserve(history)
    assert reserve == pytest.approx(2.0 * 0.5 * 20 + 2.0)  # FINAL_VALIDATION_FACTOR x 0.5 s/case x 20 + margin
    assert planner.epoch_seconds(history) == 50.0  # the slowest of the last three
    assert planner.remaining(2, history) == math.floor((600 - 100 - reserve) / 50)


def test_the_first_epoch_of_a_budget_run_is_planned_from_its_first_steps(monkeypatch):
    from monetpipe.training.distributed import DistContext
    from monetpipe.training.trainer import FirstEpochPlan, TrainingState

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])  # 0.5 s per step, 20 s per 40-step epoch
    planner = EpochPlanner(50.0, None, started=0.0)  # two epochs fit (the LR plan allows 15 % slower ones)
    schedule = ProgressSchedule("poly", 1e-3, 0.0)
    probe = FirstEpochPlan(schedule, planner, TrainingState(), DistContext(), torch.device("cpu"), iterations=40)
    schedule.plan(None)  # nothing measured yet
    lrs = []
    for i in range(80):
        lrs.append(schedule.next_lr())
        now[0] += 0.5
        if i < 40:
            probe(i)
    assert lrs[:3] == [1e-3] * 3  # before the plan: --lr
    assert lrs[40] == pytest.approx(decayed_lr("poly", 0.5, 1e-3, 0.0), rel=0.1)  # half-way after one epoch
    assert lrs[-1] == 0.0 and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


# ---- settings: defaults, recipes, precision -----------------------------------------------------------


def test_the_default_schedule_is_poly_and_early_stopping_goes_with_the_papers_plateau():
    c = TrainConfig()
    assert (c.lr_schedule, c.max_epochs, c.patience, c.lr, c.loss) == ("poly", 100, None, 2e-3, "dice_ce")
    plateau = TrainConfig(schedule="plateau")
    assert (plateau.lr_schedule, plateau.max_epochs, plateau.patience) == ("plateau", 100, 10)
    b = TrainConfig(time_budget=60)
    assert (b.lr_schedule, b.max_epochs, b.patience) == ("poly", None, None)  # early stop off, no epoch cap
    asked = TrainConfig(time_budget=60, epochs=5, early_stop_patience=3, schedule="cosine")
    assert (asked.lr_schedule, asked.max_epochs, asked.patience) == ("cosine", 5, 3)
    with pytest.raises(MonetError, match="--lr-floor"):
        TrainConfig(time_budget=60, lr_floor=5e-3)  # above the default --lr 2e-3
    with pytest.raises(MonetError, match="--amp .* --precision bf16"):
        TrainConfig(amp=True, precision="bf16")


def test_recipe_paper_sets_the_paper_values_and_explicit_flags_override_it():
    from monetpipe.training.cli import config_from_args, parse_args

    paper = config_from_args(parse_args(["-t", "4", "-m", "monet", "--recipe", "paper"]))
    assert paper == TrainConfig.from_recipe("paper")
    assert paper.recipe == "paper" and not paper.output_prior and paper.schedule == "plateau"
    assert all(getattr(paper, k) == v for k, v in PAPER_RECIPE.items())
    mine = config_from_args(parse_args(["-t", "4", "-m", "monet", "--recipe", "paper", "--lr", "1e-3", "--mirror"]))
    assert (mine.lr, mine.mirror, mine.loss, mine.output_prior) == (1e-3, True, "dice", False)
    assert config_from_args(parse_args(["-t", "4", "-m", "monet", "--time-budget", "1h30m"])).time_budget == 5400


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    assert TrainConfig().precision == "auto"  # the default: bf16 where the CPU has it natively, else fp32
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "")
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_bf16")
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32" and resolve_precision("fp32", "cuda", amp=True) == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for: run (emulated where not native)
    with pytest.raises(MonetError, match="--precision bf16 runs on CPU or CUDA"):
        resolve_precision("bf16", "mps")


def test_a_bfloat16_step_trains_and_the_weights_stay_float32(cpu_parts):
    from monetpipe.networks import build_network
    from monetpipe.training.trainer import train_epoch

    torch.manual_seed(0)
    net = build_network("monet", 1, 3)
    before = [p.detach().clone() for p in net.parameters()]
    parts = cpu_parts(net, loss="dice", autocast_dtype=torch.bfloat16)
    opt = parts.optimizer
    rng = torch.Generator().manual_seed(1)
    batches = (
        {
            "batch": i,
            "data": torch.randn(2, 1, 32, 48, generator=rng).numpy(),
            "seg": (torch.rand(2, 1, 32, 48) * 3).int().numpy(),
        }
        for i in range(2)
    )
    loss = train_epoch(parts, batches, iterations=2, first_batch=0, progress=False)
    assert math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(s.dtype == torch.float32 for st in opt.state.values() for s in st.values() if s.is_floating_point())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


# ---- real runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget_task(tmp_path_factory) -> MonetPaths:
    """Task901 (12 small cases, 48x40 in-plane, 10 slices), planned and cached once for this module."""
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.synthetic import make_synthetic_task

    root = tmp_path_factory.mktemp("budget_task")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    make_synthetic_task(paths.raw, kind="ct", num_cases=12, seed=0, shape=(48, 40, 10))
    plan_and_preprocess("901", paths, num_processes=1)
    # one-off imports that a training process pays once (NAdam imports torch._dynamo, the progress plot
    # matplotlib): several seconds on a busy machine, which would otherwise be most of these tiny budgets
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401

    return paths


@pytest.fixture()
def roots(budget_task, tmp_path, monkeypatch) -> MonetPaths:
    paths = MonetPaths(budget_task.raw, budget_task.preprocessed, tmp_path / "results")
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(paths, name)))
    return paths


def _fold(paths: MonetPaths, model: str = "monet"):
    return paths.results / TASK / f"{model}__{DEFAULT_PLANS}" / "fold_0"


class _TickingClock:
    """A stand-in for the training modules' ``time``: every reading moves it ``tick`` seconds on, so a
    run's budget arithmetic no longer depends on how busy the machine is (the test of the real clock is
    :func:`test_a_budget_of_seconds_stops_in_time`)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture()
def ticking(monkeypatch) -> _TickingClock:
    from monetpipe.training import schedule, session, trainer

    clock = _TickingClock(0.5)  # 1.5 s per epoch (three readings), 0.5 s per inner-val case
    for module in (session, trainer, schedule):
        monkeypatch.setattr(module, "time", clock)
    return clock


def test_a_budget_of_seconds_stops_in_time(roots):
    """The real clock: training plus the final validation end within the budget and a stated slack."""
    from monetpipe.results import load_checkpoint
    from monetpipe.training import train_fold

    config = TINY.with_changes(time_budget=BUDGET_S)
    t0 = time.perf_counter()
    result = train_fold("901", "monet", 0, config, paths=roots)
    wall = time.perf_counter() - t0
    assert wall < BUDGET_S + SLACK_S, f"took {wall:.1f} s for a {BUDGET_S} s budget"
    assert result.validation is not None and result.epochs >= 1
    rows = read_log_csv(_fold(roots) / "training_log.csv")
    assert len(rows) == result.epochs and rows[-1]["elapsed"] <= BUDGET_S
    record = json.loads((_fold(roots) / "config.json").read_text())
    assert record["config"]["time_budget"] == BUDGET_S and record["resolved"]["schedule"] == "poly"
    assert record["resolved"]["max_epochs"] is None and record["resolved"]["early_stop_patience"] is None
    final = load_checkpoint(_fold(roots) / "checkpoint_final.pth")
    assert 0 < final["elapsed_seconds"] <= BUDGET_S


def test_a_budget_run_ends_with_the_lr_at_its_floor(roots, ticking):
    from monetpipe.results import load_checkpoint
    from monetpipe.training import train_fold

    config = TINY.with_changes(time_budget=TICKING_BUDGET_S)
    result = train_fold("901", "monet", 0, config, paths=roots)
    rows = read_log_csv(_fold(roots) / "training_log.csv")
    assert result.epochs >= 2 and len(rows) == result.epochs and rows[-1]["elapsed"] <= TICKING_BUDGET_S
    assert rows[0]["lr"] == pytest.approx(config.lr) and rows[-1]["lr_end"] == pytest.approx(config.lr_floor)
    assert all(a["lr_end"] >= b["lr_end"] for a, b in zip(rows, rows[1:], strict=False))
    final = load_checkpoint(_fold(roots) / "checkpoint_final.pth")
    assert final["lr_schedule"]["progress"] == 1.0 and final["optimizer"]["param_groups"][0]["lr"] == config.lr_floor


def test_a_first_epoch_longer_than_the_budget_is_cut_and_ends_at_the_lr_floor(roots, ticking, caplog):
    """A large task on a CPU: one epoch takes longer than the whole budget. The epoch is cut at the step
    its first timed steps say fits, the LR reaches the floor there, and the run stops instead of running
    the epoch out."""
    from monetpipe.results import load_checkpoint
    from monetpipe.training import train_fold

    config = TINY.with_changes(time_budget=8.0, iters_per_epoch=40, batch_size=2)
    with caplog.at_level("WARNING"):
        result = train_fold("901", "monet", 0, config, paths=roots)
    iterations = json.loads((_fold(roots) / "config.json").read_text())["resolved"]["iterations_per_epoch"]
    rows = read_log_csv(_fold(roots) / "training_log.csv")
    # 0.25 s per step on the ticking clock: the whole epoch would take 7-10 s of the 8 s budget
    assert iterations >= 30 and result.epochs == 1 and len(rows) == 1
    assert 3 <= rows[0]["steps"] < iterations and rows[0]["elapsed"] <= 8.0
    assert rows[0]["lr_end"] == pytest.approx(config.lr_floor)
    assert "this epoch is cut after" in caplog.text and result.validation is not None
    final = load_checkpoint(_fold(roots) / "checkpoint_final.pth")
    assert final["lr_schedule"]["progress"] == 1.0


def test_continue_keeps_the_budget_across_both_runs(roots, ticking, monkeypatch):
    from monetpipe.results import load_checkpoint
    from monetpipe.training import session, train_fold

    config = TINY.with_changes(time_budget=TICKING_BUDGET_S, schedule="cosine")
    calls = {"n": 0}
    real_plot = session.plot_progress

    def plot_then_die(*args, **kwargs):  # a kill after the second epoch's checkpoint
        real_plot(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(session, "plot_progress", plot_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_fold("901", "monet", 0, config, paths=roots)
    monkeypatch.setattr(session, "plot_progress", real_plot)
    spent = load_checkpoint(_fold(roots) / "checkpoint_latest.pth")["elapsed_seconds"]
    assert spent > 0
    ticking.now += 1000.0  # time passes between the runs: it does not count
    # --continue without --time-budget keeps the run's budget; only what is left of it is used
    result = train_fold("901", "monet", 0, config.with_changes(time_budget=None), paths=roots, continue_training=True)
    rows = read_log_csv(_fold(roots) / "training_log.csv")
    assert [r["epoch"] for r in rows] == list(range(1, result.epochs + 1)) and result.epochs > 2
    assert rows[1]["elapsed"] == pytest.approx(spent, abs=0.1)
    assert all(a["elapsed"] < b["elapsed"] for a, b in zip(rows, rows[1:], strict=False))
    assert rows[-1]["elapsed"] <= TICKING_BUDGET_S and rows[-1]["lr_end"] == pytest.approx(config.lr_floor)
    assert load_checkpoint(_fold(roots) / "checkpoint_final.pth")["elapsed_seconds"] <= TICKING_BUDGET_S


def test_model_all_gives_each_network_the_same_budget(roots, monkeypatch):
    from monetpipe.training import api as training_api
    from monetpipe.training import train_models

    monkeypatch.setattr("monetpipe.networks.list_networks", lambda: ["monet", "unet16"])
    seen = []
    real = training_api.train_fold

    def recording(task, model, fold, config, *args, **kwargs):
        seen.append((model, config.time_budget))
        return real(task, model, fold, config, *args, **kwargs)

    monkeypatch.setattr(training_api, "train_fold", recording)
    results = train_models("901", ["all"], [0], TINY.with_changes(time_budget=4.0), paths=roots)
    assert seen == [("monet", 4.0), ("unet16", 4.0)]
    for model, result in zip(("monet", "unet16"), results, strict=True):
        rows = read_log_csv(_fold(roots, model) / "training_log.csv")
        assert result.epochs >= 1 and rows[-1]["elapsed"] <= 4.0


@pytest.mark.slow
def test_torchrun_ranks_stop_after_the_same_epoch(roots):
    """Two gloo processes with a budget: rank 0's plan is everybody's (a rank that stopped alone would leave
    the other waiting in an all-reduce until the timeout)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "monetpipe.training", "-t", "901", "-m", "monet", "--time-budget", "25s", "--iters-per-epoch", "8"]
    cmd += ["--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-output-prior"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_log_csv(_fold(roots) / "training_log.csv")
    assert rows and rows[-1]["elapsed"] <= 25 and rows[-1]["lr_end"] < rows[0]["lr"]
    assert proc.stdout.count("validation foreground Dice") == 1


def test_monet_train_precision_bf16_runs_and_is_recorded(roots, caplog, monkeypatch):
    from monetpipe.results import load_checkpoint
    from monetpipe.training import train_fold

    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2")  # no native bf16: it runs, emulated, with a warning
    with caplog.at_level("WARNING"):
        result = train_fold("901", "monet", 0, TINY.with_changes(epochs=1, precision="bf16"), paths=roots)
    assert "no native bfloat16" in caplog.text
    record = json.loads((result.fold_dir / "config.json").read_text())
    assert record["config"]["precision"] == "bf16" and record["resolved"]["precision"] == "bf16"
    state = load_checkpoint(result.fold_dir / "checkpoint_final.pth")["model_state"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "")
    auto = train_fold("901", "unet16", 0, TINY.with_changes(epochs=1, precision="auto"), paths=roots)
    assert json.loads((auto.fold_dir / "config.json").read_text())["resolved"]["precision"] == "fp32"


def test_inner_validation_runs_in_the_training_precision(roots):
    """--precision bf16 scores the inner validation as training runs the network (bfloat16 autocast), and the
    numbers stay close to float32's."""
    from monetpipe.networks import build_network
    from monetpipe.training import plan_fold
    from monetpipe.training.distributed import DistContext
    from monetpipe.training.inner_validation import inner_validation

    fp = plan_fold("901", "monet", 0, paths=roots)
    torch.manual_seed(0)
    net = build_network("monet", fp.plans.num_input_channels, fp.plans.num_classes)
    seen: list[torch.dtype] = []
    net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    cpu, ctx = torch.device("cpu"), DistContext()
    args = (net, fp.layout, fp.inner_val_cases, "dice", fp.plans.num_classes, cpu, ctx)
    fp32 = inner_validation(*args)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = inner_validation(*args, autocast_dtype=torch.bfloat16)
    assert set(seen) == {torch.bfloat16}
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], abs=0.02)


def test_the_default_compiles_a_long_monet_run_on_a_bf16_cpu_and_records_it(roots, tmp_path, monkeypatch, caplog):
    """The run decides ``--compile``'s default from what is left of it; here every run counts as long, and
    a counting stand-in replaces torch.compile (the real compile is tests/test_compile_training.py's)."""
    from monetpipe.training import config as config_module
    from monetpipe.training import session, train_fold
    from monetpipe.training.trainer import training_loss

    calls = []

    def stand_in():
        def step(*args):
            calls.append(1)
            return training_loss(*args)

        return step

    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_bf16")  # --precision auto: bf16
    monkeypatch.setattr(config_module, "COMPILE_MIN_SECONDS", 0)
    monkeypatch.setattr(config_module, "COMPILE_MIN_STEPS", 0)
    monkeypatch.setattr(session, "compiled_training_loss", stand_in)
    monkeypatch.setattr(session, "inductor_compiler_found", lambda: True)
    with caplog.at_level("INFO"):
        result = train_fold("901", "monet", 0, TINY.with_changes(epochs=2), paths=roots)
    resolved = json.loads((result.fold_dir / "config.json").read_text())["resolved"]
    assert resolved["compile_step"] is True and resolved["precision"] == "bf16" and len(calls) == 4
    assert "compiling the training step (the default for monet" in caplog.text
    assert read_log_csv(result.fold_dir / "training_log.csv")[0]["compile_seconds"] > 0
    calls.clear()  # U-Net-16 gained nothing from compiling: eager by default
    unet = train_fold("901", "unet16", 0, TINY.with_changes(epochs=1), paths=roots)
    assert json.loads((unet.fold_dir / "config.json").read_text())["resolved"]["compile_step"] is False and not calls

    def unavailable():
        raise MonetError("torch.compile is unavailable here (no backend); train without --compile")

    monkeypatch.setattr(session, "compiled_training_loss", unavailable)
    with caplog.at_level("WARNING"):  # by default: a warning, then eager steps
        other = MonetPaths(roots.raw, roots.preprocessed, tmp_path / "other_results")
        eager = train_fold("901", "monet", 0, TINY.with_changes(epochs=1), paths=other)
    assert json.loads((eager.fold_dir / "config.json").read_text())["resolved"]["compile_step"] is False
    assert "the training step runs eagerly: torch.compile is unavailable here" in caplog.text
    with pytest.raises(MonetError, match="torch.compile is unavailable"):  # asked for: refused by name
        asked = MonetPaths(roots.raw, roots.preprocessed, tmp_path / "asked_results")
        train_fold("901", "monet", 0, TINY.with_changes(epochs=1, compile_step=True), paths=asked)
