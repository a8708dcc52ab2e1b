"""One training session: build the parts from the config, resume them, run the loop, save, validate.

:func:`run_training` is called by :func:`monetpipe.training.api.train_fold` once it has decided that
training should happen (fresh or resumed). It is the only place that turns a :class:`TrainConfig`
into objects (network, optimizer, scheduler, scaler, data stream) and checkpoints back into them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from monetpipe.errors import MonetError
from monetpipe.preprocessing.plans import Plans
from monetpipe.results import CorruptCheckpointError, load_checkpoint
from monetpipe.training.augmentation import batch_stream, training_transforms
from monetpipe.training.checkpoint import (
    load_pretrained,
    network_spec,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    save_latest,
    unwrap,
)
from monetpipe.training.config import (
    TrainConfig,
    flags_for,
    is_long_run,
    resolve_channels_last,
    resolve_compile,
    resolve_num_threads,
    resolve_num_workers,
    resolve_precision,
)
from monetpipe.training.data import SliceBatchLoader, SliceIndex, iterations_per_epoch, rank_columns
from monetpipe.training.distributed import DistContext, init_distributed
from monetpipe.training.ema import build_ema, ema_record, restore_ema
from monetpipe.training.fold import FoldPlan, FoldResult, continue_command, prepare_run_folder, run_record
from monetpipe.training.inner_validation import inner_validation
from monetpipe.training.losses import build_loss
from monetpipe.training.output_prior import init_output_prior, sampled_class_frequencies
from monetpipe.training.progress import plot_progress, write_log_csv
from monetpipe.training.schedule import EpochPlanner, ProgressSchedule, format_duration
from monetpipe.training.trainer import (
    EarlyStopping,
    TrainingParts,
    TrainingState,
    compiled_training_loss,
    fit,
    inductor_compiler_found,
)

log = logging.getLogger(__name__)
_RESUME_SENSITIVE = (
    "lr",
    "loss",
    "batch_size",
    "iters_per_epoch",
    "seed",
    "foreground_fraction",
    "rotation_deg",
    "scale",
    "shift",
    "spatial_probability",
    "mirror",
    "mirror_axes",
    "intensity_augmentation",
    "dropout",
    "ema",
    "inner_val_fraction",
    "lr_factor",
    "lr_patience",
    "early_stop_patience",
    "schedule",
    "lr_floor",
    "time_budget",
    "precision",
    "recipe",
)


def build_parts(
    fp: FoldPlan,
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext,
    resume: dict | None,
    class_frequencies: np.ndarray | None = None,
    long_run: bool = False,
) -> TrainingParts:
    """Network (initialized, pretrained or resumed), loss, NAdam, LR schedule, scaler, early stop, precision.

    The ``plateau`` schedule is the ``ReduceLROnPlateau``; ``poly`` / ``cosine`` are a
    :class:`~monetpipe.training.schedule.ProgressSchedule` (the plateau scheduler is then built but idle).

    ``class_frequencies`` (fresh starts only) sets the output bias to the class prior
    (:mod:`monetpipe.training.output_prior`). ``long_run`` (:func:`~monetpipe.training.config.is_long_run`
    of what is left to train) lets ``--compile``'s default compile the step.
    """
    from monetpipe.networks import build_network, dropout_overrides

    torch.manual_seed(config.seed)  # the same initial weights on every rank and every fresh run
    net = build_network(
        fp.model, fp.plans.num_input_channels, fp.plans.num_classes, **dropout_overrides(fp.model, config.dropout)
    )
    if resume is not None:  # a run with --ema saved the trained weights beside their average
        net.load_state_dict(resume.get("training_model_state", resume["model_state"]))
    elif config.pretrained_weights:
        source = str(config.pretrained_weights)
        copied, untouched = load_pretrained(net, load_checkpoint(source), source)
        log.info(
            "pretrained weights: %d tensors from %s%s",
            copied,
            source,
            f"; left at their initial value: {', '.join(untouched)}" if untouched else "",
        )
    elif class_frequencies is not None:
        init_output_prior(net, fp.plans.num_input_channels, fp.plans.num_classes, class_frequencies)
    net.to(device)
    channels_last = resolve_channels_last(config.channels_last, device.type)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = None
    if config.ema is not None:
        ema = build_ema(net, config.ema)
        if resume is not None and resume.get("ema"):
            restore_ema(ema, resume["model_state"], resume["ema"])
    model: torch.nn.Module = net
    if ctx.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    precision = resolve_precision(config.precision, device.type, config.amp)
    amp = precision == "fp16"
    optimizer = torch.optim.NAdam(model.parameters(), lr=config.lr)
    # Keras' ReduceLROnPlateau (the paper's): min_delta 1e-4, absolute.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        threshold=1e-4,
        threshold_mode="abs",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    stopper = EarlyStopping(config.patience)
    schedule = config.lr_schedule
    lr_schedule = None if schedule == "plateau" else ProgressSchedule(schedule, config.lr, config.lr_floor)
    step_loss = None
    if config.compile_step and ctx.enabled:
        raise MonetError("--compile is not supported with torchrun (DistributedDataParallel); train without it.")
    if resolve_compile(
        config.compile_step, fp.model, device.type, precision, ctx.enabled, long_run, inductor_compiler_found
    ):
        try:
            step_loss = compiled_training_loss()
        except MonetError as exc:
            if config.compile_step:  # asked for: say why it cannot be had
                raise
            log.warning("the training step runs eagerly: %s", exc.__cause__ or exc)
        else:
            if config.compile_step is None:
                log.info(
                    "compiling the training step (the default for %s in a long bf16 CPU run; --no-compile turns "
                    "it off)",
                    fp.model,
                )
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        # a changed --lr-patience / --lr-factor / --early-stop-patience on --continue takes effect
        scheduler.patience, scheduler.factor = config.lr_patience, config.lr_factor
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        stopper.load_state_dict(resume["early_stopping"])
        if lr_schedule is not None and resume.get("lr_schedule", {}).get("schedule") == schedule:
            lr_schedule.load_state_dict(resume["lr_schedule"])
    return TrainingParts(
        model,
        build_loss(config.loss),
        optimizer,
        scheduler,
        scaler,
        stopper,
        device,
        amp,
        channels_last,
        lr_schedule,
        torch.bfloat16 if precision == "bf16" else None,
        step_loss,
        compile_fallback=config.compile_step is None,
        ema=ema,
    )


def make_checkpoint(
    parts: TrainingParts, state: TrainingState, fp: FoldPlan, config: TrainConfig, finished: bool
) -> dict:
    """The checkpoint dict (see :mod:`monetpipe.training.checkpoint` for the keys)."""
    averaged = {}
    if parts.ema is not None and config.ema is not None:
        averaged = {
            "training_model_state": unwrap(parts.model).state_dict(),
            "ema": ema_record(parts.ema, config.ema),
        }
    return {
        "network": network_spec(fp.model, fp.plans.num_input_channels, fp.plans.num_classes),
        "model_state": parts.eval_model.state_dict(),
        **averaged,
        "plans": fp.plans.to_dict(),
        "epoch": state.epoch,
        "history": state.history,
        "best_dice": state.best_dice,
        "stopped_early": state.stopped_early,
        "finished": finished,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "early_stopping": parts.stopper.state_dict(),
        "lr_schedule": parts.lr_schedule.state_dict() if parts.lr_schedule is not None else {},
        "elapsed_seconds": state.elapsed,
        "rng": rng_states(),
        "config": config.to_dict(),
        "cases": {"train": fp.train_cases, "inner_val": fp.inner_val_cases, "val": fp.val_cases},
    }


def _load_resume(path: Path, fp: FoldPlan, config: TrainConfig, warn: bool = True) -> dict:
    """Load ``path`` and check it fits ``fp``; ``warn``: say which settings differ (only rank 0 does)."""
    try:
        ckpt = load_checkpoint(path)
    except CorruptCheckpointError as exc:
        previous = fp.folder.checkpoint(fp.fold, "previous")
        if path.name == "checkpoint_latest.pth" and previous.is_file():
            advice = (
                f"To continue from the state before it (checkpoint_previous.pth), run: {continue_command('previous')}"
            )
        else:
            advice = f"No earlier state is kept; delete {fp.fold_dir} to start over."
        raise CorruptCheckpointError(path, exc.reason, advice) from None
    spec = network_spec(fp.model, fp.plans.num_input_channels, fp.plans.num_classes)
    if ckpt.get("network") != spec:
        raise MonetError(
            f"{path}: holds a {ckpt.get('network')} network, not {spec}; it cannot be continued "
            f"with these plans. Delete {path.parent} to start over."
        )
    if Plans.from_dict(ckpt["plans"]) != fp.plans:
        raise MonetError(
            f"{path}: was trained with other plans than {fp.layout.plans_file} (the task was "
            f"re-planned). Delete {path.parent} to retrain, or restore the old plans."
        )
    before = dict(ckpt.get("config", {}))
    now = {k: getattr(config, k) for k in _RESUME_SENSITIVE}
    if "schedule" in before:  # compare the schedules as run: an unset one resolved to plateau before 2026-12-02
        before["schedule"] = (ckpt.get("lr_schedule") or {}).get("schedule", "plateau")
        now["schedule"] = config.lr_schedule
    changed = [k for k in _RESUME_SENSITIVE if k in before and before[k] != now[k]]
    if changed and warn:
        # Also what a run started before a default changed sees on --continue without flags: say how to keep it.
        log.warning(
            "continuing with settings that differ from the checkpoint's (%s); the new values apply from here on. "
            "To continue with the checkpoint's settings instead, stop and add these flags to the --continue "
            "command: %s",
            "; ".join(f"{k}: {before[k]} -> {now[k]}" for k in changed),
            " ".join(flags_for({k: before[k] for k in changed})),
        )
    return ckpt


def _prepare_torch(config: TrainConfig, device: torch.device, ctx: DistContext) -> tuple[torch.device, int]:
    """Pick this rank's GPU, thread count and determinism settings; returns (device, threads)."""
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    threads = resolve_num_threads(config.num_threads, ctx.local_world_size)
    torch.set_num_threads(threads)
    if config.amp and device.type != "cuda":
        log.warning("--amp is only used on CUDA; training in float32 on %s", device.type)
    if resolve_precision(config.precision, device.type, config.amp) == "bf16" and device.type == "cpu":
        from monetpipe.cpu_features import cpu_features

        if not cpu_features().bf16:
            log.warning(
                "--precision bf16: this CPU has no native bfloat16 (no avx512_bf16 / AMX), so PyTorch emulates it "
                "and steps are usually slower than float32; --precision auto would pick fp32 here"
            )
    return device, threads


