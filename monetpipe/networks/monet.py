"""MoNet (Knolle, Kaissis et al., PLOS ONE 2021), layer for layer as the authors' official Keras code.

With ``in_channels=1, num_classes=1`` it has 401,666 trainable parameters and 403,556 counting the
BatchNorm running statistics, as Keras reports. The layer list and where it departs from the paper's
figures are in docs/networks.md.
"""

from __future__ import annotations

import torch
from torch import nn

from monetpipe.networks.blocks import ConvNormAct, check_input, he_uniform_

RDDC_DILATIONS = (4, 3, 2, 1)


def conv_bn_elu(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1) -> ConvNormAct:
    """The official ``ConvBnElu``: Conv2d (no bias, Keras "same" padding) -> BatchNorm -> ELU.

    "Same" padding here is symmetric and exact: for a 3x3 kernel with dilation d Keras pads d on each
    side; for the stride-2 4x4 down-sampling conv on an even size Keras pads k - s = 2 in total, 1 before
    and 1 after (its 1-before / 2-after split only happens for odd sizes, which MoNet refuses).
    """
    if stride == 1:
        padding = dilation * (kernel_size - 1) // 2
    else:
        padding = (kernel_size - stride) // 2
    conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False)
    return ConvNormAct(conv, nn.ELU())


def up_bn_elu(channels: int) -> ConvNormAct:
    """The official ``deconv``: ConvTranspose2d(C, C, 4, stride 2, "same") -> BatchNorm -> ELU.

    Keras "same" for a 4x4 stride-2 transposed conv gives exactly 2H, which is PyTorch's padding=1.
    The channel count is kept (the paper's figure halves it; the official code does not).
    """
    conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False)
    return ConvNormAct(conv, nn.ELU())


class RDDC(nn.Module):
    """Repeated decreasingly dilated convolutions (the official ``repeat_block``).

    ``c1 = drop(CBE_d4(x))``, ``c2 = drop(CBE_d3(x + c1))``, ``c3 = drop(CBE_d2(c2))``,
    ``out = CBE_d1(c2 + c3)``. The version of the official code the paper's parameter counts come from
    returns ``out``; an earlier commit returned ``x + out`` (``outer_residual=True`` reproduces it).

    Args:
        channels: C; every conv is C -> C, 3x3.
        dropout: SpatialDropout2D rate after the first three convs.
        outer_residual: add the block input to its output.
    """

    def __init__(self, channels: int, dropout: float = 0.2, outer_residual: bool = False) -> None:
        super().__init__()
        self.cbe1, self.cbe2, self.cbe3, self.cbe4 = (
            conv_bn_elu(channels, channels, dilation=d) for d in RDDC_DILATIONS
        )
        self.drop1, self.drop2, self.drop3 = (nn.Dropout2d(dropout) for _ in range(3))
        self.outer_residual = outer_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.drop1(self.cbe1(x))
        c2 = self.drop2(self.cbe2(x + c1))
        c3 = self.drop3(self.cbe3(c2))
        out = self.cbe4(c2 + c3)
        return x + out if self.outer_residual else out


class EncoderStage(nn.Module):
    """``CBE(cin, C)`` -> ``RDDC(C)`` (the skip) -> stride-2 ``CBE(C, C, k=4)``; returns (skip, down)."""

    def __init__(self, cin: int, channels: int, dropout: float, outer_residual: bool) -> None:
        super().__init__()
        self.stem = conv_bn_elu(cin, channels)
        self.rddc = RDDC(channels, dropout, outer_residual)
        self.down = conv_bn_elu(channels, channels, kernel_size=4, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.rddc(self.stem(x))
        return skip, self.down(skip)


class DecoderStage(nn.Module):
    """``Up(cin)`` -> ``cat[skip, up]`` -> ``CBE(skip + cin, C)`` -> ``RDDC(C)``."""

    def __init__(self, cin: int, skip_channels: int, channels: int, dropout: float, outer_residual: bool) -> None:
        super().__init__()
        self.up = up_bn_elu(cin)
        self.stem = conv_bn_elu(skip_channels + cin, channels)
        self.rddc = RDDC(channels, dropout, outer_residual)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # The official code concatenates [skip, up] (skip first), unlike keras-unet's [up, skip].
        return self.rddc(self.stem(torch.cat([skip, self.up(x)], dim=1)))


class MoNet(nn.Module):
    """MoNet: two encoder stages, a bottleneck, two decoder stages and a 1x1 conv + BatchNorm head.

    Args:
        in_channels: input channels C.
        num_classes: output channels K (1: sigmoid head; K > 1: softmax over K incl. background).
        base_filters: channels of the first stage (16 in the paper), doubled per stage.
        depth: number of down-samplings (2 in the paper); H and W must be divisible by 2 ** depth.
        dropout_enc: SpatialDropout2D rate in the encoder RDDC blocks.
        dropout_mid: the same in the bottleneck (the official code leaves it at repeat_block's
            default, 0.2, whatever ``dropout_enc`` is).
        dropout_dec: the same in the decoder.
        outer_residual: see :class:`RDDC`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_filters: int = 16,
        depth: int = 2,
        dropout_enc: float = 0.2,
        dropout_mid: float = 0.2,
        dropout_dec: float = 0.2,
        outer_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisor = 2**depth
        self.model_name = "monet"
        widths = [base_filters * 2**i for i in range(depth + 1)]
        cins = [in_channels] + widths[:-2]
        self.encoders = nn.ModuleList(
            EncoderStage(cin, w, dropout_enc, outer_residual) for cin, w in zip(cins, widths[:-1], strict=True)
        )
        self.bottleneck = nn.Sequential(
            conv_bn_elu(widths[-2], widths[-1]), RDDC(widths[-1], dropout_mid, outer_residual)
        )
        self.decoders = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], widths[i], dropout_dec, outer_residual)
            for i in reversed(range(depth))
        )
        self.head = ConvNormAct(nn.Conv2d(widths[0], num_classes, 1, bias=False), nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                he_uniform_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for a (B, C, H, W) batch."""
        check_input(x, self.in_channels, self.size_divisor, self.model_name)
        skips = []
        for stage in self.encoders:
            skip, x = stage(x)
            skips.append(skip)
        x = self.bottleneck(x)
        for stage, skip in zip(self.decoders, reversed(skips), strict=True):
            x = stage(x, skip)
        return self.head(x)
