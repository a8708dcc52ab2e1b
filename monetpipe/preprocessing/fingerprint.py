"""The dataset fingerprint: what the planner needs to know about every case, computed once.

Per case: spacing, shape, shape after cropping to the nonzero region, channel count, label values
present, and a content hash of each source file (so a changed file rebuilds exactly its cache entry).
Per channel: foreground intensity statistics from voxels where the label is > 0.
Reading a case also validates it; every problem names the file and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from monetpipe.errors import DatasetError
from monetpipe.io.dataset import Case, TaskDataset
from monetpipe.io.image import Geometry, read_label, read_volume
from monetpipe.parallel import map_cases

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
_SAMPLES_PER_CASE = 10_000


def file_hash(path: Path, cache: dict | None = None) -> str:
    """Content hash of a file; reuses ``cache[str(path)]`` when its size and mtime are unchanged."""
    st = os.stat(path)
    key = str(path)
    if cache and key in cache and cache[key]["size"] == st.st_size and cache[key]["mtime_ns"] == st.st_mtime_ns:
        return cache[key]["hash"]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_source_hash(case: Case, hash_cache: dict | None = None) -> dict[str, dict]:
    files = list(case.image_files) + ([case.label_file] if case.label_file else [])
    out = {}
    for f in files:
        st = os.stat(f)
        out[str(f)] = {"hash": file_hash(f, hash_cache), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((z0, z1), (y0, y1), (x0, x1))`` of voxels nonzero in any channel (whole image if none)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def load_training_case(case: Case, task: TaskDataset) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read and validate one training case: image ``(C, Z, Y, X)`` float32, label ``(Z, Y, X)`` uint8."""
    image, geometry = read_volume(case.image_files)
    if image.shape[0] != task.num_channels:
        raise DatasetError(
            f"{case.image_files[0]}: has {image.shape[0]} channel(s) but dataset.json declares "
            f"{task.num_channels} ({', '.join(task.channel_names)}). Fix 'modality'/'channel_names' or the image."
        )
    label, label_geometry = read_label(case.label_file)
    if (diff := geometry.mismatch(label_geometry)) is not None:
        raise DatasetError(
            f"{case.label_file}: geometry differs from its image {case.image_files[0].name} ({diff}). "
            f"Resample the label onto the image grid (nearest neighbour)."
        )
    present = np.unique(label)
    undeclared = sorted(set(int(v) for v in present) - set(task.labels))
    if undeclared:
        raise DatasetError(
            f"{case.label_file}: label value(s) {undeclared} are not declared in dataset.json 'labels' "
            f"({sorted(task.labels)}). Declare them or fix the label map."
        )
    return image, label, geometry


def _fingerprint_case(args: tuple[Case, TaskDataset, int]) -> dict:
    case, task, seed = args
    image, label, geometry = load_training_case(case, task)
    box = nonzero_bbox(image)
    fg = label > 0
    rng = np.random.default_rng(seed)
    samples = []
    for c in range(image.shape[0]):
        values = image[c][fg]
        if values.size > _SAMPLES_PER_CASE:
            values = rng.choice(values, _SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float32))
    return {
        "case_id": case.case_id,
        "spacing": list(geometry.spacing_zyx),
        "shape": list(geometry.shape_zyx),
        "shape_after_crop": [b - a for a, b in box],
        "num_channels": int(image.shape[0]),
        "labels_present": [int(v) for v in np.unique(label)],
        "_samples": samples,
    }


def compute_fingerprint(task: TaskDataset, num_processes: int = 2, previous: dict | None = None) -> dict:
    """Fingerprint every training case of ``task`` (validating it on the way).

    Args:
        task: the loaded task folder.
        num_processes: worker processes.
        previous: an earlier fingerprint; when every source file's hash is unchanged it is returned as is.

    Returns:
        The fingerprint as a JSON-ready dict (see ``docs/preprocessing.md``).
    """
    hash_cache = (previous or {}).get("source_files", {})
    sources: dict[str, dict] = {}
    for case in task.training:
        sources.update(case_source_hash(case, hash_cache))
    if previous and previous.get("version") == FINGERPRINT_VERSION and _same_sources(previous, sources):
        log.info("Fingerprint is up to date (no source file changed).")
        return previous

    jobs = [(case, task, i) for i, case in enumerate(task.training)]
    per_case = map_cases(_fingerprint_case, jobs, num_processes, desc="Fingerprint")
    channels = []
    for c in range(task.num_channels):
        values = np.concatenate([r["_samples"][c] for r in per_case])
        channels.append(_intensity_stats(values))
    for r in per_case:
        del r["_samples"]
    return {
        "version": FINGERPRINT_VERSION,
        "task": task.folder.name,
        "dialect": task.dialect,
        "channel_names": list(task.channel_names),
        "labels": {str(k): v for k, v in task.labels.items()},
        "num_cases": len(per_case),
        "foreground_intensity": channels,
        "cases": {r.pop("case_id"): r for r in per_case},
        "source_files": sources,
    }


def _same_sources(previous: dict, sources: dict) -> bool:
    old = previous.get("source_files", {})
    return set(old) == set(sources) and all(old[k]["hash"] == v["hash"] for k, v in sources.items())


def _intensity_stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {k: None for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
        "num_samples": int(values.size),
    }
