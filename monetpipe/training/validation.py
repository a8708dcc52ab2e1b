"""The final validation: predict the fold's ``val`` cases as 3D volumes and score them.

Predictions go through :func:`monetpipe.inference.predictor.predict_preprocessed`, the code path
``monet_predict`` uses, from the cached slices of each case back to its original grid; they are
written to ``fold_<k>/validation/<case>.nii.gz`` with the geometry of the source image and scored
against ``MONET_preprocessed/<Task>/gt_segmentations/<plans>/`` into ``validation/summary.json``
(nnU-Net's layout; per case and label Dice, IoU, HD95, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from monetpipe.io.image import Geometry, is_nifti, strip_nifti, write_label
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.preprocessor import probabilities_to_labels
from monetpipe.preprocessing.slice_cache import CacheLayout, load_case

log = logging.getLogger(__name__)


def foreground_labels(plans: Plans) -> list[int]:
    """The label values a prediction of these plans can contain, background excluded."""
    return sorted({v for v in plans.output_labels.values() if v != 0})


def predict_cases(
    model: nn.Module,
    layout: CacheLayout,
    plans: Plans,
    case_ids: list[str],
    output_dir: Path,
    device: torch.device,
    batch_size: int = 32,
    progress: bool = True,
) -> list[Path]:
    """Predict cached cases and write their label maps with each case's original geometry.

    Returns:
        The written files, one per case. Files of other cases in ``output_dir`` are removed, so the
        folder holds exactly this fold's predictions.
    """
    from monetpipe.inference.predictor import predict_preprocessed

    output_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(case_ids)
    for old in output_dir.iterdir():
        if is_nifti(old) and strip_nifti(old.name) not in wanted:
            old.unlink()
    model.eval()
    written = []
    for case_id in tqdm(case_ids, desc="final validation", disable=not progress):
        data, _, properties = load_case(layout, case_id, mmap=True)
        probs = predict_preprocessed([model], data, properties, plans, batch_size=batch_size, device=device)
        labels = probabilities_to_labels(probs, plans)
        path = output_dir / f"{case_id}.nii.gz"
        write_label(labels, Geometry.from_dict(properties["geometry"]), path)
        written.append(path)
    return written


def validate_fold(
    model: nn.Module,
    layout: CacheLayout,
    plans: Plans,
    case_ids: list[str],
    output_dir: Path,
    device: torch.device,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Predict ``case_ids`` into ``output_dir`` and write ``output_dir/summary.json``.

    Returns:
        The summary (see :func:`monetpipe.evaluation.evaluator.evaluate_folders`).
    """
    from monetpipe.evaluation.evaluator import evaluate_folders

    predict_cases(model, layout, plans, case_ids, output_dir, device, batch_size, progress)
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
