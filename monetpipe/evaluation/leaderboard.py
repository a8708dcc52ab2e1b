"""One row per trained (model, plans, fold) of a task: validation Dice / HD95, size and speed.

Scans ``MONET_results/<Task>/<model>__<plans>/fold_<k>/validation/*.nii.gz``, evaluates each fold's
predictions against ``MONET_preprocessed/<Task>/gt_segmentations/<plans>/<case>.nii.gz`` (references
in the plan's output label values, so a ``--binary`` plan is scored against the merged reference), and
writes ``MONET_results/<Task>/leaderboard.csv`` (columns in :data:`BASE_COLUMNS`, then per label).
A fold's ``validation/summary.json`` is reused when it is newer than every prediction, covers them and
has the current ``summary_version``. HD95 statistics include the penalty distance of every missed
structure and false alarm (:mod:`monetpipe.evaluation.aggregation`), so a miss never ranks above a near hit.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from monetpipe.errors import MonetError
from monetpipe.evaluation.aggregation import OUTCOME_COUNT_KEYS
from monetpipe.evaluation.evaluator import (
    SUMMARY_VERSION,
    EvaluationError,
    case_table,
    evaluate_folders,
    list_cases,
    summary_ok,
)
from monetpipe.evaluation.runs import EvaluatedFold, FoldRun
from monetpipe.io.atomic import atomic_path, ensure_writable_dir, read_json
from monetpipe.io.image import strip_nifti
from monetpipe.paths import MonetPaths, find_task
from monetpipe.results import ModelFolder, training_budget

logger = logging.getLogger(__name__)

BASE_COLUMNS = (
    "task",
    "model",
    "plans",
    "fold",
    "run",
    "federated_sites",
    "federated_rounds",
    "federated_strategy",
    "n_cases",
    "dice_mean",
    "dice_std",
    "dice_median",
    "hd95_mean",
    "hd95_std",
    "hd95_median",
    "n_missed",
    "n_false_alarm",
    "n_both_empty",
    "params_trainable",
    "params_keras",
    "size_mib_fp32",
    "cpu_s_150",
    "epochs",
    "train_steps",
    "batch_size",
    "train_s",
    "n_missing",
)
#: Per label ``<prefix><label>``, in this order after :data:`BASE_COLUMNS`.
LABEL_COLUMN_PREFIXES = ("dice_", "hd95_", "n_missed_", "n_false_alarm_", "n_both_empty_")
_INTEGER_COLUMNS = (
    "federated_sites",
    "federated_rounds",
    "params_trainable",
    "params_keras",
    "epochs",
    "train_steps",
    "batch_size",
)
#: Decimals written to ``leaderboard.csv`` per column prefix: Dice to 1e-4, millimetres, MiB and seconds to 0.01.
DECIMALS = {"dice_": 4, "hd95_": 2, "size_mib_": 2, "cpu_s_": 2, "train_s": 2}


def find_runs(results_task_dir: Path, models: Iterable[str] | None = None) -> list[FoldRun]:
    """Every ``<model>__<plans>/fold_<k>`` with at least one validation prediction, sorted.

    Args:
        results_task_dir: ``MONET_results/<Task>``.
        models: keep only these model names (the part before ``__``); default all.
    """
    wanted = None if models is None else set(models)
    runs = []
    for model_dir in sorted(p for p in results_task_dir.iterdir() if p.is_dir() and "__" in p.name):
        folder = ModelFolder(model_dir)
        if wanted is not None and folder.model not in wanted:
            continue
        for fold_dir in sorted(model_dir.glob("fold_*")):
            run = FoldRun(folder, fold_dir.name[len("fold_") :])
            if run.validation_dir.is_dir() and list_cases(run.validation_dir):
                runs.append(run)
            else:
                logger.warning("%s: no validation predictions yet; skipped.", fold_dir)
    return runs


def _split_val_cases(preprocessed_task_dir: Path, fold: str) -> list[str]:
    """The fold's ``val`` cases from ``splits_final.json`` (empty when unknown)."""
    path = preprocessed_task_dir / "splits_final.json"
    if not fold.isdigit() or not path.is_file():
        return []
    try:
        splits = read_json(path)
        return [str(c) for c in splits[int(fold)]["val"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        logger.warning("%s: unreadable or has no fold %s; expected validation cases unknown.", path, fold)
        return []


def _output_labels(plans: dict) -> list[int] | None:
    values = plans.get("output_labels")
    if not isinstance(values, dict):
        return None
    labels = sorted({int(v) for v in values.values()} - {0})
    return labels or None


def _reusable(summary_file: Path, predictions: dict[str, Path], labels: list[int] | None) -> dict | None:
    """The summary at ``summary_file`` if newer than every prediction and covering exactly them."""
    if not summary_file.is_file():
        return None
    newest = max(p.stat().st_mtime for p in predictions.values())
    if summary_file.stat().st_mtime <= newest:
        return None
    try:
        summary = read_json(summary_file)
        if summary.get("summary_version") != SUMMARY_VERSION:  # an older convention: evaluate again
            return None
        entries = summary["metric_per_case"]
        cases = {strip_nifti(Path(e["prediction_file"]).name) for e in entries}
        keys = {str(k) for e in entries for k in e["metrics"]}
        complete = all({"Dice", "HD95"} <= set(m) for e in entries for m in e["metrics"].values())
        failed = {str(e["case"]) for e in summary.get("errors", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete or cases | failed != set(predictions):
        return None
    if labels is not None and keys != {str(v) for v in labels}:
        return None
    summary.setdefault("unpaired", {"missing_predictions": [], "missing_references": []})
    summary.setdefault("errors", [])
    return summary


def per_case_foreground(summary: dict) -> pd.DataFrame:
    """Per case: Dice and HD95 averaged over the foreground labels.

    A missed or falsely predicted label counts with Dice 0 and the case's penalty HD95 (the summary holds
    them so); only labels absent from both maps (NaN) are left out, so a miss never lowers a case's HD95.

    Returns:
        Columns ``case, dice, hd95, n_penalized`` (labels of the case missed or falsely predicted),
        ``reference_file, prediction_file``.
    """
    table = case_table(summary)
    table["penalized"] = table["outcome"].isin(["missed", "false_alarm"])
    grouped = table.groupby("case", sort=True)
    out = grouped[["Dice", "HD95"]].mean().rename(columns={"Dice": "dice", "HD95": "hd95"})
    out["n_penalized"] = grouped["penalized"].sum().astype(int)
    files = grouped[["reference_file", "prediction_file"]].first()
    return out.join(files).reset_index()


def federated_settings(fold_dir: Path) -> dict:
    """``federated_sites`` / ``_rounds`` / ``_strategy`` from ``fold_dir/config.json``'s ``"federated"`` object.

    All ``None`` for a centralised run (no such object) or when the file is absent or unreadable.
    """
    blank = {"federated_sites": None, "federated_rounds": None, "federated_strategy": None}
    path = fold_dir / "config.json"
    if not path.is_file():
        return blank
    try:
        federated = read_json(path).get("federated")
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("%s: unreadable (%s); federated columns left blank.", path, exc)
        return blank
    if not isinstance(federated, dict):
        return blank
    out = {}
    # the rounds a finished run trained (a time-budgeted run has no round count in advance), else the planned ones
    rounds_key = "rounds_done" if federated.get("rounds_done") is not None else "rounds"
    for column, key in (("federated_sites", "sites"), ("federated_rounds", rounds_key)):
        value = federated.get(key)
        out[column] = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    strategy = federated.get("strategy")
    out["federated_strategy"] = str(strategy) if strategy is not None else None
    return out


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each float column rounded to the decimals that mean something (:data:`DECIMALS`)."""
    out = table.copy()
    for column in out.columns:
        decimals = next((d for prefix, d in DECIMALS.items() if column.startswith(prefix)), None)
        if decimals is not None and out[column].dtype.kind == "f":
            out[column] = out[column].round(decimals)
    return out


def evaluate_run(run: FoldRun, paths: MonetPaths, num_processes: int = 2) -> EvaluatedFold:
    """Evaluate (or reuse the summary of) one fold's validation predictions.

    Raises:
        EvaluationError: the plan's reference folder is missing, or nothing could be evaluated.
    """
    plans_file = run.model_dir / "plans.json"
    plans = read_json(plans_file) if plans_file.is_file() else {}
    labels = _output_labels(plans)
    preprocessed_task = paths.preprocessed / run.task
    gt_dir = preprocessed_task / "gt_segmentations" / run.plans
    if not gt_dir.is_dir():
        raise EvaluationError(
            f"{gt_dir}: reference folder not found for {run.name}. Run monet_plan_and_preprocess "
            f"-t {run.task} with the options that made plans {run.plans!r} (it writes the references), "
            f"or set MONET_preprocessed."
        )
    predictions = list_cases(run.validation_dir)
    summary_file = run.validation_dir / "summary.json"
    summary = _reusable(summary_file, predictions, labels)
    reused = summary is not None
    if summary is None:
        expected = sorted(set(predictions) | set(_split_val_cases(preprocessed_task, run.fold)))
        summary = evaluate_folders(
            gt_dir,
            run.validation_dir,
            labels=labels,
            output_file=summary_file,
            num_processes=num_processes,
            case_ids=expected,
            progress=False,
        )
    else:
        logger.info("%s: up to date, reused", summary_file)
    if not summary_ok(summary):
        if reused:  # a fresh evaluation has just logged each file itself
            for path in summary["unpaired"]["missing_predictions"]:
                logger.warning("%s: no validation prediction for this reference.", path)
            for error in summary["errors"]:
                logger.warning("%s", error["error"])
        logger.warning(
            "%s/fold_%s: %d validation case(s) missing, %d unreadable or mismatched; see %s",
            run.name,
            run.fold,
            len(summary["unpaired"]["missing_predictions"]),
            len(summary["errors"]),
            summary_file,
        )
    return EvaluatedFold(run, summary, per_case_foreground(summary), plans)


class _ParamCounter:
    """Parameter counts per (model, channels, classes); blank when monetpipe.networks is unavailable."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict] = {}

    def __call__(self, model: str, plans: dict) -> dict:
        blank = {"params_trainable": None, "params_keras": None}
        in_ch, classes = plans.get("num_input_channels"), plans.get("num_classes")
        if in_ch is None or classes is None:
            return blank
        key = (model, int(in_ch), int(classes))
        if key not in self._cache:
            try:
                from monetpipe.networks import build_network, count_parameters
            except ImportError as exc:
                logger.warning("monetpipe.networks not importable (%s); parameter columns left blank.", exc)
                return blank
            try:
                counts = count_parameters(build_network(model, int(in_ch), int(classes)))
                self._cache[key] = {k: int(counts[k]) for k in ("params_trainable", "params_keras")}
            except (MonetError, KeyError, ValueError, TypeError) as exc:
                logger.warning("cannot build %s to count parameters (%s); columns left blank.", model, exc)
                self._cache[key] = blank
        return self._cache[key]


def _cpu_times(results_task_dir: Path) -> dict[str, float]:
    path = results_task_dir / "benchmark.csv"
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path)
        if "device" in table.columns:
            cpu = table[table["device"].astype(str).str.lower() == "cpu"]
            table = cpu if len(cpu) else table
        return {str(m): float(t) for m, t in table.groupby("model")["cpu_s_mean"].first().items()}
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        logger.warning("%s: unreadable (%s); cpu_s_150 left blank.", path, exc)
        return {}


def _stats(values: pd.Series) -> tuple[float, float, float]:
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, float(np.median(v))


def leaderboard_row(result: EvaluatedFold, params: dict, cpu_s: float | None) -> dict:
    """The leaderboard row of one evaluated fold (see :data:`BASE_COLUMNS`)."""
    table = case_table(result.summary)
    dice = _stats(result.per_case["dice"])
    hd = _stats(result.per_case["hd95"])
    keras = params.get("params_keras")
    row = {
        "task": result.run.task,
        "model": result.run.model,
        "plans": result.run.plans,
        "run": result.run.name,
        "fold": result.run.fold,
        **federated_settings(result.run.model_dir / f"fold_{result.run.fold}"),
        "n_cases": len(result.per_case),
        "dice_mean": dice[0],
        "dice_std": dice[1],
        "dice_median": dice[2],
        "hd95_mean": hd[0],
        "hd95_std": hd[1],
        "hd95_median": hd[2],
        **{k: int((table["outcome"] == k[2:]).sum()) for k in OUTCOME_COUNT_KEYS if k != "n_both_present"},
        "params_trainable": params.get("params_trainable"),
        "params_keras": keras,
        "size_mib_fp32": keras * 4 / 2**20 if keras is not None else math.nan,
        "cpu_s_150": math.nan if cpu_s is None else cpu_s,
        **training_budget(result.run.fold_dir),
        "n_missing": len(result.summary["unpaired"]["missing_predictions"]) + len(result.summary["errors"]),
    }
    for label, group in table.groupby("label", sort=True):
        row[f"dice_{label}"] = float(group["Dice"].mean())  # pandas' mean skips NaN (both empty only)
        row[f"hd95_{label}"] = float(group["HD95"].mean())
        for kind in ("missed", "false_alarm", "both_empty"):
            row[f"n_{kind}_{label}"] = int((group["outcome"] == kind).sum())
    return row


def _resolve_task(task: str | os.PathLike, paths: MonetPaths) -> str:
    name, _ = find_task(task, [paths.results, paths.preprocessed, paths.raw])
    return name


def collect_results(
    task: str | os.PathLike,
    paths: MonetPaths,
    models: Iterable[str] | None = None,
    num_processes: int = 2,
    skipped: list[str] | None = None,
) -> list[EvaluatedFold]:
    """Evaluate every trained fold of ``task`` (optionally only ``models``).

    Args:
        skipped: when given, a line ``<model>__<plans>/fold_<k>: <reason>`` is appended for every fold
            that could not be evaluated at all (it has no row).

    Raises:
        MonetError: the task has no results folder or no fold with validation predictions.
    """
    name = _resolve_task(task, paths)
    results_task = paths.results / name
    models = None if models is None else list(models)
    model_arg = f"-m {' '.join(models)}" if models else "-m MODEL"
    if not results_task.is_dir():
        raise EvaluationError(
            f"{results_task}: no results for {name}. Train a model first (monet_train -t {name} {model_arg}), "
            f"or set MONET_results to the folder that holds {name}."
        )
    runs = find_runs(results_task, models)
    if not runs:
        which = f" for model(s) {', '.join(models)}" if models else ""
        raise EvaluationError(
            f"{results_task}: no fold with validation predictions{which}. Train (monet_train -t {name} "
            f"{model_arg}) or, for a trained fold, predict its validation cases with monet_train -t {name} "
            f"{model_arg} --val-only."
        )
    results, failed = [], []
    for run in runs:
        try:
            results.append(evaluate_run(run, paths, num_processes))
        except EvaluationError as exc:
            logger.warning("%s/fold_%s skipped: %s", run.name, run.fold, exc)
            failed.append(f"{run.name}/fold_{run.fold}: {exc}")
    if skipped is not None:
        skipped.extend(failed)
    if not results:
        raise EvaluationError(f"{results_task}: no fold could be evaluated; first problem: {failed[0]}")
    return results


def leaderboard_table(results: list[EvaluatedFold]) -> pd.DataFrame:
    """Rows of :func:`leaderboard_row` for ``results``, sorted by ``dice_mean`` (best first)."""
    if not results:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    count = _ParamCounter()
    cpu = _cpu_times(results[0].run.model_dir.parent)
    rows = [leaderboard_row(r, count(r.run.model, r.plans), cpu.get(r.run.model)) for r in results]
    table = pd.DataFrame(rows)
    labels = sorted({int(c[5:]) for c in table.columns if c.startswith("dice_") and c[5:].isdigit()})
    columns = list(BASE_COLUMNS) + [f"{prefix}{v}" for prefix in LABEL_COLUMN_PREFIXES for v in labels]
    table = table.reindex(columns=columns)
    counts = [c for c in columns if c.startswith("n_") and c not in ("n_cases", "n_missing")]
    for col in (*_INTEGER_COLUMNS, *counts):
        table[col] = table[col].astype("Int64")  # blank where a plan has no such label
    table = table.sort_values(
        ["dice_mean", "model", "plans", "fold"], ascending=[False, True, True, True], na_position="last", kind="stable"
    )
    return table.reset_index(drop=True)


def default_image_lookup(task_name: str, paths: MonetPaths) -> Callable[[str], Path | None]:
    """Find a case's image in ``MONET_raw/<Task>/imagesTr`` (``<case>.nii.gz`` or ``<case>_0000.nii.gz``)."""
    folder = paths.raw / task_name / "imagesTr"

    def lookup(case: str) -> Path | None:
        for name in (f"{case}.nii.gz", f"{case}_0000.nii.gz", f"{case}.nii", f"{case}_0000.nii"):
            if (folder / name).is_file():
                return folder / name
        return None

    return lookup


def build_leaderboard(
    task: str | os.PathLike,
    paths: MonetPaths,
    models: Iterable[str] | None = None,
    num_processes: int = 2,
    make_plots: bool = True,
    image_lookup: Callable[[str], Path | None] | None = None,
) -> pd.DataFrame:
    """Evaluate every trained model/fold of ``task`` and write ``MONET_results/<Task>/leaderboard.csv``.

    Args:
        task: a ``-t`` task spec (``Task04``, ``4``, a folder name or path).
        paths: the data roots.
        models: only these model names; default every model.
        num_processes: worker processes for evaluation.
        make_plots: also write ``leaderboard.png`` and ``overlays/`` (see :mod:`monetpipe.evaluation.plots`).
        image_lookup: case id -> image file for overlays; default the raw task's ``imagesTr``.

    Returns:
        The leaderboard, one row per (model, plans, fold), best ``dice_mean`` first (blank = unknown), at
        full precision (the CSV is :func:`rounded`);
        ``table.attrs["skipped_folds"]`` lists the folds that could not be evaluated at all, with the reason.
    """
    results_task = paths.results / _resolve_task(task, paths)
    if results_task.is_dir():  # else collect_results explains there is nothing trained yet
        ensure_writable_dir(results_task, "Make it writable, or copy the results folder somewhere writable.")
    skipped: list[str] = []
    results = collect_results(task, paths, models, num_processes, skipped)
    table = leaderboard_table(results)
    table.attrs["skipped_folds"] = skipped
    results_task = results[0].run.model_dir.parent
    with atomic_path(results_task / "leaderboard.csv") as tmp:
        rounded(table).to_csv(tmp, index=False)
    logger.info("wrote %s", results_task / "leaderboard.csv")
    if make_plots:
        from monetpipe.evaluation.plots import plot_leaderboard, plot_overlays

        lookup = image_lookup or default_image_lookup(results_task.name, paths)
        plot_leaderboard(results, results_task / "leaderboard.png")
        plot_overlays(results, results_task / "overlays", lookup)
    return table
