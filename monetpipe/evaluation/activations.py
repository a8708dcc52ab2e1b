"""What a trained network computes inside: the paper's activation figure (Fig. 5) for any task.

Knolle et al. show, for one input slice, the first feature maps of an early, a middle and a late layer
of each network and argue that U-Net-64's activations pile up near zero (many channels carry little)
while MoNet's are spread out. This module records every activation layer's output for one cached slice
(forward hooks on the activation modules, in the order the forward pass calls them), summarises each
layer (mean, standard deviation, share of values near zero) and draws the figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monetpipe.errors import MonetError
from monetpipe.io.atomic import atomic_path

log = logging.getLogger(__name__)

ACTIVATIONS = (nn.ELU, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.PReLU)
NEAR_ZERO = 1e-2
"""``|a| < NEAR_ZERO`` counts as "near zero" in :func:`layer_statistics`."""


@dataclass(frozen=True)
class LayerActivation:
    """One activation layer's output for one slice: ``values`` is ``(channels, H, W)``."""

    index: int
    name: str
    values: np.ndarray


def capture_activations(model: nn.Module, x: torch.Tensor) -> tuple[list[LayerActivation], torch.Tensor]:
    """Run ``model`` on one slice ``x`` (1, C, H, W) in eval mode and keep every activation's output.

    Returns:
        The activations in call order and the network's logits.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one slice of shape (1, C, H, W), got {tuple(x.shape)}")
    names = {module: name for name, module in model.named_modules() if isinstance(module, ACTIVATIONS)}
    if not names:
        raise MonetError(f"{type(model).__name__} has no activation modules to inspect")
    captured: list[LayerActivation] = []

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        values = output.detach()[0].float().cpu().numpy().copy()
        captured.append(LayerActivation(len(captured), names[module], values))

    handles = [module.register_forward_hook(hook) for module in names]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return captured, logits


def pick_layers(activations: list[LayerActivation]) -> dict[str, LayerActivation]:
    """The early, middle and late layer of the figure: the first, the middle and the last activation."""
    n = len(activations)
    return {"early": activations[0], "middle": activations[n // 2], "late": activations[n - 1]}


def layer_statistics(activations: list[LayerActivation], near_zero: float = NEAR_ZERO) -> list[dict]:
    """Per layer: channels, spatial size, mean, std, share of values with ``|a| < near_zero``, and the
    share of channels that are near zero everywhere ("dead" for this slice)."""
    rows = []
    for act in activations:
        v = act.values
        near = np.abs(v) < near_zero
        rows.append(
            {
                "layer": act.index,
                "name": act.name,
                "channels": int(v.shape[0]),
                "height": int(v.shape[1]),
                "width": int(v.shape[2]),
                "mean": float(v.mean()),
                "std": float(v.std()),
                "near_zero_fraction": float(near.mean()),
                "dead_channel_fraction": float(near.reshape(v.shape[0], -1).all(axis=1).mean()),
            }
        )
    return rows


def histogram_matrix(activations: list[LayerActivation], bins: np.ndarray) -> np.ndarray:
    """``(layers, len(bins) - 1)``: each layer's value distribution as fractions (rows sum to <= 1;
    values outside the bins are not counted)."""
    rows = []
    for act in activations:
        counts, _ = np.histogram(act.values, bins=bins)
        rows.append(counts / max(act.values.size, 1))
    return np.asarray(rows)


def channel_grid(values: np.ndarray, channels: int = 16) -> np.ndarray:
    """The first ``channels`` feature maps tiled into a square grid (missing tiles NaN), each map
    scaled to [0, 1] on its own so a weak channel is still visible next to a strong one."""
    n = min(channels, values.shape[0])
    side = int(np.ceil(np.sqrt(channels)))
    h, w = values.shape[1:]
    grid = np.full((side * h, side * w), np.nan, dtype=np.float32)
    for i in range(n):
        v = values[i]
        lo, hi = float(v.min()), float(v.max())
        scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        r, c = divmod(i, side)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = scaled
    return grid


@dataclass(frozen=True)
class Inspection:
    """One model's activations on one slice, ready to draw."""

    model: str
    image: np.ndarray  # (H, W), the input channel shown (the first channel of the slice itself)
    target: np.ndarray  # (H, W) class map
    prediction: np.ndarray  # (H, W) class map
    activations: list[LayerActivation]


def inspect_slice(
    model_name: str, model: nn.Module, image: np.ndarray, target: np.ndarray, shown_channel: int = 0
) -> Inspection:
    """Activations of ``model`` on one preprocessed slice ``image`` (C, H, W) with class map ``target``.

    The slice is zero-padded to a multiple of 16 as in prediction and the maps are cropped back.
    ``shown_channel`` is the input channel drawn as "input" (for 2.5D input the slice itself, not z-K).
    """
    from monetpipe.inference.predictor import pad_to_multiple

    x, pad = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], 16)
    acts, logits = capture_activations(model, x)
    left, _, top, _ = pad
    h, w = image.shape[-2:]
    pred = (logits[0, 0] > 0).long() if logits.shape[1] == 1 else logits[0].argmax(0)
    pred = pred[top : top + h, left : left + w].numpy()
    return Inspection(model_name, np.asarray(image[shown_channel], np.float32), np.asarray(target), pred, acts)


def draw_figure(inspections: list[Inspection], output: Path, channels: int = 16) -> Path:
    """Write the figure: per model a row with input, target, prediction, the first ``channels`` maps of
    the early / middle / late layer, and every layer's value histogram (layers top to bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    bins = np.linspace(-1.5, 4.0, 111)
    fig, axes = plt.subplots(len(inspections), 7, figsize=(24, 3.6 * len(inspections)), squeeze=False)
    for row, ins in zip(axes, inspections, strict=True):
        row[0].imshow(ins.image, cmap="gray")
        row[0].set_title(f"{ins.model}: input")
        row[1].imshow(ins.target, cmap="viridis", interpolation="nearest")
        row[1].set_title("target")
        row[2].imshow(ins.prediction, cmap="viridis", interpolation="nearest", vmax=max(ins.target.max(), 1))
        row[2].set_title("prediction")
        stats = {s["layer"]: s for s in layer_statistics(ins.activations)}
        for ax, (where, act) in zip(row[3:6], pick_layers(ins.activations).items(), strict=True):
            ax.imshow(channel_grid(act.values, channels), cmap="magma", interpolation="nearest")
            ax.set_title(
                f"{where} ({act.name}, {act.values.shape[0]} ch)\n"
                f"{100 * stats[act.index]['near_zero_fraction']:.0f} % of values near 0",
                fontsize=9,
            )
        hist = histogram_matrix(ins.activations, bins)
        im = row[6].imshow(
            np.where(hist > 0, hist, np.nan),
            aspect="auto",
            cmap="viridis",
            norm=LogNorm(vmin=1e-5, vmax=1),
            extent=(bins[0], bins[-1], len(hist) - 0.5, -0.5),
        )
        row[6].set_xlabel("activation value")
        row[6].set_ylabel("layer (forward order)")
        row[6].set_title("value distribution per layer")
        fig.colorbar(im, ax=row[6], label="fraction of values")
        for ax in row[:6]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    output = Path(output)
    try:
        with atomic_path(output) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return output
