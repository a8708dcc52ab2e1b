"""No statistic in summary.json or a leaderboard row rewards a miss: seeded random multi-label cases.

Each seed draws three cases (labels 1..3 as boxes, some labels absent, anisotropic spacing), writes them as
references and scores predictions made from them by: removing a structure, shifting it by 1..5 voxels,
eroding it, adding a far false positive. Compared with a better prediction, no Dice statistic may rise
and no HD / HD95 / ASSD statistic may fall. Exempt by design: standard deviations (not monotone in any
value) and ``defined_mean`` (over pairs where both masks are present; reported beside the miss counts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from monetpipe.evaluation.evaluator import evaluate_folders
from monetpipe.evaluation.leaderboard import EvaluatedFold, FoldRun, leaderboard_row, per_case_foreground
from monetpipe.io.image import Geometry, write_label
from monetpipe.results import ModelFolder

LABELS = (1, 2, 3)
N_CASES = 3
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, Geometry]:
    """A label map of up to three boxes (later ones may cover earlier ones) on an anisotropic grid."""
    shape = (int(rng.integers(5, 9)), int(rng.integers(14, 22)), int(rng.integers(14, 22)))
    spacing_xyz = (float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.5, 1.2)), float(rng.uniform(1.5, 4.0)))
    geometry = Geometry(shape[::-1], spacing_xyz, (0.0, 0.0, 0.0), IDENTITY)
    while True:
        a = np.zeros(shape, np.uint8)
        for label in LABELS:
            if rng.random() < 0.2:  # absent from this case: "both empty" unless falsely predicted
                continue
            size = [int(rng.integers(2, 4)), int(rng.integers(3, 8)), int(rng.integers(3, 8))]
            lo = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size, strict=True)]
            a[tuple(slice(b, b + s) for b, s in zip(lo, size, strict=True))] = label
        if a.any():
            return a, geometry


def remove(pred: np.ndarray, label: int) -> np.ndarray:
    return np.where(pred == label, 0, pred).astype(np.uint8)


def shift(pred: np.ndarray, label: int, k: int, axis: int) -> np.ndarray:
    """Move ``label`` by ``k`` voxels (sign = direction) along ``axis``, over background only (other labels
    keep their voxels, so only this label's scores change); what leaves the image is lost."""
    mask = pred == label
    moved = np.zeros_like(mask)
    n = mask.shape[axis]
    src, dst = [slice(None)] * 3, [slice(None)] * 3
    src[axis], dst[axis] = (slice(0, n - k), slice(k, n)) if k > 0 else (slice(-k, n), slice(0, n + k))
    moved[tuple(dst)] = mask[tuple(src)]
    out = remove(pred, label)
    out[moved & (out == 0)] = label
    return out


def erode(pred: np.ndarray, label: int) -> np.ndarray:
    mask = pred == label
    out = pred.copy()
    out[mask & ~ndimage.binary_erosion(mask)] = 0  # a thin structure vanishes: a miss
    return out


def far_false_positive(pred: np.ndarray, label: int) -> np.ndarray:
    """A 1x2x2 blob of ``label`` in the image corner farthest from the label (or any corner if absent)."""
    centre = np.argwhere(pred == label).mean(axis=0) if (pred == label).any() else np.zeros(3)
    corners = [np.array([z, y, x]) for z in (0, 1) for y in (0, 1) for x in (0, 1)]
    z, y, x = max(corners, key=lambda c: float(np.abs(c * (np.array(pred.shape) - 1) - centre).sum()))
    out = pred.copy()
    zs = slice(0, 1) if z == 0 else slice(-1, None)
    ys = slice(0, 2) if y == 0 else slice(-2, None)
    xs = slice(0, 2) if x == 0 else slice(-2, None)
    out[zs, ys, xs] = label
    return out


def random_perturbation(rng: np.random.Generator, pred: np.ndarray, label: int) -> tuple[str, np.ndarray]:
    kind = ("remove", "shift", "erode", "far_fp")[int(rng.integers(4))]
    if kind == "remove":
        return kind, remove(pred, label)
    if kind == "shift":
        k = int(rng.integers(1, 6)) * (1 if rng.random() < 0.5 else -1)
        return f"shift {k} axis {(axis := int(rng.integers(3)))}", shift(pred, label, k, axis)
    if kind == "erode":
        return kind, erode(pred, label)
    return kind, far_false_positive(pred, label)


class Scorer:
    """Writes a prediction set beside fixed references; returns the written summary.json and leaderboard row."""

    def __init__(self, root: Path, refs: list[tuple[np.ndarray, Geometry]]) -> None:
        self.root, self.refs, self.count = root, refs, 0
        for i, (ref, geometry) in enumerate(refs):
            write_label(ref, geometry, root / "ref" / f"case_{i}.nii.gz")

    def __call__(self, preds: list[np.ndarray]) -> tuple[dict, dict]:
        self.count += 1
        folder = self.root / f"pred_{self.count}"
        for i, (pred, (_, geometry)) in enumerate(zip(preds, self.refs, strict=True)):
            write_label(pred, geometry, folder / f"case_{i}.nii.gz")
        evaluate_folders(self.root / "ref", folder, labels=LABELS, num_processes=1, progress=False)
        summary = json.loads((folder / "summary.json").read_text())
        run = FoldRun(ModelFolder(self.root / "results" / "Task900_Prop" / "monet__monetPlans"), "0")
        row = leaderboard_row(EvaluatedFold(run, summary, per_case_foreground(summary), {}), {}, None)
        return summary, row


def statistics(summary: dict, row: dict) -> dict[tuple, tuple[float | None, bool]]:
    """Every miss-proof statistic: name -> (value or None, higher is better)."""
    out: dict[tuple, tuple[float | None, bool]] = {}
    for metric in ("Dice", "IoU", "HD", "HD95", "ASSD"):
        better_high = metric in ("Dice", "IoU")
        out[("foreground_mean", metric)] = (summary["foreground_mean"][metric], better_high)
        for label, values in summary["mean"].items():
            out[("mean", label, metric)] = (values[metric], better_high)
        for i, case in enumerate(summary["metric_per_case"]):
            for label, values in case["metrics"].items():
                out[("case", i, label, metric)] = (values[metric], better_high)
    for column in ("dice_mean", "dice_median", "hd95_mean", "hd95_median"):
        out[("leaderboard", column)] = (row[column], column.startswith("dice"))
    for label in LABELS:
        out[("leaderboard", f"dice_{label}")] = (row[f"dice_{label}"], True)
        out[("leaderboard", f"hd95_{label}")] = (row[f"hd95_{label}"], False)
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v, h) for k, (v, h) in out.items()}


