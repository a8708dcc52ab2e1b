"""Losses: soft Dice over the foreground channels (the paper's), optionally plus cross-entropy.

The Dice is computed over the whole batch (one intersection and one sum per class over every pixel
of every slice), with ``smooth = 1e-5`` in numerator and denominator, and averaged over foreground
classes. ``num_classes == 1`` means one sigmoid foreground channel; otherwise softmax over background
and foreground classes, of which only the foreground ones enter the Dice.

The same sums, accumulated over many batches, give the inner-validation loss of a whole set of
slices (:func:`dice_statistics` + :func:`loss_from_statistics`), so validation measures exactly what
training optimizes, without the noise of empty batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monetpipe.inference.predictor import logits_to_probabilities

SMOOTH = 1e-5


def foreground_probabilities_and_targets(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, F, H, W)`` foreground probabilities and one-hot targets (F = foreground classes).

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` integer classes in ``0..max(K-1, 1)``.
    """
    probs = logits_to_probabilities(logits.float())
    if logits.shape[1] == 1:
        return probs, (target == 1).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return probs[:, 1:], onehot[:, 1:]


def dice_statistics(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per foreground class ``[intersection, predicted sum, reference sum]`` over the batch: ``(3, F)``."""
    p, g = foreground_probabilities_and_targets(logits, target)
    dims = (0, 2, 3)
    return torch.stack([(p * g).sum(dims), p.sum(dims), g.sum(dims)])


def soft_dice_from_statistics(stats: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """Mean over foreground classes of ``(2 I + s) / (P + G + s)``."""
    intersection, pred_sum, ref_sum = stats
    return ((2 * intersection + smooth) / (pred_sum + ref_sum + smooth)).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on the sigmoid channel, or multi-class cross-entropy on the softmax."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), (target == 1).float(), reduction=reduction)
    return F.cross_entropy(logits.float(), target.long(), reduction=reduction)


class SoftDiceLoss(nn.Module):
    """``1 - soft Dice`` over the foreground channels, computed over the batch."""

    def __init__(self, smooth: float = SMOOTH) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1 - soft_dice_from_statistics(dice_statistics(logits, target), self.smooth)


class DiceCELoss(SoftDiceLoss):
    """Soft Dice loss plus cross-entropy (binary cross-entropy for one sigmoid channel), equal weights."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target) + cross_entropy(logits, target)


def build_loss(name: str) -> SoftDiceLoss:
    """``dice`` -> :class:`SoftDiceLoss`; ``dice_ce`` -> :class:`DiceCELoss`."""
    losses = {"dice": SoftDiceLoss, "dice_ce": DiceCELoss}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(losses)}")
    return losses[name]()


def loss_from_statistics(
    name: str, dice_stats: torch.Tensor, ce_sum: float, num_pixels: int, smooth: float = SMOOTH
) -> float:
    """The loss of a whole set of slices from sums accumulated batch by batch.

    Args:
        name: ``dice`` or ``dice_ce``.
        dice_stats: summed :func:`dice_statistics`.
        ce_sum: summed per-pixel cross-entropy (ignored for ``dice``).
        num_pixels: pixels that entered ``ce_sum``.
    """
    loss = 1 - float(soft_dice_from_statistics(dice_stats, smooth))
    if name == "dice_ce":
        loss += ce_sum / max(num_pixels, 1)
    return loss


def hard_confusion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per foreground class ``[TP, FP, FN]`` of the thresholded / argmaxed prediction: ``(3, F)`` int64."""
    if logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
        classes = [1]
    else:
        pred = logits.argmax(1)
        classes = range(1, logits.shape[1])
    rows = []
    for c in classes:
        p, g = pred == c, target == c
        rows.append(torch.stack([(p & g).sum(), (p & ~g).sum(), (~p & g).sum()]))
    return torch.stack(rows, dim=1).long()


def dice_from_confusion(confusion: torch.Tensor) -> list[float]:
    """Per-class hard Dice ``2TP / (2TP + FP + FN)``; NaN when a class is absent from both."""
    tp, fp, fn = (confusion[i].double() for i in range(3))
    den = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, den, strict=True)]
