"""One prediction path: ``monet_train``'s final validation is ``monet_predict`` + ``monet_evaluate``.

A tiny run is trained on a few real Task04 cases (and on the synthetic CT task, which needs no data);
then the raw images of the fold's validation cases are predicted with ``monet_predict --model-folder ...
-f 0`` and scored by the evaluator. The label maps must equal ``fold_0/validation/`` voxel for voxel, and
the Dice values of the two ``summary.json`` files must be equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.training.config import TrainConfig

TASK04 = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
TINY = TrainConfig(epochs=1, iters_per_epoch=2, batch_size=4, num_workers=0, num_threads=1)


def _task04_subset(raw_root: Path, n: int) -> str:
    """The first ``n`` real Task04 cases as their own MSD task folder (files copied, dataset.json cut)."""
    data = json.loads((TASK04 / "dataset.json").read_text())
    data["training"] = data["training"][:n]
    data["numTraining"] = n
    task = raw_root / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    for entry in data["training"]:
        for key in ("image", "label"):
            shutil.copy(TASK04 / entry[key], task / entry[key])
    (task / "dataset.json").write_text(json.dumps(data))
    return "4"


def _synthetic(raw_root: Path) -> str:
    from monetpipe.synthetic import make_synthetic_task

    make_synthetic_task(raw_root, kind="ct", num_cases=6, seed=0, shape=(48, 40, 10))
    return "901"


def _train(tmp_path: Path, make_task) -> tuple[MonetPaths, str, object]:
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.training import train_fold

    paths = MonetPaths(tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results")
    task = make_task(paths.raw)
    plan_and_preprocess(task, paths, num_processes=1)
    return paths, task, train_fold(task, "monet", 0, TINY, paths=paths)


def _metrics(summary: dict) -> tuple:
    """What a user reads in a summary.json: the means and every case's metrics (file paths left out)."""
    return (
        summary["mean"],
        summary["foreground_mean"],
        [case["metrics"] for case in summary["metric_per_case"]],
    )


def _assert_validation_is_monet_predict(paths: MonetPaths, result, tmp_path: Path) -> None:
    from monetpipe.evaluation.evaluator import evaluate_folders
    from monetpipe.io.dataset import load_task
    from monetpipe.training.validation import foreground_labels

    validation = result.fold_dir / "validation"
    model_folder = result.fold_dir.parent
    raw_task = next(paths.raw.iterdir())
    config = json.loads((result.fold_dir / "config.json").read_text())
    val_cases = config["cases"]["val"]
    assert val_cases, "the split must hold validation cases"
    # The raw images of the validation cases, as a user would hand them to monet_predict.
    images = tmp_path / "val_images"
    images.mkdir()
    dataset = load_task(raw_task)
    for case in val_cases:
        (image,) = dataset.case(case).image_files
        shutil.copy(image, images / f"{case}.nii.gz")
    out = tmp_path / "predicted"
    # A fresh process with monet_predict's own defaults (2 threads as 2 slice-parallel workers; training
    # and its validation ran on 1 thread).
    proc = subprocess.run(
        [sys.executable, "-m", "monetpipe.inference.cli", "-i", str(images), "-o", str(out)]
        + ["--model-folder", str(model_folder), "-f", "0"],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 slice-parallel workers" in proc.stderr
    found = set()
    for case in val_cases:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(validation / f"{case}.nii.gz")))
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs), f"{case}: {np.mean(ours != theirs):.2e} of voxels differ"
        found |= set(np.unique(theirs).tolist())
    assert len(found) > 1, "the briefly trained network must segment something for the comparison to mean much"
    plans = json.loads((model_folder / "plans.json").read_text())
    from monetpipe.preprocessing.plans import Plans

    summary = evaluate_folders(
        paths.preprocessed / raw_task.name / "gt_segmentations" / DEFAULT_PLANS,
        out,
        labels=foreground_labels(Plans.from_dict(plans)),
        output_file=tmp_path / "summary.json",
        num_processes=1,
        case_ids=val_cases,
        progress=False,
    )
    stored = json.loads((validation / "summary.json").read_text())
    assert _metrics(summary) == _metrics(stored)
    assert summary["foreground_mean"]["Dice"] is not None


@pytest.mark.skipif(not (TASK04 / "dataset.json").is_file(), reason="real Task04 data is absent")
def test_final_validation_equals_monet_predict_on_real_task04(tmp_path, monkeypatch):
    monkeypatch.delenv("MONET_raw", raising=False)  # the run must find its raw images through its own paths
    paths, _, result = _train(tmp_path, lambda raw: _task04_subset(raw, 6))
    _assert_validation_is_monet_predict(paths, result, tmp_path)


def test_final_validation_equals_monet_predict_on_synthetic_ct(tmp_path):
    paths, _, result = _train(tmp_path, _synthetic)
    _assert_validation_is_monet_predict(paths, result, tmp_path)


def test_missing_raw_folder_fails_validation_clearly_and_keeps_the_checkpoints(tmp_path):
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.training import train_fold

    paths = MonetPaths(tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results")
    task = _synthetic(paths.raw)
    plan_and_preprocess(task, paths, num_processes=1)
    raw_task = paths.raw / "Task901_SyntheticCT"
    raw_task.rename(tmp_path / "moved")  # training on a machine without the raw data
    with pytest.raises(MonetError) as err:
        train_fold(task, "monet", 0, TINY, paths=paths)
    message = str(err.value)
    assert str(raw_task) in message and "MONET_raw" in message
    assert f"monet_train -t Task901_SyntheticCT -m monet -f 0 -p {DEFAULT_PLANS} --val-only" in message
    fold_dir = paths.results / "Task901_SyntheticCT" / f"monet__{DEFAULT_PLANS}" / "fold_0"
    assert (fold_dir / "checkpoint_final.pth").is_file()
    # With the raw folder back, --val-only completes the validation from the kept checkpoint.
    (tmp_path / "moved").rename(raw_task)
    result = train_fold(task, "monet", 0, TINY, paths=paths, val_only=True)
    assert result.validation is not None and (fold_dir / "validation" / "summary.json").is_file()


def test_task_preprocessed_from_a_path_outside_monet_raw_is_validated_from_there(tmp_path):
    """``monet_plan_and_preprocess -t ~/Downloads/TaskXX`` records the folder; the final validation reads it."""
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.training import train_fold

    paths = MonetPaths(tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results")
    _synthetic(tmp_path / "downloads")
    plan_and_preprocess(str(tmp_path / "downloads" / "Task901_SyntheticCT"), paths, num_processes=1)
    assert not (paths.raw / "Task901_SyntheticCT").exists()
    result = train_fold("901", "monet", 0, TINY, paths=paths)
    assert result.validation is not None and (result.fold_dir / "validation" / "summary.json").is_file()
