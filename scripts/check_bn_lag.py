"""Does a short run's validation Dice measure learning, or BatchNorm statistics that lag the weights?

MoNet normalises with BatchNorm. Its running means and variances follow the weights with momentum 0.1;
after a short run at a high learning rate they can describe a network several steps old, and eval mode
(which uses them) then scores a model far below what it has learned. This script takes a trained fold,
scores its validation cases in eval mode on the cached slices (plan resolution, argmax, Dice per
foreground class, mean over cases), then recomputes every BatchNorm layer's statistics from the fold's
training slices (cumulative averages in train mode, no gradient, the weights untouched) and scores the
same cases again. A large gain means the low Dice was the statistics' lag, not the model.
At the end of a long run with an annealed LR the saved statistics are current, and the recomputation
(whole slices, case by case, unaugmented: not the training batches' mix) can score lower instead.

    python scripts/check_bn_lag.py --fold MONET_results/Task901_SyntheticCT/monet__monetPlans/fold_0 \\
        --slices MONET_preprocessed/Task901_SyntheticCT/monetPlans_slices

Nothing is written; the fold's checkpoint is only read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monetpipe.inference.predictor import pad_to_multiple
from monetpipe.networks.registry import build_network

log = logging.getLogger("check_bn_lag")


def case_slices(slices: Path, case_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """A cached case as ``(Z, C, H, W)`` float32 slices, padded to a multiple of 4, and its ``(Z, H, W)`` labels."""
    data = np.load(slices / f"{case_id}_data.npy").astype(np.float32)  # (C, Z, H, W)
    seg = np.load(slices / f"{case_id}_seg.npy")
    x = torch.from_numpy(data).permute(1, 0, 2, 3).contiguous()
    return x, seg.reshape(seg.shape[-3:])


def predict(net: nn.Module, x: torch.Tensor, batch: int = 16) -> np.ndarray:
    h, w = x.shape[-2:]
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            padded, (left, _, top, _) = pad_to_multiple(x[i : i + batch], 4)  # centred: crop back the same way
            out.append(net(padded)[..., top : top + h, left : left + w].argmax(1).numpy())
    return np.concatenate(out)


def mean_dice(net: nn.Module, slices: Path, cases: list[str], labels: list[int]) -> float:
    net.eval()
    scores = []
    for case in cases:
        x, seg = case_slices(slices, case)
        pred = predict(net, x)
        per_label = []
        for c in labels:
            p, g = pred == c, seg == c
            denominator = p.sum() + g.sum()
            if denominator:
                per_label.append(2 * (p & g).sum() / denominator)
        scores.append(np.mean(per_label) if per_label else np.nan)
    return float(np.nanmean(scores))


def recompute_batchnorm(net: nn.Module, slices: Path, cases: list[str], batch: int = 16) -> int:
    """Cumulative BatchNorm statistics over every training slice; returns the slices seen."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    net.train()
    seen = 0
    with torch.no_grad():
        for case in cases:
            x, _ = case_slices(slices, case)
            for i in range(0, len(x), batch):
                padded, _ = pad_to_multiple(x[i : i + batch], 4)
                net(padded)
                seen += len(padded)
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=Path, required=True, help="a trained fold folder (checkpoint_final.pth)")
    p.add_argument("--slices", type=Path, required=True, help="the plans' slice cache (<case>_data.npy, _seg.npy)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    checkpoint = torch.load(args.fold / args.checkpoint, map_location="cpu", weights_only=False)
    spec = checkpoint["network"]
    net = build_network(spec["name"], spec["in_channels"], spec["num_classes"])
    net.load_state_dict(checkpoint["model_state"])
    cases = checkpoint["cases"]
    labels = list(range(1, max(spec["num_classes"], 2)))
    before = mean_dice(net, args.slices, cases["val"], labels)
    seen = recompute_batchnorm(net, args.slices, cases["train"])
    after = mean_dice(net, args.slices, cases["val"], labels)
    log.info(
        "%s: validation Dice on cached slices %.4f with the saved BatchNorm statistics, %.4f with statistics "
        "recomputed from %d training slices (%d val cases)",
        args.fold,
        before,
        after,
        seen,
        len(cases["val"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
