"""From a fingerprint to plans (docs/preprocessing.md, "The plans"): slice axis, in-plane spacing, patch
size, normalization, labels and batch size. Every decision is a small pure function so it can be read and
tested alone.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from monetpipe.errors import DatasetError, MonetError
from monetpipe.io.dataset import TaskDataset
from monetpipe.preprocessing.plans import DEFAULT_CONTEXT_SLICES, DEFAULT_MAX_SIZE, ChannelNormalization, Plans

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # every registered network downsamples at most 16x
DEFAULT_BATCH_SIZE = 32
# Rough activation memory budget for one training batch (MoNet at 256x256 uses ~70 MB/slice in fp32).
_BATCH_MEMORY_BUDGET = 8 * 2**30
_BYTES_PER_PIXEL = 70 * 2**20 / (256 * 256)


def choose_slice_axis(median_spacing_zyx: list[float]) -> int:
    """The axis of largest spacing; ties go to axis 0 (z), the first in SimpleITK's array order."""
    spacing = np.asarray(median_spacing_zyx, dtype=float)
    largest = spacing.max()
    return int(np.flatnonzero(np.isclose(spacing, largest, rtol=1e-3))[0])


def transposes(slice_axis: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    forward = (slice_axis,) + tuple(a for a in range(3) if a != slice_axis)
    backward = tuple(int(i) for i in np.argsort(forward))
    return forward, backward  # type: ignore[return-value]


def in_plane_target_spacing(
    median_spacing_hw: list[float], median_size_hw: list[float], max_size: int
) -> tuple[float, float]:
    """Median in-plane spacing, coarsened by ``max(1, largest median in-plane size / max_size)``, aspect kept."""
    factor = max(1.0, max(median_size_hw) / max_size)
    return (float(median_spacing_hw[0] * factor), float(median_spacing_hw[1] * factor))


def check_size_bounds(min_size: int, max_size: int) -> None:
    """``--min-size`` / ``--max-size``: both bound the longer in-plane side, so min must not exceed max.

    Raises:
        MonetError: a bound below 1, or ``min_size > max_size``.
    """
    if max_size < 1:
        raise MonetError(f"--max-size {max_size}: give the largest in-plane slice size in pixels, e.g. 256.")
    if min_size < 0:
        raise MonetError(f"--min-size {min_size}: give 0 (no upsampling) or a slice size in pixels, e.g. 128.")
    if min_size > max_size:
        raise MonetError(
            f"--min-size {min_size} is larger than --max-size {max_size}: both bound the longer in-plane side of "
            f"the median resampled slice. Lower --min-size or raise --max-size."
        )


def upsample_to_min_size(
    target_hw: tuple[float, float], median_resampled_hw: tuple[float, float], min_size: int
) -> tuple[float, float]:
    """``--min-size``: refine ``target_hw`` so the median slice's longer side is ``min_size`` pixels, if shorter.

    ``median_resampled_hw`` is the median slice size at ``target_hw``. Scaling every case's size by one factor
    scales the median by the same factor, so the median resampled at the returned spacing has its longer side
    at ``min_size`` (aspect kept); a median already that large is left alone (``target_hw`` returned).
    """
    longest = max(median_resampled_hw)
    if not min_size or longest >= min_size:
        return target_hw
    factor = longest / min_size
    return (float(target_hw[0] * factor), float(target_hw[1] * factor))


def round_up(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return int(math.ceil(value / multiple) * multiple)


MIN_SPACING_MM = 0.05  # finer than any CT or MR voxel: a header in metres or micrometres, or a typo
MAX_SPACING_RATIO = 10.0  # a case this far from the dataset's median spacing almost surely has a wrong header


def check_spacings(task: TaskDataset, fingerprint: dict, slice_axis: int) -> None:
    """Refuse training cases whose voxel spacing cannot be right, before they shape the plans.

    A spacing below 0.05 mm on any axis, or an in-plane spacing more than 10x away from the dataset's
    median, is refused (in-plane spacing decides the resampling, so one such case would be shrunk to a few
    pixels or blown up). A slice-axis spacing 10x off is only warned about: slices are never resampled
    along that axis.

    Raises:
        DatasetError: naming the first such case's image file, its spacing and the median.
    """
    ids = list(fingerprint["cases"])
    spacings = np.array([fingerprint["cases"][c]["spacing"] for c in ids], dtype=float)
    median = np.median(spacings, axis=0)
    ratio = np.maximum(spacings / median, median / np.maximum(spacings, 1e-12))
    in_plane = [a for a in range(3) if a != slice_axis]
    too_fine = np.flatnonzero((spacings < MIN_SPACING_MM).any(axis=1))
    off = np.flatnonzero((ratio[:, in_plane] > MAX_SPACING_RATIO).any(axis=1))
    for rows, reason in (
        (too_fine, f"is below {MIN_SPACING_MM} mm, finer than any CT or MR scanner"),
        (off, f"differs from the dataset's median {_mm(median)} by more than {MAX_SPACING_RATIO:g}x in-plane"),
    ):
        if len(rows):
            others = f" ({len(rows) - 1} other case(s) too)" if len(rows) > 1 else ""
            raise DatasetError(
                f"{_image_of(task, ids[rows[0]])}: voxel spacing (z, y, x) {_mm(spacings[rows[0]])} {reason}{others}. "
                f"The header's pixdim is probably wrong: check and fix it, or remove the case from dataset.json."
            )
    for row in np.flatnonzero(ratio[:, slice_axis] > MAX_SPACING_RATIO):
        log.warning(
            "%s: spacing along the slice axis %s differs from the median %s by more than %gx; check its header",
            _image_of(task, ids[row]),
            _mm(spacings[row]),
            _mm(median),
            MAX_SPACING_RATIO,
        )


def _mm(spacing_zyx) -> str:
    return "(" + ", ".join(f"{v:g}" for v in spacing_zyx) + ") mm"


def _image_of(task: TaskDataset, case_id: str) -> str:
    try:
        return str(task.case(case_id).image_files[0])
    except KeyError:
        return f"case {case_id}"


def plan_labels(dataset_labels: dict[int, str], binary: bool, keep: list[int] | None):
    """Return ``(label_mapping, output_labels, class_names)`` for the chosen label variant."""
    foreground = sorted(v for v in dataset_labels if v != 0)
    if keep:
        unknown = sorted(set(keep) - set(foreground))
        if unknown:
            raise MonetError(
                f"--labels {unknown} not in dataset.json labels {sorted(dataset_labels)}; choose from {foreground}."
            )
        mapping = {v: i + 1 for i, v in enumerate(keep)}
        names = [dataset_labels[0]] + [dataset_labels[v] for v in keep]
        output = {i + 1: v for i, v in enumerate(keep)}
    elif binary:
        mapping = {v: 1 for v in foreground}
        names = [dataset_labels[0], "foreground"]
        output = {1: 1}
    else:
        mapping = {v: i + 1 for i, v in enumerate(foreground)}
        names = [dataset_labels[0]] + [dataset_labels[v] for v in foreground]
        output = {i + 1: v for i, v in enumerate(foreground)}
    mapping[0] = 0
    output[0] = 0
    if len(names) < 2:
        raise MonetError("The task declares no foreground label; nothing to segment.")
    return dict(sorted(mapping.items())), dict(sorted(output.items())), tuple(names)


def select_channels(requested: list[str] | None, task: TaskDataset) -> tuple[int, ...]:
    """``--channels``: dataset channel names (case-insensitive) or indices -> sorted source channel indices.

    ``None`` or empty selects every channel.

    Raises:
        MonetError: a name or index that is not one of the dataset's channels, listing them.
    """
    names = task.channel_names
    if not requested:
        return tuple(range(len(names)))
    chosen = set()
    for item in requested:
        text = str(item).strip()
        by_name = [i for i, n in enumerate(names) if n.lower() == text.lower()]
        if by_name:
            chosen.add(by_name[0])
        elif text.isdigit() and int(text) < len(names):
            chosen.add(int(text))
        else:
            listing = ", ".join(f"{i} {n}" for i, n in enumerate(names))
            raise MonetError(
                f"--channels {text}: not a channel of {task.folder / 'dataset.json'}, whose channels are "
                f"{listing}. Give channel names or indices from that list."
            )
    return tuple(sorted(chosen))


def plan_normalization(
    task: TaskDataset, fingerprint: dict, use_nonzero_mask: bool, channels: tuple[int, ...] | None = None
) -> tuple[ChannelNormalization, ...]:
    """One scheme per planned channel (``channels``: source indices, default all)."""
    channels = tuple(range(task.num_channels)) if channels is None else channels
    schemes = []
    for c in channels:
        name, stats = task.channel_names[c], fingerprint["foreground_intensity"][c]
        if name.upper() == "CT":
            if stats["mean"] is None:
                raise MonetError("CT normalization needs foreground voxels, but no label map has any.")
            schemes.append(
                ChannelNormalization(
                    "ct", (stats["percentile_00_5"], stats["percentile_99_5"]), stats["mean"], max(stats["std"], 1e-8)
                )
            )
        else:
            schemes.append(ChannelNormalization("zscore", use_nonzero_mask=use_nonzero_mask))
    return tuple(schemes)


def plan_batch_size(patch_size: tuple[int, int], in_channels: int) -> int:
    per_sample = patch_size[0] * patch_size[1] * _BYTES_PER_PIXEL * max(1.0, in_channels / 4)
    return int(max(2, min(DEFAULT_BATCH_SIZE, _BATCH_MEMORY_BUDGET // per_sample)))


def plan_experiment(
    task: TaskDataset,
    fingerprint: dict,
    plans_name: str,
    binary: bool = False,
    labels: list[int] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    channels: tuple[int, ...] | None = None,
    context_slices: int = DEFAULT_CONTEXT_SLICES,
    min_size: int = 0,
) -> Plans:
    """Plan a configuration for ``task`` from its fingerprint (docs/preprocessing.md, "The plans").

    Args:
        task: the loaded task.
        fingerprint: from :func:`compute_fingerprint`.
        plans_name: e.g. ``monetPlans_ctx1`` / ``monetPlans_binary_ctx1`` (:func:`plans_name_for`).
        binary: merge every foreground label into one class.
        labels: keep only these label values, renumbered 1..k (the rest background).
        max_size: largest in-plane size (pixels) of a resampled slice.
        channels: the dataset channels the network sees (:func:`select_channels`; default all).
        context_slices: K of 2.5D input: the network sees slices z-K .. z+K (0: 2D).
        min_size: resample slices up (finer in-plane spacing) until the median slice's longer side is at least
            this many pixels (0: never upsample; see :func:`upsample_to_min_size`).
    """
    check_size_bounds(min_size, max_size)
    if context_slices < 0:
        raise MonetError(f"--context-slices {context_slices}: give 0 (2D) or a positive number of slices per side.")
    channels = tuple(range(task.num_channels)) if channels is None else tuple(channels)
    cases = list(fingerprint["cases"].values())
    spacing = np.median([c["spacing"] for c in cases], axis=0)
    slice_axis = choose_slice_axis(list(spacing))
    check_spacings(task, fingerprint, slice_axis)
    forward, backward = transposes(slice_axis)
    cropped = np.array([c["shape_after_crop"] for c in cases], dtype=float)[:, forward]
    raw = np.array([c["shape"] for c in cases], dtype=float)[:, forward]
    sp = np.array([c["spacing"] for c in cases], dtype=float)[:, forward]
    median_spacing_hw = list(np.median(sp[:, 1:], axis=0))
    target = in_plane_target_spacing(median_spacing_hw, list(np.median(cropped[:, 1:], axis=0)), max_size)
    resampled = cropped.copy()
    resampled[:, 1:] = cropped[:, 1:] * sp[:, 1:] / np.asarray(target)
    if min_size:
        target = upsample_to_min_size(target, tuple(np.median(resampled[:, 1:], axis=0)), min_size)
        resampled[:, 1:] = cropped[:, 1:] * sp[:, 1:] / np.asarray(target)
    median_shape = tuple(int(round(v)) for v in np.median(resampled, axis=0))
    patch = (round_up(median_shape[1]), round_up(median_shape[2]))
    # nnU-Net's rule: normalize inside the nonzero mask when cropping shrinks the median volume by >= 25 %.
    shrink = np.median(np.prod(cropped, axis=1) / np.prod(raw, axis=1))
    mapping, output, names = plan_labels(task.labels, binary, labels)
    num_fg = len(names) - 1
    return Plans(
        plans_name=plans_name,
        task=task.folder.name,
        slice_axis=slice_axis,
        transpose_forward=forward,
        transpose_backward=backward,
        target_spacing=target,
        patch_size=patch,
        median_shape=median_shape,  # type: ignore[arg-type]
        crop_to_nonzero=True,
        normalization=plan_normalization(task, fingerprint, bool(shrink <= 0.75), channels),
        channel_names=tuple(task.channel_names[c] for c in channels),
        dataset_labels=dict(task.labels),
        label_mapping=mapping,
        output_labels=output,
        class_names=names,
        num_classes=1 if num_fg == 1 else num_fg + 1,
        batch_size=plan_batch_size(patch, len(channels) * (2 * context_slices + 1)),
        max_size=max_size,
        source_channels=channels,
        dataset_channel_names=tuple(task.channel_names),
        context_slices=int(context_slices),
        min_size=int(min_size),
    )
