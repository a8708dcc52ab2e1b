"""Leaderboard figures: per-model box plots (like the paper's Fig. 4) and contour overlays.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display needed)
and saved atomically. Folds of one ``<model>__<plans>`` are pooled: every case appears once per fold
that validated it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from monetpipe.errors import MonetError
from monetpipe.evaluation.runs import EvaluatedFold
from monetpipe.io.atomic import atomic_path
from monetpipe.io.image import read_label, read_volume
from monetpipe.results import training_budget

logger = logging.getLogger(__name__)


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def pooled_cases(results: list[EvaluatedFold]) -> dict[str, pd.DataFrame]:
    """Per ``<model>__<plans>``: per-case foreground Dice / HD95 of all its folds (column ``fold`` added)."""
    groups: dict[str, list[pd.DataFrame]] = {}
    for r in results:
        groups.setdefault(r.run.name, []).append(r.per_case.assign(fold=r.run.fold))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in groups.items()}


def _labels(names: list[str], steps: dict[str, set]) -> list[str]:
    """Tick labels: the model (or the whole run name when models repeat) and its training steps, so a
    short run is not read as a network's result."""
    models = [n.split("__", 1)[0] for n in names]
    labels = models if len(set(models)) == len(models) else [n.replace("__", "\n") for n in names]
    out = []
    for name, label in zip(names, labels, strict=True):
        known = sorted(s for s in steps.get(name, set()) if s is not None)
        out.append(f"{label}\n{'/'.join(str(s) for s in known)} steps" if known else label)
    return out


