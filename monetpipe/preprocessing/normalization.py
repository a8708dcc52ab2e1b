"""Per-channel intensity normalization as the plans say (docs/preprocessing.md, "The plans")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monetpipe.preprocessing.plans import ChannelNormalization


def normalize(
    image: np.ndarray, schemes: Sequence[ChannelNormalization], nonzero_mask: np.ndarray | None
) -> np.ndarray:
    """Normalize ``image`` ``(C, ...)`` channel by channel; returns a new float32 array.

    CT: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the foreground mean/std.
    Others: per-volume z-score; with ``use_nonzero_mask`` statistics come from ``nonzero_mask`` and
    voxels outside it are set to 0.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = image[c].astype(np.float32, copy=False)
        if scheme.scheme == "ct":
            lo, hi = scheme.clip
            out[c] = (np.clip(x, lo, hi) - scheme.mean) / scheme.std
        elif scheme.scheme == "zscore":
            if scheme.use_nonzero_mask and nonzero_mask is not None and nonzero_mask.any():
                values = x[nonzero_mask]
                out[c] = (x - values.mean()) / max(float(values.std()), 1e-8)
                out[c][~nonzero_mask] = 0
            else:
                out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
        else:
            raise ValueError(f"unknown normalization scheme {scheme.scheme!r}")
    return out
