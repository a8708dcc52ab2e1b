"""Training hyperparameters as data: one frozen dataclass whose fields are the ``monet_train`` flags.

Each field is declared once, with its default, its help text and its flag (:func:`setting`);
``monet_train``'s parser is generated from these fields, so a new setting is one new field. The
defaults are the paper's recipe. A run writes the config it used, plus the values resolved at run time
(device, batch size per rank, iterations per epoch, the inner validation cases), to
``fold_<k>/config.json``, so a run folder says exactly how its checkpoints were made, and
``monet_train --config fold_<k>/config.json`` runs it again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from monetpipe.devices import available_cpus
from monetpipe.devices import resolve_device as resolve_device  # monet_federated imports it from here
from monetpipe.errors import MonetError

LOSSES = ("dice", "dice_ce")
DEVICES = ("auto", "cpu", "cuda", "mps")
GROUPS = ("schedule", "data", "machine", "run")  # the sections of ``monet_train --help``, in this order


def setting(
    default: Any,
    help: str,
    group: str,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
) -> Any:
    """A :class:`TrainConfig` field together with its command-line flag.

    Args:
        default: the value when the flag is not given (``None``: resolved at run time).
        help: the flag's ``--help`` text (argparse appends ``(default: X)`` where there is one to show).
        group: the ``--help`` section, one of :data:`GROUPS`.
        flag: the option string; default ``--`` plus the field name with ``-`` for ``_``.
        choices: the allowed values of a string setting.
        metavar: the value's name in ``--help``.
    """
    if group not in GROUPS:
        raise ValueError(f"group {group!r} is not one of {GROUPS}")
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (see docs/training.md for each field).

    ``None`` means "resolve at run time": ``batch_size`` from the plans, ``num_workers``,
    ``num_threads`` and ``channels_last`` from the machine.
    """

    # schedule (paper: NAdam; Keras ReduceLROnPlateau / EarlyStopping on the inner validation loss)
    epochs: int = setting(100, "maximum epochs", "schedule")
    iters_per_epoch: int = setting(
        250, "cap on iterations per epoch (an epoch is one pass over the training slices)", "schedule"
    )
    batch_size: int | None = setting(
        None, "global batch size, split across torchrun processes (default: the plans' batch size)", "schedule"
    )
    lr: float = setting(5e-4, "NAdam learning rate", "schedule")
    loss: str = setting(
        "dice", "soft Dice over foreground channels, optionally plus (binary) cross-entropy", "schedule", choices=LOSSES
    )
    lr_factor: float = setting(0.1, "LR multiplier on a plateau", "schedule")
    lr_patience: int = setting(2, "epochs without inner-val loss improvement before the LR drops", "schedule")
    early_stop_patience: int = setting(
        10, "epochs without inner-val loss improvement before training stops", "schedule"
    )
    inner_val_fraction: float = setting(
        0.1,
        "fraction of the fold's training cases held out for LR schedule / early stop / best checkpoint",
        "schedule",
    )
    # sampling and augmentation
    foreground_fraction: float = setting(
        1 / 3, "fraction of each batch forced to slices containing foreground (default: 1/3)", "data"
    )
    rotation_deg: float = setting(10.0, "random rotation range, +- degrees", "data", flag="--rotation")
    scale: float = setting(0.25, "random zoom range, +- fraction", "data")
    shift: float = setting(0.2, "random shift, up to this fraction of height/width", "data")
    mirror: bool = setting(False, "also flip slices randomly (not in the paper)", "data")
    output_prior: bool = setting(
        True,
        "start the output layer's bias at the class frequencies of sampled batches (not in the paper; makes "
        "MoNet learn much sooner)",
        "data",
    )
    num_workers: int | None = setting(
        None,
        "background augmentation processes per rank (0: in the training process; default: 1 on CPU, up to 8 on a GPU)",
        "data",
    )
    # machine
    device: str = setting("auto", "auto picks cuda > mps > cpu", "machine", choices=DEVICES)
    num_threads: int | None = setting(
        None, "torch threads per process (default: available cores / processes on this node)", "machine"
    )
    amp: bool = setting(False, "float16 mixed precision (CUDA only; ignored elsewhere)", "machine")
    channels_last: bool | None = setting(
        None, "channels_last memory format (default: on for CPU, where it is faster, off elsewhere)", "machine"
    )
    deterministic: bool = setting(False, "deterministic kernels where PyTorch has them (slower on GPU)", "machine")
    seed: int = setting(12345, "seeds weights, inner-val carving, batches, augmentation", "machine")
    # run
    pretrained_weights: str | None = setting(
        None, "start from the matching weights of this checkpoint", "run", metavar="CKPT"
    )
    val_batch_size: int = setting(32, "slices per forward pass when validating", "run")

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


def resolve_channels_last(requested: bool | None, device: str) -> bool:
    """channels_last memory format: on by default on CPU, where oneDNN's NHWC kernels make training cheaper
    (measured in docs/training.md); off elsewhere unless asked for."""
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
