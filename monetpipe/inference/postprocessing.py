"""Optional postprocessing of a predicted label map (``monet_predict --largest-component``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(
    labels: np.ndarray, values: Iterable[int] | None = None, connectivity: int = 1
) -> np.ndarray:
    """Keep, for each label value, only its largest connected component; the rest becomes background (0).

    Each label is treated on its own (a lesion inside an organ stays, even though the two touch).
    Work is confined to each label's bounding box, so small structures in a large volume are cheap.

    Args:
        labels: an integer label map (any dimension).
        values: the label values to filter (default: every nonzero value present).
        connectivity: 1 = face neighbours (6 in 3D); ``labels.ndim`` = edges and corners too (26 in 3D).

    Returns:
        A new array of the same shape and dtype. Ties between equally large components keep the first found.
    """
    out = labels.copy()
    if values is None:
        values = [int(v) for v in np.unique(labels) if v != 0]
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    for value in values:
        mask = labels == value
        box = ndimage.find_objects(mask.astype(np.uint8))
        if not box or box[0] is None:
            continue
        sub = mask[box[0]]
        components, n = ndimage.label(sub, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        drop = sub & (components != int(np.argmax(sizes)))
        out[box[0]][drop] = 0
    return out
