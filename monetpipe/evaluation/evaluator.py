"""Evaluate a folder of predicted label maps against a folder of references -> ``summary.json`` + CSV.

The summary follows nnU-Net v2's layout so existing tooling reads it::

    {"metric_per_case": [{"reference_file", "prediction_file", "metrics": {"1": {"Dice": ...}}}],
     "mean": {"1": {"Dice": ...}}, "foreground_mean": {"Dice": ...}, ...}

plus monetpipe's bookkeeping (``summary_version``, per case ``distance_penalty_mm`` and per pair
``outcome``, ``outcomes`` / ``foreground_outcomes`` with the miss and false-alarm counts, ``defined_mean``,
``n_undefined``, ``unpaired``, ``errors``). ``HD``, ``HD95`` and ``ASSD`` of a missed structure or a
false alarm are the case's penalty distance, so no mean rewards a miss (see
:mod:`monetpipe.evaluation.aggregation`). NaN metrics are written as ``null``.

Pairing rules (see docs/evaluation.md):

* files pair by case id (file name without ``.nii.gz`` / ``.nii``); hidden and ``._*`` files are ignored;
* a reference without a prediction is an *error*: it is listed under ``unpaired.missing_predictions``,
  logged, excluded from every mean (there is nothing to score) and makes :func:`summary_ok` false, so
  the command exits non-zero; it is never silently skipped;
* a prediction without a reference is listed under ``unpaired.missing_references`` and ignored;
* a pair whose geometry (size, spacing, origin, direction) differs, or a file that cannot be read
  (missing, truncated, corrupt), is listed under ``errors`` with a reason naming the file, excluded from
  the means, and makes :func:`summary_ok` false: the command exits non-zero rather than report a mean
  that silently lacks a case.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import as_completed
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.evaluation.aggregation import aggregate, image_diagonal_mm, penalize
from monetpipe.evaluation.metrics import compute_label_metrics, empty_label_metrics, label_values
from monetpipe.io.atomic import atomic_path, ensure_writable_dir, read_json, write_json
from monetpipe.io.dataset import is_hidden
from monetpipe.io.image import is_nifti, read_label, strip_nifti
from monetpipe.parallel import worker_pool

logger = logging.getLogger(__name__)

#: Written as ``summary_version``; a summary of another version is never reused (the leaderboard re-evaluates).
#: 2: distances of a miss / false alarm are the image-diagonal penalty; ``outcome`` and ``outcomes`` added.
SUMMARY_VERSION = 2


class EvaluationError(MonetError):
    """A reference or prediction folder cannot be evaluated as given."""


def list_cases(folder: str | os.PathLike) -> dict[str, Path]:
    """Map case id -> NIfTI file in ``folder`` (not recursive; hidden and ``._*`` files ignored).

    Raises:
        EvaluationError: the folder does not exist, or two files share a case id (``a.nii`` and ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: folder not found. Pass an existing folder of .nii.gz label maps.")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if is_hidden(path.name) or not path.is_file() or not is_nifti(path.name):
            continue
        case = strip_nifti(path.name)
        if case in cases:
            raise EvaluationError(
                f"{folder}: {cases[case].name} and {path.name} are the same case {case!r}; keep one of them."
            )
        cases[case] = path
    return cases


def split_val_cases(splits_file: str | os.PathLike, fold: int) -> list[str]:
    """The ``val`` case ids of ``fold`` in an nnU-Net ``splits_final.json`` (a list of ``{"train", "val"}``).

    Raises:
        EvaluationError: the file is missing or unreadable, has no such fold, or the fold has no ``val`` list.
    """
    path = Path(splits_file)
    try:
        splits = read_json(path)
    except FileNotFoundError:
        raise EvaluationError(
            f"{path}: split file not found. Pass the task's splits_final.json (written by "
            f"monet_plan_and_preprocess into MONET_preprocessed/<Task>/)."
        ) from None
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: not a readable JSON split file ({exc}). Pass a splits_final.json.") from None
    if not isinstance(splits, list) or not splits:
        raise EvaluationError(
            f"{path}: expected a list of folds ({{'train': [...], 'val': [...]}}), as nnU-Net writes."
        )
    if not 0 <= fold < len(splits):
        raise EvaluationError(
            f"{path}: has folds 0 to {len(splits) - 1}, not fold {fold}. Pass --fold 0..{len(splits) - 1}."
        )
    entry = splits[fold]
    if not isinstance(entry, dict) or not isinstance(entry.get("val"), list) or not entry["val"]:
        raise EvaluationError(f"{path}: fold {fold} has no 'val' list of case ids; is this an nnU-Net splits file?")
    return [str(c) for c in entry["val"]]


def select_cases(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    only_predicted: bool = False,
    splits_file: str | os.PathLike | None = None,
    fold: int = 0,
) -> list[str] | None:
    """The case ids :func:`evaluate_folders` should expect (its ``case_ids``); ``None`` = every reference.

    Args:
        only_predicted: expect only the cases that have a prediction (a partial prediction run, or a
            reference folder holding the whole dataset); references without one are left out, not missing.
        splits_file: expect the ``val`` cases of ``fold`` in this nnU-Net ``splits_final.json``; a val case
            without a prediction is then missing (an error), as in the leaderboard.

    Raises:
        EvaluationError: both options given, or a split's val case has no reference in ``ref_dir``.
    """
    if only_predicted and splits_file is not None:
        raise EvaluationError("give either --only-predicted or --split, not both.")
    if only_predicted:
        refs, preds = list_cases(ref_dir), list_cases(pred_dir)
        left_out = len(set(refs) - set(preds))
        logger.info("%d reference(s) without a prediction left out (--only-predicted).", left_out)
        return sorted(preds)
    if splits_file is not None:
        cases = split_val_cases(splits_file, fold)
        refs = list_cases(ref_dir)
        absent = [c for c in cases if c not in refs]
        if absent:
            raise EvaluationError(
                f"{splits_file}: fold {fold} lists {len(absent)} val case(s) with no reference in {ref_dir} "
                f"(first: {absent[0]}). Pass the reference folder of that task, or its own splits_final.json."
            )
        return cases
    return None


def _evaluate_case(ref_path: Path, pred_path: Path, labels: Sequence[int] | None) -> dict:
    """Worker: metrics of one pair, or ``{"error": ...}``. Runs in a child process."""
    try:
        ref, ref_geo = _read(ref_path)
        pred, pred_geo = _read(pred_path)
    except MonetError as exc:
        return {"error": str(exc)}
    diff = ref_geo.mismatch(pred_geo)
    if diff is not None:
        return {
            "error": f"{pred_path.name}: geometry differs from the reference {ref_path} ({diff}). "
            f"Predictions must be written on the reference's grid."
        }
    if labels is None:
        found = sorted((label_values(ref) | label_values(pred)) - {0})
    else:
        found = list(labels)
    metrics = compute_label_metrics(ref, pred, found, ref_geo.spacing_zyx)
    return {
        "metrics": metrics,
        "n_voxels": int(ref.size),
        "penalty_mm": image_diagonal_mm(ref_geo.size, ref_geo.spacing),
    }


def _read(path: Path):
    """:func:`read_label`, with a low-level read failure (cut gzip stream) turned into an error naming the file."""
    try:
        return read_label(path)
    except (OSError, EOFError) as exc:
        raise EvaluationError(
            f"{path}: cannot be read ({exc}); the file is truncated or corrupt. "
            f"Re-create it (re-run the prediction) and evaluate again."
        ) from None


def _nan_to_none(value: float | int | str) -> float | int | str | None:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _nested_nan_to_none(table: dict[str, dict]) -> dict[str, dict]:
    return {k: {m: _nan_to_none(v) for m, v in d.items()} for k, d in table.items()}


def evaluate_folders(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    labels: Iterable[int] | None = None,
    output_file: str | os.PathLike | None = None,
    num_processes: int = 2,
    case_ids: Iterable[str] | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the reference of the same case id.

    Args:
        ref_dir: folder of reference label maps (``<case>.nii.gz``).
        pred_dir: folder of predicted label maps, same names.
        labels: label values to evaluate; default every non-zero value found in any reference or prediction.
        output_file: where to write ``summary.json`` (and ``summary.csv`` beside it); default
            ``pred_dir/summary.json``.
        num_processes: worker processes (1 = evaluate in this process).
        case_ids: only these cases are expected (e.g. a fold's validation cases when ``ref_dir`` holds the
            whole dataset); default every reference.
        progress: show a tqdm progress bar.

    Returns:
        The summary dict as written (NaN shown as ``None``).

    Raises:
        EvaluationError: a folder is missing, or no case could be evaluated.
    """
    refs, preds = list_cases(ref_dir), list_cases(pred_dir)
    output_file = Path(pred_dir) / "summary.json" if output_file is None else Path(output_file)
    ensure_writable_dir(output_file.parent, "Choose another -o for the summary, or make the folder writable.")
    pairs, missing_predictions, missing_references = _pair_cases(refs, preds, case_ids, ref_dir, pred_dir)
    label_list = None if labels is None else sorted({int(v) for v in labels})
    jobs = {c: (refs[c], preds[c], label_list) for c in pairs}
    results = _run_jobs(jobs, num_processes, progress)
    errors = [
        {"case": c, "reference_file": str(refs[c]), "prediction_file": str(preds[c]), "error": results[c]["error"]}
        for c in pairs
        if "error" in results[c]
    ]
    for e in errors:
        logger.warning("%s", e["error"])
    good = [c for c in pairs if "error" not in results[c]]
    if not good:
        raise EvaluationError(
            f"None of the {len(pairs)} case(s) in {pred_dir} could be evaluated; first problem: {errors[0]['error']}"
        )
    if label_list is None:
        label_list = sorted({int(k) for c in good for k in results[c]["metrics"]})
    per_case = [_case_entry(results[c], refs[c], preds[c], label_list) for c in good]
    stats = aggregate(per_case, label_list)
    summary = _summary(per_case, stats, label_list)
    summary["unpaired"] = {
        "missing_predictions": [str(refs[c]) for c in missing_predictions],
        "missing_references": [str(preds[c]) for c in missing_references],
    }
    summary["errors"] = errors
    write_json(summary, output_file)
    write_case_csv(summary, output_file.with_suffix(".csv"))
    logger.info(
        "wrote %s (%d cases, foreground Dice %.4f)", output_file, len(per_case), stats["foreground_mean"]["Dice"]
    )
    return summary


def _pair_cases(
    refs: dict[str, Path], preds: dict[str, Path], case_ids: Iterable[str] | None, ref_dir, pred_dir
) -> tuple[list[str], list[str], list[str]]:
    """The expected cases that have both files, those without a prediction, predictions without a reference."""
    expected = sorted(refs) if case_ids is None else sorted(set(case_ids))
    missing_references = sorted(set(preds) - set(refs))
    if case_ids is not None:
        missing_references = sorted(set(missing_references) & set(expected))
    missing_predictions = [c for c in expected if c in refs and c not in preds]
    pairs = [c for c in expected if c in refs and c in preds]
    for case in missing_predictions:
        logger.warning("%s: no prediction for reference %s; the case is reported as missing.", pred_dir, refs[case])
    for case in missing_references:
        logger.warning("%s: no reference %s.nii.gz in %s; the prediction is ignored.", preds[case], case, ref_dir)
    if not pairs:
        raise EvaluationError(
            f"No prediction in {pred_dir} has a reference in {ref_dir} (cases are paired by file name "
            f"without .nii.gz). Check that both folders hold the same cases."
        )
    return pairs, missing_predictions, missing_references


def _run_jobs(jobs: dict[str, tuple], num_processes: int, progress: bool) -> dict[str, dict]:
    """:func:`_evaluate_case` for every case, in this process or in worker processes that die with it."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc="evaluating", unit="case", disable=not progress) as bar:
        if num_processes <= 1 or len(jobs) == 1:
            for case, job in jobs.items():
                results[case] = _evaluate_case(*job)
                bar.update()
            return results
        with worker_pool(min(num_processes, len(jobs))) as pool:
            futures = {pool.submit(_evaluate_case, *job): case for case, job in jobs.items()}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results


def _case_entry(result: dict, ref: Path, pred: Path, label_list: list[int]) -> dict:
    """One case of ``metric_per_case``: every label's metrics, a miss or false alarm at the penalty distance."""
    m, penalty = result["metrics"], result["penalty_mm"]
    empty = empty_label_metrics(result["n_voxels"])  # a label neither map of this case holds
    return {
        "reference_file": str(ref),
        "prediction_file": str(pred),
        "distance_penalty_mm": penalty,
        "metrics": {str(lab): penalize(m.get(lab, empty), penalty) for lab in label_list},
    }


def _summary(per_case: list[dict], stats: dict, label_list: list[int]) -> dict:
    """``summary.json`` without its ``unpaired`` and ``errors`` parts (NaN written as ``None``)."""
    n_undefined = stats["n_undefined"]
    return {
        "summary_version": SUMMARY_VERSION,
        "metric_per_case": [
            {**c, "metrics": {k: {m: _nan_to_none(v) for m, v in d.items()} for k, d in c["metrics"].items()}}
            for c in per_case
        ],
        "mean": _nested_nan_to_none(stats["mean"]),
        "foreground_mean": {m: _nan_to_none(v) for m, v in stats["foreground_mean"].items()},
        "labels": label_list,
        "n_cases": len(per_case),
        "outcomes": stats["outcomes"],
        "foreground_outcomes": stats["foreground_outcomes"],
        "distance_penalty": "image_diagonal_mm",
        "defined_mean": _nested_nan_to_none(stats["defined_mean"]),
        "foreground_defined_mean": {m: _nan_to_none(v) for m, v in stats["foreground_defined_mean"].items()},
        "n_undefined": n_undefined,
        "dice_n_undefined": sum(n_undefined[str(lab)]["Dice"] for lab in label_list),
        "hd95_n_undefined": sum(n_undefined[str(lab)]["HD95"] for lab in label_list),
        "spacing": "reference",
        "units": {
            "HD": "mm",
            "HD95": "mm",
            "ASSD": "mm",
            "distance_penalty_mm": "mm",
            "TP": "voxels",
            "FP": "voxels",
            "FN": "voxels",
            "TN": "voxels",
            "n_ref": "voxels",
            "n_pred": "voxels",
        },
    }


def summary_ok(summary: dict) -> bool:
    """True when every expected case was evaluated (no missing prediction, no error)."""
    return not summary["unpaired"]["missing_predictions"] and not summary["errors"]


def case_table(summary: dict):
    """The per-case metrics of a summary as a long ``pandas.DataFrame`` (one row per case and label).

    Returns:
        Columns ``case, reference_file, prediction_file, label`` and every metric (NaN where undefined).
    """
    import pandas as pd

    rows = []
    for entry in summary["metric_per_case"]:
        case = strip_nifti(Path(entry["reference_file"]).name)
        for label, metrics in entry["metrics"].items():
            row = {
                "case": case,
                "reference_file": entry["reference_file"],
                "prediction_file": entry["prediction_file"],
                "label": int(label),
            }
            row.update({k: (math.nan if v is None else v) for k, v in metrics.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def write_case_csv(summary: dict, path: str | os.PathLike) -> None:
    """Write :func:`case_table` of ``summary`` to ``path`` as CSV, atomically (NaN as an empty field)."""
    with atomic_path(path) as tmp:
        case_table(summary).to_csv(tmp, index=False)
