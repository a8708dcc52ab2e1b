"""One fold of one model: what it is (:class:`FoldPlan`), what training it produced (:class:`FoldResult`)
and what its run folder records.

:func:`plan_fold` resolves the task, plans and split and carves the inner validation set (it reads files,
writes nothing). :func:`run_record` is the content of ``fold_<k>/config.json`` and
:func:`read_run_record` reads it back for ``monet_train --config``; :func:`prepare_run_folder` writes it
with the model folder's copies of the plans. Both :mod:`monetpipe.training.api` (which decides what to
do with a fold) and :mod:`monetpipe.training.session` (which trains it) build on this module.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shlex
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from monetpipe.errors import MonetError, TaskNotFoundError
from monetpipe.io.atomic import atomic_path, read_json, write_json
from monetpipe.paths import MonetPaths, find_task
from monetpipe.preprocessing.plans import BASE_PLANS, DEFAULT_PLANS, PAPER_PLANS, Plans
from monetpipe.preprocessing.slice_cache import CacheLayout
from monetpipe.preprocessing.splits import load_splits
from monetpipe.results import ModelFolder, parse_fold
from monetpipe.training.config import TrainConfig
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


def _preprocessed_task(task, paths: MonetPaths) -> tuple[str, Path]:
    """``-t``'s task in MONET_preprocessed; a task that exists only raw says to preprocess it first."""
    try:
        return find_task(task, [paths.preprocessed])
    except TaskNotFoundError as not_preprocessed:
        try:
            name, _ = find_task(task, [paths.raw])
        except TaskNotFoundError:
            raise not_preprocessed from None
        raise TaskNotFoundError(
            f"{name} is in MONET_raw ({paths.raw}) but has not been preprocessed into MONET_preprocessed "
            f"({paths.preprocessed}). Run monet_plan_and_preprocess -t {name} first."
        ) from None


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
    task_name, task_dir = _preprocessed_task(task, paths)
    layout = CacheLayout(task_dir, plans_name)
    if not layout.plans_file.is_file():
        raise MonetError(_missing_plans(layout, task_name))
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


def _missing_plans(layout: CacheLayout, task_name: str) -> str:
    """What to do when ``-p``'s plans were never made: the plans the task has, and how to make these."""
    have = sorted(f.stem for f in layout.task_dir.glob(f"{BASE_PLANS}*.json"))
    make = f"monet_plan_and_preprocess -t {task_name}"
    if layout.plans_name == PAPER_PLANS:
        make += " --context-slices 0"
    elif layout.plans_name != DEFAULT_PLANS:
        make += " with the flags its name stands for (docs/preprocessing.md, 'Plans names')"
    hint = ""
    if layout.plans_name == DEFAULT_PLANS and PAPER_PLANS in have:
        hint = (
            f" The default plans are 2.5D ({DEFAULT_PLANS}) since 2.5D input measured better than 2D; "
            f"to train on the 2D plans made before, pass -p {PAPER_PLANS}."
        )
    return (
        f"{layout.plans_file}: no plans {layout.plans_name} for {task_name} (it has: {', '.join(have) or 'none'}). "
        f"Make them with {make}, or pass -p with one it has.{hint}"
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


def read_run_record(path: str | os.PathLike) -> dict:
    """What a ``fold_<k>/config.json`` says to run again: ``task``, ``model``, ``fold``, ``plans`` and ``config``.

    ``config`` holds the recorded :class:`TrainConfig` values as written (``None`` where the setting was
    left to be resolved at run time: it is resolved again, on the machine that replays the run).

    Raises:
        MonetError: the file is missing, is not JSON, is not a run's ``config.json``, or records a
            setting this version does not know.
    """
    path = Path(path)
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise MonetError(f"--config {path}: no such file. Pass a run's fold_<k>/config.json.") from None
    except (OSError, ValueError) as exc:
        raise MonetError(f"--config {path}: cannot read it as JSON ({exc}).") from None
    keys = ("task", "model", "fold", "plans", "config")
    if not isinstance(record, dict) or not all(k in record for k in keys) or not isinstance(record["config"], dict):
        raise MonetError(
            f"--config {path}: not a training run's config.json (it needs the keys {', '.join(keys)}). "
            "Pass the config.json of a fold folder, MONET_results/<Task>/<model>__<plans>/fold_<k>/config.json."
        )
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(record["config"]) - known)
    if unknown:
        raise MonetError(
            f"--config {path}: unknown setting(s) {', '.join(unknown)} under 'config' (this monetpipe knows "
            f"{', '.join(sorted(known))}). Remove them from the file."
        )
    return {k: record[k] for k in keys}
