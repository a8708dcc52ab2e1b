"""How per-pair metrics become per-case, per-label and foreground statistics: no statistic rewards a miss.

Every (case, label) pair has an *outcome* (:data:`OUTCOMES`), read from the voxel counts:

* ``both_present``: reference and prediction hold the label; every metric is the per-pair one;
* ``missed``: the reference holds it, the prediction not (Dice 0);
* ``false_alarm``: the prediction holds it, the reference not (Dice 0);
* ``both_empty``: neither does (Dice and every distance NaN, excluded from every statistic and counted).

A surface distance to nothing is undefined, so ``metrics.hd95`` returns NaN for ``missed`` and
``false_alarm``; skipping those NaN when averaging would make a miss *better* than a near hit. Here
``HD``, ``HD95`` and ``ASSD`` of a ``missed`` or ``false_alarm`` pair are set to a **penalty distance**:
the diagonal of the reference image's physical extent, ``sqrt(sum((size_i * spacing_i)^2))`` mm. No two
voxels of the image are that far apart, so the penalty exceeds every distance a hit can score in the
same case, on any grid (a fixed distance such as BraTS' 373.13 mm, the diagonal of BraTS' own
240x240x155 1 mm grid, is shorter than a real error on a large CT). The per-pair metric functions are
unchanged; the penalty is only an aggregation convention, applied before any mean, median or std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from monetpipe.evaluation.metrics import DISTANCE_KEYS, METRIC_KEYS

OUTCOMES = ("both_present", "missed", "false_alarm", "both_empty")
OUTCOME_COUNT_KEYS = tuple(f"n_{o}" for o in OUTCOMES)


def image_diagonal_mm(size: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of an image's physical extent in mm: ``sqrt(sum((size_i * spacing_i)^2))``.

    Larger than the distance between any two voxel centres of the image (those are at most
    ``(size_i - 1) * spacing_i`` apart per axis), so larger than any surface distance measured in it.
    """
    return float(math.sqrt(sum((int(n) * float(s)) ** 2 for n, s in zip(size, spacing, strict=True))))


def outcome(n_ref: int, n_pred: int) -> str:
    """The outcome of one (case, label) pair from its voxel counts (see :data:`OUTCOMES`)."""
    if n_ref > 0:
        return "both_present" if n_pred > 0 else "missed"
    return "false_alarm" if n_pred > 0 else "both_empty"


def penalize(metrics: dict, penalty_mm: float) -> dict:
    """One pair's metrics with its ``outcome`` added and, for a miss or false alarm, distances = penalty.

    Args:
        metrics: :func:`monetpipe.evaluation.metrics.binary_metrics` of one pair (not modified).
        penalty_mm: the case's penalty distance (:func:`image_diagonal_mm` of the reference).

    Returns:
        A new dict: ``metrics`` plus ``"outcome"``; ``HD``, ``HD95``, ``ASSD`` replaced by ``penalty_mm``
        when the outcome is ``missed`` or ``false_alarm``.
    """
    out = dict(metrics)
    out["outcome"] = outcome(int(metrics["n_ref"]), int(metrics["n_pred"]))
    if out["outcome"] in ("missed", "false_alarm"):
        out.update({k: float(penalty_mm) for k in DISTANCE_KEYS})
    return out


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def aggregate(per_case: list[dict], labels: Sequence[int]) -> dict:
    """Statistics of penalised per-case metrics (each ``per_case[i]["metrics"][str(label)]`` from :func:`penalize`).

    Returns:
        ``mean`` (per label, NaN skipped: after the penalty only ``both_empty`` pairs, and precision /
        recall where their denominator is 0), ``foreground_mean`` (mean over labels of ``mean``, labels
        with an undefined mean skipped), ``n_undefined`` (per label and metric), ``outcomes`` (per
        label: ``n_both_present``, ``n_missed``, ``n_false_alarm``, ``n_both_empty``),
        ``foreground_outcomes`` (summed over labels), ``defined_mean`` (per label, ``HD``/``HD95``/``ASSD``
        over ``both_present`` pairs only) and ``foreground_defined_mean``.
    """
    mean: dict[str, dict] = {}
    n_undefined: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    defined: dict[str, dict] = {}
    for label in labels:
        key = str(label)
        entries = [c["metrics"][key] for c in per_case]
        mean[key], n_undefined[key] = {}, {}
        for metric in METRIC_KEYS:
            values = np.array([e[metric] for e in entries], dtype=float)
            n_undefined[key][metric] = int(np.isnan(values).sum())
            mean[key][metric] = _nanmean(values)
        kinds = [e["outcome"] for e in entries]
        outcomes[key] = {f"n_{o}": kinds.count(o) for o in OUTCOMES}
        present = [e for e in entries if e["outcome"] == "both_present"]
        defined[key] = {m: _nanmean(np.array([e[m] for e in present], dtype=float)) for m in DISTANCE_KEYS}
    foreground = {m: _nanmean(np.array([mean[str(lab)][m] for lab in labels], dtype=float)) for m in METRIC_KEYS}
    foreground_defined = {
        m: _nanmean(np.array([defined[str(lab)][m] for lab in labels], dtype=float)) for m in DISTANCE_KEYS
    }
    foreground_outcomes = {k: sum(outcomes[str(lab)][k] for lab in labels) for k in OUTCOME_COUNT_KEYS}
    return {
        "mean": mean,
        "foreground_mean": foreground,
        "n_undefined": n_undefined,
        "outcomes": outcomes,
        "foreground_outcomes": foreground_outcomes,
        "defined_mean": defined,
        "foreground_defined_mean": foreground_defined,
    }
