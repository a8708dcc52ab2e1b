"""The paper's U-Net baselines (U-Net-16, U-Net-64): the official code's ``custom_unet`` (keras-unet style).

Each block is Conv3x3(bias) -> ReLU -> BatchNorm -> SpatialDropout -> Conv3x3(bias) -> ReLU -> BatchNorm:
BatchNorm *after* the ReLU, so it cannot be folded back into its conv (see fusion.py). Four levels with
f, 2f, 4f, 8f filters, a 16f bottleneck, 2x2 max-pooling, ConvTranspose2d(2x2, stride 2) up-sampling and
``cat[up, skip]``. Dropout (0.3) sits in the encoder and bottleneck blocks only.
"""

from __future__ import annotations

import torch
from torch import nn

from monetpipe.networks.blocks import check_input, glorot_uniform_, he_uniform_, keras_batch_norm


class UNetBlock(nn.Module):
    """keras-unet ``conv2d_block``: two 3x3 "same" convs, each followed by ReLU then BatchNorm.

    Args:
        cin: input channels.
        cout: output channels of both convs.
        dropout: Dropout2d (Keras SpatialDropout2D) rate between the two convs; 0 for none.
    """

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.act1 = nn.ReLU()
        self.norm1 = keras_batch_norm(cout)
        self.drop: nn.Module = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act2 = nn.ReLU()
        self.norm2 = keras_batch_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm1(self.act1(self.conv1(x))))
        return self.norm2(self.act2(self.conv2(x)))


class UNetDecoderStage(nn.Module):
    """ConvTranspose2d(2C -> C, 2x2, stride 2) -> optional gate on the skip -> ``cat[up, skip]`` -> block."""

    def __init__(self, channels: int, gate: nn.Module | None, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.gate = gate
        self.block = UNetBlock(2 * channels, channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, up)
        return self.block(torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """U-Net with keras-unet's defaults; ``filters=16`` is U-Net-16, ``filters=64`` U-Net-64.

    Args:
        in_channels: input channels C.
        num_classes: output channels K (1: sigmoid; K > 1: softmax incl. background).
        filters: channels of the first level, doubled per level.
        num_layers: number of down-samplings (4); H and W must be divisible by 2 ** num_layers.
        dropout: SpatialDropout2D rate in the encoder and bottleneck blocks.
        dropout_on_upsampling: also use ``dropout`` in the decoder blocks (keras-unet's option; off).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int = 16,
        num_layers: int = 4,
        dropout: float = 0.3,
        dropout_on_upsampling: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisor = 2**num_layers
        self.model_name = f"unet{filters}"
        widths = [filters * 2**i for i in range(num_layers + 1)]
        cins = [in_channels] + widths[:-2]
        self.encoders = nn.ModuleList(UNetBlock(cin, w, dropout) for cin, w in zip(cins, widths[:-1], strict=True))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = UNetBlock(widths[-2], widths[-1], dropout)
        dec_dropout = dropout if dropout_on_upsampling else 0.0
        self.decoders = nn.ModuleList(
            UNetDecoderStage(w, self._make_gate(w), dec_dropout) for w in reversed(widths[:-1])
        )
        self.head = nn.Conv2d(filters, num_classes, 1)
        self._init_like_keras()

    def _make_gate(self, channels: int) -> nn.Module | None:
        """The module that gates a skip of ``channels`` channels; none for the plain U-Net."""
        return None

    def _init_like_keras(self) -> None:
        # custom_unet passes he_uniform to the block convs (and the attention gates); the transposed
        # convs and the head keep Keras' default glorot_uniform.
        transposed_or_head = {id(d.up) for d in self.decoders} | {id(self.head)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                (glorot_uniform_ if id(m) in transposed_or_head else he_uniform_)(m)

    def exact_forward_bn_folds(self) -> list[tuple[str, str]]:
        """(BatchNorm, next conv) module paths where folding the BN forward is exact.

        Only the last block's second BatchNorm qualifies: it feeds nothing but the 1x1 head, which has
        no padding. Every other BatchNorm feeds a zero-padded 3x3 conv, a max-pool or a stride-2
        transposed conv, where a forward fold changes the result (docs/networks.md).
        """
        return [(f"decoders.{len(self.decoders) - 1}.block.norm2", "head")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for a (B, C, H, W) batch."""
        check_input(x, self.in_channels, self.size_divisor, self.model_name)
        skips = []
        for block in self.encoders:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for stage, skip in zip(self.decoders, reversed(skips), strict=True):
            x = stage(x, skip)
        return self.head(x)
