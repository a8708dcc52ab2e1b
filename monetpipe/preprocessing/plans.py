"""The plans: a versioned, human-readable JSON artifact read through a frozen dataclass.

Everything that training and inference must agree on lives here, so one file fully determines how a
raw volume becomes network input and how network output becomes a label map again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json, write_json

PLANS_VERSION = 1
DEFAULT_PLANS = "monetPlans"


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalized.

    ``scheme`` is ``"ct"`` (clip to ``clip`` then ``(x - mean) / std`` with dataset-wide foreground
    statistics) or ``"zscore"`` (per volume; inside the nonzero mask when ``use_nonzero_mask``).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    use_nonzero_mask: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> ChannelNormalization:
        clip = d.get("clip")
        return cls(
            d["scheme"],
            tuple(clip) if clip is not None else None,
            d.get("mean"),
            d.get("std"),
            bool(d.get("use_nonzero_mask", False)),
        )


@dataclass(frozen=True)
class Plans:
    """A configuration planned from a dataset fingerprint (see ``docs/preprocessing.md``).

    Axis conventions: arrays are SimpleITK's ``(Z, Y, X)``; ``transpose_forward`` reorders them so the
    slice axis comes first, giving ``(S, H, W)``; ``transpose_backward`` undoes it.
    """

    plans_name: str
    task: str
    slice_axis: int
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    target_spacing: tuple[float, float]  # in-plane (H, W) spacing in mm after resampling
    patch_size: tuple[int, int]  # (H, W), a multiple of 16 so every network fits
    median_shape: tuple[int, int, int]  # (S, H, W) after cropping and resampling
    crop_to_nonzero: bool
    normalization: tuple[ChannelNormalization, ...]
    channel_names: tuple[str, ...]
    dataset_labels: dict[int, str]  # every label of dataset.json
    label_mapping: dict[int, int]  # original label value -> training class index (absent -> 0)
    output_labels: dict[int, int]  # training class index -> label value written in predictions
    class_names: tuple[str, ...]  # name per training class, background first
    num_classes: int  # network output channels: 1 (sigmoid) for one foreground class, else classes incl. bg
    batch_size: int
    max_size: int
    cache_dtype: str = "float16"
    version: int = PLANS_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_classes(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.class_names)))

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_input_channels"] = self.num_input_channels
        # JSON keys are strings; make that explicit rather than implicit.
        for key in ("dataset_labels", "label_mapping", "output_labels"):
            d[key] = {str(k): v for k, v in d[key].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plans:
        version = d.get("version", 0)
        if version > PLANS_VERSION:
            raise MonetError(
                f"These plans are version {version}; this monetpipe reads up to {PLANS_VERSION}. Upgrade monetpipe."
            )
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["normalization"] = tuple(ChannelNormalization.from_dict(n) for n in d["normalization"])
        for key in (
            "transpose_forward",
            "transpose_backward",
            "target_spacing",
            "patch_size",
            "median_shape",
            "channel_names",
            "class_names",
        ):
            kw[key] = tuple(d[key])
        kw["dataset_labels"] = {int(k): v for k, v in d["dataset_labels"].items()}
        kw["label_mapping"] = {int(k): int(v) for k, v in d["label_mapping"].items()}
        kw["output_labels"] = {int(k): int(v) for k, v in d["output_labels"].items()}
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        if not path.is_file():
            raise MonetError(f"{path}: plans not found. Run monet_plan_and_preprocess for this task first.")
        try:
            return cls.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise MonetError(
                f"{path}: not a valid monetpipe plans file ({exc!r}). Re-run monet_plan_and_preprocess."
            ) from None

    def preprocessing_hash(self) -> str:
        """Hash of every field that changes the cached slices; a change invalidates the cache."""
        d = self.to_dict()
        relevant = {
            k: d[k]
            for k in (
                "slice_axis",
                "transpose_forward",
                "target_spacing",
                "crop_to_nonzero",
                "normalization",
                "label_mapping",
                "cache_dtype",
                "version",
            )
        }
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def plans_name_for(binary: bool = False, labels: list[int] | None = None) -> str:
    """``monetPlans``, ``monetPlans_binary`` or ``monetPlans_labels_7_8``: each variant has its own cache."""
    if binary and labels:
        raise MonetError("--binary and --labels cannot be combined: --labels already chooses the foreground.")
    if binary:
        return f"{DEFAULT_PLANS}_binary"
    if labels:
        return f"{DEFAULT_PLANS}_labels_" + "_".join(str(v) for v in labels)
    return DEFAULT_PLANS
