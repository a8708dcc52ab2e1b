"""Training hyperparameters as data: one frozen dataclass whose fields are the ``monet_train`` flags.

Each field is declared once, with its default, its help text and its flag (:func:`setting`);
``monet_train``'s parser is generated from these fields, so a new setting is one new field. The
defaults are the best measured recipe (docs/ablations.md); the paper's is ``--recipe paper``. A run
writes the config it used, plus the values resolved at run time (device, batch size per rank,
iterations per epoch, the inner validation cases), to ``fold_<k>/config.json``, so a run folder says
exactly how its checkpoints were made, and ``monet_train --config fold_<k>/config.json`` runs it again.

Named presets (``--recipe``) are data too: :data:`RECIPES` maps a name to the field values it sets;
flags given on the command line override them (:meth:`TrainConfig.from_recipe` from Python).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from monetpipe.devices import available_cpus
from monetpipe.devices import resolve_device as resolve_device  # monet_federated imports it from here
from monetpipe.errors import MonetError
from monetpipe.training.schedule import SCHEDULES, parse_duration

LOSSES = ("dice", "dice_ce")
TRAIN_PRECISIONS = ("fp32", "bf16", "auto")
PREPARE_PRECISIONS = ("auto", "none", "bf16", "int8", "all")  # checked after training for monet_predict
DEFAULT_EPOCHS = 100  # the cap without --time-budget
# --compile by default: only a run this long pays back a cold compile (one to two minutes on 2 cores)
COMPILE_MIN_SECONDS = 20 * 60  # of --time-budget left
COMPILE_MIN_STEPS = 3000  # of optimizer steps left under the epoch cap
COMPILED_BY_DEFAULT = ("monet",)  # networks whose compiled bf16 CPU step measured faster (docs/training.md)
DEFAULT_EARLY_STOP_PATIENCE = 10  # the paper's, with its plateau schedule; off otherwise unless given
# The default recipe, chosen by the one-hour Task04 ablation (docs/ablations.md): a poly decay from 2e-3 with
# Dice + cross-entropy. The paper's 5e-4 / soft Dice / plateau stay in PAPER_RECIPE.
DEFAULT_LR = 2e-3
DEFAULT_LOSS = "dice_ce"
# The paper's recipe (Knolle et al. 2021), pinned: what the paper specifies, so later changes of the defaults
# leave it reproducible. The paper's network starts with Keras' zero output bias, hence output_prior False.
PAPER_RECIPE: dict[str, Any] = {
    "lr": 5e-4,
    "loss": "dice",
    "schedule": "plateau",
    "lr_factor": 0.1,
    "lr_patience": 2,
    "early_stop_patience": DEFAULT_EARLY_STOP_PATIENCE,
    "rotation_deg": 10.0,
    "scale": 0.25,
    "shift": 0.2,
    "spatial_probability": 1.0,
    "mirror": False,
    "intensity_augmentation": False,
    "dropout": None,
    "ema": None,
    "output_prior": False,
}
# "default" is the fields' defaults (the one-hour ablation's best, plus the output prior, which docs/training.md
# measures); a default changed on evidence is changed at its field, and "paper" stays as it is.
RECIPES: dict[str, dict[str, Any]] = {"paper": PAPER_RECIPE, "default": {}}
DEVICES = ("auto", "cpu", "cuda", "mps")
MIRROR_AXES = ("0,1", "0", "1")  # --mirror-axes: which in-plane axes of a slice --mirror flips
DEFAULT_MIRROR_AXES = MIRROR_AXES[0]  # both; what --mirror flipped before --mirror-axes existed


def mirror_dims(mirror: bool, mirror_axes: str = DEFAULT_MIRROR_AXES) -> tuple[int, ...]:
    """The in-plane axes a run flips: ``--mirror-axes`` (``"0,1"`` -> ``(0, 1)``) with ``--mirror``, none
    without. Also how ``monet_predict --tta`` reads a checkpoint's recorded settings."""
    return tuple(int(a) for a in mirror_axes.split(",")) if mirror else ()


GROUPS = ("schedule", "data", "machine", "run")  # the sections of ``monet_train --help``, in this order


