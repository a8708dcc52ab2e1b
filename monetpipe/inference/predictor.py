"""Preprocessed slices -> network(s) -> probabilities on the preprocessed grid.

:func:`predict_slices` is the network step of :mod:`monetpipe.inference.api`, the one prediction code
path that ``monet_predict`` and training's final validation both run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monetpipe.preprocessing.context import stack_context_sc


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims of ``x`` up to a multiple; returns it and (left, right, top, bottom)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad) if any(pad) else x), pad


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one output channel, softmax over channels otherwise (the loss uses it too)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The tensor dims to flip for mirror TTA over in-plane ``axes`` of ``(N, C, H, W)`` batches: no flip,
    each axis, and both together (``(0, 1)`` -> ``[(), (3,), (2,), (2, 3)]``)."""
    dims = sorted({2 + int(a) for a in axes})
    if any(d not in (2, 3) for d in dims):
        raise ValueError(f"mirror axes must be 0 or 1, got {tuple(axes)}")
    return [()] + [(d,) for d in reversed(dims)] + ([tuple(dims)] if len(dims) == 2 else [])


@torch.inference_mode()
def predict_slices(
    models: Sequence[torch.nn.Module],
    data: np.ndarray | torch.Tensor,
    batch_size: int = 16,
    tta: bool = False,
    device: str | torch.device = "cpu",
    size_multiple: int = 16,
    channels_last: bool = False,
    context_slices: int = 0,
    mirror_axes: Sequence[int] = (0, 1),
) -> torch.Tensor:
    """Average the probabilities of ``models`` over slices ``(C, S, H, W)``.

    Args:
        models: networks in eval mode (an ensemble of folds averages their probabilities).
        data: preprocessed slices.
        batch_size: slices per forward pass.
        tta: also average over the flips of ``mirror_axes`` (both axes: horizontal, vertical and both;
            one axis: its flip).
        device: where the networks live.
        size_multiple: pad H and W up to this multiple (16 fits every registered network).
        channels_last: feed NHWC batches (use with models converted to ``torch.channels_last``).
        context_slices: the plans' K: each slice is fed with slices z-K .. z+K as ``C * (2K + 1)``
            channels (:mod:`monetpipe.preprocessing.context`), assembled batch by batch.
        mirror_axes: the in-plane axes (0: rows, 1: columns) ``tta`` flips, those the models were trained
            to see flipped.

    Returns:
        ``(K, S, H, W)`` float32 probabilities on the CPU (K = network output channels).
    """
    x_all = torch.as_tensor(np.asarray(data, dtype=np.float32) if isinstance(data, np.ndarray) else data)
    x_all = x_all.transpose(0, 1)  # (S, C, H, W): slices are the batch
    h, w = x_all.shape[-2:]
    flips = mirror_flips(mirror_axes) if tta else [()]
    out = None
    for start in range(0, x_all.shape[0], batch_size):
        stop = min(start + batch_size, x_all.shape[0])
        x = stack_context_sc(x_all, np.arange(start, stop), context_slices) if context_slices else x_all[start:stop]
        x, pad = pad_to_multiple(x.to(device, torch.float32), size_multiple)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        acc = None
        for model in models:
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                p = logits_to_probabilities(model(xi).float())
                p = torch.flip(p, dims) if dims else p
                acc = p if acc is None else acc + p
        acc = (acc / (len(models) * len(flips)))[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w].cpu()
        if out is None:
            out = torch.empty((x_all.shape[0], acc.shape[1], h, w), dtype=torch.float32)
        out[start : start + acc.shape[0]] = acc
    return out.transpose(0, 1)


def with_background(probabilities: np.ndarray) -> np.ndarray:
    """``(1, ...)`` sigmoid foreground -> ``(2, ...)`` [background, foreground]; softmax output unchanged."""
    if probabilities.shape[0] != 1:
        return probabilities
    return np.concatenate([1.0 - probabilities, probabilities], axis=0)