def _state_from(resume: dict | None) -> TrainingState:
    if resume is None:
        return TrainingState()
    restore_rng_states(resume["rng"])
    return TrainingState(
        int(resume["epoch"]),
        float(resume["best_dice"]),
        list(resume["history"]),
        bool(resume.get("stopped_early", False)),
        float(resume.get("elapsed_seconds", 0.0)),
    )


def _epoch_writer(fp: FoldPlan, parts: TrainingParts, config: TrainConfig, ctx: DistContext):
    """After each epoch (rank 0): checkpoint_best when improved, checkpoint_latest, the log and its plot.

    ``best`` is written before the ``latest`` that records it, so a kill in between leaves a ``best``
    newer than ``latest`` (harmless: the resumed run redoes that epoch), never an older one that
    ``latest``'s ``best_dice`` would keep from ever being replaced.
    """

    def write(state: TrainingState, is_best: bool) -> None:
        if not ctx.is_main:
            return
        checkpoint = make_checkpoint(parts, state, fp, config, finished=False)
        if is_best:
            save_checkpoint(checkpoint, fp.folder.checkpoint(fp.fold, "best"))
        save_latest(checkpoint, fp.folder.checkpoint(fp.fold, "latest"), fp.folder.checkpoint(fp.fold, "previous"))
        write_log_csv(state.history, fp.fold_dir / "training_log.csv")
        plot_progress(state.history, fp.fold_dir / "progress.png", f"{fp.task} {fp.model} fold {fp.fold}")

    return write


