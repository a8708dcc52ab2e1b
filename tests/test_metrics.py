"""Metrics: hand-computed cases, the empty-mask conventions, and agreement with MONAI and medpy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from monetpipe.evaluation.metrics import (
    METRIC_KEYS,
    assd,
    binary_metrics,
    boundary,
    compute_label_metrics,
    confusion,
    dice,
    directed_surface_distances,
    hausdorff,
    hd95,
    iou,
    precision,
    recall,
)


def cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def ball(shape, center, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


def blobs(rng: np.random.Generator, shape, threshold: float) -> np.ndarray:
    """Smooth random shapes (several components, holes), never empty."""
    while True:
        m = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > threshold
        if m.any():
            return m


# --- hand-computed -----------------------------------------------------------------------------------


def test_cubes_offset_along_anisotropic_axis():
    ref = cube((20, 16, 16), (5, 5, 5), (10, 10, 10))
    pred = cube((20, 16, 16), (8, 5, 5), (13, 10, 10))  # shifted 3 voxels along axis 0
    m = binary_metrics(ref, pred, spacing=(2.0, 1.0, 1.0))
    assert m["TP"] == 2 * 25 and m["FP"] == 3 * 25 and m["FN"] == 3 * 25
    assert m["n_ref"] == m["n_pred"] == 125 and m["TN"] == ref.size - 200
    assert m["Dice"] == pytest.approx(2 * 50 / 250) and m["IoU"] == pytest.approx(50 / 200)
    assert m["Precision"] == pytest.approx(0.4) and m["Recall"] == pytest.approx(0.4)
    assert m["HD"] == pytest.approx(6.0)  # 3 voxels x 2 mm, face to face
    # the same shift along a 1 mm axis is 3 mm: spacing is applied per axis
    pred_x = cube((20, 16, 16), (5, 5, 8), (10, 10, 13))
    assert hausdorff(ref, pred_x, spacing=(2.0, 1.0, 1.0)) == pytest.approx(3.0)


def test_single_voxels_all_distances_equal_the_offset():
    ref = np.zeros((5, 5, 9), bool)
    pred = np.zeros_like(ref)
    ref[2, 2, 2] = pred[2, 2, 6] = True
    m = binary_metrics(ref, pred, spacing=(1.0, 1.0, 3.0))
    assert m["HD"] == m["HD95"] == m["ASSD"] == pytest.approx(12.0)
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0


def test_far_false_positive_sets_hd_but_not_hd95():
    # 10x10 square (36 boundary pixels) plus one false-positive pixel 5 columns right of its edge.
    ref = cube((30, 30), (5, 5), (15, 15))
    pred = ref.copy()
    pred[10, 19] = True
    m = binary_metrics(ref, pred, spacing=(1.0, 2.0))
    assert boundary(ref).sum() == 36
    assert m["HD"] == pytest.approx(10.0)  # 5 columns x 2 mm
    assert m["HD95"] == pytest.approx(0.0)  # 1 of 37 directed distances is above the 95th percentile
    assert m["ASSD"] == pytest.approx(10.0 / (37 + 36))


def test_concentric_spheres_are_about_the_radius_difference_apart():
    ref = ball((41, 41, 41), (20, 20, 20), 15)
    pred = ball((41, 41, 41), (20, 20, 20), 11)
    m = binary_metrics(ref, pred)
    assert 3.0 <= m["HD95"] <= m["HD"] <= 5.0
    assert m["ASSD"] == pytest.approx(4.0, abs=0.5)
    assert m["Recall"] == pytest.approx((11 / 15) ** 3, rel=0.05) and m["Precision"] == 1.0


def test_identical_masks_are_perfect():
    ref = ball((21, 21), (10, 10), 6)
    m = binary_metrics(ref, ref, spacing=0.7)
    assert m["Dice"] == m["IoU"] == m["Precision"] == m["Recall"] == 1.0
    assert m["HD"] == m["HD95"] == m["ASSD"] == 0.0
    assert (m["FP"], m["FN"]) == (0, 0)


def test_boundary_counts_the_array_edge():
    full = np.ones((4, 5), bool)
    assert boundary(full).sum() == 4 * 5 - 2 * 3  # interior 2x3 pixels are not boundary


def test_cropping_does_not_change_distances():
    # masks touching the array edge and far apart: compare against an uncropped direct computation
    ref = cube((40, 50), (0, 0), (6, 9))
    pred = cube((40, 50), (30, 41), (40, 50))
    spacing = (1.5, 0.8)
    d_pr, d_rp = directed_surface_distances(ref, pred, spacing)
    rb, pb = boundary(ref), boundary(pred)
    full_pr = ndimage.distance_transform_edt(~rb, sampling=spacing)[pb]
    full_rp = ndimage.distance_transform_edt(~pb, sampling=spacing)[rb]
    np.testing.assert_allclose(np.sort(d_pr), np.sort(full_pr))
    np.testing.assert_allclose(np.sort(d_rp), np.sort(full_rp))


# --- empty conventions -------------------------------------------------------------------------------


def test_both_empty_gives_nan_everywhere():
    empty = np.zeros((6, 7, 8), bool)
    m = binary_metrics(empty, empty, spacing=(1, 2, 3))
    for key in ("Dice", "IoU", "Precision", "Recall", "HD", "HD95", "ASSD"):
        assert math.isnan(m[key]), key
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (0, 0, 0, empty.size)
    assert math.isnan(dice(empty, empty)) and math.isnan(hausdorff(empty, empty))


@pytest.mark.parametrize("ref_empty", [True, False])
def test_one_empty_gives_dice_zero_and_nan_distances(ref_empty):
    some = cube((8, 8), (2, 2), (5, 5))
    empty = np.zeros_like(some)
    ref, pred = (empty, some) if ref_empty else (some, empty)
    m = binary_metrics(ref, pred)
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0
    assert math.isnan(m["HD"]) and math.isnan(m["HD95"]) and math.isnan(m["ASSD"])
    assert math.isnan(m["Recall"]) if ref_empty else m["Recall"] == 0.0
    assert m["Precision"] == 0.0 if ref_empty else math.isnan(m["Precision"])
    assert math.isnan(hd95(ref, pred)) and math.isnan(assd(ref, pred))


def test_single_metric_functions_agree_with_binary_metrics():
    rng = np.random.default_rng(3)
    ref, pred = blobs(rng, (20, 24), 0.2), blobs(rng, (20, 24), 0.2)
    m = binary_metrics(ref, pred, (1.2, 0.9))
    c = confusion(ref, pred)
    assert (c.tp, c.fp, c.fn) == (m["TP"], m["FP"], m["FN"])
    assert dice(ref, pred) == m["Dice"] and iou(ref, pred) == m["IoU"]
    assert precision(ref, pred) == m["Precision"] and recall(ref, pred) == m["Recall"]
    assert hausdorff(ref, pred, (1.2, 0.9)) == m["HD"] and hd95(ref, pred, (1.2, 0.9)) == m["HD95"]
    assert assd(ref, pred, (1.2, 0.9)) == m["ASSD"]


def test_compute_label_metrics_per_label():
    ref = np.zeros((10, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:4, 1:4] = 1
    pred[1:4, 1:4] = 1  # label 1 perfect
    ref[6:9, 6:9] = 2  # label 2 missed
    pred[0, 11] = 3  # label 3 only predicted
    out = compute_label_metrics(ref, pred, [1, 2, 3, 4], spacing=(1.0, 1.0))
    assert set(out) == {1, 2, 3, 4} and set(out[1]) == set(METRIC_KEYS)
    assert out[1]["Dice"] == 1.0 and out[1]["HD95"] == 0.0
    assert out[2]["Dice"] == 0.0 and math.isnan(out[2]["HD95"]) and out[2]["FN"] == 9
    assert out[3]["Dice"] == 0.0 and out[3]["FP"] == 1
    assert math.isnan(out[4]["Dice"]) and out[4]["TN"] == ref.size


def test_shape_and_spacing_errors():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))


# --- reference implementations (test-only oracles) ---------------------------------------------------

CASES = [((24, 30), (0.8, 1.3)), ((14, 18, 16), (2.5, 0.7, 1.1)), ((12, 16, 20), (1.0, 1.0, 1.0))]


def _random_pairs():
    rng = np.random.default_rng(20210812)
    for shape, spacing in CASES:
        for threshold in (0.0, 0.3):
            yield blobs(rng, shape, threshold), blobs(rng, shape, threshold + 0.1), spacing


@pytest.mark.parametrize("ref,pred,spacing", list(_random_pairs()))
def test_agrees_with_monai(ref, pred, spacing):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    y, yp = (torch.from_numpy(a[None, None].astype(np.float32)) for a in (ref, pred))
    kw = {"include_background": True, "spacing": list(spacing)}
    m = binary_metrics(ref, pred, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd_m = monai_metrics.compute_hausdorff_distance(yp, y, **kw).item()
        hd95_m = monai_metrics.compute_hausdorff_distance(yp, y, percentile=95, **kw).item()
        assd_m = monai_metrics.compute_average_surface_distance(yp, y, symmetric=True, **kw).item()
        dice_m = monai_metrics.compute_dice(yp, y, include_background=True).item()
    assert m["HD"] == pytest.approx(hd_m, rel=1e-6)
    assert m["HD95"] == pytest.approx(hd95_m, rel=1e-6)
    assert m["ASSD"] == pytest.approx(assd_m, rel=1e-6)
    assert m["Dice"] == pytest.approx(dice_m, rel=1e-6)


@pytest.mark.parametrize("ref,pred,spacing", list(_random_pairs()))
def test_agrees_with_medpy(ref, pred, spacing):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    m = binary_metrics(ref, pred, spacing)
    assert m["HD"] == pytest.approx(medpy_binary.hd(pred, ref, voxelspacing=spacing), rel=1e-6)
    assert m["ASSD"] == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=spacing), rel=1e-6)
    assert m["Dice"] == pytest.approx(medpy_binary.dc(pred, ref), rel=1e-6)


def test_medpy_pooled_hd95_is_lower_for_a_far_false_positive():
    """The docs' example: a small far-away blob sets the directed 95th percentile, not the pooled one."""
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    ref = cube((40, 40), (5, 5), (15, 15))
    pred = ref.copy()
    pred[28:30, 28:30] = True  # 2x2 false positive, 4 of 40 prediction boundary pixels
    ours = hd95(ref, pred)
    pooled = medpy_binary.hd95(pred, ref)
    assert ours == pytest.approx(np.hypot(14, 14), rel=0.05)
    assert pooled < 0.5 * ours
