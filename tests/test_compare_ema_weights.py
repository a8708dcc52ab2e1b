"""scripts/compare_ema_weights.py: the copy that predicts with an --ema run's trained weights."""

from __future__ import annotations

import json

import pytest
import torch

from monetpipe.networks import build_network
from monetpipe.training.checkpoint import network_spec


def _fold(tmp_path, **extra):
    folder = tmp_path / "results" / "monet__monetPlans_ctx1"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"plans": "as trained"}))
    (folder / "fold_0" / "config.json").write_text("{}")
    torch.manual_seed(0)
    average = build_network("monet", 3, 3).state_dict()
    checkpoint = {"network": network_spec("monet", 3, 3), "model_state": average, "epoch": 3, **extra}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder, average


def test_the_copy_predicts_with_the_trained_weights_and_keeps_the_rest(load_script, tmp_path):
    script = load_script("compare_ema_weights")
    torch.manual_seed(1)
    trained = build_network("monet", 3, 3).state_dict()
    folder, average = _fold(tmp_path, training_model_state=trained, ema={"decay": 0.999, "updates": 12})
    before = (folder / "fold_0" / "checkpoint_final.pth").read_bytes()

    copy = script.trained_weights_copy(folder, 0, tmp_path / "out")

    saved = torch.load(copy / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert all(torch.equal(saved["model_state"][k], trained[k]) for k in trained)
    assert not any(torch.equal(saved["model_state"][k], average[k]) for k in trained if k.endswith("conv.weight"))
    assert "training_model_state" not in saved and "ema" not in saved and saved["epoch"] == 3
    assert (copy / "plans.json").read_text() == (folder / "plans.json").read_text()
    assert (copy / "fold_0" / "config.json").is_file() and copy.name == folder.name
    assert (folder / "fold_0" / "checkpoint_final.pth").read_bytes() == before  # the run is only read


def test_a_run_without_ema_is_refused_by_name(load_script, tmp_path):
    script = load_script("compare_ema_weights")
    folder, _ = _fold(tmp_path)
    with pytest.raises(SystemExit, match="checkpoint_final.pth was not trained with --ema"):
        script.trained_weights_copy(folder, 0, tmp_path / "out")