def assert_no_better(worse: tuple[dict, dict], better: tuple[dict, dict], what: str) -> None:
    """No statistic of ``worse`` is better than that of ``better`` (undefined = not scored: only from undefined)."""
    got, ref = statistics(*worse), statistics(*better)
    for key, (value, higher_is_better) in ref.items():
        new = got[key][0]
        if value is None:
            continue  # nothing was scored before: any value (0 Dice, penalty distance) is no improvement
        assert new is not None, f"{what}: {key} became undefined (was {value})"
        tolerance = 1e-9 * max(1.0, abs(value))
        if higher_is_better:
            assert new <= value + tolerance, f"{what}: {key} rose from {value} to {new}"
        else:
            assert new >= value - tolerance, f"{what}: {key} fell from {value} to {new}"


def check_seed(seed: int, root: Path) -> None:
    rng = np.random.default_rng(seed)
    refs = [random_case(rng) for _ in range(N_CASES)]
    score = Scorer(root, refs)
    truth = [r for r, _ in refs]
    perfect = score(truth)

    # 1. one perturbation of a perfect prediction never scores better than perfect
    case, label = int(rng.integers(N_CASES)), int(rng.choice(LABELS))
    kind, changed = random_perturbation(rng, truth[case], label)
    single = [changed if i == case else t for i, t in enumerate(truth)]
    assert_no_better(score(single), perfect, f"seed {seed}: {kind} of label {label} in case {case}")

    # 2. a near hit (1-3 perturbations, any case and label) never scores worse than it with a structure missed
    near = [t.copy() for t in truth]
    for _ in range(int(rng.integers(1, 4))):
        c, lab = int(rng.integers(N_CASES)), int(rng.choice(LABELS))
        near[c] = random_perturbation(rng, near[c], lab)[1]
    near_score = score(near)
    present = [(c, lab) for c in range(N_CASES) for lab in LABELS if (truth[c] == lab).any()]
    c, lab = present[int(rng.integers(len(present)))]
    missed = [remove(p, lab) if i == c else p for i, p in enumerate(near)]
    missed_score = score(missed)
    assert_no_better(missed_score, near_score, f"seed {seed}: label {lab} of case {c} missed after a near hit")
    assert missed_score[0]["outcomes"][str(lab)]["n_missed"] >= 1

    # 3. removing a structure scores strictly worse in HD95 than shifting it by 3 voxels
    axis = int(rng.integers(1, 3))  # in-plane: a 3-voxel shift keeps part of the structure in the image
    shifted = score([shift(t, lab, 3, axis) if i == c else t for i, t in enumerate(truth)])
    removed = score([remove(t, lab) if i == c else t for i, t in enumerate(truth)])
    assert_no_better(removed, shifted, f"seed {seed}: label {lab} of case {c} removed vs shifted by 3")
    if shifted[0]["metric_per_case"][c]["metrics"][str(lab)]["outcome"] == "both_present":
        for stats in (
            lambda s: s[0]["mean"][str(lab)]["HD95"],
            lambda s: s[0]["foreground_mean"]["HD95"],
            lambda s: s[1]["hd95_mean"],
            lambda s: s[1][f"hd95_{lab}"],
        ):
            assert stats(removed) > stats(shifted), f"seed {seed}: a miss does not score worse than a shift"
        assert removed[1]["n_missed"] == shifted[1]["n_missed"] + 1


