"""The plans: a versioned, human-readable JSON artifact read through a frozen dataclass.

Everything that training and inference must agree on lives here, so one file fully determines how a
raw volume becomes network input and how network output becomes a label map again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json, write_json

PLANS_VERSION = 1
BASE_PLANS = "monetPlans"  # every plans name starts with it; the 2D plans of all labels and channels
DEFAULT_MAX_SIZE = 256  # --max-size: the paper's 256 x 256 slices
# --context-slices: 2.5D input (slices z-1, z, z+1) is the planner's default since it measured better than 2D
# at one CPU hour on Task04 (docs/preprocessing.md, "2.5D input"); 0 gives the paper's 2D plans.
DEFAULT_CONTEXT_SLICES = 1


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
    # Which of the dataset's channels the network sees (``--channels``): ``channel_names`` are
    # ``dataset_channel_names[i] for i in source_channels``. Empty (plans written before the option) = all.
    source_channels: tuple[int, ...] = ()
    dataset_channel_names: tuple[str, ...] = ()
    # 2.5D input (``--context-slices K``): slice z is fed with slices z-K .. z+K (docs/preprocessing.md).
    context_slices: int = 0
    # ``--min-size N``: slices were resampled up so the median slice's longer side is at least N (0: never
    # upsampled, as every plan before the option). Only ``target_spacing`` carries its effect on the cache.
    min_size: int = 0

    def __post_init__(self) -> None:
        # Plans written before channel selection existed read every channel: fill that in, so such plans
        # equal the plans planned anew (same kind, same hash: their cache and models stay valid).
        if not self.dataset_channel_names:
            object.__setattr__(self, "dataset_channel_names", tuple(self.channel_names))
        if not self.source_channels:
            object.__setattr__(self, "source_channels", tuple(range(len(self.channel_names))))

    @property
    def num_source_channels(self) -> int:
        """Channels of one input case (a 4D file, or the nnU-Net per-channel files): every channel of the dataset."""
        return len(self.dataset_channel_names)

    @property
    def num_cached_channels(self) -> int:
        """Channels C of the slice cache and of :func:`~monetpipe.preprocessing.preprocessor.preprocess_image`."""
        return len(self.channel_names)

    @property
    def num_input_channels(self) -> int:
        """The network's input channels: the planned channels of ``2K + 1`` slices."""
        return len(self.channel_names) * (2 * self.context_slices + 1)

    @property
    def selects_channels(self) -> bool:
        return self.source_channels != tuple(range(self.num_source_channels))

    def input_signature(self) -> tuple:
        """What decides the network's input tensor beyond the preprocessing hash: channels and context."""
        return (tuple(self.source_channels), tuple(self.channel_names), int(self.context_slices))

    def input_flags(self) -> str:
        """The ``monet_plan_and_preprocess`` options that plan this input (``""`` for the default)."""
        flags = " --channels " + " ".join(self.channel_names) if self.selects_channels else ""
        flags += f" --min-size {self.min_size}" if self.min_size else ""
        if self.context_slices != DEFAULT_CONTEXT_SLICES:
            flags += f" --context-slices {self.context_slices}"
        return flags

    def describe_input(self) -> str:
        """The network input in words, e.g. ``FLAIR of 3 slices (z-1..z+1): 3 channel(s)``."""
        names = ", ".join(self.channel_names)
        k = self.context_slices
        where = f" of {2 * k + 1} slices (z-{k}..z+{k})" if k else ""
        return f"{names}{where}: {self.num_input_channels} channel(s)"

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
            "source_channels",
            "dataset_channel_names",
        ):
            if key in d:
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
        if self.selects_channels:  # absent otherwise, so caches made before channel selection stay current
            relevant["source_channels"] = list(self.source_channels)
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def plans_name_for(
    binary: bool = False,
    labels: list[int] | None = None,
    channels: tuple[str, ...] | None = None,
    context_slices: int = DEFAULT_CONTEXT_SLICES,
    min_size: int = 0,
    max_size: int = DEFAULT_MAX_SIZE,
) -> str:
    """``monetPlans_ctx1`` (the default: 2.5D, all labels and channels), ``monetPlans`` (2D),
    ``monetPlans_binary_ctx1``, ``monetPlans_labels_7_8_ctx1``, ``monetPlans_ch_FLAIR_ctx1``,
    ``monetPlans_s128_ctx1``, ``monetPlans_max128_ctx1``, ``monetPlans_ctx2`` or a combination in that order
    (``monetPlans_binary_ch_FLAIR_s128_ctx1``): each variant has its own plans file, cache and results
    folders, so none overwrites another. The name says what the plans hold, so plans made before 2.5D became
    the default keep their name (``monetPlans``) and meaning.

    Args:
        channels: the chosen channel names when ``--channels`` selects fewer than all (``None``: all).
        context_slices: K of 2.5D input (0: 2D; default :data:`DEFAULT_CONTEXT_SLICES`).
        min_size: ``--min-size`` (0: not given).
        max_size: ``--max-size`` (named only when it is not the default 256).
    """
    if binary and labels:
        raise MonetError("--binary and --labels cannot be combined: --labels already chooses the foreground.")
    name = BASE_PLANS
    if binary:
        name += "_binary"
    if labels:
        name += "_labels_" + "_".join(str(v) for v in labels)
    if channels:
        name += "_ch_" + "_".join(re.sub(r"[^A-Za-z0-9]", "", c) or "x" for c in channels)
    if min_size:
        name += f"_s{min_size}"
    if max_size != DEFAULT_MAX_SIZE:
        name += f"_max{max_size}"
    if context_slices:
        name += f"_ctx{context_slices}"
    return name


DEFAULT_PLANS = plans_name_for()  # what monet_plan_and_preprocess plans without flags: monetPlans_ctx1
PAPER_PLANS = plans_name_for(context_slices=0)  # the paper's 2D input: monetPlans
