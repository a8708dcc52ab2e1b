"""Layers shared by the networks, with the Keras defaults the paper's official code relied on.

Keras and PyTorch differ in three defaults that change a trained model, so they are set explicitly here:
BatchNormalization uses ``epsilon=1e-3`` and ``momentum=0.99`` (PyTorch's ``momentum`` is the weight of
the *new* batch statistic, hence 0.01); Keras initialises kernels with ``glorot_uniform`` unless told
otherwise (the official code asks for ``he_uniform``); biases start at zero.
"""

from __future__ import annotations

import torch
from torch import nn

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99: running = 0.99 * running + 0.01 * batch

_ConvLayer = nn.Conv2d | nn.ConvTranspose2d


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with Keras' ``BatchNormalization()`` defaults (eps 1e-3, momentum 0.99)."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def he_uniform_(layer: _ConvLayer) -> None:
    """Keras ``he_uniform``: U(-limit, limit), limit = sqrt(6 / fan_in); zero bias.

    ``kaiming_uniform_`` with ReLU's gain sqrt(2) draws from U(+-sqrt(2) * sqrt(3 / fan_in)), the same
    limit. Its fan-in (weight dim 1 times the kernel size) is Keras' for both layer types: Conv2d's weight
    is (out, in, kh, kw), Keras' kernel (kh, kw, in, out); ConvTranspose2d's weight is (in, out, kh, kw),
    and Keras stores a ``Conv2DTranspose`` kernel as (kh, kw, filters, in_channels), so both take
    kh * kw * out_channels.
    """
    nn.init.kaiming_uniform_(layer.weight, a=0.0, mode="fan_in", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def glorot_uniform_(layer: _ConvLayer) -> None:
    """Keras ``glorot_uniform`` (its default): limit = sqrt(6 / (fan_in + fan_out)); zero bias.

    ``xavier_uniform_`` with gain 1 draws from that range, with the fans as in :func:`he_uniform_`.
    """
    nn.init.xavier_uniform_(layer.weight, gain=1.0)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))``: a conv (or transposed conv) whose BatchNorm can fold into it exactly.

    Args:
        conv: the convolution; its output channels are normalised.
        act: activation after the BatchNorm (``nn.Identity()`` for none).
    """

    def __init__(self, conv: _ConvLayer, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm: nn.Module = keras_batch_norm(conv.out_channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def check_input(x: torch.Tensor, in_channels: int, size_divisor: int, model_name: str) -> None:
    """Refuse an input the network cannot map to a same-sized output, saying how to fix it.

    Args:
        x: the batch, expected (B, C, H, W).
        in_channels: C the network was built for.
        size_divisor: H and W must be multiples of it (2 ** number of down-samplings).
        model_name: used in the message.

    Raises:
        ValueError: wrong rank, wrong channel count, or H / W not divisible; the message names the
            size to pad to.
    """
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    _, c, h, w = x.shape
    if c != in_channels:
        raise ValueError(
            f"{model_name} was built for {in_channels} input channel(s), got {c}: build it with "
            f"in_channels={c} or pass the channels the plans list"
        )
    if h % size_divisor or w % size_divisor:
        ph = -(-h // size_divisor) * size_divisor
        pw = -(-w // size_divisor) * size_divisor
        raise ValueError(
            f"{model_name} needs height and width divisible by {size_divisor}, got {h}x{w}: "
            f"pad the input to {ph}x{pw} (e.g. torch.nn.functional.pad) and crop the output back"
        )
