"""The dataset fingerprint: what the planner needs to know about every case, computed once.

Per case: spacing, shape, shape after cropping to the nonzero region, channel count, label values
present, and a content hash of each source file (so a changed file rebuilds exactly its cache entry).
Per channel: foreground intensity statistics from voxels where the label is > 0.
Reading a case also validates it; every problem names the file and the fix.

The fingerprint is incremental: each case's intensity samples are kept beside it (one ``.npy`` per case in
``dataset_fingerprint_samples/``, drawn with a seed made from the case id), so when files change only the
cases they belong to are read again, and the statistics are pooled from the stored samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from monetpipe.errors import DatasetError
from monetpipe.io.atomic import atomic_path
from monetpipe.io.dataset import Case, TaskDataset
from monetpipe.io.image import Geometry, read_label, read_volume
from monetpipe.parallel import map_cases

log = logging.getLogger(__name__)

# 2: the sampling seed comes from the case id (it was the case's index), and samples are stored per case.
FINGERPRINT_VERSION = 2
_SAMPLES_PER_CASE = 10_000
SAMPLES_FOLDER = "dataset_fingerprint_samples"


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


def case_seed(case_id: str) -> int:
    """The sampling seed of a case: from its id, so adding or removing other cases leaves it unchanged."""
    return int.from_bytes(hashlib.blake2b(case_id.encode(), digest_size=8).digest(), "little")


def _fingerprint_case(args: tuple[Case, TaskDataset]) -> dict:
    case, task = args
    image, label, geometry = load_training_case(case, task)
    box = nonzero_bbox(image)
    fg = label > 0
    # The same voxels in every channel, so a case's samples are one (channels, n) array.
    samples = np.stack([image[c][fg] for c in range(image.shape[0])]).astype(np.float32, copy=False)
    if samples.shape[1] > _SAMPLES_PER_CASE:
        rng = np.random.default_rng(case_seed(case.case_id))
        samples = samples[:, np.sort(rng.choice(samples.shape[1], _SAMPLES_PER_CASE, replace=False))]
    return {
        "case_id": case.case_id,
        "spacing": list(geometry.spacing_zyx),
        "shape": list(geometry.shape_zyx),
        "shape_after_crop": [b - a for a, b in box],
        "num_channels": int(image.shape[0]),
        "labels_present": [int(v) for v in np.unique(label)],
        "_samples": samples,
    }


def compute_fingerprint(
    task: TaskDataset,
    num_processes: int = 2,
    previous: dict | None = None,
    samples_dir: Path | None = None,
) -> dict:
    """Fingerprint every training case of ``task`` (validating it on the way).

    Args:
        task: the loaded task folder.
        num_processes: worker processes.
        previous: an earlier fingerprint; when every source file's hash is unchanged it is returned as is.
        samples_dir: where each case's intensity samples are kept (``<case_id>.npy``). With ``previous``,
            a case whose files are unchanged and whose samples are stored there is not read again; only
            new and changed cases are. Without it every case is read.

    Returns:
        The fingerprint as a JSON-ready dict (see ``docs/preprocessing.md``).
    """
    hash_cache = (previous or {}).get("source_files", {})
    sources: dict[str, dict] = {}
    case_sources: dict[str, dict[str, dict]] = {}
    for case in task.training:
        case_sources[case.case_id] = case_source_hash(case, hash_cache)
        sources.update(case_sources[case.case_id])
    current = previous is not None and previous.get("version") == FINGERPRINT_VERSION
    if current and _same_sources(previous, sources):
        log.info("Fingerprint is up to date (no source file changed).")
        return previous

    per_case: dict[str, dict] = {}
    samples: dict[str, np.ndarray] = {}
    if current and samples_dir is not None:
        for case in task.training:
            if (kept := _reusable(case.case_id, case_sources[case.case_id], previous, samples_dir)) is not None:
                per_case[case.case_id], samples[case.case_id] = kept
    jobs = [(case, task) for case in task.training if case.case_id not in per_case]
    if per_case:
        log.info("Fingerprint: %d case(s) unchanged, reading %d new or changed", len(per_case), len(jobs))
    for r in map_cases(_fingerprint_case, jobs, num_processes, desc="Fingerprint"):
        case_id, case_samples = r.pop("case_id"), r.pop("_samples")
        per_case[case_id], samples[case_id] = r, case_samples
        if samples_dir is not None:
            samples_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(samples_dir / f"{case_id}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, case_samples)
    if samples_dir is not None and samples_dir.is_dir():
        for stale in set(p.stem for p in samples_dir.glob("*.npy")) - set(per_case):
            (samples_dir / f"{stale}.npy").unlink(missing_ok=True)
    order = [case.case_id for case in task.training]
    channels = [_intensity_stats(np.concatenate([samples[i][c] for i in order])) for c in range(task.num_channels)]
    return {
        "version": FINGERPRINT_VERSION,
        "task": task.folder.name,
        "dialect": task.dialect,
        "channel_names": list(task.channel_names),
        "labels": {str(k): v for k, v in task.labels.items()},
        "num_cases": len(order),
        "foreground_intensity": channels,
        "cases": {i: per_case[i] for i in order},
        "source_files": sources,
    }


def _reusable(
    case_id: str, files: dict[str, dict], previous: dict, samples_dir: Path
) -> tuple[dict, np.ndarray] | None:
    """The previous entry and stored samples of a case whose files all have their previous hashes, else None."""
    old_files = previous.get("source_files", {})
    if case_id not in previous.get("cases", {}) or any(
        old_files.get(f, {}).get("hash") != v["hash"] for f, v in files.items()
    ):
        return None
    try:
        stored = np.load(samples_dir / f"{case_id}.npy", allow_pickle=False)
    except (OSError, ValueError):  # missing or unreadable: read the case again
        return None
    entry = previous["cases"][case_id]
    if stored.ndim != 2 or stored.shape[0] != entry.get("num_channels"):
        return None
    return dict(entry), stored


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
