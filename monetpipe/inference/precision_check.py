"""``monet_predict --prepare-precision``: build a fold's reduced-precision model and check it against fp32.

For each fold: the int8 model is calibrated on the fold's own training slices (the slice cache of
``MONET_preprocessed``) and stored as ``fold_<k>/precision/int8_<checkpoint>.onnx`` (reused while the
checkpoint file is unchanged); bf16 needs nothing stored. Then the fold's validation cases
(``splits_final.json``) are predicted from their raw images in fp32 and in the reduced precision, with
``monet_predict``'s code (the two taking turns on groups of cases, so both are timed under the same load),
and scored against the reference label maps. The two mean foreground Dice
values, their difference and the network seconds of both runs go to
``fold_<k>/precision/validation_<checkpoint>.json``; a difference above the tolerance raises
:class:`~monetpipe.errors.MonetError` (and is recorded as failed, so ``--precision auto`` keeps fp32).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from monetpipe.cpu_features import cpu_features
from monetpipe.errors import MonetError
from monetpipe.inference.precision import (
    CALIBRATION_SLICES,
    DEFAULT_TOLERANCE,
    PrecisionFiles,
    calibration_slices,
    check_precision,
    file_sha1,
    quantize_onnx_int8,
    refusal_message,
)
from monetpipe.io.atomic import read_json, write_json
from monetpipe.paths import MonetPaths
from monetpipe.results import ModelFolder, load_checkpoint

log = logging.getLogger(__name__)


def _fold_split(task_dir: Path, fold: int | str) -> dict:
    splits_file = task_dir / "splits_final.json"
    if fold == "all":
        raise MonetError(
            "fold 'all' has no validation cases to check a reduced precision on; prepare the numbered folds "
            "(-f 0 1 ...) and use their models."
        )
    if not splits_file.is_file():
        raise MonetError(
            f"{splits_file}: not found. Preparing a precision calibrates on the fold's training slices and "
            f"checks it on its validation cases; set MONET_preprocessed to the folder the model was trained from."
        )
    splits = read_json(splits_file)
    if not isinstance(fold, int) or fold >= len(splits):
        raise MonetError(f"{splits_file}: has no fold {fold}; choose one of 0..{len(splits) - 1}")
    return splits[fold]


def _calibrate_int8(
    files: PrecisionFiles, network, layout, train_ids: Sequence[str], count: int, context: int = 0
) -> dict:
    """Make (or reuse) the fold's int8 model; returns its record."""
    if files.int8_current():
        record = read_json(files.int8_record)
        log.info("%s: reusing the int8 model (calibrated on %d slices)", files.int8_model, record["slices"])
        return record | {"reused": True}
    data_files = [layout.data_file(c) for c in train_ids if layout.data_file(c).is_file()]
    if not data_files:
        raise MonetError(
            f"{layout.slices}: no cached training slices of this fold to calibrate int8 on. "
            f"Run monet_plan_and_preprocess for {layout.task_dir.name} first."
        )
    start = time.perf_counter()
    slices = calibration_slices(data_files, count, context=context)
    quantize_onnx_int8(network, slices, files.int8_model)
    record = {
        "checkpoint": files.checkpoint_file.name,
        "checkpoint_sha1": file_sha1(files.checkpoint_file),
        "method": "onnxruntime static QDQ, per-channel int8 weights (reduce_range), uint8 activations, MinMax",
        "slices": int(slices.shape[0]),
        "slice_size": list(slices.shape[1:]),
        "cases": len(data_files),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(record, files.int8_record)
    log.info("%s: int8 model calibrated on %d slices in %.1f s", files.int8_model, record["slices"], record["seconds"])
    return record | {"reused": False}


TIMING_CHUNKS = 6  # groups of validation cases the fp32 and reduced forms take turns on (ABBA order)


def _predict_alternating(
    cases, forms: dict, plans, layout, case_ids, work: Path, workers: int, chunks: int = TIMING_CHUNKS
) -> dict[str, tuple[float, float]]:
    """Each form's mean foreground Dice on ``cases`` and the network seconds it took, by form name.

    The cases are predicted in ``chunks`` groups, the forms taking turns in ABBA order (the first form
    first on even groups, last on odd ones), so a shared CPU that slows down or speeds up during the check
    weighs on every form alike. One whole pass per form, one after the other, let such drift decide which
    form was "faster", and ``--precision auto`` then ran the slower one (docs/performance.md).
    """
    from monetpipe.evaluation.evaluator import evaluate_folders
    from monetpipe.inference.api import PredictOptions, predict_cases
    from monetpipe.training.validation import foreground_labels

    options = PredictOptions(overwrite=True, progress=False)
    names = list(forms)
    seconds = dict.fromkeys(names, 0.0)
    n = len(cases)
    groups = [cases[i * n // chunks : (i + 1) * n // chunks] for i in range(chunks)]
    for i, group in enumerate(g for g in groups if g):
        for name in names if i % 2 == 0 else names[::-1]:
            out_dir = work / name
            out_dir.mkdir(parents=True, exist_ok=True)
            model = forms[name]
            cl = bool(getattr(model, "channels_last", True))
            summary = predict_cases(group, out_dir, out_dir, [model], plans, options, torch.device("cpu"), cl, workers)
            if summary.failed:
                failures = "; ".join(f"{c}: {e}" for c, e in summary.failed.items())
                raise MonetError(
                    f"precision check: {len(summary.failed)} validation case(s) failed to predict ({failures})"
                )
            seconds[name] += summary.stage_seconds()["network"]
    results = {}
    for name in names:
        scores = evaluate_folders(
            layout.gt_segmentations,
            work / name,
            labels=foreground_labels(plans),
            output_file=work / name / "summary.json",
            num_processes=1,
            case_ids=case_ids,
            progress=False,
        )
        results[name] = (float(scores["foreground_mean"]["Dice"]), seconds[name])
    return results


def prepare_fold(
    folder: ModelFolder,
    fold: int | str,
    precision: str,
    checkpoint: str = "final",
    tolerance: float = DEFAULT_TOLERANCE,
    calibration_count: int = CALIBRATION_SLICES,
    paths: MonetPaths | None = None,
    workers: int = 1,
) -> dict:
    """Prepare ``precision`` for one fold and check it against fp32; returns the fold's record entry.

    Raises:
        MonetError: missing data, or a Dice difference above ``tolerance`` (after recording it).
    """
    from monetpipe.inference.backends import make_inference_model
    from monetpipe.inference.loading import inference_form, load_plans, network_from_checkpoint
    from monetpipe.preprocessing.slice_cache import CacheLayout
    from monetpipe.training.validation import raw_validation_cases

    paths = paths or MonetPaths.from_env()
    files = PrecisionFiles(folder.fold_dir(fold), checkpoint)
    ckpt_path = files.checkpoint_file
    network = network_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
    plans = load_plans(folder)
    task = folder.root.parent.name
    layout = CacheLayout(paths.preprocessed / task, plans.plans_name)
    split = _fold_split(layout.task_dir, fold)
    entry: dict = {"tolerance": tolerance}
    int8_file = None
    if precision == "int8":
        entry["calibration"] = _calibrate_int8(
            files, network, layout, split["train"], calibration_count, plans.context_slices
        )
        int8_file = files.int8_model
    files.folder.mkdir(parents=True, exist_ok=True)
    for stale in files.folder.glob(".check_*"):  # left by a killed check (a running one is younger)
        if time.time() - stale.stat().st_mtime > 6 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".check_", dir=files.folder))
    try:
        cases = raw_validation_cases(paths.raw / task, list(split["val"]), work, layout)
        threads = torch.get_num_threads()  # the workers lower it process-wide; each form starts from it
        reference = inference_form(network, torch.device("cpu"), True, "torch", workers)
        torch.set_num_threads(threads)
        reduced = make_inference_model(
            network,
            "onnxruntime" if precision == "int8" else "torch",
            workers=workers,
            precision=precision,
            int8_model=int8_file,
        )
        forms = {"fp32": reference, precision: reduced}
        scored = _predict_alternating(cases, forms, plans, layout, split["val"], work, workers)
        (dice_fp32, s_fp32), (dice, seconds) = scored["fp32"], scored[precision]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    difference = dice_fp32 - dice
    entry |= {
        "cases": len(split["val"]),
        "dice_fp32": round(dice_fp32, 6),
        "dice": round(dice, 6),
        "difference": round(difference, 6),
        "passed": difference <= tolerance,
        "network_s_fp32": round(s_fp32, 3),
        "network_s": round(seconds, 3),
        "faster": seconds < s_fp32,
    }
    _record(files, precision, entry)
    log.info(
        "fold %s, %s: mean foreground Dice %.4f vs fp32 %.4f (difference %.4f, tolerance %.4f); network %.1f vs %.1f s",
        fold,
        precision,
        dice,
        dice_fp32,
        difference,
        tolerance,
        seconds,
        s_fp32,
    )
    if not entry["passed"]:
        raise MonetError(refusal_message(precision, difference, tolerance, files.validation))
    return entry


def _record(files: PrecisionFiles, precision: str, entry: dict) -> None:
    record = files.read_validation()
    record.update(
        {
            "checkpoint": files.checkpoint_file.name,
            "checkpoint_sha1": file_sha1(files.checkpoint_file),
            "cpu": cpu_features().summary(),
        }
    )
    record.setdefault("precisions", {})[precision] = entry
    write_json(record, files.validation)


def prepare_precision(
    model_folder: str | Path,
    precision: str,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    tolerance: float = DEFAULT_TOLERANCE,
    calibration_count: int = CALIBRATION_SLICES,
    num_threads: int | None = None,
    workers: int | None = None,
    paths: MonetPaths | None = None,
) -> dict:
    """Prepare and validate ``precision`` (``bf16`` or ``int8``) for every chosen fold of a results folder.

    Args:
        model_folder: ``<model>__<plans>/`` in ``MONET_results`` (its task's preprocessed and raw folders
            must be reachable through ``MONET_preprocessed`` / ``MONET_raw``).
        precision: ``bf16`` or ``int8``.
        folds: numbered folds (default: every numbered fold with the checkpoint).
        checkpoint: ``final``, ``best`` or ``latest``.
        tolerance: the largest accepted drop in mean foreground Dice (default 0.005).
        calibration_count: training slices to calibrate int8 on.
        num_threads, workers: as ``monet_predict``.

    Returns:
        ``{fold: entry}`` with the Dice values, their difference and the network seconds.

    Raises:
        MonetError: see :func:`prepare_fold`; the first failing fold stops the run.
    """
    from monetpipe.inference.api import cpu_workers
    from monetpipe.inference.loading import choose_folds

    key = check_precision(precision, allow_auto=False)
    if key == "fp32":
        raise MonetError("--prepare-precision fp32: nothing to prepare; choose bf16 or int8")
    if tolerance < 0:
        raise MonetError(f"--tolerance must be >= 0, got {tolerance}")
    folder = ModelFolder(Path(model_folder))
    chosen = choose_folds(folder, folds, checkpoint)
    results = {}
    with cpu_workers("cpu", num_threads, workers) as n_workers:
        for fold in chosen:
            results[fold] = prepare_fold(folder, fold, key, checkpoint, tolerance, calibration_count, paths, n_workers)
    return results


def precisions_to_prepare(requested: str, device_type: str = "cpu", features=None) -> list[str]:
    """The reduced precisions ``monet_train --prepare-precision REQUESTED`` checks after training.

    ``auto``: only when training ran on the CPU (where the model is likely to be used), bf16 where this CPU
    computes it natively (avx512_bf16 / AMX) and int8 where it runs int8 at all (VNNI / AMX, AVX2, ARM dot
    product) when ONNX Runtime is installed: the check validates a precision only where it measured faster
    than fp32, and without VNNI int8 was faster on one AVX2 CPU and slower on another (docs/performance.md).
    ``all`` is both.
    """
    if requested == "none":
        return []
    if requested in ("bf16", "int8"):
        return [requested]
    if requested == "all":
        return ["bf16", "int8"]
    if requested != "auto":
        raise MonetError(f"--prepare-precision must be auto, none, bf16, int8 or all, got {requested!r}")
    if device_type != "cpu":
        return []
    from monetpipe.inference.backends import available_backends

    f = features or cpu_features()
    chosen = ["bf16"] if f.bf16 else []
    if f.int8 and "onnxruntime" in available_backends():
        chosen.append("int8")
    return chosen


def prepare_after_training(
    model_folder: str | Path,
    fold: int | str,
    requested: str,
    paths: MonetPaths,
    device_type: str = "cpu",
) -> dict[str, dict]:
    """``monet_train``'s last step: :func:`prepare_precision` for each of :func:`precisions_to_prepare`.

    A precision that fails its check (or cannot be prepared: no ONNX Runtime, no raw images) is logged and
    left out; it never fails the training, whose checkpoints and validation are already written.
    Returns ``{precision: the fold's entry, or {"error": message}}``.
    """
    results: dict[str, dict] = {}
    for precision in precisions_to_prepare(requested, device_type):
        start = time.perf_counter()
        try:
            entry = next(iter(prepare_precision(model_folder, precision, folds=[fold], paths=paths).values()))
        except Exception as exc:  # the trained model is saved and validated: a failed check must not undo that
            if not isinstance(exc, MonetError):
                log.exception("checking %s inference failed unexpectedly", precision)
            log.warning("%s inference not enabled for fold %s: %s", precision, fold, exc)
            results[precision] = {"error": str(exc)}
            continue
        log.info(
            "%s inference checked in %.0f s: monet_predict --precision auto may use it for fold %s",
            precision,
            time.perf_counter() - start,
            fold,
        )
        results[precision] = entry
    return results
