"""Label maps straight from preprocessed-grid probabilities, without a full-volume probability array.

``restore_probabilities`` followed by ``probabilities_to_labels`` materialises ``(K, Z, Y, X)`` float32 on
the original grid (450 MB for a 3-class 150 x 512 x 512 CT) and argmaxes it single-threaded in numpy.
:func:`labels_on_original_grid` gives the identical label map by resampling a few slices at a time with
the same interpolation, taking the argmax / threshold in PyTorch (multi-threaded) and writing uint8
classes into the crop box. It is used when probabilities are not saved.
"""

from __future__ import annotations

import numpy as np
import torch

from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.preprocessor import output_lookup
from monetpipe.preprocessing.resampling import resample_images


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Index of the largest of ``scores[0], scores[1], ...`` per element (the first one on ties), uint8.

    The same answer as ``np.argmax(scores, axis=0)``, from elementwise comparisons, because on CPU
    ``torch.argmax`` and ``torch.max(dim).indices`` over a short leading (class) dimension are much
    slower than a few whole-volume comparisons.
    """
    best = scores[0]
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for k in range(1, scores.shape[0]):
        index.masked_fill_(scores[k] > best, k)
        best = torch.maximum(best, scores[k])
    return index


@torch.inference_mode()
def labels_on_original_grid(
    probabilities: torch.Tensor | np.ndarray, properties: dict, plans: Plans, chunk: int = 16
) -> np.ndarray:
    """What ``probabilities_to_labels(restore_probabilities(p, properties, plans), plans)`` gives.

    Args:
        probabilities: ``(K, S, H, W)`` on the preprocessed grid (K = 1: sigmoid foreground, else softmax).
        properties: from :func:`~monetpipe.preprocessing.preprocessor.preprocess_image`.
        plans: the plans the case was preprocessed with.
        chunk: slices resampled at once (bounds the temporary memory).

    Returns:
        ``(Z, Y, X)`` uint8 in the dataset's original label values.
    """
    probs = torch.as_tensor(probabilities)
    num, slices = probs.shape[:2]
    crop_hw = tuple(properties["shape_after_crop"][1:])
    classes = np.empty((slices, *crop_hw), dtype=np.uint8)
    for start in range(0, slices, chunk):
        part = resample_images(probs[:, start : start + chunk].float(), crop_hw)
        picked = part[0] >= 0.5 if num == 1 else first_argmax(part)
        classes[start : start + chunk] = picked.to(torch.uint8).numpy()
    shape_zyx = properties["shape_zyx"]
    full_t = np.zeros([shape_zyx[a] for a in plans.transpose_forward], dtype=np.uint8)
    box_t = [properties["crop_box_zyx"][a] for a in plans.transpose_forward]
    full_t[tuple(slice(a, b) for a, b in box_t)] = classes
    return output_lookup(plans)[full_t.transpose(plans.transpose_backward)]
