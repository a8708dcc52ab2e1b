"""2.5D input (``--context-slices K``): slice ``z`` is fed with its own channels and those of its ``K``
neighbours on each side, stacked along the channel axis.

The slice cache keeps the 2D ``(C, S, H, W)`` arrays; stacks are assembled where slices are read (the
training batch loader, inner validation, ``monet_predict`` and the final validation), all through
:func:`context_indices`, so the four agree. Channel order of a stack: slice ``z-K``'s C channels, then
``z-K+1``'s, ..., then ``z+K``'s. At the volume's first and last slices a neighbour that does not exist is
replaced by the nearest slice that does (slice 0 stands in for slices -1, -2, ...): the network always sees
real anatomy, never a zero image it would have to learn to ignore.
"""

from __future__ import annotations

import numpy as np


def context_indices(slices: np.ndarray, num_slices: int, context: int) -> np.ndarray:
    """For each slice index, the ``2K + 1`` slice indices of its stack, edges replicated.

    Args:
        slices: 1D slice indices.
        num_slices: S, the volume's number of slices.
        context: K.

    Returns:
        ``(len(slices), 2K + 1)`` int64, each row ``z-K .. z+K`` clipped to ``[0, S-1]``.
    """
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(slices, dtype=np.int64)[:, None] + offsets, 0, num_slices - 1)


def stack_context(data: np.ndarray, slices, context: int) -> np.ndarray:
    """The network input of ``slices`` of a ``(C, S, H, W)`` volume (the cache's layout; may be
    memory-mapped, only the needed slices are read): ``(len(slices), C * (2K + 1), H, W)``. With ``K = 0``
    these are the plain slices."""
    idx = context_indices(np.asarray(slices), data.shape[1], context)
    c = data.shape[0]
    gathered = np.asarray(data[:, idx.reshape(-1)])  # (C, n * (2K+1), H, W)
    gathered = gathered.reshape(c, idx.shape[0], idx.shape[1], *data.shape[2:])
    return gathered.transpose(1, 2, 0, 3, 4).reshape(idx.shape[0], idx.shape[1] * c, *data.shape[2:])


def stack_context_sc(slices_first, indices: np.ndarray, context: int):
    """:func:`stack_context` for an ``(S, C, H, W)`` numpy array or torch tensor (slices first, as the
    predictor holds them): ``(len(indices), C * (2K + 1), H, W)`` of the same type."""
    idx = context_indices(np.asarray(indices), slices_first.shape[0], context)
    gathered = slices_first[idx.reshape(-1)]  # (n * (2K+1), C, H, W)
    return gathered.reshape(idx.shape[0], idx.shape[1] * slices_first.shape[1], *slices_first.shape[2:])
