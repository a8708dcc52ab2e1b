"""scripts/check_bn_lag.py: BatchNorm statistics recomputed from the training slices, weights untouched."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from monetpipe.networks.registry import build_network


def _cache(folder: Path, case: str, seed: int, slices: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.normal(3.0, 2.0, (1, slices, 20, 16))).astype(np.float16)  # offset: stale stats are far off
    seg = (data[0] > 3.0).astype(np.uint8)
    np.save(folder / f"{case}_data.npy", data)
    np.save(folder / f"{case}_seg.npy", seg)
    return data


def test_statistics_are_recomputed_from_the_training_slices_and_the_weights_kept(tmp_path, caplog, load_script):
    check = load_script("check_bn_lag")
    slices = tmp_path / "slices"
    slices.mkdir()
    train = [_cache(slices, f"t{i}", i) for i in range(2)]
    _cache(slices, "v0", 9)
    net = build_network("monet", 1, 3)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = check.recompute_batchnorm(net, slices, ["t0", "t1"])
    assert seen == 12
    # the first BatchNorm follows the first convolution: its mean is the mean of that conv's output
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first_norm = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        outputs = [first_conv(torch.from_numpy(d.astype(np.float32)).permute(1, 0, 2, 3)) for d in train]
    expected = torch.stack([o.mean((0, 2, 3)) for o in outputs]).mean(0)  # one batch per case, averaged
    assert torch.allclose(first_norm.running_mean, expected, atol=1e-4)
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())

    fold = tmp_path / "fold_0"
    fold.mkdir()
    checkpoint = {
        "network": {"name": "monet", "in_channels": 1, "num_classes": 3},
        "model_state": build_network("monet", 1, 3).state_dict(),
        "cases": {"train": ["t0", "t1"], "inner_val": [], "val": ["v0"]},
    }
    torch.save(checkpoint, fold / "checkpoint_final.pth")
    with caplog.at_level(logging.INFO):
        assert check.main(["--fold", str(fold), "--slices", str(slices)]) == 0
    assert "with the saved BatchNorm statistics" in caplog.text and "recomputed from 12 training slices" in caplog.text


def test_a_25d_fold_is_scored_on_the_stacks_its_plans_name(tmp_path, caplog, load_script):
    """A model of the default 2.5D plans sees each slice with its neighbours, as monet_predict feeds it."""
    check = load_script("check_bn_lag")
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(2):
        _cache(slices, f"t{i}", i)
    _cache(slices, "v0", 9)
    fold = tmp_path / "fold_0"
    fold.mkdir()
    checkpoint = {
        "network": {"name": "monet", "in_channels": 3, "num_classes": 3},
        "model_state": build_network("monet", 3, 3).state_dict(),
        "cases": {"train": ["t0", "t1"], "inner_val": [], "val": ["v0"]},
        "plans": {"context_slices": 1},
    }
    torch.save(checkpoint, fold / "checkpoint_final.pth")
    with caplog.at_level(logging.INFO):
        assert check.main(["--fold", str(fold), "--slices", str(slices)]) == 0
    assert "recomputed from 12 training slices" in caplog.text
