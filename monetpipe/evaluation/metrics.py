"""Overlap and surface-distance metrics for binary masks and label maps (pure numpy/scipy, any dimension).

Distances are in millimetres: every function that measures a distance takes the voxel ``spacing`` in
the array's axis order (for SimpleITK arrays ``(Z, Y, X)``, i.e. ``Geometry.spacing_zyx``).

Conventions (the same as nnU-Net for overlap, and as MONAI for distances where both masks are non-empty):

* both masks empty: Dice, IoU, precision, recall and every distance are NaN (nothing to measure);
* one mask empty: Dice = IoU = 0, the distances are NaN (a surface distance to nothing is undefined);
  precision is NaN when the prediction is empty, recall is NaN when the reference is empty.

These are the per-pair definitions. How they are aggregated (a missed structure or false alarm counts
with a penalty distance, "both empty" is excluded and counted) is :mod:`monetpipe.evaluation.aggregation`.

Surface distances use the *boundary* of each mask: the mask minus its binary erosion with the
face-connected structuring element (voxels on the array's edge count as boundary). For every boundary voxel
of one mask, the Euclidean distance (with the voxel spacing) to the nearest boundary voxel of the other
mask is taken; this gives the two *directed* distance sets ``d(pred -> ref)`` and ``d(ref -> pred)``.

* ``HD``   = max of both sets (the symmetric Hausdorff distance);
* ``HD95`` = max(95th percentile of ``d(pred -> ref)``, 95th percentile of ``d(ref -> pred)``), percentiles
  linearly interpolated (MONAI's ``compute_hausdorff_distance(percentile=95)``);
* ``ASSD`` = mean of both sets pooled, i.e. ``(sum d(pred -> ref) + sum d(ref -> pred)) / (|dP| + |dR|)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

METRIC_KEYS = (
    "Dice",
    "IoU",
    "Precision",
    "Recall",
    "HD",
    "HD95",
    "ASSD",
    "TP",
    "FP",
    "FN",
    "TN",
    "n_ref",
    "n_pred",
)
DISTANCE_KEYS = ("HD", "HD95", "ASSD")


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a binary comparison."""

    tp: int
    fp: int
    fn: int
    tn: int


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_pair(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = _as_bool(ref), _as_bool(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} and prediction shape {pred.shape} differ")
    return ref, pred


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,):
        raise ValueError(f"spacing {tuple(values)} has {values.size} entries for a {ndim}D mask")
    if not np.all(values > 0):
        raise ValueError(f"spacing must be positive, got {tuple(values)}")
    return values


def confusion(ref: np.ndarray, pred: np.ndarray) -> Confusion:
    """Count true/false positives/negatives of ``pred`` against ``ref`` (non-zero = foreground).

    Args:
        ref: reference mask, any shape.
        pred: predicted mask, same shape.

    Returns:
        A :class:`Confusion` with integer ``tp``, ``fp``, ``fn``, ``tn``.
    """
    ref, pred = _check_pair(ref, pred)
    tp = int(np.count_nonzero(ref & pred))
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    fp, fn = n_pred - tp, n_ref - tp
    return Confusion(tp, fp, fn, ref.size - tp - fp - fn)


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den > 0 else math.nan


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice = 2 TP / (2 TP + FP + FN); NaN when both masks are empty, 0 when exactly one is."""
    c = confusion(ref, pred)
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def iou(ref: np.ndarray, pred: np.ndarray) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN); NaN when both masks are empty, 0 when exactly one is."""
    c = confusion(ref, pred)
    return _ratio(c.tp, c.tp + c.fp + c.fn)


def precision(ref: np.ndarray, pred: np.ndarray) -> float:
    """Precision = TP / (TP + FP); NaN when the prediction is empty."""
    c = confusion(ref, pred)
    return _ratio(c.tp, c.tp + c.fp)


def recall(ref: np.ndarray, pred: np.ndarray) -> float:
    """Recall (sensitivity) = TP / (TP + FN); NaN when the reference is empty."""
    c = confusion(ref, pred)
    return _ratio(c.tp, c.tp + c.fn)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask minus its binary erosion (face connectivity; voxels on the array edge are boundary)."""
    mask = _as_bool(mask)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_to_union(ref: np.ndarray, pred: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus ``margin`` voxels (clipped to the array).

    Boundaries and distances are unchanged by this: every foreground voxel stays inside, and erosion
    treats outside-the-array as background exactly as the cropped-away background would.
    """
    from scipy.ndimage import find_objects

    (box,) = find_objects((ref | pred).astype(np.uint8))
    key = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, ref.shape, strict=True))
    return ref[key], pred[key]


