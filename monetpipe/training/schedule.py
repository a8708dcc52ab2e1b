"""Learning-rate schedules and the wall-clock time budget of a training run.

Three schedules (``monet_train --schedule``):

- ``plateau``: the paper's Keras ``ReduceLROnPlateau`` on the inner-val loss (the LR x ``--lr-factor``
  after ``--lr-patience`` epochs without improvement). It reacts to the run and cannot be fitted to a
  budget; ``--recipe paper``'s.
- ``poly``: nnU-Net's decay, ``floor + (lr - floor) * (1 - p) ** 0.9``; the default.
- ``cosine``: ``floor + (lr - floor) * (1 + cos(pi * p)) / 2``.

``p`` is the run's *progress*, from 0 at the first optimizer step to 1 at the last one, and the LR is set
before every step. Progress is counted in planned optimizer steps: before each epoch the planner
(:func:`plan_epochs`) says how many epochs remain (from the time budget and the measured seconds per
epoch, or from ``--epochs`` without a budget), and the progress still missing (``1 - p``) is spread
evenly over those epochs' steps. A re-plan never moves ``p`` backwards, and the last planned step is at
``p = 1`` exactly, so a run that ends where it was planned to ends at ``--lr-floor``. The progress reached
is stored in the checkpoint, so ``--continue`` goes on from there.

The time budget counts wall-clock seconds of training across ``--continue`` (stored in the checkpoint as
``elapsed_seconds``): set-up, optimizer steps, inner validation and checkpoint writing. The final
validation's time is reserved out of it (:func:`final_validation_reserve`). Training stops at an epoch
boundary, when the next epoch would not fit any more. The one exception is a first epoch longer than the
whole budget (a large task on a CPU, e.g. 250 steps of 256 x 256 slices): it is cut at the step that uses
:data:`FIRST_EPOCH_TRAIN_SHARE` of what is left, planned from its first timed steps, and the LR schedule
reaches its floor at that step.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from monetpipe.errors import MonetError

SCHEDULES = ("plateau", "poly", "cosine")
POLY_EXPONENT = 0.9  # nnU-Net's
# The final validation predicts the val cases from their raw images and scores them: slower per case than
# the inner validation, which runs the network over cached slices. Reserve this many times the inner
# validation's measured seconds per case for each val case (plus a fixed margin for start-up).
FINAL_VALIDATION_FACTOR = 2.0
FINAL_VALIDATION_MARGIN_S = 2.0
# The LR schedule is planned for epochs this much longer than measured, the stop at the measured length: an
# epoch up to 15 % slower than planned still ends the run at the LR floor (at the cost of, at most, one
# last epoch run at the floor when the timing holds).
LR_PLAN_SLACK = 1.15
# A first epoch that would not fit the budget trains for this share of the time left; the rest is for what
# nothing has measured yet: its inner validation, the checkpoints and the final validation.
FIRST_EPOCH_TRAIN_SHARE = 0.7
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smh])")
DURATION_EXAMPLES = "90s, 45m, 1.5h or 1h30m"


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``90s``, ``45m``, ``1.5h`` or ``1h30m`` (a number is seconds).

    Raises:
        MonetError: the text is not a positive duration with units.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise MonetError(
                f"--time-budget {text!r}: not a duration. Give a number with a unit: {DURATION_EXAMPLES} "
                "(s = seconds, m = minutes, h = hours)."
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or not math.isfinite(seconds):
        raise MonetError(f"--time-budget {text!r}: must be longer than 0 (e.g. {DURATION_EXAMPLES}).")
    return seconds


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``95.4`` -> ``1m35s``; ``7.2`` -> ``7.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def decayed_lr(schedule: str, progress: float, lr: float, floor: float) -> float:
    """The LR of ``poly`` or ``cosine`` at ``progress`` in [0, 1]: ``lr`` at 0, ``floor`` at 1."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "poly":
        shape = (1.0 - p) ** POLY_EXPONENT
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ValueError(f"schedule {schedule!r} does not decay by progress; choose poly or cosine")
    return floor + (lr - floor) * shape


def final_validation_reserve(inner_val_seconds: float, inner_val_cases: int, val_cases: int) -> float:
    """Seconds kept free for the final validation of ``val_cases`` cases, estimated from the last inner
    validation (``inner_val_seconds`` for ``inner_val_cases`` cases); 0 when there are no val cases."""
    if val_cases <= 0:
        return 0.0
    per_case = inner_val_seconds / max(inner_val_cases, 1)
    return FINAL_VALIDATION_FACTOR * per_case * val_cases + FINAL_VALIDATION_MARGIN_S


def plan_epochs(
    epochs_done: int,
    max_epochs: int | None,
    budget: float | None = None,
    elapsed: float = 0.0,
    epoch_seconds: float | None = None,
    reserve: float = 0.0,
) -> int | None:
    """How many more epochs to train (``None``: no limit is known).

    Args:
        epochs_done: completed epochs.
        max_epochs: the cap (``--epochs``), or ``None`` for none.
        budget: the time budget in seconds, or ``None``.
        elapsed: seconds of the budget already spent.
        epoch_seconds: the expected wall time of one epoch (``None`` before one was measured: then the
            next epoch is always allowed, and its time measured).
        reserve: seconds to keep free for the final validation.
    """
    cap = None if max_epochs is None else max(0, max_epochs - epochs_done)
    if budget is None:
        return cap
    if epoch_seconds is None or epoch_seconds <= 0:
        fit = 1  # nothing measured yet: one epoch, to measure it
    else:
        fit = max(0, math.floor((budget - elapsed - reserve) / epoch_seconds))
    return fit if cap is None else min(fit, cap)


