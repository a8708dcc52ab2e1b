"""The whole user path through the commands: synthetic task -> plan -> train two models -> predict -> leaderboard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monetpipe.evaluation.cli import main as evaluate_main
from monetpipe.inference.cli import main as predict_main
from monetpipe.io.image import read_label, read_volume
from monetpipe.networks import build_network, count_parameters
from monetpipe.preprocessing.cli import main as preprocess_main
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.synthetic_cli import main as synthetic_main
from monetpipe.training.cli import main as train_main

TASK = "Task901_SyntheticCT"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = {f"MONET_{n}": str(root / n) for n in ("raw", "preprocessed", "results")}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        assert (
            synthetic_main(["-o", env["MONET_raw"], "--kind", "ct", "--cases", "8", "--shape", "48", "40", "10"]) == 0
        )
        assert preprocess_main(["-t", "901", "-np", "1"]) == 0
        for model in ("monet", "unet16"):
            args = [
                "-t",
                "901",
                "-m",
                model,
                "--epochs",
                "1",
                "--iters-per-epoch",
                "2",
                "--batch-size",
                "4",
                "--num-workers",
                "0",
            ]
            assert train_main(args) == 0
        out = root / "predictions"
        assert (
            predict_main(["-i", f"{env['MONET_raw']}/{TASK}/imagesTs", "-o", str(out), "-t", "901", "-m", "monet"]) == 0
        )
        assert evaluate_main(["-t", "901"]) == 0
        yield root, out
    finally:
        mp.undo()


def test_leaderboard_lists_both_trained_models_with_their_sizes(pipeline):
    root, _ = pipeline
    board = pd.read_csv(root / "results" / TASK / "leaderboard.csv")
    assert sorted(board["model"]) == ["monet", "unet16"]
    assert set(board["plans"]) == {DEFAULT_PLANS} and set(board["fold"].astype(str)) == {"0"}
    for _, row in board.iterrows():
        expected = count_parameters(build_network(row["model"], 3, 3))  # 2.5D: 3 input channels
        assert row["params_trainable"] == expected["params_trainable"]
        assert row["params_keras"] == expected["params_keras"]
        assert row["n_cases"] == 2  # round(0.3 * 8) validation cases
        assert 0.0 <= row["dice_mean"] <= 1.0
        assert {"dice_1", "dice_2", "hd95_1", "hd95_2"} <= set(board.columns)
    assert list(board["dice_mean"]) == sorted(board["dice_mean"], reverse=True)
    assert (root / "results" / TASK / "leaderboard.png").is_file()


def test_predictions_keep_the_input_geometry(pipeline):
    root, out = pipeline
    inputs = sorted((root / "raw" / TASK / "imagesTs").glob("*.nii.gz"))
    assert inputs
    for image_file in inputs:
        _, g_in = read_volume([image_file])
        labels, g_out = read_label(out / image_file.name)
        assert g_out == g_in
        assert set(np.unique(labels)) <= {0, 1, 2}
