"""``federated_log.csv`` and ``federated_progress.png``, rewritten after every round from the checkpoint.

One row per round and site (``train_loss``, ``bytes_up``: the site's update as Flower serialized it,
``bytes_down``: the global model sent to it, ``seconds``: the site's own training time, ``status``:
``ok`` or why the site's update is missing), then one row per round with ``site = global``: the
inner-validation loss and Dice of the aggregated model, the round's total traffic and wall time.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from monetpipe.io.atomic import atomic_path

COLUMNS = (
    "round",
    "site",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "seconds",
    "num_slices",
    "steps",
    "val_loss",
    "val_dice",
    "status",
)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_federated_log(rows: list[dict], path: str | Path) -> None:
    """Write the rows (dicts with any of :data:`COLUMNS`) as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in COLUMNS])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def read_federated_log(path: str | Path) -> list[dict]:
    """The rows of a ``federated_log.csv`` (numbers as float, empty cells as NaN; round as int)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict = {}
            for k, v in row.items():
                if k in ("site", "status"):
                    parsed[k] = v
                elif k == "round":
                    parsed[k] = int(v)
                else:
                    parsed[k] = float(v) if v != "" else math.nan
            out.append(parsed)
    return out


def plot_federated(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Inner-val Dice and loss of the global model per round (left), MB up and down per round (right)."""
    glob = [r for r in rows if r["site"] == "global"]
    if not glob:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in glob]
    fig, (ax, ax_mb) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(rounds, [r["val_dice"] for r in glob], "g-o", label="inner-val Dice")
    ax.set_ylim(0, 1)
    ax.set_xlabel("round")
    ax.set_ylabel("Dice")
    ax_loss = ax.twinx()
    ax_loss.plot(rounds, [r["val_loss"] for r in glob], "r--", label="inner-val loss")
    ax_loss.set_ylabel("loss")
    lines = ax.get_lines() + ax_loss.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title(title)
    mib = 1024 * 1024
    ax_mb.bar([x - 0.2 for x in rounds], [(r["bytes_up"] or 0) / mib for r in glob], 0.4, label="up (all sites)")
    ax_mb.bar([x + 0.2 for x in rounds], [(r["bytes_down"] or 0) / mib for r in glob], 0.4, label="down (all sites)")
    ax_mb.set_xlabel("round")
    ax_mb.set_ylabel("MiB per round")
    ax_mb.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