def setting(
    default: Any,
    help: str,
    group: str,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    parse: Any = None,
) -> Any:
    """A :class:`TrainConfig` field together with its command-line flag.

    Args:
        default: the value when the flag is not given (``None``: resolved at run time).
        help: the flag's ``--help`` text (argparse appends ``(default: X)`` where there is one to show).
        group: the ``--help`` section, one of :data:`GROUPS`.
        flag: the option string; default ``--`` plus the field name with ``-`` for ``_``.
        choices: the allowed values of a string setting.
        metavar: the value's name in ``--help``.
        parse: turns the flag's text into the value (default: the field's type).
    """
    if group not in GROUPS:
        raise ValueError(f"group {group!r} is not one of {GROUPS}")
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (see docs/training.md for each field).

    ``None`` means "resolve at run time": ``batch_size`` from the plans, ``num_workers``,
    ``num_threads`` and ``channels_last`` from the machine; ``epochs`` and ``early_stop_patience`` from
    whether there is a ``time_budget`` and the schedule (:attr:`max_epochs`, :attr:`patience`), ``schedule``
    as poly (:attr:`lr_schedule`).
    """

    # schedule (paper: NAdam; Keras ReduceLROnPlateau / EarlyStopping on the inner validation loss)
    recipe: str = setting(
        "default",
        "named preset of settings: 'paper' (Knolle et al. 2021, pinned) or 'default'; flags given as well override it",
        "schedule",
        choices=tuple(RECIPES),
    )
    time_budget: float | None = setting(
        None,
        "wall-clock budget for training plus the final validation, e.g. 90s, 45m, 1.5h, 1h30m; counts across "
        "--continue; fits --schedule to it; early stopping is off unless --early-stop-patience is given, and "
        "--epochs only caps (stored in seconds)",
        "schedule",
        metavar="DURATION",
        parse=parse_duration,
    )
    epochs: int | None = setting(
        None, f"maximum epochs (default: {DEFAULT_EPOCHS}; no cap with --time-budget)", "schedule"
    )
    iters_per_epoch: int = setting(
        250, "cap on iterations per epoch (an epoch is one pass over the training slices)", "schedule"
    )
    batch_size: int | None = setting(
        None, "global batch size, split across torchrun processes (default: the plans' batch size)", "schedule"
    )
    lr: float = setting(DEFAULT_LR, "NAdam learning rate (the start of poly / cosine)", "schedule")
    schedule: str | None = setting(
        None,
        "LR schedule: poly or cosine (decay from --lr to --lr-floor, reached at the last step of the run), or "
        "plateau (the paper's ReduceLROnPlateau on the inner-val loss, with early stopping) (default: poly)",
        "schedule",
        choices=SCHEDULES,
    )
    lr_floor: float = setting(5e-6, "the LR that poly / cosine reach at the end", "schedule")
    loss: str = setting(
        DEFAULT_LOSS,
        "soft Dice over foreground channels (dice, the paper's), plus (binary) cross-entropy (dice_ce)",
        "schedule",
        choices=LOSSES,
    )
    lr_factor: float = setting(0.1, "LR multiplier on a plateau (--schedule plateau)", "schedule")
    lr_patience: int = setting(
        2, "epochs without inner-val loss improvement before the LR drops (--schedule plateau)", "schedule"
    )
    early_stop_patience: int | None = setting(
        None,
        "epochs without inner-val loss improvement before training stops "
        f"(default: {DEFAULT_EARLY_STOP_PATIENCE} with --schedule plateau and no --time-budget, else off)",
        "schedule",
    )
    ema: float | None = setting(
        None,
        "keep an exponential moving average of the weights with this decay per optimizer step (e.g. 0.999) and "
        "validate, save and predict with it (not in the paper; default: off)",
        "schedule",
        metavar="DECAY",
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
    spatial_probability: float = setting(
        1.0,
        "probability that a slice is rotated, and separately that it is zoomed (1: every slice, as the paper's "
        "augmentation; a slice left alone is only cropped, never interpolated)",
        "data",
    )
    mirror: bool = setting(False, "also flip slices randomly (not in the paper)", "data")
    mirror_axes: str = setting(
        DEFAULT_MIRROR_AXES,
        "the in-plane axes --mirror flips: 0 (slice rows), 1 (columns) or 0,1; flip only axes along which "
        "the anatomy may be mirrored (Task04's slices: 1 is left-right, 0 anterior-posterior)",
        "data",
        choices=MIRROR_AXES,
        metavar="{0,1 | 0 | 1}",
    )
    intensity_augmentation: bool = setting(
        False,
        "also vary each slice's brightness, contrast and gamma and add noise and blur, the same for all of a "
        "slice's channels (not in the paper)",
        "data",
    )
    dropout: float | None = setting(
        None,
        "dropout rate of the network's dropout layers in training, 0 = none (default: the network's own, "
        "MoNet's 0.2 as in the paper, the U-Nets' 0.3)",
        "data",
    )
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
    precision: str = setting(
        "auto",
        "compute precision of the forward pass: bf16 = bfloat16 autocast (weights and optimizer stay float32); "
        "auto = bf16 on a CPU with native bfloat16 (avx512_bf16 / AMX), else fp32",
        "machine",
        choices=TRAIN_PRECISIONS,
    )
    channels_last: bool | None = setting(
        None, "channels_last memory format (default: on for CPU, where it is faster, off elsewhere)", "machine"
    )
    compile_step: bool | None = setting(
        None,
        "torch.compile the training step (forward, loss and backward fused by Inductor): faster steps after a "
        "one-off compile of one to two minutes, cached on disk for later runs; not with torchrun (default: on "
        f"for MoNet in a bf16 CPU run of at least {COMPILE_MIN_SECONDS // 60} minutes and {COMPILE_MIN_STEPS} "
        "steps where a C++ compiler is found, off otherwise)",
        "machine",
        flag="--compile",
    )
    deterministic: bool = setting(False, "deterministic kernels where PyTorch has them (slower on GPU)", "machine")
    seed: int = setting(12345, "seeds weights, inner-val carving, batches, augmentation", "machine")
    # run
    pretrained_weights: str | None = setting(
        None, "start from the matching weights of this checkpoint", "run", metavar="CKPT"
    )
    val_batch_size: int = setting(32, "slices per forward pass when validating", "run")
    prepare_precision: str = setting(
        "auto",
        "after the final validation, check reduced-precision inference against fp32 on the fold's validation "
        "cases (as monet_predict --prepare-precision does), so that monet_predict --precision auto may use it: "
        "auto = when training on the CPU, bf16 where it is native (avx512_bf16 / AMX) and int8 where the CPU "
        "runs it (VNNI / AMX, AVX2, ARM dot product) and onnxruntime is installed; none, bf16, int8 or all",
        "run",
        choices=PREPARE_PRECISIONS,
    )

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.time_budget, str):  # "45m" from Python or a hand-written config.json
            object.__setattr__(self, "time_budget", parse_duration(self.time_budget))
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append(f"--time-budget must be > 0, got {self.time_budget}")
        if self.recipe not in RECIPES:
            problems.append(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            problems.append(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr_floor < 0 or (self.lr_schedule != "plateau" and not self.lr_floor < self.lr):
            problems.append(
                f"--lr-floor must lie in [0, --lr) for poly / cosine, got {self.lr_floor} (--lr {self.lr}): give a "
                "lower --lr-floor (e.g. 0) or --schedule plateau"
            )
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            problems.append(f"--early-stop-patience must be >= 1, got {self.early_stop_patience}")
        if self.prepare_precision not in PREPARE_PRECISIONS:
            problems.append(
                f"--prepare-precision must be one of {', '.join(PREPARE_PRECISIONS)}, got {self.prepare_precision!r}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {self.precision!r}")
        if self.amp and self.precision == "bf16":
            problems.append("--amp (float16, CUDA) and --precision bf16 exclude each other: give one of them")
        if self.epochs is not None and self.epochs < 1:
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
        if self.mirror_axes not in MIRROR_AXES:
            problems.append(f"--mirror-axes must be one of {', '.join(MIRROR_AXES)}, got {self.mirror_axes!r}")
        if not 0 < self.inner_val_fraction < 1:
            problems.append(f"--inner-val-fraction must lie in (0, 1), got {self.inner_val_fraction}")
        if not 0 <= self.foreground_fraction <= 1:
            problems.append(f"--foreground-fraction must lie in [0, 1], got {self.foreground_fraction}")
        if not 0 <= self.scale < 1 or not 0 <= self.shift < 0.5 or self.rotation_deg < 0:
            problems.append("--scale must lie in [0, 1), --shift in [0, 0.5) and --rotation must be >= 0")
        if not 0 <= self.spatial_probability <= 1:
            problems.append(f"--spatial-probability must lie in [0, 1], got {self.spatial_probability}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"--dropout must lie in [0, 1), got {self.dropout}")
        if self.ema is not None and not 0 < self.ema < 1:
            problems.append(f"--ema must lie in (0, 1), e.g. 0.999, got {self.ema}")
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

    @classmethod
    def from_recipe(cls, name: str, **changes) -> TrainConfig:
        """The preset ``name`` of :data:`RECIPES`, with ``changes`` on top (``monet_train --recipe``)."""
        if name not in RECIPES:
            raise MonetError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
        return cls(**{**RECIPES[name], **changes, "recipe": name})

    @property
    def max_epochs(self) -> int | None:
        """The epoch cap as run: ``--epochs``, else 100 without a time budget and none with one."""
        if self.epochs is not None:
            return self.epochs
        return None if self.time_budget else DEFAULT_EPOCHS

    @property
    def patience(self) -> int | None:
        """Early stopping as run: ``--early-stop-patience``, else the paper's 10 with its plateau schedule and
        no time budget, and off otherwise (a decay planned to its floor is not cut short)."""
        if self.early_stop_patience is not None:
            return self.early_stop_patience
        return DEFAULT_EARLY_STOP_PATIENCE if self.lr_schedule == "plateau" and not self.time_budget else None

    @property
    def mirror_dims(self) -> tuple[int, ...]:
        """The in-plane axes training flips: ``--mirror-axes`` with ``--mirror``, none without."""
        return mirror_dims(self.mirror, self.mirror_axes)

    @property
    def lr_schedule(self) -> str:
        """The LR schedule as run: ``--schedule``, else poly (the paper's ``plateau`` is ``--recipe paper``'s)."""
        return self.schedule if self.schedule is not None else "poly"


def flag_of(f: Field) -> str:
    """The command-line flag of a :class:`TrainConfig` field: its own, else ``--`` plus the name with ``-``."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def flags_for(values: dict[str, Any]) -> list[str]:
    """The ``monet_train`` flags that set these :class:`TrainConfig` values (``{"lr": 5e-4, "channels_last":
    False}`` -> ``["--lr", "0.0005", "--no-channels-last"]``), to tell a user how to get recorded settings back.

    A switch that is off by default has no ``--no-`` form: its False is written as ``(without --mirror)``; an
    unset value (None) as ``(without --schedule)``.
    """
    by_name = {f.name: f for f in fields(TrainConfig)}
    out = []
    for name, value in values.items():
        f = by_name[name]
        flag = flag_of(f)
        if isinstance(value, bool):
            if value or f.default is not False:
                out.append(flag if value else "--no-" + flag[2:])
            else:
                out.append(f"(without {flag})")
        elif value is None:
            out.append(f"(without {flag})")
        elif name == "time_budget":
            out += [flag, f"{value:g}s"]
        else:
            out += [flag, str(value)]
    return out


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