def plot_leaderboard(results: list[EvaluatedFold], path: str | os.PathLike) -> Path:
    """Box plots of per-case foreground-mean Dice and HD95 (mm, misses at the penalty) per model -> ``path`` (PNG).

    Returns:
        ``path``.
    """
    groups = pooled_cases(results)
    steps: dict[str, set] = {}
    for r in results:
        steps.setdefault(r.run.name, set()).add(training_budget(r.run.fold_dir)["train_steps"])
    names = sorted(groups, key=lambda n: -np.nan_to_num(groups[n]["dice"].mean(), nan=-1.0))
    fig, (ax_dice, ax_hd) = _figure(max(7.0, 2.4 * len(names) + 2.0), 4.5, ncols=2)
    hd_unit = " (mm)\na miss or false alarm counts as the image diagonal"
    for ax, column, title, unit in ((ax_dice, "dice", "Dice", ""), (ax_hd, "hd95", "HD95", hd_unit)):
        data = [groups[n][column].dropna().to_numpy(dtype=float) for n in names]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), _labels(names, steps), fontsize=8)
        ax.set_title(f"{title} per case{unit}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        for i, d in enumerate(data, start=1):
            ax.annotate(
                f"n={d.size}",
                (i, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    ax_dice.set_ylim(-0.02, 1.02)
    task = results[0].run.task if results else ""
    fig.suptitle(f"{task}: validation cases")
    _save(fig, path)
    logger.info("wrote %s", path)
    return Path(path)


def _slice_axis(plans: dict, spacing_zyx: tuple[float, float, float]) -> int:
    axis = plans.get("slice_axis")
    if isinstance(axis, int) and 0 <= axis < 3:
        return axis
    return int(np.argmax(spacing_zyx))  # the largest spacing, ties -> z (as the planner chooses)


def most_informative_slice(ref: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """The index along ``axis`` with the most foreground, disagreeing voxels counting twice.

    Score per slice: reference foreground + predicted foreground + voxels where the label maps differ,
    so among equally full slices the one showing the errors wins.
    """
    other = tuple(a for a in range(ref.ndim) if a != axis)
    score = (
        np.count_nonzero(ref, axis=other)
        + np.count_nonzero(pred, axis=other)
        + np.count_nonzero(ref != pred, axis=other)
    )
    return int(np.argmax(score))


#: A soft-tissue CT window (level 40 HU, width 400 HU): organs, vessels and lesions apart, fat dark, bone white.
SOFT_TISSUE_HU = (-160.0, 240.0)
#: Label colours, chosen to stay visible on a grey image (no grey, no near-black); label k takes entry k-1.
LABEL_COLORS = ("#ffd400", "#00b7ff", "#ff3da8", "#7cfc00", "#ff8c1a", "#b48cff", "#00e5c0", "#ff4040")


def display_window(image: np.ndarray, plans: dict | None = None) -> tuple[float, float]:
    """Grey-level range for showing the first channel of ``image``.

    CT (the plan's first channel normalised with the ``ct`` scheme): the soft-tissue window
    :data:`SOFT_TISSUE_HU`, widened to hold the plan's clip range (the foreground's 0.5-99.5 percentiles),
    so the segmented structure is never saturated. Otherwise (MR and anything unknown) the 1st-99th
    percentile of the image's non-zero voxels, as a radiologist's viewer would auto-window.
    """
    schemes = (plans or {}).get("normalization") or [{}]
    first = schemes[0] if isinstance(schemes[0], dict) else {}
    if first.get("scheme") == "ct":
        clip = first.get("clip") or SOFT_TISSUE_HU
        return min(SOFT_TISSUE_HU[0], float(clip[0])), max(SOFT_TISSUE_HU[1], float(clip[1]))
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def label_names(plans: dict | None) -> dict[int, str]:
    """Output label value -> class name from ``plans.json`` (``class_names`` via ``output_labels``)."""
    plans = plans or {}
    names, output = plans.get("class_names"), plans.get("output_labels")
    if not isinstance(names, list | tuple) or not isinstance(output, dict):
        return {}
    return {int(v): str(names[int(c)]) for c, v in output.items() if int(v) != 0 and int(c) < len(names)}


def _scale_bar_mm(width_mm: float) -> float:
    """The largest of 1, 2, 5 x 10^k mm that is at most a quarter of the image width."""
    target = max(width_mm / 4.0, 1e-6)
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1.0, 2.0, 5.0) if m * power <= target)


def _add_scale_bar(ax, cols: int, col_spacing_mm: float) -> None:
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _scale_bar_mm(cols * col_spacing_mm)
    text = f"{length:g} mm"
    bar = AnchoredSizeBar(
        ax.transData,
        length / col_spacing_mm,
        text,
        "lower right",
        pad=0.3,
        color="white",
        frameon=False,
        size_vertical=0,
        fontproperties=FontProperties(size=7),
    )
    ax.add_artist(bar)


def plot_overlay(
    reference_file: str | os.PathLike,
    prediction_file: str | os.PathLike,
    path: str | os.PathLike,
    image_file: str | os.PathLike | None = None,
    slice_axis: int | None = None,
    title: str = "",
    plans: dict | None = None,
) -> Path:
    """Reference contours and the prediction as a translucent fill, one colour per label, on the most
    informative slice, with a legend and a scale bar in mm.

    A fill outside its contour is a false positive, a contour with no fill inside a false negative.

    Args:
        reference_file: reference label map.
        prediction_file: predicted label map on the same grid.
        path: output PNG.
        image_file: the case's image (first channel shown, windowed by :func:`display_window`); when
            missing or on another grid, the reference itself is the background.
        slice_axis: array axis (Z, Y, X order) to slice along; default ``plans["slice_axis"]``, else the
            axis of largest spacing.
        title: figure title.
        plans: the run's ``plans.json`` content: slice axis, CT or MR window, label names.

    Returns:
        ``path``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ref, geometry = read_label(reference_file)
    pred, _ = read_label(prediction_file)
    axis = _slice_axis(
        {"slice_axis": slice_axis if slice_axis is not None else (plans or {}).get("slice_axis")}, geometry.spacing_zyx
    )
    index = most_informative_slice(ref, pred, axis)
    background, window = _overlay_background(ref, geometry, image_file, reference_file, plans)
    ref2, pred2, back2 = (np.take(a, index, axis=axis) for a in (ref, pred, background))
    rows_sp, cols_sp = [s for a, s in enumerate(geometry.spacing_zyx) if a != axis]
    fig, (ax,) = _figure(5.0, 5.6)
    origin = "upper" if axis == 0 else "lower"  # keep z pointing up in coronal / sagittal slices
    shown = {"origin": origin, "aspect": rows_sp / cols_sp, "interpolation": "nearest"}
    ax.imshow(back2, cmap="gray", vmin=window[0], vmax=window[1], **shown)
    handles = _draw_labels(ax, ref2, pred2, label_names(plans), shown)
    handles += [
        Line2D([], [], color="black", lw=1.3, label="reference: contour"),
        Patch(facecolor="0.5", alpha=0.5, label="prediction: fill"),
    ]
    _add_scale_bar(ax, back2.shape[1], cols_sp)
    ax.set_axis_off()
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(4, len(handles)),
        fontsize=7,
        frameon=False,
    )
    where = f"slice {index} of axis {'zyx'[axis]}; grey window {window[0]:g} to {window[1]:g}"
    ax.set_title(f"{title}\n{where}", fontsize=8)
    _save(fig, path)
    return Path(path)


def _overlay_background(ref: np.ndarray, geometry, image_file, reference_file, plans: dict | None):
    """The case's image (first channel) and its display window; the reference mask when there is none."""
    if image_file is not None:
        try:
            image, image_geometry = read_volume([image_file])
            if image_geometry.size == geometry.size:
                return image[0], display_window(image[0], plans)
            logger.warning("%s: grid differs from %s; overlay drawn on the reference.", image_file, reference_file)
        except MonetError as exc:
            logger.warning("overlay drawn on the reference: %s", exc)
    return (ref > 0).astype(np.float32), (0.0, 1.0)


def _draw_labels(ax, ref2: np.ndarray, pred2: np.ndarray, names: dict, shown: dict) -> list:
    """Each label's reference contour and translucent prediction fill in its colour; the legend handles."""
    from matplotlib.patches import Patch

    labels = sorted((set(np.unique(ref2).tolist()) | set(np.unique(pred2).tolist())) - {0})
    fill = np.zeros((*pred2.shape, 4), np.float32)
    handles = []
    for label in labels:
        color = LABEL_COLORS[(int(label) - 1) % len(LABEL_COLORS)]
        rgb = np.array([int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)], np.float32)
        fill[pred2 == label] = (*rgb, 0.4)
        mask = ref2 == label
        if mask.any() and not mask.all():
            # no origin= here: contour puts row i at y = i, where imshow (either origin) showed that row
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.3, zorder=3)
        name = f"{label} {names[label]}" if label in names else f"label {label}"
        handles.append(Patch(facecolor=color, edgecolor=color, label=name))
    ax.imshow(fill, **shown)
    return handles


