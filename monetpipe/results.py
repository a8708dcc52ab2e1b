"""The results layout (docs/training.md, "The run folder"), shared by training, inference and evaluation.

``MONET_results/<Task>/<model>__<plans>/`` is self-contained: ``plans.json``, ``dataset.json`` and
``dataset_fingerprint.json`` beside ``fold_<k>/`` folders holding ``checkpoint_{latest,previous,best,final}.pth``,
``training_log.csv``, ``progress.png``, ``config.json`` and ``validation/``.

A checkpoint is a dict that loads with ``torch.load(..., weights_only=True)``:
``network`` ({"name", "in_channels", "num_classes"}), ``model_state`` (state_dict), ``plans`` (dict),
``epoch`` (completed epochs), plus training state (optimizer, scheduler, RNG states, best metric).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import MonetError

log = logging.getLogger(__name__)

CHECKPOINTS = ("final", "best", "latest", "previous")
_FOLD_DIR = re.compile(r"^fold_(\d+|all)$")


def fold_name(fold: int | str) -> str:
    return f"fold_{fold}"


def parse_fold(value: str | int) -> int | str:
    """``"0"`` -> 0, ``"all"`` -> ``"all"``."""
    if isinstance(value, int) or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise MonetError(f"fold {value!r} is not a number or 'all'") from None


class CorruptCheckpointError(MonetError):
    """A checkpoint file exists but does not load (truncated or corrupt)."""

    def __init__(
        self, path: Path, reason: str, advice: str = "Use another checkpoint of this fold, or train it again."
    ):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot load checkpoint ({reason}); the file is truncated or corrupt. {advice}")


@dataclass(frozen=True)
class ModelFolder:
    """One trained model configuration: ``<results>/<Task>/<model>__<plans>/``."""

    root: Path

    @classmethod
    def for_run(cls, results_root: Path, task: str, model: str, plans_name: str) -> ModelFolder:
        return cls(Path(results_root) / task / f"{model}__{plans_name}")

    @property
    def model(self) -> str:
        return self.root.name.split("__", 1)[0]

    @property
    def plans_name(self) -> str:
        """The plans part of ``<model>__<plans>[__<tag>]`` (a third part tags a variant, e.g. monet_federated's)."""
        parts = self.root.name.split("__")
        return parts[1] if len(parts) >= 2 else "monetPlans"

    @property
    def tag(self) -> str | None:
        """The variant tag of ``<model>__<plans>__<tag>`` (``None`` for a plain ``monet_train`` folder)."""
        parts = self.root.name.split("__", 2)
        return parts[2] if len(parts) == 3 else None

    @property
    def plans_file(self) -> Path:
        return self.root / "plans.json"

    @property
    def dataset_file(self) -> Path:
        return self.root / "dataset.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "dataset_fingerprint.json"

    def fold_dir(self, fold: int | str) -> Path:
        return self.root / fold_name(fold)

    def checkpoint(self, fold: int | str, which: str = "final") -> Path:
        if which not in CHECKPOINTS:
            raise MonetError(f"checkpoint {which!r} unknown; choose one of {', '.join(CHECKPOINTS)}")
        return self.fold_dir(fold) / f"checkpoint_{which}.pth"

    def validation_dir(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / "validation"

    def folds_with(self, which: str = "final") -> list[int | str]:
        """Folds that have ``checkpoint_<which>.pth``, numeric folds first, then ``all``."""
        if not self.root.is_dir():
            return []
        folds = []
        for d in self.root.iterdir():
            m = _FOLD_DIR.match(d.name)
            if m and (d / f"checkpoint_{which}.pth").is_file():
                folds.append(parse_fold(m.group(1)))
        return sorted(folds, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))


def training_budget(fold_dir: Path) -> dict:
    """``epochs``, ``train_steps``, ``batch_size``, ``train_s`` of a trained fold, so runs trained for
    different budgets are told apart (a short demo run from a full one).

    Epochs and seconds come from ``training_log.csv`` (one row per completed epoch, ``seconds`` its wall
    time), the iterations per epoch and global batch size from ``config.json``'s ``resolved`` values, so
    ``train_steps`` = epochs x iterations per epoch (optimizer steps). Blank when a file is absent.
    """
    out: dict = {"epochs": None, "train_steps": None, "batch_size": None, "train_s": math.nan}
    log_file, config_file = Path(fold_dir) / "training_log.csv", Path(fold_dir) / "config.json"
    try:
        if log_file.is_file():
            with open(log_file, newline="") as f:
                rows = list(csv.DictReader(f))
            out["epochs"] = len(rows)
            if rows and "seconds" in rows[0]:
                out["train_s"] = float(sum(float(r["seconds"]) for r in rows))
        if config_file.is_file():
            resolved = json.loads(config_file.read_text()).get("resolved") or {}
            iterations, batch = resolved.get("iterations_per_epoch"), resolved.get("batch_size")
            out["batch_size"] = int(batch) if isinstance(batch, int) else None
            if isinstance(iterations, int) and out["epochs"] is not None:
                out["train_steps"] = out["epochs"] * iterations
    except (OSError, ValueError, TypeError, AttributeError, csv.Error) as exc:
        log.warning("%s: training record unreadable (%s); budget columns left blank.", fold_dir, exc)
    return out


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: a pickled checkpoint could run code)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise MonetError(f"{path}: checkpoint not found. Train this fold first (monet_train) or pick another fold.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__  # torch's first sentence
        raise CorruptCheckpointError(path, reason) from None
