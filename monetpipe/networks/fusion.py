"""An inference form of a network: BatchNorm folded into a neighbouring conv wherever that is exact.

In eval mode BatchNorm is a per-channel affine map ``y = s * x + t`` (``s = gamma / sqrt(var + eps)``,
``t = beta - s * mean``).

* **Backward fold** (BN right after a conv, MoNet's ``Conv -> BN -> ELU``): scale the conv's output
  channels by ``s`` and use ``t`` (plus ``s`` times the old bias) as the bias. Exact everywhere, for
  Conv2d and ConvTranspose2d alike, whatever the padding.
* **Forward fold** (BN right before a conv, the U-Nets' ``ReLU -> BN -> Conv``): scale the next conv's
  input channels by ``s`` and add ``W * t`` to its bias. Exact only where the next conv never sees
  padding: a zero-padded border of ``s * x + t`` is 0, but the folded conv would see ``t`` there. So it
  is done only for 1x1 convs without padding, which in the U-Nets is the head alone.

Dropout becomes Identity (it already is one in eval mode).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from monetpipe.networks.blocks import ConvNormAct

logger = logging.getLogger(__name__)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean


def _with_params(conv: nn.Conv2d | nn.ConvTranspose2d, weight: torch.Tensor, bias: torch.Tensor):
    """A copy of ``conv`` with a bias and the given weight / bias (cast back to the conv's dtype)."""
    new = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    new.weight = nn.Parameter(weight.to(dtype), requires_grad=conv.weight.requires_grad)
    new.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
    return new


def fold_bn_into_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Fold ``bn`` into the conv before it: ``bn(conv(x)) == folded(x)`` exactly (up to rounding).

    PyTorch's :func:`~torch.nn.utils.fusion.fuse_conv_bn_eval` (``transpose=True`` for a ConvTranspose2d,
    whose weight is (in, out, kh, kw)), run on float64 copies so the folded weights are rounded once,
    to the conv's dtype.

    Args:
        conv: Conv2d or ConvTranspose2d (groups=1 for the latter) whose output ``bn`` normalises.
        bn: a BatchNorm2d with running statistics.

    Returns:
        A new conv with a bias; the inputs are not changed.
    """
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if transposed and conv.groups != 1:
        raise ValueError("folding into a grouped ConvTranspose2d is not supported")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    fused = fuse_conv_bn_eval(copy.deepcopy(conv).double().eval(), copy.deepcopy(bn).double().eval(), transposed)
    fused = fused.to(conv.weight.dtype).train(conv.training)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused


def fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """Fold ``bn`` into the conv after it: ``conv(bn(x)) == folded(x)``, only for unpadded convs.

    Args:
        bn: a BatchNorm2d with running statistics whose output only ``conv`` reads.
        conv: a Conv2d with ``padding == 0`` and ``groups == 1``.

    Returns:
        A new conv with a bias.

    Raises:
        ValueError: the conv pads its input (the fold would be wrong at the border) or is grouped.
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError("forward BatchNorm folding needs an ungrouped nn.Conv2d")
    if isinstance(conv.padding, str) or any(p != 0 for p in conv.padding):
        raise ValueError(
            f"forward BatchNorm folding into a conv with padding={conv.padding!r} is not exact at the "
            "border (the zero padding would become the BatchNorm shift); fold only into unpadded convs"
        )
    scale, shift = _bn_affine(bn)
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    b = b + torch.einsum("oikl,i->o", w, shift)
    return _with_params(conv, w * scale.view(1, -1, 1, 1), b)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    """``root.set_submodule(path, module)`` for torch versions that lack it (< 2.4)."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every exactly foldable BatchNorm folded and no Dropout.

    Folds the BatchNorm of every :class:`ConvNormAct` (all of MoNet's: convs, transposed convs, head)
    and the (BatchNorm, conv) pairs the model lists in ``exact_forward_bn_folds()`` (the U-Nets' last
    BatchNorm into the 1x1 head). The output equals ``model.eval()(x)`` up to float rounding.

    Args:
        model: a network from :func:`~monetpipe.networks.build_network` (not modified).

    Returns:
        The fused copy, in eval mode, with the same ``size_divisor``.
    """
    fused = copy.deepcopy(model).eval()
    n_folded = 0
    for m in fused.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.norm, nn.BatchNorm2d):
            m.conv = fold_bn_into_conv(m.conv, m.norm)
            m.norm = nn.Identity()
            n_folded += 1
    forward_folds = getattr(fused, "exact_forward_bn_folds", None)
    for bn_path, conv_path in forward_folds() if forward_folds is not None else []:
        bn, conv = fused.get_submodule(bn_path), fused.get_submodule(conv_path)
        _replace(fused, conv_path, fold_bn_into_next_conv(bn, conv))
        _replace(fused, bn_path, nn.Identity())
        n_folded += 1
    dropouts = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for name in dropouts:
        _replace(fused, name, nn.Identity())
    remaining = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    logger.info(
        "folded %d BatchNorm layers (%d left unfolded), removed %d Dropout",
        n_folded,
        remaining,
        len(dropouts),
    )
    return fused.eval()
