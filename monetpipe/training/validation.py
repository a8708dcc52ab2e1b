"""The final validation: ``monet_predict`` on the fold's ``val`` cases, then the evaluator.

The validation cases are predicted from their **raw images** (the files the task's dataset.json names
in ``MONET_raw/<Task>/``, or in the folder ``monet_plan_and_preprocess -t PATH`` read) by
:func:`monetpipe.inference.api.predict_network`, which is ``monet_predict``'s code with its defaults: the
same threads and workers, network form, reading, preprocessing, restore and NIfTI writer. So
``fold_<k>/validation/<case>.nii.gz`` are the files ``monet_predict --model-folder ... -f <k>`` writes for
those images, and ``validation/summary.json`` (scored against
``MONET_preprocessed/<Task>/gt_segmentations/<plans>/``) is what ``monet_evaluate`` reports for them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from monetpipe.errors import MonetError
from monetpipe.io.image import is_nifti, strip_nifti
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.slice_cache import CacheLayout

log = logging.getLogger(__name__)


def foreground_labels(plans: Plans) -> list[int]:
    """The label values a prediction of these plans can contain, background excluded."""
    return sorted({v for v in plans.output_labels.values() if v != 0})


def _val_only_command(output_dir: Path, task: str) -> str:
    """``monet_train ... --val-only`` for the run that owns ``output_dir`` (``.../<model>__<plans>/fold_<k>/...``)."""
    from monetpipe.results import ModelFolder

    fold_dir = output_dir.parent
    folder = ModelFolder(fold_dir.parent)
    fold = fold_dir.name[len("fold_") :] if fold_dir.name.startswith("fold_") else "FOLD"
    plans = f" -p {folder.plans_name}" if "__" in folder.root.name else ""
    model = folder.model if "__" in folder.root.name else "MODEL"
    return f"monet_train -t {task} -m {model} -f {fold}{plans} --val-only"


def find_raw_task(raw_dir: Path, layout: CacheLayout) -> Path | None:
    """The raw task folder to read: ``raw_dir`` (``MONET_raw/<Task>``) if it holds a dataset.json, else the
    folder ``monet_plan_and_preprocess`` recorded in ``MONET_preprocessed/<Task>/raw_task.json`` (a task
    preprocessed from a path outside ``MONET_raw``) if it still does; ``None`` otherwise."""
    from monetpipe.io.atomic import read_json
    from monetpipe.preprocessing.api import RAW_SOURCE_FILE

    candidates = [raw_dir]
    record = layout.task_dir / RAW_SOURCE_FILE
    if record.is_file():
        try:
            candidates.append(Path(read_json(record)["raw_task_folder"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: unreadable; ignored", record)
    return next((c for c in candidates if (c / "dataset.json").is_file()), None)


def raw_validation_cases(raw_dir: Path, case_ids: list[str], output_dir: Path, layout: CacheLayout) -> list:
    """The :class:`~monetpipe.inference.inputs.InputCase` of each validation case, from the raw task folder.

    Raises:
        MonetError: the raw task folder is absent (the message says how to validate later), or a case
            of the split is not in its dataset.json.
    """
    from monetpipe.inference.inputs import InputCase
    from monetpipe.io.dataset import load_task

    task = raw_dir.name
    found = find_raw_task(raw_dir, layout)
    if found is None:
        raise MonetError(
            f"{raw_dir}: raw task folder not found. The final validation predicts the raw images of the "
            f"validation cases, exactly as monet_predict does; the trained checkpoints in {output_dir.parent} "
            f"are kept. Set MONET_raw to the folder that holds {task}, then run: "
            f"{_val_only_command(output_dir, task)}"
        )
    raw_dir = found
    dataset = load_task(raw_dir)
    cases = []
    for case_id in case_ids:
        try:
            files = dataset.case(case_id).image_files
        except KeyError:
            raise MonetError(
                f"{raw_dir / 'dataset.json'}: validation case {case_id!r} of splits_final.json is not in the raw "
                f"dataset. Restore the raw task the cache was built from (or re-run monet_plan_and_preprocess)."
            ) from None
        cases.append(InputCase(case_id, tuple(files)))
    return cases


def predict_cases(
    model: nn.Module,
    layout: CacheLayout,
    plans: Plans,
    case_ids: list[str],
    output_dir: Path,
    device: torch.device,
    raw_dir: Path,
    batch_size: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Predict the raw images of ``case_ids`` with ``monet_predict``'s code into ``output_dir/<case>.nii.gz``.

    Args:
        model: the trained network (any device, any mode; its weights are copied to a fresh CPU network
            as :func:`~monetpipe.inference.loading.network_from_checkpoint` builds it from the checkpoint).
        layout: the task's preprocessed folder.
        raw_dir: the raw task folder (``MONET_raw/<Task>``) whose dataset.json names the images; if it
            is absent, the folder recorded by ``monet_plan_and_preprocess`` (:func:`find_raw_task`).
        batch_size: slices per forward pass (default: monet_predict's).

    Returns:
        The written files, one per case. Files of other cases in ``output_dir`` are removed, so the
        folder holds exactly this fold's predictions.

    Raises:
        MonetError: the raw images are absent, or a case could not be predicted (all are tried first).
    """
    from monetpipe.inference.api import predict_network
    from monetpipe.inference.loading import network_from_checkpoint
    from monetpipe.training.checkpoint import network_spec, unwrap

    cases = raw_validation_cases(raw_dir, case_ids, output_dir, layout)
    source = unwrap(model)
    state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
    spec = network_spec(source.model_name, source.in_channels, source.num_classes)
    network = network_from_checkpoint({"network": spec, "model_state": state}, output_dir)

    output_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(case_ids)
    for old in output_dir.iterdir():
        if is_nifti(old) and strip_nifti(old.name) not in wanted:
            old.unlink()
    device_name = str(device)
    # Training turns cuDNN autotuning on; monet_predict runs with PyTorch's default (off), under which
    # cuDNN picks its convolution algorithms by fixed heuristics rather than by timing them.
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        summary = predict_network(
            cases,
            output_dir,
            network,
            plans,
            device=device_name,
            num_threads=torch.get_num_threads() if torch.device(device_name).type == "cpu" else None,
            batch_size=batch_size,
            progress=progress,
        )
    finally:
        torch.backends.cudnn.benchmark = autotune
    if summary.failed:
        failures = "; ".join(f"{case}: {error}" for case, error in summary.failed.items())
        raise MonetError(f"final validation: {len(summary.failed)} case(s) could not be predicted ({failures})")
    return [output_dir / f"{case_id}.nii.gz" for case_id in case_ids]