def is_long_run(budget_left: float | None, steps_left: float) -> bool:
    """Whether what is left of a run can pay back a cold ``torch.compile`` of its training step: at least
    :data:`COMPILE_MIN_SECONDS` of time budget (when there is one) and :data:`COMPILE_MIN_STEPS` optimizer
    steps under the epoch cap (``math.inf`` without one)."""
    if budget_left is not None and budget_left < COMPILE_MIN_SECONDS:
        return False
    return steps_left >= COMPILE_MIN_STEPS


def resolve_compile(
    requested: bool | None,
    model: str,
    device_type: str,
    precision: str,
    distributed: bool,
    long_run: bool,
    compiler_found: Callable[[], bool],
) -> bool:
    """``--compile`` as run. ``--compile`` / ``--no-compile`` are kept; the default (None) compiles a
    single-process bf16 run of a network in :data:`COMPILED_BY_DEFAULT` on the CPU that is long
    (:func:`is_long_run`) where Inductor finds a C++ compiler (``compiler_found``, asked last: it imports
    Inductor). That is where compiled steps measured clearly faster on every CPU tried (docs/training.md);
    float32 gained on one CPU of three, U-Net-16 did not gain, GPUs are unmeasured and torchrun
    is unsupported, so those stay eager unless asked."""
    if requested is not None:
        return requested
    if model not in COMPILED_BY_DEFAULT or device_type != "cpu" or precision != "bf16":
        return False
    if distributed or not long_run:
        return False
    return compiler_found()


def resolve_precision(requested: str, device_type: str, amp: bool = False) -> str:
    """The training precision as run: ``fp32``, ``bf16`` or ``fp16`` (``--amp`` on CUDA).

    ``auto`` is bf16 on a CPU with native bfloat16 (:func:`monetpipe.cpu_features.cpu_features`) and fp32
    everywhere else; ``--amp`` keeps its meaning (float16 on CUDA, ignored elsewhere).

    Raises:
        MonetError: bf16 asked for on a device without bfloat16 autocast (MPS).
    """
    from monetpipe.cpu_features import auto_precision

    if amp and device_type == "cuda":
        return "fp16"
    if requested == "auto":
        return auto_precision(("fp32", "bf16"), device_type=device_type)
    if requested == "bf16" and device_type not in ("cpu", "cuda"):
        raise MonetError(f"--precision bf16 runs on CPU or CUDA, not {device_type}; use --precision fp32.")
    return requested
