"""The training loop: epochs of optimizer steps, inner validation, LR schedule, early stopping, time budget.

Nothing here decides a hyperparameter or a file name: the model, loss, optimizer, batches and what
to do after an epoch (save checkpoints, write the log) are passed in. :func:`fit` is the loop,
:func:`train_epoch` one pass of optimizer steps (the per-epoch check on the inner validation cases is
:func:`monetpipe.training.inner_validation.inner_validation`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from monetpipe.errors import MonetError
from monetpipe.training.checkpoint import unwrap
from monetpipe.training.data import derive_seed
from monetpipe.training.distributed import DistContext, all_reduce_sum
from monetpipe.training.schedule import (
    FIRST_EPOCH_TRAIN_SHARE,
    LR_PLAN_SLACK,
    EpochPlanner,
    ProgressSchedule,
    format_duration,
)

log = logging.getLogger(__name__)


class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a lower monitored value (Keras' ``min_delta=0``);
    ``patience=None`` never stops (a time-budget run)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when training should stop."""
        if value < self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"patience": self.patience, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


@dataclass
class TrainingParts:
    """What the loop drives. ``model`` may be wrapped in DistributedDataParallel."""

    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    device: torch.device
    amp: bool = False
    channels_last: bool = False
    lr_schedule: ProgressSchedule | None = None  # poly / cosine: set before every step (else ``scheduler``)
    autocast_dtype: torch.dtype | None = None  # bfloat16 autocast (--precision bf16); float16 is ``amp``
    step_loss: Callable[..., torch.Tensor] | None = None  # compiled :func:`training_loss` (--compile), else eager
    compile_fallback: bool = False  # compiling by default, not asked for: a failed compile trains eagerly instead
    compile_seconds: float | None = None  # with ``step_loss``: the first step's time, compiling included, once run
    ema: AveragedModel | None = None  # --ema: the average of the weights (monetpipe.training.ema), updated per step

    @property
    def eval_model(self) -> nn.Module:
        """The network that is validated and saved: the weights' average with ``--ema``, else the trained one."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the forward pass, or None for float32."""
        return torch.float16 if self.amp else self.autocast_dtype


@dataclass
class TrainingState:
    """Progress of a run: completed epochs, their log rows, the best inner-val Dice, whether it stopped."""

    epoch: int = 0
    best_dice: float = -math.inf
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    elapsed: float = 0.0  # seconds of the time budget spent (across --continue)


def training_loss(
    model: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor, device_type: str, dtype: torch.dtype | None
) -> torch.Tensor:
    """What one optimizer step differentiates: the forward pass in the compute precision (``dtype``, an
    autocast dtype, or None for float32; weights, gradients and the optimizer stay float32) and the loss in
    float32."""
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(x)
    return loss(logits.float(), y)


def compiled_training_loss() -> Callable[..., torch.Tensor]:
    """:func:`training_loss` through ``torch.compile`` (Inductor; ``monet_train --compile``): forward, loss
    and, through AOTAutograd, their backward become fused kernels. The first step of a run compiles (about
    a minute on 2 cores), later runs of the same shapes load it from the on-disk cache that
    ``monet_predict``'s ``torch_compile`` uses too.

    Raises:
        MonetError: torch.compile cannot run here (no C++ compiler, an unsupported platform).
    """
    from monetpipe.inference.backends import use_compile_cache

    use_compile_cache()
    try:
        return torch.compile(training_loss, dynamic=False)
    except Exception as exc:  # torch.compile raises many types when no backend is usable
        raise MonetError(f"torch.compile is unavailable here ({exc}); train without --compile") from exc


def inductor_compiler_found() -> bool:
    """Whether Inductor finds the C++ compiler a CPU ``torch.compile`` needs (``--compile``'s default asks)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # no compiler on PATH, an unsupported platform, a PyTorch without Inductor
        return False
    return True


def _step(
    parts: TrainingParts, step_loss: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One forward and backward pass (gradients set, optimizer not stepped); returns the loss."""
    loss = step_loss(parts.model, parts.loss, x, y, parts.device.type, parts.compute_dtype)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    return loss


