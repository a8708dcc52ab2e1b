"""The per-epoch check on the inner validation cases: loss and hard Dice over all their slices.

Used by the training loop (``monet_train``) and by ``monet_federated``'s server after each round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from monetpipe.preprocessing.context import stack_context
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.slice_cache import CacheLayout
from monetpipe.training.checkpoint import unwrap
from monetpipe.training.distributed import DistContext, all_reduce_sum
from monetpipe.training.losses import (
    cross_entropy,
    dice_from_confusion,
    dice_statistics,
    hard_confusion,
    loss_from_statistics,
)


@torch.inference_mode()
def inner_validation(
    model: nn.Module,
    layout: CacheLayout,
    case_ids: Sequence[str],
    loss_name: str,
    num_classes: int,
    device: torch.device,
    ctx: DistContext,
    batch_size: int = 32,
    amp: bool = False,
    context_slices: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Loss and hard Dice of ``model`` on every slice of the inner validation cases.

    Args:
        model: the network (DDP-wrapped or not); evaluated in eval mode.
        layout: the slice cache.
        case_ids: inner validation cases.
        loss_name: ``dice`` or ``dice_ce``.
        num_classes: network output channels.
        device: where the network lives.
        ctx: distributed context.
        batch_size: slices per forward pass.
        amp: autocast to float16 (CUDA).
        autocast_dtype: autocast to this dtype instead (bfloat16 for ``--precision bf16``), so the
            check sees the network as training runs it.
        context_slices: the plans' K of 2.5D input (default: read from ``layout``'s plans file).

    Each rank evaluates its share of the cases; the sums are added over ranks, so every rank gets
    the same numbers. The loss is the training loss computed over the whole set at once (one Dice
    over all slices, plus the mean cross-entropy for ``dice_ce``); the Dice is the pooled hard Dice
    per foreground class, averaged over classes that occur.

    Returns:
        ``{"val_loss", "val_dice", "val_dice_per_class"}``.
    """
    from monetpipe.inference.predictor import pad_to_multiple

    if context_slices is None:
        context_slices = Plans.load(layout.plans_file).context_slices if layout.plans_file.is_file() else 0
    net = unwrap(model)
    net.eval()
    divisor = getattr(net, "size_divisor", 16)
    dice_stats = confusion = None
    ce_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    for case_id in list(case_ids)[ctx.rank :: ctx.world_size]:
        data = np.load(layout.data_file(case_id), mmap_mode="r")
        seg = np.load(layout.seg_file(case_id), mmap_mode="r")
        for start in range(0, seg.shape[0], batch_size):
            stop = min(start + batch_size, seg.shape[0])
            x = torch.from_numpy(stack_context(data, np.arange(start, stop), context_slices).astype(np.float32))
            x, pad = pad_to_multiple(x.to(device), divisor)
            y = torch.from_numpy(seg[start : start + batch_size].astype(np.int64)).to(device)
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.float16, enabled=amp or autocast_dtype is not None
            ):
                logits = net(x)
            logits = logits.float()[..., pad[2] : pad[2] + y.shape[1], pad[0] : pad[0] + y.shape[2]]
            stats, conf = dice_statistics(logits, y).double(), hard_confusion(logits, y)
            dice_stats = stats if dice_stats is None else dice_stats + stats
            confusion = conf if confusion is None else confusion + conf
            ce_sum += cross_entropy(logits, y, reduction="sum").double()
            pixels += y.numel()
    if dice_stats is None:  # this rank had no case: contribute zeros of the right shape
        f = 1 if num_classes == 1 else num_classes - 1
        dice_stats = torch.zeros((3, f), dtype=torch.float64, device=device)
        confusion = torch.zeros((3, f), dtype=torch.int64, device=device)
    totals = all_reduce_sum(
        torch.cat([dice_stats.flatten(), confusion.double().flatten(), ce_sum[None], pixels[None]]), ctx
    ).cpu()
    n = dice_stats.numel()
    dice_stats, confusion = totals[:n].view(3, -1), totals[n : 2 * n].view(3, -1)
    per_class = dice_from_confusion(confusion)
    present = [d for d in per_class if not math.isnan(d)]
    return {
        "val_loss": loss_from_statistics(loss_name, dice_stats, float(totals[-2]), int(totals[-1])),
        "val_dice": float(np.mean(present)) if present else math.nan,
        "val_dice_per_class": per_class,
    }