def directed_surface_distances(
    ref: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) between the two masks' boundary voxels, in both directions.

    One Euclidean distance transform per mask, computed on the bounding box of both masks.

    Args:
        ref: reference mask.
        pred: predicted mask, same shape.
        spacing: voxel size per axis in mm (array axis order), a scalar for isotropic, ``None`` for 1.

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: for each boundary voxel of ``pred`` the distance to the
        nearest boundary voxel of ``ref``, and vice versa (float64, unordered); ``None`` when either
        mask is empty (distances undefined).
    """
    ref, pred = _check_pair(ref, pred)
    sampling = _spacing(spacing, ref.ndim)
    if not ref.any() or not pred.any():
        return None
    ref, pred = _crop_to_union(ref, pred)
    ref_edge, pred_edge = boundary(ref), boundary(pred)
    to_ref = ndimage.distance_transform_edt(~ref_edge, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)
    return to_ref[pred_edge], to_pred[ref_edge]


def _distances_from(d: tuple[np.ndarray, np.ndarray] | None, percentile: float = 95.0) -> dict[str, float]:
    if d is None:
        return {"HD": math.nan, "HD95": math.nan, "ASSD": math.nan}
    d_pr, d_rp = d
    return {
        "HD": float(max(d_pr.max(), d_rp.max())),
        "HD95": float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))),
        "ASSD": float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
    }


def hausdorff(ref: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """Symmetric Hausdorff distance in mm (max boundary-to-boundary distance); NaN if a mask is empty."""
    return _distances_from(directed_surface_distances(ref, pred, spacing))["HD"]


def hd95(
    ref: np.ndarray,
    pred: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95.0,
) -> float:
    """HD95 in mm: the larger of the two directed ``percentile``-th percentiles; NaN if a mask is empty.

    This is MONAI's ``compute_hausdorff_distance(percentile=95)``. medpy's ``hd95`` instead takes one
    percentile of both directions pooled, which is usually lower (see docs/evaluation.md).
    """
    return _distances_from(directed_surface_distances(ref, pred, spacing), percentile)["HD95"]


def assd(ref: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """Average symmetric surface distance in mm (both directed sets pooled); NaN if a mask is empty."""
    return _distances_from(directed_surface_distances(ref, pred, spacing))["ASSD"]


def binary_metrics(ref: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None) -> dict:
    """Every metric of :data:`METRIC_KEYS` for one binary pair, distance transforms computed once.

    Args:
        ref: reference mask (non-zero = foreground).
        pred: predicted mask, same shape.
        spacing: voxel size per axis in mm, array axis order.

    Returns:
        ``{"Dice", "IoU", "Precision", "Recall", "HD", "HD95", "ASSD"}`` as floats (NaN where undefined)
        and ``{"TP", "FP", "FN", "TN", "n_ref", "n_pred"}`` as ints.
    """
    ref, pred = _check_pair(ref, pred)
    c = confusion(ref, pred)
    out: dict = {
        "Dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "IoU": _ratio(c.tp, c.tp + c.fp + c.fn),
        "Precision": _ratio(c.tp, c.tp + c.fp),
        "Recall": _ratio(c.tp, c.tp + c.fn),
    }
    out.update(_distances_from(directed_surface_distances(ref, pred, spacing)))
    out.update({"TP": c.tp, "FP": c.fp, "FN": c.fn, "TN": c.tn, "n_ref": c.tp + c.fn, "n_pred": c.tp + c.fp})
    return out


def empty_label_metrics(n_voxels: int) -> dict:
    """The metrics of a label absent from both reference and prediction (of ``n_voxels`` voxels)."""
    nan = math.nan
    return {
        "Dice": nan,
        "IoU": nan,
        "Precision": nan,
        "Recall": nan,
        "HD": nan,
        "HD95": nan,
        "ASSD": nan,
        "TP": 0,
        "FP": 0,
        "FN": 0,
        "TN": int(n_voxels),
        "n_ref": 0,
        "n_pred": 0,
    }


def label_values(label_map: np.ndarray) -> set[int]:
    """The set of values in an integer label map (fast path for uint8: a histogram instead of a sort)."""
    label_map = np.asarray(label_map)
    if label_map.dtype == np.uint8:
        return set(np.flatnonzero(np.bincount(label_map.ravel(), minlength=256)).tolist())
    return {int(v) for v in np.unique(label_map)}


def compute_label_metrics(
    ref: np.ndarray, pred: np.ndarray, labels: Iterable[int], spacing: float | Sequence[float] | None = None
) -> dict[int, dict]:
    """Metrics per label of two label maps.

    Args:
        ref: reference label map (integers), any dimension.
        pred: predicted label map, same shape.
        labels: label values to evaluate (each compared as ``map == label``).
        spacing: voxel size per axis in mm, array axis order (the reference's spacing).

    Returns:
        ``{label: binary_metrics(ref == label, pred == label, spacing)}``.
    """
    ref, pred = np.asarray(ref), np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} and prediction shape {pred.shape} differ")
    present = label_values(ref) | label_values(pred)
    result = {}
    for label in labels:
        label = int(label)
        if label in present:
            result[label] = binary_metrics(ref == label, pred == label, spacing)
        else:  # skip two full-volume comparisons for a label neither map holds
            result[label] = empty_label_metrics(ref.size)
    return result
