"""Networks by name: ``build_network("monet", in_channels, num_classes)``; parameter counts.

Plans and checkpoints name a network; this table is the only place a name becomes a class. It is an
explicit dict, so adding a network is one line here and nothing is discovered by crawling modules.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from monetpipe.networks.attention_unet import AttentionUNet
from monetpipe.networks.monet import MoNet
from monetpipe.networks.unet import UNet

_NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "monet": MoNet,
    "unet16": partial(UNet, filters=16),
    "unet64": partial(UNet, filters=64),
    "attention_unet": AttentionUNet,
}
# The constructor options that set a network's dropout rates (``monet_train --dropout``): MoNet's
# SpatialDropout2D after the first three convolutions of every RDDC block (0.2, the paper's), the U-Nets'
# Dropout2D in their encoder and bottleneck blocks (0.3, keras-unet's default).
_DROPOUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "monet": ("dropout_enc", "dropout_mid", "dropout_dec"),
    "unet16": ("dropout",),
    "unet64": ("dropout",),
    "attention_unet": ("dropout",),
}


def list_networks() -> list[str]:
    """The names ``build_network`` accepts, in the paper's order."""
    return list(_NETWORKS)


def _options(builder: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(builder).parameters
    return [n for n in params if n not in ("in_channels", "num_classes")]


def build_network(name: str, in_channels: int, num_classes: int, **overrides) -> nn.Module:
    """Build a network in training mode with its paper defaults.

    Args:
        name: one of :func:`list_networks` (case-insensitive).
        in_channels: input channels C (image modalities).
        num_classes: output channels K: 1 for a binary task (sigmoid), else classes incl. background.
        **overrides: constructor options that replace the defaults, e.g. ``dropout_enc=0.1`` for MoNet.

    Returns:
        The model; it has ``size_divisor`` (H and W must be multiples of it) and returns logits.

    Raises:
        ValueError: unknown name, unknown override, or non-positive channel counts.
    """
    key = name.strip().lower()
    if key not in _NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(_NETWORKS)}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"{key} needs in_channels >= 1 and num_classes >= 1, got {in_channels} and {num_classes}")
    builder = _NETWORKS[key]
    valid = _options(builder)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"{key} has no option(s) {', '.join(unknown)}; valid overrides: {', '.join(valid)}")
    return builder(in_channels=in_channels, num_classes=num_classes, **overrides)


def dropout_overrides(name: str, rate: float | None) -> dict[str, float]:
    """``build_network`` overrides that set every dropout rate of network ``name`` to ``rate``.

    ``None`` keeps the network's own rates (an empty dict). Dropout is active only in training mode, so a
    network built for inference needs none of this: the weights are the same shapes at any rate.
    """
    if rate is None:
        return {}
    return dict.fromkeys(_DROPOUT_OPTIONS[name.strip().lower()], float(rate))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts as the paper (Keras) reports them.

    Args:
        model: any module.

    Returns:
        ``params_trainable``: parameters with ``requires_grad``; ``params_keras``: those plus every
        BatchNorm running mean and variance (Keras' "non-trainable" weights; ``num_batches_tracked``
        is not a weight and is not counted).
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bn_stats = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            bn_stats += m.running_mean.numel() + m.running_var.numel()
    return {"params_trainable": trainable, "params_keras": trainable + bn_stats}
