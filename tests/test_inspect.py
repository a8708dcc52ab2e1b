"""monet_inspect: the activation figure (paper Fig. 5) of trained models on one cached slice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from monetpipe.evaluation.activations import capture_activations, channel_grid, layer_statistics, pick_layers
from monetpipe.evaluation.inspect_cli import main
from monetpipe.networks import build_network
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.api import plan_and_preprocess
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.synthetic import make_synthetic_task


def test_activations_are_recorded_in_forward_order_with_their_values():
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.ELU())
    x = torch.randn(1, 1, 5, 7)
    acts, logits = capture_activations(net, x)
    assert [a.name for a in acts] == ["1", "3"]
    np.testing.assert_allclose(acts[0].values, torch.relu(net[0](x))[0].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(acts[1].values, logits[0].numpy(), rtol=1e-6)
    stats = layer_statistics(acts)
    assert stats[0]["channels"] == 3 and stats[1]["channels"] == 2
    # ReLU output: at least the negative half of the pre-activations is exactly zero, so near zero.
    assert stats[0]["near_zero_fraction"] >= float((net[0](x) <= 0).float().mean()) - 1e-6
    assert set(pick_layers(acts)) == {"early", "middle", "late"}


def test_channel_grid_scales_each_map_and_marks_missing_tiles():
    values = np.stack([np.arange(6, dtype=np.float32).reshape(2, 3) * (i + 1) for i in range(3)])
    grid = channel_grid(values, channels=4)
    assert grid.shape == (4, 6)
    np.testing.assert_allclose(grid[:2, :3], np.arange(6).reshape(2, 3) / 5)
    assert np.isnan(grid[2:, 3:]).all()


@pytest.fixture(scope="module")
def trained_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    task = make_synthetic_task(paths.raw, "ct", num_cases=3, num_test=0, shape=(48, 40, 8))
    plans = plan_and_preprocess("901", paths, num_processes=1).plans
    for seed, name in enumerate(("monet", "unet16")):
        torch.manual_seed(seed)
        net = build_network(name, plans.num_input_channels, plans.num_classes).eval()
        fold = paths.results / task.name / f"{name}__{DEFAULT_PLANS}" / "fold_0"
        fold.mkdir(parents=True)
        spec = {"name": name, "in_channels": plans.num_input_channels, "num_classes": plans.num_classes}
        torch.save(
            {"network": spec, "model_state": net.state_dict(), "plans": plans.to_dict(), "epoch": 1},
            fold / "checkpoint_final.pth",
        )
    case = sorted(p.name for p in (paths.preprocessed / task.name / f"{DEFAULT_PLANS}_slices").glob("*.json"))[0]
    return paths, task, case[: -len(".json")]


def test_monet_inspect_writes_the_figure_and_layer_table(trained_task, monkeypatch, capsys):
    paths, task, case = trained_task
    for var, root in (
        ("MONET_raw", paths.raw),
        ("MONET_preprocessed", paths.preprocessed),
        ("MONET_results", paths.results),
    ):
        monkeypatch.setenv(var, str(root))
    assert main(["-t", "901", "-m", "monet", "UNet16", "--case", case]) == 0
    written = capsys.readouterr().out.split()
    png, csv = (p for p in written if p.endswith((".png", ".csv")))
    assert png.startswith(str(paths.results / task.name / "inspect"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(csv)
    assert set(table["model"]) == {"monet", "unet16"}
    monet = table[table["model"] == "monet"]
    n_elu = sum(isinstance(m, nn.ELU) for m in build_network("monet", 1, 2).modules())
    assert len(monet) == n_elu  # every ELU of MoNet, each called once per forward pass
    assert monet["channels"].iloc[0] == 16 and (table["near_zero_fraction"].between(0, 1)).all()


def test_monet_inspect_refuses_an_unknown_case_and_a_missing_model_by_name(trained_task, monkeypatch, capsys):
    paths, _, case = trained_task
    for var, root in (
        ("MONET_raw", paths.raw),
        ("MONET_preprocessed", paths.preprocessed),
        ("MONET_results", paths.results),
    ):
        monkeypatch.setenv(var, str(root))
    assert main(["-t", "901", "-m", "monet", "--case", "nope_999"]) == 1
    err = capsys.readouterr().err
    assert "nope_999" in err and case in err
    assert main(["-t", "901", "-m", "unet64", "--case", case]) == 1
    err = capsys.readouterr().err
    assert f"unet64__{DEFAULT_PLANS}" in err and "monet_train" in err
