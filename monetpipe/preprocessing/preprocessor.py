"""One case, forward and back: the single code path shared by training and inference.

Forward (``preprocess_image`` / ``preprocess_label``): crop to the nonzero box -> put the slice axis
first -> normalize -> resample in-plane to the plan's spacing. The returned ``properties`` record what
is needed to undo it; ``restore_probabilities`` does exactly that, so a prediction lands on the input's
original grid voxel for voxel.
"""

from __future__ import annotations

import numpy as np

from monetpipe.io.image import Geometry
from monetpipe.preprocessing.fingerprint import nonzero_bbox
from monetpipe.preprocessing.normalization import normalize
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.resampling import resample_images, resample_labels, resampled_shape


def _crop(array: np.ndarray, box) -> np.ndarray:
    return array[(...,) + tuple(slice(a, b) for a, b in box)]


def preprocess_image(image: np.ndarray, geometry: Geometry, plans: Plans) -> tuple[np.ndarray, dict]:
    """Turn a ``(C, Z, Y, X)`` volume into network-ready slices ``(C, S, H, W)`` float32.

    Returns:
        The slices and a JSON-ready ``properties`` dict for :func:`restore_probabilities`.
    """
    if image.ndim != 4 or image.shape[0] != plans.num_input_channels:
        raise ValueError(f"expected ({plans.num_input_channels}, Z, Y, X), got {image.shape}")
    box = nonzero_bbox(image) if plans.crop_to_nonzero else tuple((0, s) for s in image.shape[1:])
    cropped = _crop(image, box)
    forward = list(plans.transpose_forward)
    cropped = cropped.transpose([0] + [a + 1 for a in forward])
    mask = np.any(cropped != 0, axis=0)
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


def restore_probabilities(probabilities, properties: dict, plans: Plans) -> np.ndarray:
    """Undo :func:`preprocess_image` for network probabilities.

    Args:
        probabilities: ``(K, S, H, W)`` numpy array or torch tensor on the preprocessed grid (softmax
            over K >= 2 classes, or K = 1 sigmoid foreground probability).
        properties: from :func:`preprocess_image`.

    Returns:
        ``(K, Z, Y, X)`` float32 on the original grid; outside the crop box background has probability 1.
    """
    cropped_shape = properties["shape_after_crop"]
    restored = resample_images(probabilities, tuple(cropped_shape[1:]))
    if not isinstance(restored, np.ndarray):
        restored = restored.detach().cpu().float().numpy()
    num = restored.shape[0]
    shape_zyx = properties["shape_zyx"]
    full_t = np.zeros((num, *[shape_zyx[a] for a in plans.transpose_forward]), dtype=np.float32)
    if num > 1:
        full_t[0] = 1.0
    box_t = [properties["crop_box_zyx"][a] for a in plans.transpose_forward]
    full_t[(slice(None),) + tuple(slice(a, b) for a, b in box_t)] = restored
    return full_t.transpose([0] + [a + 1 for a in plans.transpose_backward])


def probabilities_to_labels(probabilities: np.ndarray, plans: Plans) -> np.ndarray:
    """Argmax (softmax) or threshold 0.5 (sigmoid) and map to the dataset's original label values."""
    if probabilities.shape[0] == 1:
        classes = (probabilities[0] >= 0.5).astype(np.uint8)
    else:
        classes = np.argmax(probabilities, axis=0).astype(np.uint8)
    return output_lookup(plans)[classes]