def plot_overlays(
    results: list[EvaluatedFold],
    out_dir: str | os.PathLike,
    image_lookup: Callable[[str], Path | None] | None = None,
) -> list[Path]:
    """For every ``<model>__<plans>``: overlays of its median and its worst case (by foreground Dice).

    Files: ``out_dir/<model>__<plans>_median.png`` and ``..._worst.png``.

    Returns:
        The PNGs written.
    """
    out_dir = Path(out_dir)
    plans_of = {r.run.name: r.plans for r in results}
    written = []
    for name, cases in pooled_cases(results).items():
        scored = cases.dropna(subset=["dice"]).sort_values(["dice", "case"], kind="stable")
        scored = scored.reset_index(drop=True)
        if scored.empty:
            logger.warning("%s: no case with a defined Dice; no overlay.", name)
            continue
        picks = {"median": scored.iloc[(len(scored) - 1) // 2], "worst": scored.iloc[0]}
        axis = plans_of[name].get("slice_axis")
        for kind, row in picks.items():
            image = image_lookup(row["case"]) if image_lookup else None
            hd = "undefined" if math.isnan(row["hd95"]) else f"{row['hd95']:.2f} mm"
            if row.get("n_penalized", 0):  # a missed / falsely predicted label counts at the penalty distance
                hd += f", {int(row['n_penalized'])} label(s) missed or false alarm"
            title = f"{name} fold {row['fold']}: {kind} case {row['case']} (Dice {row['dice']:.3f}, HD95 {hd})"
            try:
                written.append(
                    plot_overlay(
                        row["reference_file"],
                        row["prediction_file"],
                        out_dir / f"{name}_{kind}.png",
                        image,
                        axis,
                        title,
                        plans_of[name],
                    )
                )
            except MonetError as exc:
                logger.warning("%s: no %s overlay: %s", name, kind, exc)
    logger.info("wrote %d overlay(s) to %s", len(written), out_dir)
    return written
