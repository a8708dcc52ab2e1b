"""A wall-clock budget for a federated run (``monet_federated --time-budget``): how many rounds still fit
and each round's learning rate.

A round plays the part of ``monet_train``'s epoch, and the pieces are ``monet_train``'s
(:mod:`monetpipe.training.schedule`): :class:`~monetpipe.training.schedule.EpochPlanner` says before every
round how many rounds fit in what is left of the budget (the slowest of the last three rounds, the time
after the last round's inner validation, and the final validation's reserve), and a ``poly``
:class:`~monetpipe.training.schedule.ProgressSchedule` over rounds gives each round one LR, decaying from
``--lr`` to ``--lr-floor`` at the last round that fits. The sites train a round at that LR (a fresh NAdam
each round, as without a budget).

The first round of a fresh run is always trained, at ``--lr``: it measures a round. A round is never cut:
the budget is checked between rounds, so a run overshoots by at most what one round took longer than the
slowest of the last three. Budget seconds spent and the schedule's progress are stored in every checkpoint,
so ``--continue`` goes on with what is left. Imports neither torch nor Flower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monetpipe.training.schedule import LR_PLAN_SLACK, EpochPlanner, ProgressSchedule

SCHEDULE = "poly"


@dataclass
class RoundBudget:
    """Rounds left and each round's LR; without a time budget: ``max_rounds`` rounds at a constant ``lr``."""

    planner: EpochPlanner
    lr: float
    schedule: ProgressSchedule | None = None

    @classmethod
    def create(
        cls,
        time_budget: float | None,
        max_rounds: int | None,
        lr: float,
        lr_floor: float,
        inner_val_cases: int,
        val_cases: int,
        saved: dict | None = None,
    ) -> RoundBudget:
        """``saved``: :meth:`state_dict` of the checkpoint a resumed run continues."""
        saved = saved or {}
        planner = EpochPlanner(
            time_budget,
            max_rounds,
            max(inner_val_cases, 1),
            val_cases,
            elapsed_before=float(saved.get("elapsed_seconds", 0.0)),
        )
        schedule = None
        if time_budget:
            schedule = ProgressSchedule(SCHEDULE, lr, lr_floor)
            if saved.get("lr_schedule"):
                schedule.load_state_dict(saved["lr_schedule"])
        return cls(planner, lr, schedule)

    def rounds_left(self, done: int, history: Sequence[dict]) -> int | None:
        """Rounds still to train after ``done`` (``None``: no limit is known)."""
        return self.planner.remaining(done, history)

    def round_lr(self, history: Sequence[dict]) -> float:
        """The LR of the next round (advances the schedule: call once per round, before it is sent)."""
        if self.schedule is None:
            return self.lr
        # the LR is planned for rounds LR_PLAN_SLACK times as long as measured, so that a round that runs
        # slower than the slowest recent one still ends the run at the floor
        planned = self.planner.remaining(len(history), history, slack=LR_PLAN_SLACK)
        self.schedule.plan(planned if self.planner.epoch_seconds(history) is not None else None)
        return self.schedule.next_lr()

    def round_saved(self, seconds: float) -> None:
        """Record the time the round's checkpoints and logs took (part of the next rounds' estimate)."""
        self.planner.overhead_seconds.append(seconds)

    def elapsed(self) -> float:
        return self.planner.elapsed()

    def state_dict(self) -> dict:
        """What a checkpoint keeps for ``--continue``: budget seconds spent, the schedule's progress."""
        return {
            "elapsed_seconds": round(self.elapsed(), 3),
            "lr_schedule": self.schedule.state_dict() if self.schedule else None,
        }
