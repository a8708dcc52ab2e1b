"""``--min-size N``: plans that resample small slices up, and predictions restored to the input's exact grid."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from monetpipe.errors import MonetError
from monetpipe.inference.cli import main as predict_main
from monetpipe.io.image import read_label, read_volume
from monetpipe.preprocessing.cli import main as preprocess_main
from monetpipe.preprocessing.planner import check_size_bounds, round_up, upsample_to_min_size
from monetpipe.preprocessing.plans import DEFAULT_PLANS, Plans, plans_name_for
from monetpipe.synthetic import make_synthetic_task
from monetpipe.training.cli import main as train_main

TASK = "Task901_SyntheticCT"
MIN_SIZE = 64


def test_upsampling_puts_the_median_longer_side_at_min_size_and_keeps_the_aspect():
    assert upsample_to_min_size((1.0, 1.0), (50.0, 35.0), 128) == pytest.approx((50 / 128, 50 / 128))
    assert upsample_to_min_size((2.0, 1.0), (40.0, 64.0), 128) == pytest.approx((1.0, 0.5))
    assert upsample_to_min_size((1.0, 1.0), (200.0, 35.0), 128) == (1.0, 1.0)  # already large enough
    assert upsample_to_min_size((1.0, 1.0), (50.0, 35.0), 0) == (1.0, 1.0)  # option not given


def test_size_bounds_are_refused_with_the_fix():
    check_size_bounds(0, 256)
    check_size_bounds(256, 256)
    with pytest.raises(MonetError, match="--min-size 512 is larger than --max-size 256.*Lower --min-size"):
        check_size_bounds(512, 256)
    with pytest.raises(MonetError, match="--min-size -1"):
        check_size_bounds(-1, 256)


def test_upsampled_plans_have_their_own_name():
    assert plans_name_for(min_size=128) == "monetPlans_s128_ctx1"  # the default input is 2.5D
    assert plans_name_for(min_size=128, context_slices=0) == "monetPlans_s128"
    assert plans_name_for(min_size=0) == "monetPlans_ctx1"
    assert (
        plans_name_for(max_size=128) == "monetPlans_max128_ctx1" and plans_name_for(max_size=256) == "monetPlans_ctx1"
    )
    assert plans_name_for(binary=True, channels=("FLAIR",), context_slices=1, min_size=256) == (
        "monetPlans_binary_ch_FLAIR_s256_ctx1"
    )


# --- the whole path ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upsampled_run(tmp_path_factory):
    """Task901 planned as is and with --min-size 64; MoNet trained 2 steps on the upsampled plans (its final
    validation predicts the fold's val cases); the test images predicted with monet_predict."""
    root = tmp_path_factory.mktemp("insize")
    mp = pytest.MonkeyPatch()
    for n in ("raw", "preprocessed", "results"):
        mp.setenv(f"MONET_{n}", str(root / n))
    try:
        make_synthetic_task(root / "raw", kind="ct", num_cases=6, num_test=2, seed=5, shape=(40, 36, 10))
        assert preprocess_main(["-t", "901", "-np", "1"]) == 0
        default_json = (root / "preprocessed" / TASK / f"{DEFAULT_PLANS}.json").read_text()
        assert preprocess_main(["-t", "901", "-np", "1", "--min-size", str(MIN_SIZE)]) == 0
        plans = f"monetPlans_s{MIN_SIZE}_ctx1"
        train = ["-t", "901", "-m", "monet", "-p", plans, "--epochs", "1", "--iters-per-epoch", "2"]
        assert train_main([*train, "--batch-size", "4", "--num-workers", "0", "--num-threads", "1"]) == 0
        out = root / "predictions"
        images = root / "raw" / TASK / "imagesTs"
        args = ["-i", str(images), "-o", str(out), "-t", "901", "-m", "monet", "-p", plans]
        assert predict_main([*args, "--threads", "1", "--workers", "1"]) == 0
        yield root, out, default_json
    finally:
        mp.undo()


def test_the_plans_resample_up_to_min_size_beside_the_untouched_default(upsampled_run):
    root, _, default_json = upsampled_run
    task_dir = root / "preprocessed" / TASK
    default = Plans.load(task_dir / f"{DEFAULT_PLANS}.json")
    up = Plans.load(task_dir / f"monetPlans_s{MIN_SIZE}_ctx1.json")
    assert (task_dir / f"{DEFAULT_PLANS}.json").read_text() == default_json  # not rewritten by the second plan
    assert default.min_size == 0 and max(default.median_shape[1:]) < MIN_SIZE  # the case this option is for
    assert up.min_size == MIN_SIZE and up.plans_name == f"monetPlans_s{MIN_SIZE}_ctx1"
    assert max(up.median_shape[1:]) == MIN_SIZE
    assert up.patch_size == tuple(round_up(s) for s in up.median_shape[1:])
    assert all(p % 16 == 0 for p in up.patch_size) and up.patch_size > default.patch_size
    factor = max(default.median_shape[1:]) / MIN_SIZE  # same factor on both axes: the aspect is kept
    assert up.target_spacing == pytest.approx(tuple(s * factor for s in default.target_spacing), rel=0.02)
    assert up.batch_size >= 2  # planned from the larger patch
    for case_file in sorted((task_dir / f"{DEFAULT_PLANS}_slices").glob("*_data.npy")):
        small, large = np.load(case_file), np.load(task_dir / f"monetPlans_s{MIN_SIZE}_ctx1_slices" / case_file.name)
        assert large.shape[:2] == small.shape[:2]  # same channels and slices: only in-plane is resampled
        assert large.shape[2] > small.shape[2] and large.shape[3] > small.shape[3]


def test_plans_written_before_the_option_read_as_not_upsampled(upsampled_run):
    root, _, _ = upsampled_run
    plans_file = root / "preprocessed" / TASK / f"{DEFAULT_PLANS}.json"
    old = json.loads(plans_file.read_text())
    old.pop("min_size")
    read = Plans.from_dict(old)
    assert read == Plans.load(plans_file) and read.min_size == 0
    assert read.preprocessing_hash() == Plans.load(plans_file).preprocessing_hash()  # its cache stays valid


def test_predictions_have_the_input_grid_and_only_the_dataset_labels(upsampled_run):
    root, out, _ = upsampled_run
    dataset_labels = {int(v) for v in json.loads((root / "raw" / TASK / "dataset.json").read_text())["labels"]}
    inputs = sorted((root / "raw" / TASK / "imagesTs").glob("*.nii.gz"))
    validation = root / "results" / TASK / f"monet__monetPlans_s{MIN_SIZE}_ctx1" / "fold_0" / "validation"
    pairs = [(f, out / f.name) for f in inputs]
    pairs += [(root / "raw" / TASK / "imagesTr" / p.name, p) for p in sorted(validation.glob("*.nii.gz"))]
    assert len(pairs) > len(inputs)  # the final validation predicted on the raw grid too
    for image_file, predicted in pairs:
        image, g_in = read_volume([image_file])
        labels, g_out = read_label(predicted)
        assert g_out == g_in  # size, spacing, origin, direction
        assert labels.shape == image.shape[1:]
        assert set(np.unique(labels).tolist()) <= dataset_labels


def test_an_upsampled_model_with_the_default_plans_is_refused(upsampled_run, tmp_path, capsys):
    root, _, _ = upsampled_run
    copied = tmp_path / f"monet__{DEFAULT_PLANS}"
    shutil.copytree(root / "results" / TASK / f"monet__monetPlans_s{MIN_SIZE}_ctx1", copied)
    shutil.copyfile(root / "preprocessed" / TASK / f"{DEFAULT_PLANS}.json", copied / "plans.json")
    images = root / "raw" / TASK / "imagesTs"
    code = predict_main(["-i", str(images), "-o", str(tmp_path / "out"), "--model-folder", str(copied)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err  # not predicted at the wrong spacing
    assert str(copied / "fold_0" / "checkpoint_final.pth") in err and "different preprocessing" in err
    assert Plans.load(root / "preprocessed" / TASK / f"monetPlans_s{MIN_SIZE}_ctx1.json").input_flags() == (
        f" --min-size {MIN_SIZE}"
    )


def test_a_min_size_above_max_size_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MONET_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("MONET_preprocessed", str(tmp_path / "pre"))
    make_synthetic_task(tmp_path / "raw", kind="ct", num_cases=2, num_test=0, shape=(32, 32, 8))
    assert preprocess_main(["-t", "901", "--min-size", "300"]) == 1
    err = capsys.readouterr().err
    assert "--min-size 300 is larger than --max-size 256" in err and "Traceback" not in err
    assert not (tmp_path / "pre" / TASK / "monetPlans_s300_ctx1.json").exists()
