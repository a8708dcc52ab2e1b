"""Attention U-Net as the paper's baseline: U-Net-64 with an additive attention gate on every skip.

The official code (keras-unet's ``attention_concat``) gates the skip with the *already up-sampled*
decoder map, at the skip's resolution, not with the coarser map as in Oktay et al.'s figure.
"""

from __future__ import annotations

import torch
from torch import nn

from monetpipe.networks.unet import UNet


class AttentionGate(nn.Module):
    """``skip * sigmoid(psi(relu(Wx(skip) + Wg(gate))))`` with 1x1 convs (bias) and a 1-channel map.

    Args:
        skip_channels: channels of the skip connection.
        gate_channels: channels of the gating (up-sampled) map.
        inter_channels: channels of Wx and Wg (the official code: the gating map's channels).
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.wx = nn.Conv2d(skip_channels, inter_channels, 1)
        self.wg = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def attention(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The (B, 1, H, W) attention coefficients in [0, 1]."""
        return torch.sigmoid(self.psi(torch.relu(self.wx(skip) + self.wg(gate))))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(skip, gate)


class AttentionUNet(UNet):
    """U-Net (default ``filters=64``) whose decoder concatenates ``[up, gate(skip, up)]``.

    Args: as :class:`~monetpipe.networks.unet.UNet`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int = 64,
        num_layers: int = 4,
        dropout: float = 0.3,
        dropout_on_upsampling: bool = False,
    ) -> None:
        super().__init__(in_channels, num_classes, filters, num_layers, dropout, dropout_on_upsampling)
        self.model_name = "attention_unet"

    def _make_gate(self, channels: int) -> nn.Module:
        return AttentionGate(channels, channels, channels)