class ProgressSchedule:
    """``poly`` / ``cosine`` LR by planned progress (see the module docstring).

    Call :meth:`plan` before each epoch with the steps that remain, then :meth:`next_lr` before each
    optimizer step. ``progress`` is the progress of the last step taken (``-1`` before the first).
    """

    def __init__(self, schedule: str, lr: float, floor: float) -> None:
        decayed_lr(schedule, 0.0, lr, floor)  # refuses plateau
        self.schedule, self.lr, self.floor = schedule, lr, floor
        self.progress = -1.0
        self._plan: tuple[float, int, bool] | None = None  # (progress at the plan, planned steps, first plan)
        self._taken = 0

    def plan(self, remaining_steps: int | None) -> None:
        """Spread what is left of the progress evenly over ``remaining_steps`` steps, the last of them at
        progress 1 (``None``: nothing is planned; the LR stays where it is)."""
        self._taken = 0
        if remaining_steps is None:
            self._plan = None
        else:
            self._plan = (max(self.progress, 0.0), max(int(remaining_steps), 1), self.progress < 0)

    def next_lr(self) -> float:
        """The LR of the next optimizer step (advances the progress)."""
        if self._plan is None:
            p = max(self.progress, 0.0)
        else:
            start, steps, first = self._plan
            if first:  # the run's first step is at progress 0, its last planned one at 1
                p = self._taken / (steps - 1) if steps > 1 else 1.0
            else:
                p = start + (1.0 - start) * (self._taken + 1) / steps
            self._taken += 1
        self.progress = min(p, 1.0)
        return self.current_lr()

    def current_lr(self) -> float:
        return decayed_lr(self.schedule, max(self.progress, 0.0), self.lr, self.floor)

    def state_dict(self) -> dict:
        return {"schedule": self.schedule, "progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.progress = float(state.get("progress", -1.0))


@dataclass
class EpochPlanner:
    """Decides before every epoch how many epochs remain: from ``--epochs`` and, with a budget, from the
    seconds left (budget - elapsed - the final validation's reserve) / the measured seconds per epoch.

    The seconds per epoch are the slowest of the last three epochs (optimizer steps plus inner
    validation, from the history rows' ``seconds``, less a one-off ``compile_seconds``) plus the last
    epoch's time after its inner validation (checkpoints, log, plot; each row records the one before it
    as ``overhead_seconds``, for a resumed run): a run on a machine that slows down keeps its end.
    Nothing is measured before the first epoch of a fresh run, so it always runs (its LR is planned from
    its first timed steps, by the training loop).
    """

    budget: float | None
    max_epochs: int | None
    inner_val_cases: int = 1
    val_cases: int = 0
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    overhead_seconds: list[float] = field(default_factory=list)

    def elapsed(self, now: float | None = None) -> float:
        """Budget seconds spent: those of earlier runs (``--continue``) plus this one's so far (until ``now``,
        a ``time.perf_counter()`` reading)."""
        return self.elapsed_before + (time.perf_counter() if now is None else now) - self.started

    def epoch_seconds(self, history: Sequence[dict]) -> float | None:
        # an epoch's one-off compile (``--compile``) is not part of the next epochs' time
        recent = [
            float(r["seconds"]) - float(r.get("compile_seconds") or 0.0)
            for r in history[-3:]
            if r.get("seconds") is not None
        ]
        if not recent:
            return None
        if self.overhead_seconds:
            overhead = self.overhead_seconds[-1]
        else:  # a resumed run: the time the previous run recorded
            overhead = next((float(r["overhead_seconds"]) for r in reversed(history) if r.get("overhead_seconds")), 0.0)
        return max(recent) + overhead

    def reserve(self, history: Sequence[dict]) -> float:
        """Seconds kept for the final validation (from the last inner validation's time)."""
        timed = [r for r in history if r.get("val_seconds") is not None]
        if not self.budget or not timed:
            return 0.0
        return final_validation_reserve(float(timed[-1]["val_seconds"]), self.inner_val_cases, self.val_cases)

    def remaining(
        self,
        epochs_done: int,
        history: Sequence[dict],
        slack: float = 1.0,
        epoch_seconds: float | None = None,
        now: float | None = None,
    ) -> int | None:
        """Epochs still to train after ``epochs_done`` (``None``: no limit), with epochs ``slack`` times as
        long as measured (:data:`LR_PLAN_SLACK` for the LR plan); ``epoch_seconds`` replaces the measured
        length (an estimate from the first steps)."""
        seconds = epoch_seconds or self.epoch_seconds(history)
        return plan_epochs(
            epochs_done,
            self.max_epochs,
            self.budget,
            self.elapsed(now),
            None if seconds is None else seconds * slack,
            self.reserve(history),
        )

    def measured(self, history: Sequence[dict]) -> bool:
        """Whether an epoch's time is known (the plan of a budget run means something)."""
        return self.budget is None or self.epoch_seconds(history) is not None
