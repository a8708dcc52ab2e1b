"""``train_fold`` / ``train_models``: stage 2 as plain functions (``monet_train`` only parses arguments).

One fold of one model: resolve the task, plans and split (:func:`~monetpipe.training.fold.plan_fold`);
decide whether this is a fresh run, a resume (``continue_training``) or a finished run to refuse; hand
the fold to :func:`monetpipe.training.session.run_training`, which builds the network, optimizer,
schedule and data stream from the :class:`TrainConfig`, runs the loop, saves ``checkpoint_final`` and
predicts the fold's ``val`` cases. Only rank 0 of a ``torchrun`` job writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

from monetpipe.devices import resolve_device
from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.results import load_checkpoint
from monetpipe.training.config import TrainConfig, resolve_num_threads
from monetpipe.training.fold import (
    FoldPlan,
    FoldResult,
    continue_command,
    plan_fold,
    prepare_run_folder,
    read_run_record,
    run_record,
)

# the fold pieces live in training/fold.py; they stay importable from here, the stage's public module
__all__ = [
    "FoldPlan",
    "FoldResult",
    "continue_command",
    "plan_fold",
    "prepare_run_folder",
    "read_run_record",
    "run_record",
    "train_fold",
    "train_models",
]

log = logging.getLogger(__name__)


def train_fold(
    task: str,
    model: str,
    fold: int | str = 0,
    config: TrainConfig | None = None,
    plans_name: str = DEFAULT_PLANS,
    paths: MonetPaths | None = None,
    continue_training: bool = False,
    val_only: bool = False,
    continue_from: str = "latest",
) -> FoldResult:
    """Train (or resume, or only validate) one model on one fold, holding the fold folder's lock.

    Args:
        task: ``Task04``, ``4``, ``Task04_Hippocampus``, ... (resolved in ``MONET_preprocessed``).
        model: a name from :func:`monetpipe.networks.list_networks`.
        fold: a fold of ``splits_final.json`` or ``"all"`` (train on every case, no final validation).
        config: hyperparameters (default: ``TrainConfig()``, the default recipe).
        plans_name: which plans and slice cache to train on.
        paths: data roots (default: from the environment).
        continue_training: resume from ``checkpoint_latest.pth``.
        val_only: only re-run the final validation of a finished run.
        continue_from: ``"previous"`` resumes from ``checkpoint_previous.pth`` instead (implies
            ``continue_training``; the current ``checkpoint_latest.pth`` is kept as
            ``checkpoint_latest_replaced.pth``).

    Returns:
        The fold folder, completed epochs, best inner-val Dice and the validation summary (if any).

    Raises:
        MonetError: the run is finished (or started) and ``continue_training`` is false, a started run has
            no checkpoint to continue from, inputs are missing, or another process trains this fold
            (:class:`~monetpipe.training.lock.RunFolderBusyError`).
    """
    from monetpipe.training.distributed import sync_after_fold
    from monetpipe.training.lock import run_folder_lock

    if continue_from not in ("latest", "previous"):
        raise MonetError(f"--continue-from {continue_from!r}: choose latest or previous.")
    continue_training = continue_training or continue_from == "previous"
    config = config or TrainConfig()
    fp = plan_fold(task, model, fold, plans_name, paths, config.inner_val_fraction, config.seed)
    # Under torchrun only rank 0 writes, so only rank 0 locks; if it is refused it exits with the error and
    # torchrun stops the other ranks (they are waiting for it to join the process group).
    lock = run_folder_lock(fp.fold_dir, "monet_train") if _rank() == 0 else contextlib.nullcontext()
    with lock:
        result = _train_fold_locked(fp, config, continue_training, val_only, continue_from)
    sync_after_fold()
    return result


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _train_fold_locked(
    fp: FoldPlan, config: TrainConfig, continue_training: bool, val_only: bool, continue_from: str
) -> FoldResult:
    import torch

    final = fp.folder.checkpoint(fp.fold, "final")
    latest = fp.folder.checkpoint(fp.fold, "latest")
    previous = fp.folder.checkpoint(fp.fold, "previous")
    if val_only:
        if not final.is_file():
            raise MonetError(f"{final}: not found; --val-only needs a finished run. Train it first.")
        return _validate_finished(fp, config, final)
    if final.is_file():
        if not continue_training:
            raise MonetError(
                f"{fp.fold_dir} holds a finished run (checkpoint_final.pth); refusing to overwrite it. Use "
                f"--val-only to re-run its validation, or delete {fp.fold_dir} (or train into another "
                f"MONET_results) to train again."
            )
        log.info("%s is already finished; nothing to train", fp.fold_dir)
        summary_file = fp.folder.validation_dir(fp.fold) / "summary.json"
        if fp.val_cases and not summary_file.is_file():
            return _validate_finished(fp, config, final)
        ckpt = load_checkpoint(final)
        summary = read_json(summary_file) if summary_file.is_file() else None
        return FoldResult(fp.fold_dir, int(ckpt["epoch"]), float(ckpt.get("best_dice", math.nan)), summary)
    if latest.is_file() and not continue_training:
        raise MonetError(
            f"{fp.fold_dir} holds an unfinished run (checkpoint_latest.pth). Pass --continue to resume it, "
            f"or delete {fp.fold_dir} to start over."
        )
    if continue_from == "previous":
        if not previous.is_file():
            raise MonetError(
                f"{previous}: not found, so there is no previous state to continue from. Continue from "
                f"checkpoint_latest.pth with --continue, or delete {fp.fold_dir} to start over."
            )
        resume_from = previous
        if _rank() == 0 and latest.is_file():
            set_aside = latest.with_name("checkpoint_latest_replaced.pth")
            os.replace(latest, set_aside)
            log.warning("continuing from %s; the former checkpoint_latest.pth is now %s", previous, set_aside)
    elif latest.is_file():
        resume_from = latest
    else:
        _refuse_to_restart(fp, previous, continue_training)
        if continue_training:
            log.info("%s: no checkpoint_latest.pth to continue from and no epoch recorded; starting", fp.fold_dir)
        resume_from = None

    from monetpipe.training.session import run_training

    device = torch.device(resolve_device(config.device))
    return run_training(fp, config, device, resume_from=resume_from)


def _refuse_to_restart(fp: FoldPlan, previous: Path, continue_training: bool) -> None:
    """A fold with recorded epochs but no ``checkpoint_latest.pth`` is never silently started over."""
    from monetpipe.training.progress import read_log_csv

    log_file = fp.fold_dir / "training_log.csv"
    there = []
    if log_file.is_file():
        try:
            logged = len(read_log_csv(log_file))
        except (OSError, ValueError, KeyError):
            there.append("an unreadable training_log.csv")
        else:
            if logged:
                there.append(f"training_log.csv with {logged} epoch(s)")
    if previous.is_file():
        there.append("checkpoint_previous.pth")
    if not there:
        return  # at most a run killed in its first epoch: nothing to lose
    options = ["restore checkpoint_latest.pth into it and add --continue"]
    if previous.is_file():
        options.append(f"continue from checkpoint_previous.pth: {continue_command('previous')}")
    options.append(f"or delete {fp.fold_dir} to start over")
    what = "--continue has nothing to continue from" if continue_training else "starting over would overwrite it"
    raise MonetError(
        f"{fp.fold_dir} holds a started run ({', '.join(there)}) but no checkpoint_latest.pth; {what}. "
        f"Options: {'; '.join(options)}."
    )


def _validate_finished(fp: FoldPlan, config: TrainConfig, final: Path) -> FoldResult:
    """Load ``checkpoint_final`` and run the final validation (rank 0 only)."""
    import torch

    from monetpipe.networks import build_network
    from monetpipe.training.distributed import init_distributed
    from monetpipe.training.validation import validate_fold

    device = torch.device(resolve_device(config.device))
    ctx = init_distributed(device.type)
    ckpt = load_checkpoint(final)
    if not fp.val_cases:
        log.info("fold %s has no validation cases (trained on all cases): skipping the final validation", fp.fold)
        return FoldResult(fp.fold_dir, int(ckpt["epoch"]), float(ckpt.get("best_dice", math.nan)), None)
    summary = None
    if ctx.is_main:
        spec = ckpt["network"]
        net = build_network(spec["name"], spec["in_channels"], spec["num_classes"])
        net.load_state_dict(ckpt["model_state"])
        net.to(device)
        torch.set_num_threads(resolve_num_threads(config.num_threads))
        summary = validate_fold(
            net,
            fp.layout,
            fp.plans,
            fp.val_cases,
            fp.folder.validation_dir(fp.fold),
            device,
            raw_dir=fp.raw_dir,
        )
    return FoldResult(fp.fold_dir, int(ckpt["epoch"]), float(ckpt.get("best_dice", math.nan)), summary)


def train_models(
    task: str,
    models: list[str],
    folds: list[int | str],
    config: TrainConfig | None = None,
    plans_name: str = DEFAULT_PLANS,
    paths: MonetPaths | None = None,
    continue_training: bool = False,
    val_only: bool = False,
    continue_from: str = "latest",
) -> list[FoldResult]:
    """:func:`train_fold` for every model and fold, one after another (``-m all`` trains every network
    of :func:`monetpipe.networks.list_networks` on the same split). Each (model, fold) gets the same
    ``config``, so a ``time_budget`` is each one's whole budget: ``-m all --time-budget 15m`` gives every
    network the same 15 minutes."""
    from monetpipe.networks import list_networks

    names = list_networks() if models in (["all"], "all") else list(models)
    results = []
    for name in names:
        for fold in folds:
            log.info("=== %s, fold %s ===", name, fold)
            results.append(
                train_fold(task, name, fold, config, plans_name, paths, continue_training, val_only, continue_from)
            )
    return results
