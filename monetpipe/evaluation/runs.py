"""What the leaderboard is made of: a trained fold of a results folder, and that fold's evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from monetpipe.results import ModelFolder


@dataclass(frozen=True)
class FoldRun:
    """One trained fold of one results folder (:class:`monetpipe.results.ModelFolder`, the one layout)."""

    folder: ModelFolder
    fold: str

    @property
    def task(self) -> str:
        return self.folder.root.parent.name

    @property
    def model(self) -> str:
        return self.folder.model

    @property
    def plans(self) -> str:
        return self.folder.plans_name

    @property
    def model_dir(self) -> Path:
        return self.folder.root

    @property
    def fold_dir(self) -> Path:
        return self.folder.fold_dir(self.fold)

    @property
    def validation_dir(self) -> Path:
        return self.folder.validation_dir(self.fold)

    @property
    def name(self) -> str:
        return self.folder.root.name  # <model>__<plans>, or <model>__<plans>__<tag> for a federated run


@dataclass
class EvaluatedFold:
    """A fold's evaluation: its summary and per-case foreground means (``case, dice, hd95`` columns)."""

    run: FoldRun
    summary: dict
    per_case: pd.DataFrame
    plans: dict
