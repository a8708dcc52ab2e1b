"""Training hyperparameters as data: one frozen dataclass, every field a ``monet_train`` flag.

The defaults are the paper's recipe (DESIGN.md §6). A run writes the config it used, plus the values
resolved at run time (device, batch size per rank, iterations per epoch, the inner validation cases),
to ``fold_<k>/config.json``, so a run folder says exactly how its checkpoints were made.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from monetpipe.errors import MonetError

LOSSES = ("dice", "dice_ce")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (see docs/training.md for each field).

    ``None`` means "resolve at run time": ``batch_size`` from the plans, ``num_workers`` and
    ``num_threads`` from the machine.
    """

    epochs: int = 100
    iters_per_epoch: int = 250  # cap; an epoch is one pass over the training slices
    batch_size: int | None = None  # global (split across DDP ranks); None: the plans' batch size
    lr: float = 5e-4
    loss: str = "dice"
    device: str = "auto"
    num_workers: int | None = None
    num_threads: int | None = None
    seed: int = 12345
    amp: bool = False
    channels_last: bool | None = None  # None: on for CPU training (measured faster there)
    deterministic: bool = False
    # schedule (paper: Keras ReduceLROnPlateau / EarlyStopping on the inner validation loss)
    lr_factor: float = 0.1
    lr_patience: int = 2
    early_stop_patience: int = 10
    inner_val_fraction: float = 0.1
    # sampling and augmentation
    foreground_fraction: float = 1 / 3
    rotation_deg: float = 10.0
    scale: float = 0.25
    shift: float = 0.2
    mirror: bool = False
    output_prior: bool = True  # start the output bias at the sampled class frequencies (not in the paper)
    # validation
    val_batch_size: int = 32
    pretrained_weights: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs must be >= 1, got {self.epochs}")
        if self.iters_per_epoch < 1:
            problems.append(f"--iters-per-epoch must be >= 1, got {self.iters_per_epoch}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            problems.append(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.device not in DEVICES:
            problems.append(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.num_workers is not None and self.num_workers < 0:
            problems.append(f"--num-workers must be >= 0, got {self.num_workers}")
        if not 0 < self.inner_val_fraction < 1:
            problems.append(f"--inner-val-fraction must lie in (0, 1), got {self.inner_val_fraction}")
        if not 0 <= self.foreground_fraction <= 1:
            problems.append(f"--foreground-fraction must lie in [0, 1], got {self.foreground_fraction}")
        if not 0 <= self.scale < 1 or not 0 <= self.shift < 0.5 or self.rotation_deg < 0:
            problems.append("--scale must lie in [0, 1), --shift in [0, 0.5) and --rotation must be >= 0")
        if problems:
            raise MonetError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_changes(self, **changes) -> TrainConfig:
        return replace(self, **changes)


def available_cpus() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup-pinned CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` > ``mps`` > ``cpu``; an explicit device that is absent is an error."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MonetError("--device cuda: no CUDA GPU is visible to PyTorch. Use --device cpu (or auto).")
    if name == "mps" and not has_mps:
        raise MonetError("--device mps: Apple's MPS backend is not available. Use --device cpu (or auto).")
    return name


def resolve_channels_last(requested: bool | None, device: str) -> bool:
    """channels_last memory format: on by default on CPU, where it makes MoNet and U-Net-16 training about
    20 % cheaper (oneDNN's NHWC kernels; neutral for U-Net-64); off elsewhere unless asked for."""
    return (device == "cpu") if requested is None else requested


def resolve_num_workers(requested: int | None, device: str, ranks_per_node: int = 1) -> int:
    """Background augmentation processes per rank.

    On a GPU the loader must keep up with the network, so use most cores; on a CPU the network
    itself needs the cores and one background worker is enough to hide the augmentation.
    """
    if requested is not None:
        return requested
    cpus = max(1, available_cpus() // ranks_per_node)
    if device == "cpu":
        return 1
    return max(1, min(8, cpus - 1))


def resolve_num_threads(requested: int | None, ranks_per_node: int = 1) -> int:
    """Torch intra-op threads per rank: the available cores shared among the ranks on this node."""
    if requested is not None:
        return max(1, requested)
    return max(1, available_cpus() // ranks_per_node)
