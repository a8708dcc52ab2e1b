"""``training_log.csv`` and ``progress.png``, rewritten after every epoch from the run's history.

The history lives in the checkpoint, so after a crash both files are rebuilt from the last complete
epoch: the log can never have a gap or a repeated epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from monetpipe.io.atomic import atomic_path

log = logging.getLogger(__name__)
COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
# written when the run has them: ``val_seconds`` (the inner validation's share of ``seconds``), ``steps``
# (optimizer steps of the epoch: fewer than the others' only in a first epoch cut to fit the time budget),
# ``lr_end`` (the LR of the epoch's last step, poly / cosine schedules) and ``elapsed`` (seconds of the
# time budget spent at the epoch's end, across --continue) and ``compile_seconds`` (--compile: the first
# step's time, compiling included, in the epoch that had it)
OPTIONAL_COLUMNS = ("val_seconds", "steps", "lr_end", "elapsed", "compile_seconds")


def write_log_csv(history: list[dict], path: str | Path) -> None:
    """One row per completed epoch, columns :data:`COLUMNS` (``val_dice``: mean inner-val foreground Dice),
    plus those of :data:`OPTIONAL_COLUMNS` that the run records."""
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c in row for row in history))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow([row["epoch"]] + [_fmt(row.get(c)) for c in columns[1:]])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def read_log_csv(path: str | Path) -> list[dict]:
    """The rows of a ``training_log.csv`` as dicts of floats (``epoch`` as int)."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def plot_progress(history: list[dict], path: str | Path, title: str = "") -> None:
    """Losses and inner-val Dice per epoch (left), learning rate (right), as a PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    ax.plot(epochs, [r["train_loss"] for r in history], "b-", label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in history], "r-", label="inner-val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax_dice = ax.twinx()
    ax_dice.plot(epochs, [r["val_dice"] for r in history], "g--", label="inner-val Dice")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax.get_lines() + ax_dice.get_lines()
    # below the axes, never over the curves
    ax.legend(lines, [line.get_label() for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ax.set_title(title)
    ax_lr.semilogy(epochs, [r["lr"] for r in history], "k-")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
