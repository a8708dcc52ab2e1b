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

    python scripts/check_bn_lag.py --fold MONET_results/Task901_SyntheticCT/monet__monetPlans_ctx1/fold_0 \\
        --slices MONET_preprocessed/Task901_SyntheticCT/monetPlans_ctx1_slices

Nothing is written; the fold's checkpoint is only read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monetpipe.inference.loading import network_from_checkpoint
from monetpipe.inference.predictor import pad_to_multiple, predict_slices
from monetpipe.preprocessing.context import stack_context
from monetpipe.results import load_checkpoint

log = logging.getLogger("check_bn_lag")


def case_slices(slices: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A cached case's ``(C, Z, H, W)`` float32 slices and its ``(Z, H, W)`` labels."""
    data = np.load(slices / f"{case_id}_data.npy").astype(np.float32)
    seg = np.load(slices / f"{case_id}_seg.npy")
    return data, seg.reshape(seg.shape[-3:])


def mean_dice(net: nn.Module, slices: Path, cases: list[str], labels: list[int], context: int = 0) -> float:
    """Mean over cases of the mean Dice over ``labels``, eval mode, as monet_predict predicts slices
    (``context``: the plans' K of 2.5D input)."""
    net.eval()
    scores = []
    for case in cases:
        data, seg = case_slices(slices, case)
        pred = predict_slices([net], data, size_multiple=4, context_slices=context).argmax(0).numpy()
        per_label = []
        for c in labels:
            p, g = pred == c, seg == c
            denominator = p.sum() + g.sum()
            if denominator:
                per_label.append(2 * (p & g).sum() / denominator)
        scores.append(np.mean(per_label) if per_label else np.nan)
    return float(np.nanmean(scores))


def recompute_batchnorm(net: nn.Module, slices: Path, cases: list[str], batch: int = 16, context: int = 0) -> int:
    """Cumulative BatchNorm statistics over every training slice (stacked with ``context`` neighbours on each
    side for 2.5D plans); returns the slices seen."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    net.train()
    seen = 0
    with torch.no_grad():
        for case in cases:
            data = case_slices(slices, case)[0]
            x = torch.from_numpy(stack_context(data, np.arange(data.shape[1]), context))  # slices are the batch
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
    path = args.fold / args.checkpoint
    checkpoint = load_checkpoint(path)
    net = network_from_checkpoint(checkpoint, path)
    cases = checkpoint["cases"]
    labels = list(range(1, max(int(checkpoint["network"]["num_classes"]), 2)))
    context = int((checkpoint.get("plans") or {}).get("context_slices", 0))  # 2.5D plans stack neighbours
    before = mean_dice(net, args.slices, cases["val"], labels, context)
    seen = recompute_batchnorm(net, args.slices, cases["train"], context=context)
    after = mean_dice(net, args.slices, cases["val"], labels, context)
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
