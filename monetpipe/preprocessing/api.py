"""``plan_and_preprocess``: the whole of stage 1 as one function (the CLI only parses arguments)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.atomic import atomic_path, ensure_writable_dir, read_json, write_json
from monetpipe.io.dataset import load_task
from monetpipe.parallel import map_cases
from monetpipe.paths import MonetPaths, find_task, looks_like_path
from monetpipe.preprocessing.fingerprint import SAMPLES_FOLDER, compute_fingerprint
from monetpipe.preprocessing.planner import check_size_bounds, plan_experiment, select_channels
from monetpipe.preprocessing.plans import DEFAULT_CONTEXT_SLICES, DEFAULT_MAX_SIZE, Plans, plans_name_for
from monetpipe.preprocessing.slice_cache import CacheLayout, cache_case, case_hash, is_current
from monetpipe.preprocessing.splits import ensure_splits

log = logging.getLogger(__name__)

#: Written into ``MONET_preprocessed/<Task>/``: the raw task folder the cache was built from.
RAW_SOURCE_FILE = "raw_task.json"


@dataclass(frozen=True)
class PreprocessResult:
    task_dir: Path
    plans: Plans
    layout: CacheLayout
    splits: list[dict]
    num_built: int
    num_skipped: int
    seconds: float


def plan_and_preprocess(
    task: str,
    paths: MonetPaths | None = None,
    num_processes: int = 2,
    binary: bool = False,
    labels: list[int] | None = None,
    folds: int = 1,
    max_size: int = DEFAULT_MAX_SIZE,
    overwrite_splits: bool = False,
    replan: bool = False,
    channels: list[str] | None = None,
    context_slices: int = DEFAULT_CONTEXT_SLICES,
    min_size: int = 0,
) -> PreprocessResult:
    """Fingerprint, plan, cache slices and fix the splits of a raw task.

    Args:
        task: ``Task04``, ``4``, ``Task04_Hippocampus``, ``Dataset004_Hippocampus`` or a task folder path.
        paths: the data roots (default: from the environment).
        num_processes: worker processes for fingerprinting and caching.
        binary: merge all foreground labels (plans ``monetPlans_binary``).
        labels: keep only these labels (plans ``monetPlans_labels_...``).
        folds: 1 for the paper's 70/30 hold-out, K for K-fold cross-validation.
        max_size: largest in-plane slice size after resampling.
        overwrite_splits: replace an existing ``splits_final.json`` that differs.
        replan: plan from the current data even when plans of the same kind exist (every cached case is
            then rebuilt if the plans change); by default existing plans are kept, see
            :func:`keep_existing_plans`.
        channels: the input channels the network sees, as dataset.json names (any case) or indices
            (default: all; plans ``monetPlans_ch_<names>``). The cache holds only these.
        context_slices: K > 0 plans 2.5D input, slices z-K .. z+K as channels (plans ``..._ctx<K>``; default
            1, docs/preprocessing.md "2.5D input"); 0 plans the paper's 2D input (plans ``monetPlans``). The
            cache is the same 2D cache for every K, the stacks are assembled when slices are read.
        min_size: resample slices up until the median slice's longer in-plane side is at least this many
            pixels (plans ``..._s<N>``; 0: never upsample). MoNet's two stride-2 steps then leave a larger map.

    Returns:
        What was written and how long it took. Up-to-date cache entries are skipped.
    """
    start = time.perf_counter()
    paths = paths or MonetPaths.from_env()
    name, raw_dir = raw_task_folder(task, paths)
    dataset = load_task(raw_dir)
    out_dir = paths.preprocessed / name
    chosen = select_channels(channels, dataset)
    names = tuple(dataset.channel_names[c] for c in chosen) if len(chosen) < dataset.num_channels else None
    if context_slices < 0:
        raise MonetError(f"--context-slices {context_slices}: give 0 (2D) or a positive number of slices per side.")
    check_size_bounds(min_size, max_size)
    plans_name = plans_name_for(binary, labels, names, context_slices, min_size, max_size)
    layout = CacheLayout(out_dir, plans_name)
    fix = f"Make it writable or set MONET_preprocessed to a writable folder (now {paths.preprocessed})."
    for folder in (out_dir, layout.slices, layout.gt_segmentations):  # before any work starts
        ensure_writable_dir(folder, fix)
    with atomic_path(out_dir / "dataset.json") as tmp:
        shutil.copyfile(raw_dir / "dataset.json", tmp)
    # Where the raw images are: monet_train's final validation predicts them (training/validation.py).
    write_json({"raw_task_folder": str(raw_dir)}, out_dir / RAW_SOURCE_FILE)

    fp_file = out_dir / "dataset_fingerprint.json"
    previous = read_json(fp_file) if fp_file.is_file() else None
    fingerprint = compute_fingerprint(dataset, num_processes, previous, out_dir / SAMPLES_FOLDER)
    if fingerprint is not previous:
        write_json(fingerprint, fp_file)

    planned = plan_experiment(
        dataset,
        fingerprint,
        plans_name,
        binary=binary,
        labels=labels,
        max_size=max_size,
        channels=chosen,
        context_slices=context_slices,
        min_size=min_size,
    )
    plans = planned if replan else keep_existing_plans(planned, layout.plans_file)
    if plans is planned:
        plans.save(layout.plans_file)
    _log_plans(plans)

    plans_hash = plans.preprocessing_hash()
    jobs, skipped = [], 0
    for case in dataset.training:
        source = case_hash(case, fingerprint)
        if is_current(layout, case.case_id, source, plans_hash):
            skipped += 1
        else:
            jobs.append((case, dataset, plans, layout, source))
    if skipped:
        log.info("%d case(s) already up to date in %s", skipped, layout.slices)
    map_cases(cache_case, jobs, num_processes, desc=f"Preprocess {name} ({plans_name})")

    splits = ensure_splits(
        out_dir / "splits_final.json", [c.case_id for c in dataset.training], folds, overwrite_splits
    )
    seconds = time.perf_counter() - start
    log.info("Preprocessed %s: %d built, %d up to date, %.1f s", name, len(jobs), skipped, seconds)
    return PreprocessResult(out_dir, plans, layout, splits, len(jobs), skipped, seconds)


def raw_task_folder(task: str | os.PathLike, paths: MonetPaths) -> tuple[str, Path]:
    """``-t``'s raw task: looked up by name in ``MONET_raw``, or a raw task folder given by path anywhere
    (it holds ``dataset.json`` and ``imagesTr/``); the name is the folder's name in both cases."""
    as_path = Path(os.fspath(task)).expanduser()
    if looks_like_path(os.fspath(task)) and (as_path / "dataset.json").is_file() and (as_path / "imagesTr").is_dir():
        name, _ = find_task(as_path, [as_path.resolve().parent])  # checks it is named like a task
        return name, as_path.resolve()
    name, folder = find_task(task, [paths.raw])
    return name, folder


