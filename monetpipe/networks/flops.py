"""FLOPs of a network per slice, as PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` counts them.

FlopCounterMode counts 2 x the multiply-accumulates of every convolution (transposed ones per *input*
pixel: each is scattered into kh x kw outputs of every output channel, fvcore's rule, including the
contributions ``padding`` later crops) and every matrix product, from the shapes a forward pass actually
produces, so the count follows the architecture rather than a hand-kept table. Not counted: biases,
BatchNorm, activations, pooling, additions, concatenations and the gates' products, which together are
well under 1 % of the convolutions here. The pass runs on PyTorch's ``meta`` device: no memory for
activations and no arithmetic, so a 31M-parameter U-Net at 512x512 is counted instantly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def layer_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """FLOPs of one call of a Conv2d / ConvTranspose2d (0 for other layers), by FlopCounterMode's rule.

    For per-layer accounting from forward hooks (the benchmark's profile); :func:`count_flops` counts a
    whole model.
    """
    if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        return 0
    transposed = isinstance(module, nn.ConvTranspose2d)
    return conv_flop_count(list(inp.shape), list(module.weight.shape), list(out.shape), transposed)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass of ``model`` on an input of ``input_shape``.

    Args:
        model: any module (not modified; its weights are not read, only their shapes).
        input_shape: full input shape including the batch, e.g. (1, 1, 256, 256).

    Returns:
        The total of :class:`~torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products).
    """
    was_training = model.training
    try:
        model.eval()
        state = {n: t.to("meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, state, (torch.empty(input_shape, device="meta"),))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def flops_per_slice(
    name_or_model: str | nn.Module,
    height: int = 256,
    width: int = 256,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> int:
    """FLOPs (2 x MACs) to run one (height x width) slice through a network.

    Args:
        name_or_model: a name from :func:`~monetpipe.networks.list_networks` or a built model.
        height: slice height (a multiple of the model's ``size_divisor``).
        width: slice width.
        in_channels: input channels; default 1 for a name, the model's own for a model.
        num_classes: output channels; default 1 for a name (ignored for a model).

    Returns:
        The FLOP count as an int (MoNet at 256x256, C = K = 1: 9,516,875,776).
    """
    if isinstance(name_or_model, str):
        from monetpipe.networks.registry import build_network

        in_channels = in_channels or 1
        with torch.device("meta"):
            model = build_network(name_or_model, in_channels, num_classes or 1)
    else:
        model = name_or_model
        own = getattr(model, "in_channels", None)
        if in_channels is not None and own is not None and in_channels != own:
            raise ValueError(f"the model was built for {own} input channels, not {in_channels}")
        in_channels = in_channels or own or 1
    return count_flops(model, (1, in_channels, height, width))