def _first_compiled_step(parts: TrainingParts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The step that compiles; records its time. Where compiling was the default rather than asked for, a
    failure (a compiler that cannot build the kernels, say) falls back to eager steps with a warning."""
    start = time.perf_counter()
    try:
        loss = _step(parts, parts.step_loss, x, y)
    except Exception as exc:
        if not parts.compile_fallback:
            raise
        log.warning(
            "compiling the training step failed (%s: %s); training without it (--no-compile skips the attempt)",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        parts.step_loss = None
        loss = _step(parts, training_loss, x, y)
    # a one-off: the epochs' times that plan a time budget leave it out (EpochPlanner)
    parts.compile_seconds = time.perf_counter() - start
    if parts.step_loss is not None:
        log.info("compiled the training step in %.1f s (its first step)", parts.compile_seconds)
    return loss


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _to_device(batch: dict, parts: TrainingParts) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(batch["data"]).to(parts.device, non_blocking=True)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(batch["seg"][:, 0]).to(parts.device, non_blocking=True).long()
    return x, y


def train_epoch(
    parts: TrainingParts,
    batches: Iterator[dict],
    iterations: int,
    first_batch: int,
    progress: bool = True,
    desc: str = "",
    after_step: Callable[[int], bool | None] | None = None,
) -> float:
    """Run ``iterations`` optimizer steps (fewer if ``after_step`` ends the epoch); returns this process's
    mean training loss over the steps taken.

    Args:
        parts: model, loss, optimizer, scaler, device.
        batches: augmented batches in order; batch ``first_batch + i`` is expected at step ``i``.
        iterations: steps in this epoch.
        first_batch: global number of the epoch's first batch (checked, so a reordered stream fails loudly).
        progress: show a tqdm bar.
        desc: the bar's label.
        after_step: called with the step's index after each optimizer step; returning True ends the epoch
            there (every rank must return the same).
    """
    parts.model.train()
    total = torch.zeros((), device=parts.device)
    taken = 0
    for i in tqdm(range(iterations), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        batch = next(batches)
        if batch["batch"] != first_batch + i:
            raise RuntimeError(f"data loader returned batch {batch['batch']}, expected {first_batch + i}")
        x, y = _to_device(batch, parts)
        if parts.lr_schedule is not None:
            lr = parts.lr_schedule.next_lr()
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
        if parts.step_loss is not None and parts.compile_seconds is None:
            loss = _first_compiled_step(parts, x, y)
        else:
            loss = _step(parts, parts.step_loss or training_loss, x, y)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        if parts.ema is not None:
            parts.ema.update_parameters(unwrap(parts.model))
        total += loss.detach()
        taken = i + 1
        if after_step is not None and after_step(i):
            break
    return float(total) / max(taken, 1)


def fit(
    parts: TrainingParts,
    batches: Iterator[dict],
    state: TrainingState,
    *,
    epochs: int | None,
    iterations: int,
    validate: Callable[[], dict],
    on_epoch_end: Callable[[TrainingState, bool], None],
    seed: int,
    ctx: DistContext,
    planner: EpochPlanner | None = None,
) -> TrainingState:
    """Train from ``state.epoch`` until ``epochs``, the time budget, or early stopping ends the run.

    Before each epoch the planner says how many epochs remain (rank 0 decides, every rank follows) and,
    for ``poly`` / ``cosine``, the LR schedule spreads its remaining decay over their steps. After each
    epoch: inner validation, ``ReduceLROnPlateau`` (``plateau`` schedule) and early stopping on the
    inner-val loss, a log row, then ``on_epoch_end(state, is_best)`` (``is_best``: the inner-val Dice
    improved). Training stops only at an epoch boundary, so the checkpoints stay consistent.

    Args:
        parts: model, loss, optimizer, scheduler, scaler, stopper, device (and a progress LR schedule).
        batches: the stream of augmented batches, starting at batch ``state.epoch * iterations``.
        state: where the run stands (updated in place and returned).
        epochs: total epochs of the run (``None``: no cap; then ``planner`` must have a time budget).
        iterations: optimizer steps per epoch.
        validate: computes ``{"val_loss", "val_dice", ...}`` (same numbers on every rank).
        on_epoch_end: saves checkpoints and logs (the caller decides which rank writes).
        seed: run seed; the torch RNG (dropout) is re-seeded from (seed, epoch, rank) every epoch, so a
            resumed run draws what the uninterrupted one would have.
        ctx: distributed context (train losses are averaged over ranks for the log).
        planner: the time budget (default: ``epochs`` epochs, no budget).
    """
    if state.stopped_early:
        log.info("this run already stopped early after epoch %d", state.epoch)
        return state
    planner = planner or EpochPlanner(None, epochs, elapsed_before=state.elapsed)
    if planner.budget is None and epochs is None:
        raise ValueError("fit needs epochs or a time budget")
    now = time.perf_counter()  # one clock reading per epoch boundary, so the epochs' times add up exactly
    remaining, lr_epochs = _plan(planner, state, ctx, parts.device, now)
    while remaining is None or remaining > 0:
        epoch = state.epoch
        start = now
        torch.manual_seed(derive_seed(seed, epoch, ctx.rank, 0xD7))
        if parts.lr_schedule is not None:
            measured = planner.measured(state.history)
            parts.lr_schedule.plan(lr_epochs * iterations if measured and lr_epochs is not None else None)
        lr = current_lr(parts.optimizer) if parts.lr_schedule is None else parts.lr_schedule.current_lr()
        shown = epochs if planner.budget is None else None
        probe = None
        if parts.lr_schedule is not None and not planner.measured(state.history):
            probe = FirstEpochPlan(parts.lr_schedule, planner, state, ctx, parts.device, iterations)
        compiled_before = parts.compile_seconds
        train_loss = _epoch_train_loss(parts, batches, iterations, epoch, shown, ctx, probe)
        cut = probe.cut if probe is not None else None
        val_start = time.perf_counter()
        metrics = validate()
        end = time.perf_counter()
        if parts.lr_schedule is None:
            parts.scheduler.step(metrics["val_loss"])
        stop = parts.stopper.step(metrics["val_loss"])
        is_best = metrics["val_dice"] > state.best_dice  # False for NaN
        if is_best:
            state.best_dice = metrics["val_dice"]
        state.epoch = epoch + 1
        state.elapsed = planner.elapsed(end)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": metrics["val_loss"],
            "val_dice": metrics["val_dice"],
            "lr": lr,
            "seconds": round(end - start, 2),
            "val_seconds": round(end - val_start, 3),
            "overhead_seconds": round(planner.overhead_seconds[-1], 3) if planner.overhead_seconds else None,
            "steps": cut or iterations,
        }
        if parts.compile_seconds is not None and compiled_before is None:
            row["compile_seconds"] = round(parts.compile_seconds, 2)  # part of ``seconds``, once per run
        if parts.lr_schedule is not None:
            row["lr_end"] = current_lr(parts.optimizer)
        if planner.budget is not None:
            row["elapsed"] = round(state.elapsed, 1)
        state.history.append(row)
        state.stopped_early = stop and (epochs is None or state.epoch < epochs)
        on_epoch_end(state, is_best)
        now = time.perf_counter()
        planner.overhead_seconds.append(now - end)
        # after a cut epoch the batch stream is not at an epoch boundary: the run ends (its budget is spent)
        ended = state.stopped_early or cut is not None
        remaining, lr_epochs = (0, 0) if ended else _plan(planner, state, ctx, parts.device, now)
        if ctx.is_main:
            _log_epoch(row, epochs, metrics, is_best, planner, remaining)
        if state.stopped_early:
            if ctx.is_main:
                log.info("early stop: the inner-val loss has not improved for %d epochs", parts.stopper.patience)
            break
    state.elapsed = planner.elapsed()
    if ctx.is_main and planner.budget is not None and not state.stopped_early:
        _log_budget_end(parts, state, planner)
    return state


def _plan(
    planner: EpochPlanner, state: TrainingState, ctx: DistContext, device: torch.device, now: float
) -> tuple[int | None, int | None]:
    """Rank 0's plan on every rank (their clocks differ; their epochs must not): the epochs that remain, and
    those the LR schedule is spread over (planned with :data:`LR_PLAN_SLACK`; ``None``: no limit)."""
    plan = (
        planner.remaining(state.epoch, state.history, now=now),
        planner.remaining(state.epoch, state.history, LR_PLAN_SLACK, now=now),
    )
    if not ctx.enabled:
        return plan
    codes = [(-1 if n is None else n) if ctx.is_main else 0 for n in plan]
    agreed = all_reduce_sum(torch.tensor(codes, dtype=torch.float64, device=device), ctx).tolist()
    return tuple(None if n < 0 else max(int(n), 0) for n in agreed)  # type: ignore[return-value]


class FirstEpochPlan:
    """The LR plan of a budget run's first epoch, made a few steps into it from their measured time; called
    after every step of that epoch (``after_step`` of :func:`train_epoch`).

    Until the plan the LR stays where it is (``--lr`` in a fresh run). Step 0 (warm-up) is not timed; the
    inner validation is not known yet and counted as nothing, so this plan may spread the decay over too
    many epochs: the plan after the epoch, on its measured time, corrects that. When the whole epoch would
    take more than :data:`FIRST_EPOCH_TRAIN_SHARE` of the budget left, it is cut at the step that uses that
    share (:attr:`cut`, the same on every rank) and the LR reaches its floor there.
    """

    def __init__(
        self,
        schedule: ProgressSchedule,
        planner: EpochPlanner,
        state: TrainingState,
        ctx: DistContext,
        device: torch.device,
        iterations: int,
    ) -> None:
        self.schedule, self.planner, self.state = schedule, planner, state
        self.ctx, self.device, self.iterations = ctx, device, iterations
        self.probe_step = min(max(iterations // 20, 2), 10)
        self.cut: int | None = None  # steps the epoch is cut to
        self._start = 0.0

    def __call__(self, i: int) -> bool:
        """After step ``i``: True when the epoch ends here."""
        if self.iterations <= self.probe_step + 1:
            return False
        if i == 0:
            self._start = time.perf_counter()
        elif i == self.probe_step:
            self._plan(i, (time.perf_counter() - self._start) / i)
        return self.cut is not None and i + 1 >= self.cut

    def _plan(self, i: int, step_seconds: float) -> None:
        planner = self.planner
        lr_epochs = planner.remaining(
            self.state.epoch, self.state.history, LR_PLAN_SLACK, epoch_seconds=step_seconds * self.iterations
        )
        steps = self.iterations
        if planner.budget is not None:
            left = (planner.budget - planner.elapsed()) * FIRST_EPOCH_TRAIN_SHARE
            steps = min(self.iterations, max(i + 1, math.floor(left / max(step_seconds, 1e-9))))
        if self.ctx.enabled:  # rank 0's numbers on every rank
            mine = [float(lr_epochs if lr_epochs is not None else -1), float(steps)] if self.ctx.is_main else [0.0, 0.0]
            agreed = all_reduce_sum(torch.tensor(mine, dtype=torch.float64, device=self.device), self.ctx).tolist()
            lr_epochs, steps = (None if agreed[0] < 0 else int(agreed[0])), int(agreed[1])
        if steps < self.iterations:
            self.cut = steps
            if self.ctx.is_main:
                log.warning(
                    "time budget: one epoch of %d steps would take %s, more than the %s left; this epoch is cut "
                    "after %d steps, and the run ends there (a larger --time-budget or a smaller "
                    "--iters-per-epoch gives more than one epoch)",
                    self.iterations,
                    format_duration(step_seconds * self.iterations),
                    format_duration((planner.budget or 0.0) - planner.elapsed()),
                    steps,
                )
            self.schedule.plan(max(steps - (i + 1), 1))
        elif lr_epochs is not None:
            self.schedule.plan(max(lr_epochs * self.iterations - (i + 1), 1))


def _log_budget_end(parts: TrainingParts, state: TrainingState, planner: EpochPlanner) -> None:
    log.info(
        "time budget: stopping after epoch %d at %s of %s (%s kept for the final validation)",
        state.epoch,
        format_duration(state.elapsed),
        format_duration(planner.budget or 0.0),
        format_duration(planner.reserve(state.history)),
    )
    schedule = parts.lr_schedule
    if schedule is not None and schedule.progress < 1.0:
        log.warning(
            "the LR stopped at %.3g, above its floor %.3g: the epochs took longer than planned (or the budget "
            "held fewer than two); a larger --time-budget gives the schedule room to finish",
            current_lr(parts.optimizer),
            schedule.floor,
        )


def _epoch_train_loss(
    parts: TrainingParts,
    batches: Iterator[dict],
    iterations: int,
    epoch: int,
    epochs: int | None,
    ctx: DistContext,
    after_step: Callable[[int], bool | None] | None = None,
) -> float:
    """One epoch of optimizer steps; its mean training loss over all ranks, refused if not finite."""
    train_loss = train_epoch(
        parts,
        batches,
        iterations,
        epoch * iterations,
        progress=ctx.is_main,
        desc=f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else ""),
        after_step=after_step,
    )
    train_loss = float(all_reduce_sum(torch.tensor([train_loss], device=parts.device), ctx)) / ctx.world_size
    if not math.isfinite(train_loss):
        raise MonetError(
            f"the training loss became {train_loss} in epoch {epoch + 1}; lower --lr"
            + (" or drop --amp" if parts.amp else "")
            + (" or use --precision fp32" if parts.autocast_dtype is not None else "")
            + " and start again."
        )
    return train_loss


def _log_epoch(
    row: dict, epochs: int | None, metrics: dict, is_best: bool, planner: EpochPlanner, remaining: int | None
) -> None:
    per_class = " ".join(f"{d:.3f}" for d in metrics.get("val_dice_per_class", []))
    lr = f"{row['lr']:.2g}" + (f" -> {row['lr_end']:.2g}" if "lr_end" in row else "")
    budget = ""
    if planner.budget is not None:
        budget = (
            f", {format_duration(row['elapsed'])} of {format_duration(planner.budget)}, "
            f"{remaining} more epoch(s) planned"
        )
    log.info(
        "epoch %d%s: train loss %.4f, inner-val loss %.4f, Dice %.4f [%s], lr %s, %.1f s%s%s",
        row["epoch"],
        f"/{epochs}" if epochs and planner.budget is None else "",
        row["train_loss"],
        row["val_loss"],
        row["val_dice"],
        per_class,
        lr,
        row["seconds"],
        budget,
        " (best)" if is_best else "",
    )
