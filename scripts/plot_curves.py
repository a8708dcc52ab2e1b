#!/usr/bin/env python
"""Training curves of every network of a task, side by side: inner-val Dice and training loss against
optimizer steps and against training wall time, one line per ``<model>__<plans>/fold_<k>``.

Reads each run's ``training_log.csv`` (one row per epoch) and ``config.json`` (iterations per epoch), so
runs with different epoch lengths share one step axis.

    python scripts/plot_curves.py MONET_results/Task04_Hippocampus -o curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.io.atomic import atomic_path
from monetpipe.training.progress import read_log_csv


def load_runs(task_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per run (``model`` or ``model fold_k``): steps, wall minutes, inner-val Dice and train loss per epoch."""
    runs = {}
    logs = sorted(task_dir.glob("*__*/fold_*/training_log.csv"))
    folds = {p.parent.name for p in logs}
    for log in logs:
        rows = read_log_csv(log)
        config = json.loads((log.parent / "config.json").read_text())
        per_epoch = config["resolved"]["iterations_per_epoch"]
        name = log.parent.parent.name.split("__", 1)[0] + (f" {log.parent.name}" if len(folds) > 1 else "")
        runs[name] = {
            "steps": np.array([r["epoch"] * per_epoch for r in rows]),
            "minutes": np.cumsum([r["seconds"] for r in rows]) / 60,
            "val_dice": np.array([r["val_dice"] for r in rows]),
            "train_loss": np.array([r["train_loss"] for r in rows]),
        }
    if not runs:
        raise MonetError(f"no training_log.csv under {task_dir}/<model>__<plans>/fold_<k>/; train a model first")
    return runs


def plot(runs: dict[str, dict[str, np.ndarray]], output: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for name, run in runs.items():
        (line,) = axes[0].plot(run["steps"], run["val_dice"], marker="o", label=name)
        axes[1].plot(run["minutes"], run["val_dice"], marker="o", color=line.get_color())
        axes[2].plot(run["steps"], run["train_loss"], marker="o", color=line.get_color())
    for ax, x, y in zip(
        axes,
        ("optimizer steps", "training wall time (min, machine load as logged)", "optimizer steps"),
        ("inner-val foreground Dice", "inner-val foreground Dice", "training loss (soft Dice)"),
        strict=True,
    ):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    fig.suptitle(title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(runs), bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task_dir", type=Path, help="MONET_results/<Task>")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default=None, help="figure title (default: the task folder's name)")
    args = p.parse_args(argv)
    try:
        plot(load_runs(args.task_dir), args.output, args.title or args.task_dir.name)
    except MonetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