@pytest.mark.parametrize("seeds", [range(0, 12)])
def test_a_miss_never_scores_better_than_a_near_hit(tmp_path, seeds):
    for seed in seeds:
        check_seed(seed, tmp_path / f"seed_{seed}")


@pytest.mark.slow
def test_a_miss_never_scores_better_than_a_near_hit_many_seeds(tmp_path):
    for seed in range(12, 200):
        check_seed(seed, tmp_path / f"seed_{seed}")


def test_the_penalty_exceeds_every_distance_in_the_image(tmp_path):
    """Two single voxels in opposite corners are as far apart as a case allows; a miss still costs more."""
    ref, pred = np.zeros((4, 9, 7), np.uint8), np.zeros((4, 9, 7), np.uint8)
    ref[0, 0, 0], pred[-1, -1, -1] = 1, 1
    geometry = Geometry((7, 9, 4), (0.7, 1.1, 3.0), (0.0, 0.0, 0.0), IDENTITY)
    score = Scorer(tmp_path, [(ref, geometry)])
    far = score([pred])[0]["metric_per_case"][0]["metrics"]["1"]
    missed = score([np.zeros_like(pred)])[0]["metric_per_case"][0]["metrics"]["1"]
    corner_to_corner = math.sqrt((6 * 0.7) ** 2 + (8 * 1.1) ** 2 + (3 * 3.0) ** 2)
    assert far["outcome"] == "both_present" and far["HD95"] == pytest.approx(corner_to_corner)
    assert missed["outcome"] == "missed" and missed["HD95"] > far["HD95"]
    assert missed["HD95"] == pytest.approx(math.sqrt((7 * 0.7) ** 2 + (9 * 1.1) ** 2 + (4 * 3.0) ** 2))
