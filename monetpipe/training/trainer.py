"""The training loop: epochs of optimizer steps, inner validation, LR schedule, early stopping.

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
from tqdm import tqdm

from monetpipe.errors import MonetError
from monetpipe.training.data import derive_seed
from monetpipe.training.distributed import DistContext, all_reduce_sum

log = logging.getLogger(__name__)


class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a lower monitored value (Keras' ``min_delta=0``)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when training should stop."""
        if value < self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

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


@dataclass
class TrainingState:
    """Progress of a run: completed epochs, their log rows, the best inner-val Dice, whether it stopped."""

    epoch: int = 0
    best_dice: float = -math.inf
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


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
) -> float:
    """Run ``iterations`` optimizer steps; returns this process's mean training loss.

    Args:
        parts: model, loss, optimizer, scaler, device.
        batches: augmented batches in order; batch ``first_batch + i`` is expected at step ``i``.
        iterations: steps in this epoch.
        first_batch: global number of the epoch's first batch (checked, so a reordered stream fails loudly).
        progress: show a tqdm bar.
        desc: the bar's label.
    """
    parts.model.train()
    total = torch.zeros((), device=parts.device)
    for i in tqdm(range(iterations), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        batch = next(batches)
        if batch["batch"] != first_batch + i:
            raise RuntimeError(f"data loader returned batch {batch['batch']}, expected {first_batch + i}")
        x, y = _to_device(batch, parts)
        with torch.autocast(parts.device.type, dtype=torch.float16, enabled=parts.amp):
            logits = parts.model(x)
        loss = parts.loss(logits.float(), y)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        total += loss.detach()
    return float(total) / iterations


def fit(
    parts: TrainingParts,
    batches: Iterator[dict],
    state: TrainingState,
    *,
    epochs: int,
    iterations: int,
    validate: Callable[[], dict],
    on_epoch_end: Callable[[TrainingState, bool], None],
    seed: int,
    ctx: DistContext,
) -> TrainingState:
    """Train from ``state.epoch`` to ``epochs`` (or until early stopping).

    After each epoch: inner validation, ``ReduceLROnPlateau`` and early stopping on the inner-val loss,
    a log row, then ``on_epoch_end(state, is_best)`` (``is_best``: the inner-val Dice improved).

    Args:
        parts: model, loss, optimizer, scheduler, scaler, stopper, device.
        batches: the stream of augmented batches, starting at batch ``state.epoch * iterations``.
        state: where the run stands (updated in place and returned).
        epochs: total epochs of the run.
        iterations: optimizer steps per epoch.
        validate: computes ``{"val_loss", "val_dice", ...}`` (same numbers on every rank).
        on_epoch_end: saves checkpoints and logs (the caller decides which rank writes).
        seed: run seed; the torch RNG (dropout) is re-seeded from (seed, epoch, rank) every epoch, so a
            resumed run draws what the uninterrupted one would have.
        ctx: distributed context (train losses are averaged over ranks for the log).
    """
    if state.stopped_early:
        log.info("this run already stopped early after epoch %d", state.epoch)
        return state
    for epoch in range(state.epoch, epochs):
        start = time.perf_counter()
        torch.manual_seed(derive_seed(seed, epoch, ctx.rank, 0xD7))
        lr = current_lr(parts.optimizer)
        train_loss = _epoch_train_loss(parts, batches, iterations, epoch, epochs, ctx)
        metrics = validate()
        parts.scheduler.step(metrics["val_loss"])
        stop = parts.stopper.step(metrics["val_loss"])
        is_best = metrics["val_dice"] > state.best_dice  # False for NaN
        if is_best:
            state.best_dice = metrics["val_dice"]
        state.epoch = epoch + 1
        state.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": metrics["val_loss"],
                "val_dice": metrics["val_dice"],
                "lr": lr,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        if ctx.is_main:
            _log_epoch(state.history[-1], epochs, metrics, is_best)
        state.stopped_early = stop and state.epoch < epochs
        on_epoch_end(state, is_best)
        if state.stopped_early:
            if ctx.is_main:
                log.info("early stop: the inner-val loss has not improved for %d epochs", parts.stopper.patience)
            break
    return state


def _epoch_train_loss(
    parts: TrainingParts, batches: Iterator[dict], iterations: int, epoch: int, epochs: int, ctx: DistContext
) -> float:
    """One epoch of optimizer steps; its mean training loss over all ranks, refused if not finite."""
    train_loss = train_epoch(
        parts,
        batches,
        iterations,
        epoch * iterations,
        progress=ctx.is_main,
        desc=f"epoch {epoch + 1}/{epochs}",
    )
    train_loss = float(all_reduce_sum(torch.tensor([train_loss], device=parts.device), ctx)) / ctx.world_size
    if not math.isfinite(train_loss):
        raise MonetError(
            f"the training loss became {train_loss} in epoch {epoch + 1}; lower --lr"
            + (" or drop --amp" if parts.amp else "")
            + " and start again."
        )
    return train_loss


def _log_epoch(row: dict, epochs: int, metrics: dict, is_best: bool) -> None:
    per_class = " ".join(f"{d:.3f}" for d in metrics.get("val_dice_per_class", []))
    log.info(
        "epoch %d/%d: train loss %.4f, inner-val loss %.4f, Dice %.4f [%s], lr %.2g, %.1f s%s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["val_loss"],
        row["val_dice"],
        per_class,
        row["lr"],
        row["seconds"],
        " (best)" if is_best else "",
    )