def validate_fold(
    model: nn.Module,
    layout: CacheLayout,
    plans: Plans,
    case_ids: list[str],
    output_dir: Path,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = True,
    raw_dir: Path | None = None,
) -> dict:
    """Predict ``case_ids`` from their raw images into ``output_dir`` and write ``output_dir/summary.json``.

    Args:
        model: the trained network.
        layout: the task's preprocessed folder (for the reference label maps).
        raw_dir: the raw task folder; default ``MONET_raw/<Task>``.
        batch_size: slices per forward pass (default: ``monet_predict``'s).
        Others: see :func:`predict_cases`.

    Returns:
        The summary (see :func:`monetpipe.evaluation.evaluator.evaluate_folders`).
    """
    from monetpipe.evaluation.evaluator import evaluate_folders
    from monetpipe.paths import MonetPaths

    raw_dir = Path(raw_dir) if raw_dir is not None else MonetPaths.from_env().raw / layout.task_dir.name
    predict_cases(model, layout, plans, case_ids, output_dir, device, raw_dir, batch_size, progress)
    summary = evaluate_folders(
        layout.gt_segmentations,
        output_dir,
        labels=foreground_labels(plans),
        output_file=output_dir / "summary.json",
        num_processes=1 if len(case_ids) <= 8 else 2,
        case_ids=case_ids,
        progress=progress,
    )
    per_label = ", ".join(
        f"{plans.class_names[plans_class(plans, int(k))]} {v['Dice']:.4f}"
        for k, v in summary["mean"].items()
        if v.get("Dice") is not None
    )
    log.info(
        "final validation on %d case(s): mean foreground Dice %.4f (%s) -> %s",
        len(case_ids),
        summary["foreground_mean"]["Dice"] or float("nan"),
        per_label,
        output_dir / "summary.json",
    )
    return summary


def plans_class(plans: Plans, label_value: int) -> int:
    """Training class index of an output label value (for naming it)."""
    for cls, value in plans.output_labels.items():
        if value == label_value:
            return cls
    return 0
