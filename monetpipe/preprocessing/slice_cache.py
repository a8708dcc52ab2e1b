"""The 2D slice cache: one memory-mappable file set per case under ``<plans>_slices/``.

``<case>_data.npy``: ``(C, S, H, W)`` in the plan's ``cache_dtype``; ``<case>_seg.npy``: ``(S, H, W)``
uint8 training classes; ``<case>.json``: the properties needed to undo preprocessing, the hashes that
make the entry stale, and per-class slice indices for foreground sampling. The JSON is written last and
atomically, so its presence with matching hashes means the entry is complete and current.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monetpipe.io.atomic import read_json, write_json, write_npy
from monetpipe.io.dataset import Case, TaskDataset
from monetpipe.io.image import write_label
from monetpipe.preprocessing.fingerprint import load_training_case
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.preprocessor import preprocess_image, preprocess_label, reference_in_output_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheLayout:
    """Where one plan's cache and references live inside ``MONET_preprocessed/<Task>/``."""

    task_dir: Path
    plans_name: str

    @property
    def slices(self) -> Path:
        return self.task_dir / f"{self.plans_name}_slices"

    @property
    def gt_segmentations(self) -> Path:
        return self.task_dir / "gt_segmentations" / self.plans_name

    @property
    def plans_file(self) -> Path:
        return self.task_dir / f"{self.plans_name}.json"

    def data_file(self, case_id: str) -> Path:
        return self.slices / f"{case_id}_data.npy"

    def seg_file(self, case_id: str) -> Path:
        return self.slices / f"{case_id}_seg.npy"

    def properties_file(self, case_id: str) -> Path:
        return self.slices / f"{case_id}.json"

    def gt_file(self, case_id: str) -> Path:
        return self.gt_segmentations / f"{case_id}.nii.gz"


def case_hash(case: Case, fingerprint: dict) -> str:
    files = [str(f) for f in case.image_files] + [str(case.label_file)]
    hashes = [fingerprint["source_files"][f]["hash"] for f in files]
    return hashlib.sha1(json.dumps(hashes).encode()).hexdigest()[:16]


def is_current(layout: CacheLayout, case_id: str, source_hash: str, plans_hash: str) -> bool:
    props_file = layout.properties_file(case_id)
    if not props_file.is_file():
        return False
    try:
        props = read_json(props_file)
    except (OSError, ValueError):
        return False
    return (
        props.get("source_hash") == source_hash
        and props.get("plans_hash") == plans_hash
        and layout.data_file(case_id).is_file()
        and layout.seg_file(case_id).is_file()
        and layout.gt_file(case_id).is_file()
    )


def cache_case(args: tuple[Case, TaskDataset, Plans, CacheLayout, str]) -> dict:
    """Preprocess one training case into the cache (worker function). Returns its summary."""
    case, task, plans, layout, source_hash = args
    image, label, geometry = load_training_case(case, task)
    data, props = preprocess_image(image, geometry, plans)
    seg = preprocess_label(label, props, plans)
    write_npy(data.astype(plans.cache_dtype), layout.data_file(case.case_id))
    write_npy(seg, layout.seg_file(case.case_id))
    write_label(reference_in_output_labels(label, plans), geometry, layout.gt_file(case.case_id))
    per_slice = seg.reshape(seg.shape[0], -1)
    props.update(
        {
            "case_id": case.case_id,
            "source_hash": source_hash,
            "plans_hash": plans.preprocessing_hash(),
            "image_files": [str(f) for f in case.image_files],
            "label_file": str(case.label_file),
            "class_slices": {
                str(c): np.flatnonzero((per_slice == c).any(axis=1)).tolist() for c in plans.foreground_classes
            },
        }
    )
    write_json(props, layout.properties_file(case.case_id))
    return {"case_id": case.case_id, "num_slices": int(data.shape[1])}


def load_case(layout: CacheLayout, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Open a cached case: ``(data (C,S,H,W), seg (S,H,W), properties)``, memory-mapped by default."""
    mode = "r" if mmap else None
    data = np.load(layout.data_file(case_id), mmap_mode=mode)
    seg = np.load(layout.seg_file(case_id), mmap_mode=mode)
    return data, seg, read_json(layout.properties_file(case_id))
