"""FLOPs of a network per slice, counted from its layers (FLOPs = 2 x multiply-accumulates).

Counted: every Conv2d, ConvTranspose2d and Linear, from the shapes a forward pass actually produces
(forward hooks), so the count follows the architecture rather than a hand-kept table. Not counted:
biases, BatchNorm, activations, pooling, additions, concatenations and gates' products, which together
are well under 1 % of the convolutions here. The pass runs on PyTorch's ``meta`` device: no memory for
activations and no arithmetic, so a 31M-parameter U-Net at 512x512 is counted instantly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        # each input pixel is scattered into kh*kw positions of every output channel (fvcore's rule;
        # the contributions later cropped by ``padding`` are counted too, as the layer computes them)
        kh, kw = module.kernel_size
        return inp.numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on an input of ``input_shape``.

    Args:
        model: any module (not modified; its weights are not read, only their shapes).
        input_shape: full input shape including the batch, e.g. (1, 1, 256, 256).

    Returns:
        The MAC count of the Conv2d / ConvTranspose2d / Linear layers.
    """
    total = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, args[0], out)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        state = {n: t.to("meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
        with torch.no_grad():
            functional_call(model, state, (torch.empty(input_shape, device="meta"),))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


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
    return 2 * count_macs(model, (1, in_channels, height, width))
