"""``train_fold`` / ``train_models``: stage 2 as plain functions (``monet_train`` only parses arguments).

One fold of one model: resolve the task, plans and split; carve the inner validation set; decide
whether this is a fresh run, a resume (``continue_training``) or a finished run to refuse; build the
network, optimizer, schedule and data stream from the :class:`TrainConfig`; hand them to the loop
(:func:`monetpipe.training.trainer.fit`); save ``checkpoint_final``; predict the fold's ``val`` cases.
Only rank 0 of a ``torchrun`` job writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import platform
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.atomic import atomic_path, read_json, write_json
from monetpipe.paths import MonetPaths, find_task
from monetpipe.preprocessing.plans import DEFAULT_PLANS, Plans
from monetpipe.preprocessing.slice_cache import CacheLayout
from monetpipe.preprocessing.splits import load_splits
from monetpipe.results import ModelFolder, load_checkpoint, parse_fold
from monetpipe.training.config import TrainConfig, resolve_device, resolve_num_threads
from monetpipe.training.data import carve_inner_validation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldPlan:
    """Everything about one (task, model, plans, fold) that is fixed before training starts."""

    task: str
    model: str
    fold: int | str
    plans: Plans
    layout: CacheLayout
    folder: ModelFolder
    train_cases: list[str]
    inner_val_cases: list[str]
    val_cases: list[str]
    raw_dir: Path | None = None  # MONET_raw/<Task>: the final validation predicts its raw images

    @property
    def fold_dir(self) -> Path:
        return self.folder.fold_dir(self.fold)


@dataclass(frozen=True)
class FoldResult:
    """What a call of :func:`train_fold` produced."""

    fold_dir: Path
    epochs: int
    best_dice: float
    validation: dict | None


def plan_fold(
    task: str,
    model: str,
    fold: int | str = 0,
    plans_name: str = DEFAULT_PLANS,
    paths: MonetPaths | None = None,
    inner_val_fraction: float = 0.1,
    seed: int = 12345,
) -> FoldPlan:
    """Resolve names and cases for one fold (reads files, writes nothing).

    Raises:
        MonetError: unknown task / model / fold, or plans and splits missing.
    """
    from monetpipe.networks import list_networks

    paths = paths or MonetPaths.from_env()
    model = model.strip().lower()
    if model not in list_networks():
        raise MonetError(f"unknown model {model!r}; choose one of {', '.join(list_networks())} or 'all'.")
    task_name, task_dir = find_task(task, [paths.preprocessed])
    layout = CacheLayout(task_dir, plans_name)
    plans = Plans.load(layout.plans_file)
    splits_file = task_dir / "splits_final.json"
    # the ids the cache holds: splits_final.json may name no other case (nor any path)
    cached = {f.name[: -len("_data.npy")] for f in layout.slices.glob("*_data.npy")} if layout.slices.is_dir() else None
    splits = load_splits(splits_file, cached)
    fold = parse_fold(fold)
    if fold == "all":
        cases = sorted({c for s in splits for c in s["train"] + s["val"]})
        fold_train, val = cases, []
    elif 0 <= fold < len(splits):
        fold_train, val = sorted(splits[fold]["train"]), sorted(splits[fold]["val"])
    else:
        raise MonetError(
            f"{splits_file} has {len(splits)} fold(s) (0..{len(splits) - 1}); fold {fold} does not "
            f"exist. Use -f 0..{len(splits) - 1} or -f all, or re-plan with --folds."
        )
    train, inner = carve_inner_validation(fold_train, inner_val_fraction, seed)
    return FoldPlan(
        task_name,
        model,
        fold,
        plans,
        layout,
        ModelFolder.for_run(paths.results, task_name, model, plans_name),
        train,
        inner,
        val,
        paths.raw / task_name,
    )


def _prepare_model_folder(fp: FoldPlan) -> None:
    """Copy plans, dataset.json and the fingerprint into the model folder (refusing to mix plans)."""
    folder = fp.folder
    if folder.plans_file.is_file():
        existing = read_json(folder.plans_file)
        if existing != read_json(fp.layout.plans_file) and any(folder.fold_dir(f).is_dir() for f in _fold_dirs(folder)):
            raise MonetError(
                f"{folder.plans_file} differs from {fp.layout.plans_file}: the task was re-planned after "
                f"models in {folder.root} were trained. Delete {folder.root} to retrain with the new plans, "
                f"or restore "
                f"the old plans."
            )
    folder.root.mkdir(parents=True, exist_ok=True)
    for src, dst in (
        (fp.layout.plans_file, folder.plans_file),
        (fp.layout.task_dir / "dataset.json", folder.dataset_file),
        (fp.layout.task_dir / "dataset_fingerprint.json", folder.fingerprint_file),
    ):
        if src.is_file():
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)


def _fold_dirs(folder: ModelFolder) -> list[str]:
    return (
        [d.name[len("fold_") :] for d in folder.root.iterdir() if d.is_dir() and d.name.startswith("fold_")]
        if folder.root.is_dir()
        else []
    )


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
        config: hyperparameters (default: the paper's recipe).
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


def continue_command(which: str) -> str:
    """The command line that continues this run from ``checkpoint_<which>.pth`` (``--continue-from which``).

    Built from the running command (``monet_train``, ``python -m monetpipe.training`` or ``torchrun``);
    called from Python, the :func:`train_fold` argument to use.
    """
    argv0 = Path(sys.argv[0]).as_posix() if sys.argv else ""
    if Path(argv0).name == "monet_train":
        prog = ["monet_train"]
    elif argv0.endswith("monetpipe/training/__main__.py"):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = os.environ.get("LOCAL_WORLD_SIZE", str(world))
        prog = ["torchrun", "--nproc_per_node", local] if world > 1 else ["python"]
        prog += ["-m", "monetpipe.training"]
    else:
        return f"train_fold(..., continue_from={which!r})"
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--continue-from":
            skip = True
        elif arg != "--continue" and not arg.startswith("--continue-from="):
            args.append(arg)
    return shlex.join([*prog, *args, "--continue-from", which])


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
    of :func:`monetpipe.networks.list_networks` on the same split)."""
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


def run_record(fp: FoldPlan, config: TrainConfig, resolved: dict, resumed_from: int | None) -> dict:
    """The content of ``fold_<k>/config.json``: every setting, what was resolved, and the cases."""
    import torch

    from monetpipe import __version__ as monetpipe_version

    return {
        "task": fp.task,
        "model": fp.model,
        "fold": fp.fold,
        "plans": fp.plans.plans_name,
        "config": config.to_dict(),
        "resolved": resolved,
        "cases": {"train": fp.train_cases, "inner_val": fp.inner_val_cases, "val": fp.val_cases},
        "inner_val_rule": f"seeded ({config.seed}) {config.inner_val_fraction:g} of the fold's training cases, >= 1",
        "resumed_from_epoch": resumed_from,
        "command": sys.argv,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {
            "monetpipe": monetpipe_version,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def prepare_run_folder(fp: FoldPlan, record: dict) -> None:
    """Write the model folder's copies and ``fold_<k>/config.json`` (call on rank 0 only)."""
    _prepare_model_folder(fp)
    fp.fold_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, fp.fold_dir / "config.json")