def _finish(fp: FoldPlan, parts: TrainingParts, state: TrainingState, config: TrainConfig) -> dict | None:
    """Save checkpoint_final and run the final validation (rank 0); returns the validation summary."""
    save_checkpoint(make_checkpoint(parts, state, fp, config, finished=True), fp.folder.checkpoint(fp.fold, "final"))
    log.info("finished %s after %d epochs (best inner-val Dice %.4f)", fp.fold_dir, state.epoch, state.best_dice)
    if not fp.val_cases:
        log.info("fold %s has no validation cases (trained on all cases): skipping the final validation", fp.fold)
        return None
    from monetpipe.training.validation import validate_fold

    summary = validate_fold(
        parts.eval_model,
        fp.layout,
        fp.plans,
        fp.val_cases,
        fp.folder.validation_dir(fp.fold),
        parts.device,
        raw_dir=fp.raw_dir,
    )
    _prepare_precisions(fp, config, parts.device)
    return summary


def _prepare_precisions(fp: FoldPlan, config: TrainConfig, device: torch.device) -> None:
    """Check reduced-precision inference on the validation cases (``--prepare-precision``), never failing."""
    if config.prepare_precision == "none" or fp.raw_dir is None:
        return
    from monetpipe.inference.precision_check import prepare_after_training
    from monetpipe.paths import MonetPaths

    paths = MonetPaths(fp.raw_dir.parent, fp.layout.task_dir.parent, fp.folder.root.parent.parent)
    prepare_after_training(fp.folder.root, fp.fold, config.prepare_precision, paths, device.type)


