"""Federation settings as data: one frozen dataclass, every field a ``monet_federated`` flag.

Recorded whole under ``"federated"`` in ``fold_<k>/config.json`` and in every checkpoint. Importing this
module needs neither torch nor Flower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from monetpipe.errors import MonetError
from monetpipe.training.schedule import format_duration, parse_duration

STRATEGIES = ("fedavg", "fedprox")
UPDATE_DTYPES = ("float32", "float16")
DEFAULT_ROUNDS = 10  # the authors' Flower runs; the cap without --time-budget


@dataclass(frozen=True)
class FederatedConfig:
    """How the federation trains (see docs/federated.md for each field).

    ``local_iters`` (optimizer steps per site and round) wins over ``local_epochs`` (passes over the
    site's own training slices, each capped at ``iters_per_epoch`` steps as in ``monet_train``).
    ``None`` means "resolve at run time": ``batch_size`` from the plans, ``min_sites`` = every site,
    ``threads`` from the machine, ``rounds`` from whether there is a ``time_budget`` (:attr:`max_rounds`).
    ``time_budget`` (seconds; a string such as ``"45m"`` is parsed) fits the rounds and a poly LR decay to
    ``lr_floor`` into the budget (:mod:`monetpipe.federated.budget`).
    """

    sites: int = 3
    rounds: int | None = None
    local_epochs: int = 2
    local_iters: int | None = None
    iters_per_epoch: int = 250
    batch_size: int | None = None
    lr: float = 5e-4
    time_budget: float | None = None
    lr_floor: float = 5e-6
    loss: str = "dice"
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    min_sites: int | None = None
    update_dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    seed: int = 12345
    inner_val_fraction: float = 0.1
    val_batch_size: int = 32
    round_timeout: float = 3600.0
    connect_timeout: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.time_budget, str):  # "45m" from the command line or a hand-written spec
            object.__setattr__(self, "time_budget", parse_duration(self.time_budget))
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append(f"--time-budget must be > 0, got {self.time_budget}")
        if self.sites < 1:
            problems.append(f"--sites must be >= 1, got {self.sites}")
        if self.rounds is not None and self.rounds < 1:
            problems.append(f"--rounds must be >= 1, got {self.rounds}")
        if self.local_epochs < 1:
            problems.append(f"--local-epochs must be >= 1, got {self.local_epochs}")
        if self.local_iters is not None and self.local_iters < 1:
            problems.append(f"--local-iters must be >= 1, got {self.local_iters}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.lr_floor <= self.lr:
            problems.append(f"--lr-floor must lie in (0, --lr = {self.lr:g}], got {self.lr_floor:g}")
        if self.strategy not in STRATEGIES:
            problems.append(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.proximal_mu < 0:
            problems.append(f"--proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.min_sites is not None and not 1 <= self.min_sites <= self.sites:
            problems.append(f"--min-sites must lie in 1..{self.sites} (the number of sites), got {self.min_sites}")
        if self.update_dtype not in UPDATE_DTYPES:
            problems.append(f"--update-dtype must be one of {', '.join(UPDATE_DTYPES)}, got {self.update_dtype!r}")
        if self.round_timeout <= 0 or self.connect_timeout <= 0:
            problems.append("--round-timeout and --connect-timeout must be > 0 seconds")
        if problems:
            raise MonetError("invalid federation settings: " + "; ".join(problems))

    @property
    def max_rounds(self) -> int | None:
        """The rounds cap as run: ``--rounds``, else 10 without a time budget and none with one."""
        if self.rounds is not None:
            return self.rounds
        return None if self.time_budget else DEFAULT_ROUNDS

    def describe_rounds(self) -> str:
        """``10 round(s)``, ``as many rounds as fit in 1h`` or ``up to 20 rounds within 30m`` for the logs."""
        if not self.time_budget:
            return f"{self.max_rounds} round(s)"
        budget = format_duration(self.time_budget)
        return f"up to {self.rounds} rounds within {budget}" if self.rounds else f"as many rounds as fit in {budget}"

    @property
    def required_sites(self) -> int:
        """Updates a round needs to count (``--min-sites``, default every site)."""
        return self.sites if self.min_sites is None else self.min_sites

    def tag(self) -> str:
        """The third part of the results folder name: ``fedavg3``, ``fedprox3``, ``fedavg3_fp16``."""
        return f"{self.strategy}{self.sites}" + ("_fp16" if self.update_dtype == "float16" else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FederatedConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_changes(self, **changes) -> FederatedConfig:
        return replace(self, **changes)
