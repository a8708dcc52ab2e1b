"""In-plane resampling of slice stacks; the slice axis is never resampled (the networks are 2D).

Uses ``torch.nn.functional.interpolate`` with ``align_corners=False``: pixel centres map so that the
field of view is preserved exactly, the same convention for the forward (to the plan's spacing) and the
backward (probabilities to the original grid) direction. It is multi-threaded and several times faster
than ``scipy.ndimage.zoom`` on 512x512 CT slices. Labels are resampled by nearest neighbour only, so
label values are never interpolated. torch is imported when a function runs, so importing this module
(and ``monet_plan_and_preprocess``'s no-op rerun, which resamples nothing) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def resampled_shape(
    shape_hw: tuple[int, int], spacing_hw: tuple[float, float], target_hw: tuple[float, float]
) -> tuple[int, int]:
    """Pixels after resampling from ``spacing_hw`` to ``target_hw`` (at least 1 per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_hw, spacing_hw, target_hw, strict=True))  # type: ignore[return-value]


def resample_images(
    stack: np.ndarray | torch.Tensor, size_hw: tuple[int, int], mode: str = "bilinear"
) -> np.ndarray | torch.Tensor:
    """Resample ``(C, S, H, W)`` (or ``(S, H, W)``) float data to ``size_hw`` in-plane.

    Returns the same type it was given (numpy in, numpy out). ``mode``: ``bilinear`` or ``bicubic``.
    """
    import torch
    import torch.nn.functional as F

    is_numpy = isinstance(stack, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)) if is_numpy else stack
    squeeze = t.ndim == 3
    if squeeze:
        t = t[None]
    if tuple(t.shape[-2:]) == tuple(size_hw):
        out = t
    else:
        # (C, S, H, W) -> (S, C, H, W): slices are the batch.
        out = F.interpolate(t.transpose(0, 1), size=tuple(size_hw), mode=mode, align_corners=False).transpose(0, 1)
    if squeeze:
        out = out[0]
    return out.contiguous().numpy() if is_numpy else out


def resample_labels(seg: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of an integer ``(S, H, W)`` label stack to ``size_hw``."""
    if tuple(seg.shape[-2:]) == tuple(size_hw):
        return seg
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(seg))[:, None].to(torch.float32)
    out = F.interpolate(t, size=tuple(size_hw), mode="nearest-exact")
    return out[:, 0].to(torch.uint8).numpy()