@dataclass(frozen=True)
class _DataPlan:
    """The training slices and how they are batched: the same on every rank."""

    fp: FoldPlan
    config: TrainConfig
    index: SliceIndex
    global_batch: int
    iterations: int
    workers: int

    def loader(self, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> SliceBatchLoader:
        return SliceBatchLoader(
            self.index,
            self.fp.plans.patch_size,
            self.fp.plans.num_input_channels,
            self.global_batch,
            self.iterations,
            self.config.foreground_fraction,
            self.config.seed,
            start_batch,
            rank,
            world_size,
            max(self.workers, 1),
        )


def _plan_data(fp: FoldPlan, config: TrainConfig, device: torch.device, ctx: DistContext) -> _DataPlan:
    """Index the training slices (and check the other cases' now, not after training); size the batches."""
    index = SliceIndex.build(fp.layout, fp.train_cases, fp.plans)
    SliceIndex.build(fp.layout, fp.inner_val_cases + fp.val_cases, fp.plans)  # fail now, not after training
    global_batch = config.batch_size or fp.plans.batch_size
    if global_batch < ctx.world_size:
        raise MonetError(
            f"--batch-size {global_batch} is smaller than the {ctx.world_size} processes; each "
            f"needs at least one slice per step."
        )
    iterations = iterations_per_epoch(index.num_slices, global_batch, config.iters_per_epoch)
    workers = resolve_num_workers(config.num_workers, device.type, ctx.local_world_size)
    return _DataPlan(fp, config, index, global_batch, iterations, workers)


def _resolved(data: _DataPlan, device: torch.device, ctx: DistContext, threads: int, parts: TrainingParts) -> dict:
    """The values decided at run time, for ``config.json``'s ``resolved``."""
    columns = rank_columns(data.global_batch, ctx.rank, ctx.world_size)
    return {
        "device": str(device),
        "world_size": ctx.world_size,
        "batch_size": data.global_batch,
        "batch_size_per_rank": columns.stop - columns.start,
        "iterations_per_epoch": data.iterations,
        "training_slices": data.index.num_slices,
        "num_workers": data.workers,
        "num_threads": threads,
        "amp": parts.amp,
        "precision": "fp16" if parts.amp else ("bf16" if parts.autocast_dtype is not None else "fp32"),
        "channels_last": parts.channels_last,
        "compile_step": parts.step_loss is not None,
        "schedule": data.config.lr_schedule,
        "max_epochs": data.config.max_epochs,
        "early_stop_patience": data.config.patience,
        "time_budget_seconds": data.config.time_budget,
        "patch_size": list(data.fp.plans.patch_size),
        "num_classes": data.fp.plans.num_classes,
        "best_checkpoint_metric": "inner-val Dice (max)",
        "lr_schedule_and_early_stopping_metric": "inner-val loss (min)",
        "budget_progress": "elapsed wall-clock seconds across --continue; LR progress in planned optimizer steps",
    }


def _log_start(data: _DataPlan, device: torch.device, state: TrainingState, threads: int, resumed: bool) -> None:
    fp = data.fp
    log.info(
        "%s %s on %s from epoch %d: %d training slices (%d cases), %d inner-val cases, %d val cases; "
        "batch %d, %d iterations/epoch, %s, %s schedule, %d loader worker(s), %d thread(s)",
        "continuing" if resumed else "training",
        fp.model,
        device,
        state.epoch,
        data.index.num_slices,
        len(fp.train_cases),
        len(fp.inner_val_cases),
        len(fp.val_cases),
        data.global_batch,
        data.iterations,
        _length(data.config, state),
        data.config.lr_schedule,
        data.workers,
        threads,
    )


def _length(config: TrainConfig, state: TrainingState) -> str:
    """How long the run may go, for the start line."""
    cap = f"up to {config.max_epochs} epochs" if config.max_epochs else "no epoch cap"
    if not config.time_budget:
        return cap
    left = max(config.time_budget - state.elapsed, 0.0)
    return f"time budget {format_duration(config.time_budget)} ({format_duration(left)} left), {cap}"


def _long_run(config: TrainConfig, state: TrainingState, iterations: int) -> bool:
    """Whether what is left of this run is long enough for ``--compile``'s default (:func:`is_long_run`)."""
    budget_left = config.time_budget - state.elapsed if config.time_budget else None
    epochs = config.max_epochs
    return is_long_run(budget_left, (epochs - state.epoch) * iterations if epochs is not None else math.inf)


def _with_recorded_budget(config: TrainConfig, resume: dict | None) -> TrainConfig:
    """A resumed budget run keeps its budget when ``--continue`` is given without ``--time-budget``."""
    recorded = (resume or {}).get("config", {}).get("time_budget")
    if config.time_budget is None and recorded:
        log.info(
            "continuing with the run's time budget of %s (give --time-budget to change it)",
            format_duration(float(recorded)),
        )
        return config.with_changes(time_budget=float(recorded))
    return config


def _inner_validator(fp: FoldPlan, config: TrainConfig, parts: TrainingParts, ctx: DistContext):
    """The per-epoch check on the inner validation cases (same numbers on every rank)."""

    def validate() -> dict:
        return inner_validation(
            parts.eval_model,
            fp.layout,
            fp.inner_val_cases,
            config.loss,
            fp.plans.num_classes,
            parts.device,
            ctx,
            config.val_batch_size,
            parts.amp,
            context_slices=fp.plans.context_slices,
            autocast_dtype=parts.autocast_dtype,
        )

    return validate


def run_training(
    fp: FoldPlan, config: TrainConfig, device: torch.device, resume_from: Path | None = None
) -> FoldResult:
    """Train one fold from scratch or from ``resume_from``, save ``checkpoint_final`` and validate.

    Args:
        fp: the resolved fold.
        config: hyperparameters.
        device: resolved device (``cuda`` becomes this rank's GPU under torchrun).
        resume_from: ``checkpoint_latest.pth`` to continue from.
    """
    started = time.perf_counter()  # the time budget counts from here (set-up included)
    ctx = init_distributed(device.type)
    device, threads = _prepare_torch(config, device, ctx)
    resume = _load_resume(resume_from, fp, config, warn=ctx.is_main) if resume_from else None
    config = _with_recorded_budget(config, resume)
    data = _plan_data(fp, config, device, ctx)
    fresh = resume is None and not config.pretrained_weights
    prior = fresh and config.output_prior
    frequencies = sampled_class_frequencies(data.loader(), fp.plans.num_classes) if prior else None
    state = _state_from(resume)
    parts = build_parts(fp, config, device, ctx, resume, frequencies, _long_run(config, state, data.iterations))
    planner = EpochPlanner(
        config.time_budget,
        config.max_epochs,
        inner_val_cases=math.ceil(len(fp.inner_val_cases) / ctx.world_size),  # each rank's share of them
        val_cases=len(fp.val_cases),
        elapsed_before=state.elapsed,
        started=started,
    )
    if ctx.is_main:
        resolved = _resolved(data, device, ctx, threads, parts)
        prepare_run_folder(fp, run_record(fp, config, resolved, state.epoch if resume is not None else None))
        write_log_csv(state.history, fp.fold_dir / "training_log.csv")  # drop rows of a lost epoch
        _log_start(data, device, state, threads, resume is not None)

    stream = data.loader(state.epoch * data.iterations, ctx.rank, ctx.world_size)
    transform = training_transforms(config, fp.plans.patch_size)
    with batch_stream(stream, transform, data.workers, pin_memory=device.type == "cuda") as batches:
        state = fit(
            parts,
            batches,
            state,
            epochs=config.max_epochs,
            iterations=data.iterations,
            validate=_inner_validator(fp, config, parts, ctx),
            on_epoch_end=_epoch_writer(fp, parts, config, ctx),
            seed=config.seed,
            ctx=ctx,
            planner=planner,
        )
    summary = _finish(fp, parts, state, config) if ctx.is_main else None
    return FoldResult(
        fp.fold_dir, state.epoch, state.best_dice if math.isfinite(state.best_dice) else math.nan, summary
    )
