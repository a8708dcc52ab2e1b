"""One case, forward and back: the single code path shared by training and inference.

Forward (``preprocess_image`` / ``preprocess_label``): crop to the nonzero box -> put the slice axis
first -> normalize -> resample in-plane to the plan's spacing. The returned ``properties`` record what
is needed to undo it; ``restore_to_original_grid`` does exactly that, so a prediction lands on the input's
original grid voxel for voxel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from monetpipe.io.image import Geometry
from monetpipe.preprocessing.fingerprint import nonzero_bbox
from monetpipe.preprocessing.normalization import normalize
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.resampling import resample_images, resample_labels, resampled_shape

if TYPE_CHECKING:  # torch is imported where it is used, so planning and a no-op rerun never load it
    import torch


def _crop(array: np.ndarray, box) -> np.ndarray:
    return array[(...,) + tuple(slice(a, b) for a, b in box)]


def preprocess_image(image: np.ndarray, geometry: Geometry, plans: Plans) -> tuple[np.ndarray, dict]:
    """Turn a ``(C_dataset, Z, Y, X)`` volume (every channel of the dataset) into the plan's slices
    ``(C, S, H, W)`` float32, ``C`` the planned channels (``--channels``).

    The crop box and the nonzero mask come from every channel, as the fingerprint measured them; then
    only the planned channels are kept.

    Returns:
        The slices and a JSON-ready ``properties`` dict for :func:`restore_to_original_grid`.
    """
    if image.ndim != 4 or image.shape[0] != plans.num_source_channels:
        raise ValueError(f"expected ({plans.num_source_channels}, Z, Y, X), got {image.shape}")
    box = nonzero_bbox(image) if plans.crop_to_nonzero else tuple((0, s) for s in image.shape[1:])
    cropped = _crop(image, box)
    forward = list(plans.transpose_forward)
    cropped = cropped.transpose([0] + [a + 1 for a in forward])
    mask = np.any(cropped != 0, axis=0)
    if plans.selects_channels:
        cropped = cropped[list(plans.source_channels)]
    normalized = normalize(cropped, plans.normalization, mask)
    spacing = [geometry.spacing_zyx[a] for a in forward]
    size_hw = resampled_shape(normalized.shape[2:], (spacing[1], spacing[2]), plans.target_spacing)
    data = resample_images(normalized, size_hw)
    properties = {
        "geometry": geometry.to_dict(),
        "shape_zyx": list(image.shape[1:]),
        "crop_box_zyx": [list(b) for b in box],
        "shape_after_crop": list(cropped.shape[1:]),  # (S, H, W), slice axis first
        "spacing_after_transpose": spacing,
        "shape_after_resampling": [int(data.shape[1]), *size_hw],
    }
    return data, properties


def label_lookup(plans: Plans) -> np.ndarray:
    """A 256-entry table mapping original label values to training class indices."""
    lut = np.zeros(256, dtype=np.uint8)
    for value, cls in plans.label_mapping.items():
        lut[value] = cls
    return lut


def preprocess_label(label: np.ndarray, properties: dict, plans: Plans) -> np.ndarray:
    """Map a ``(Z, Y, X)`` label map to training classes on the same slices as its image: ``(S, H, W)`` uint8."""
    mapped = label_lookup(plans)[label]
    cropped = _crop(mapped, properties["crop_box_zyx"]).transpose(plans.transpose_forward)
    return resample_labels(cropped, tuple(properties["shape_after_resampling"][1:]))


def output_lookup(plans: Plans) -> np.ndarray:
    lut = np.zeros(max(plans.output_labels) + 1, dtype=np.uint8)
    for cls, value in plans.output_labels.items():
        lut[cls] = value
    return lut


def reference_in_output_labels(label: np.ndarray, plans: Plans) -> np.ndarray:
    """The reference a prediction of these plans is compared with (e.g. merged to 1 for ``--binary``)."""
    return output_lookup(plans)[label_lookup(plans)[label]]


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Index of the largest of ``scores[0], scores[1], ...`` per element (the first one on ties), uint8.

    The same answer as ``np.argmax(scores, axis=0)``, from elementwise comparisons, because on CPU
    ``torch.argmax`` and ``torch.max(dim).indices`` over a short leading (class) dimension are much
    slower than a few whole-volume comparisons.
    """
    import torch

    best = scores[0]
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for k in range(1, scores.shape[0]):
        index.masked_fill_(scores[k] > best, k)
        best = torch.maximum(best, scores[k])
    return index


def restore_to_original_grid(
    probabilities: torch.Tensor | np.ndarray,
    properties: dict,
    plans: Plans,
    with_probabilities: bool = False,
    chunk: int = 16,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Undo :func:`preprocess_image` for network probabilities: the label map, and optionally the
    probabilities, on the input's original grid.

    ``chunk`` slices at a time are resampled back to the cropped in-plane size with the forward
    direction's interpolation, the class picked there (argmax, first class on ties, for softmax;
    ``p >= 0.5`` for one sigmoid channel), and the result placed into the crop box (outside it:
    background); then the slice axis is put back. A full ``(K, Z, Y, X)`` float32 array is only built
    when ``with_probabilities`` asks for it, so label maps of a large CT need little memory.

    Args:
        probabilities: ``(K, S, H, W)`` on the preprocessed grid (softmax over K >= 2 classes, or K = 1
            sigmoid foreground probability), numpy or torch.
        properties: from :func:`preprocess_image`.
        plans: the plans the case was preprocessed with.
        with_probabilities: also return the probabilities on the original grid.
        chunk: slices resampled at once (bounds the temporary memory).

    Returns:
        ``(Z, Y, X)`` uint8 labels in the dataset's original label values, and ``(K, Z, Y, X)`` float32
        probabilities (outside the crop box background has probability 1) or ``None``.
    """
    import torch

    with torch.inference_mode():
        return _restore(torch.as_tensor(probabilities), properties, plans, with_probabilities, chunk)


def _restore(
    probs: torch.Tensor, properties: dict, plans: Plans, with_probabilities: bool, chunk: int
) -> tuple[np.ndarray, np.ndarray | None]:
    import torch

    num, slices = probs.shape[:2]
    crop_hw = tuple(properties["shape_after_crop"][1:])
    shape_t = [properties["shape_zyx"][a] for a in plans.transpose_forward]
    box_t = tuple(slice(a, b) for a, b in (properties["crop_box_zyx"][a] for a in plans.transpose_forward))
    classes = np.zeros(shape_t, dtype=np.uint8)
    restored = None
    if with_probabilities:
        restored = np.zeros((num, *shape_t), dtype=np.float32)
        if num > 1:
            restored[0] = 1.0
    classes_box, restored_box = classes[box_t], None if restored is None else restored[(slice(None), *box_t)]
    for start in range(0, slices, chunk):
        part = resample_images(probs[:, start : start + chunk].float(), crop_hw)
        picked = part[0] >= 0.5 if num == 1 else first_argmax(part)
        classes_box[start : start + chunk] = picked.to(torch.uint8).numpy()
        if restored_box is not None:
            restored_box[:, start : start + chunk] = part.numpy()
    labels = output_lookup(plans)[classes.transpose(plans.transpose_backward)]
    if restored is not None:
        restored = restored.transpose([0] + [a + 1 for a in plans.transpose_backward])
    return labels, restored