# Plan fields that follow from the data's statistics; any other difference means another kind of plans.
_DATA_DERIVED = (
    "slice_axis",
    "transpose_forward",
    "transpose_backward",
    "target_spacing",
    "patch_size",
    "median_shape",
    "crop_to_nonzero",
    "batch_size",
    "extra",
)


def _kind(plans: Plans) -> dict:
    d = plans.to_dict()
    for key in _DATA_DERIVED:
        d.pop(key, None)
    d["normalization"] = [n["scheme"] for n in d["normalization"]]
    return d


def keep_existing_plans(planned: Plans, plans_file: Path) -> Plans:
    """The plans already in ``plans_file`` when they are of the same kind as ``planned``, else ``planned``.

    Plans are an artifact the cache and every model trained on it depend on, so they do not drift with the
    data: adding or changing a case keeps the existing plans (same labels, channels, normalization schemes,
    version) and rebuilds only that case's cache entry. What re-planning would change (spacing, patch,
    normalization statistics, ...) is logged; ``--replan`` adopts it.
    """
    if not plans_file.is_file():
        return planned
    try:
        existing = Plans.load(plans_file)
    except MonetError as exc:
        log.warning("%s; planning anew", exc)
        return planned
    if _kind(existing) != _kind(planned):
        log.info("%s describes other labels, channels or version; replacing it", plans_file)
        return planned
    old, new = existing.to_dict(), planned.to_dict()
    changed = [k for k in (*_DATA_DERIVED, "normalization") if k != "extra" and old.get(k) != new.get(k)]
    if changed:
        log.info(
            "Keeping the existing plans %s, made from earlier data (planning from the current data would change "
            "%s). Cached cases stay valid; only new or changed cases are built. Pass --replan to plan again "
            "(rebuilds the whole cache; models trained before keep their own copy of the old plans).",
            plans_file,
            ", ".join(changed),
        )
    return existing


def _log_plans(plans: Plans) -> None:
    axis = "zyx"[plans.slice_axis]
    norm = ", ".join(n.scheme + (" (nonzero mask)" if n.use_nonzero_mask else "") for n in plans.normalization)
    log.info(
        "Plans %s: slice axis %s, in-plane spacing %s mm, patch %s, median resampled shape %s, "
        "normalization [%s], classes %s, network input %s, batch size %d",
        plans.plans_name,
        axis,
        tuple(round(s, 3) for s in plans.target_spacing),
        plans.patch_size,
        plans.median_shape,
        norm,
        list(plans.class_names),
        plans.describe_input(),
        plans.batch_size,
    )
