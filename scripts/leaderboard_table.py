#!/usr/bin/env python
"""A ``leaderboard.csv`` as a Markdown table, its values exactly as the CSV has them (docs/results.md pastes
this output, so no number is retyped).

    python scripts/leaderboard_table.py MONET_results/Task04_Hippocampus/leaderboard.csv
    python scripts/leaderboard_table.py leaderboard.csv --columns model dice_mean hd95_mean
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

#: The paper's Table 1 columns first (per-label Dice and HD95 follow the means), then the budget.
DEFAULT = (
    "model",
    "dice_mean",
    "dice_median",
    "dice_*",
    "hd95_mean",
    "hd95_median",
    "hd95_*",
    "n_missed",
    "n_false_alarm",
    "params_keras",
    "size_mib_fp32",
    "cpu_s_150",
    "epochs",
    "train_steps",
    "batch_size",
    "train_s",
)
SKIP = {"dice_std", "hd95_std"}


def select(header: list[str], wanted: list[str]) -> list[str]:
    """The CSV columns named in ``wanted`` in that order; ``prefix*`` expands to the remaining columns
    with that prefix, in the CSV's order."""
    out: list[str] = []
    for name in wanted:
        if name.endswith("*"):
            out += [h for h in header if h.startswith(name[:-1]) and h not in out and h not in SKIP]
        elif name in header and name not in out:
            out.append(name)
    return out


def markdown(rows: list[dict[str, str]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="a leaderboard.csv written by monet_evaluate -t TASK")
    p.add_argument("--columns", nargs="+", default=list(DEFAULT), help="columns (prefix* for a group)")
    args = p.parse_args(argv)
    if not args.csv.is_file():
        print(f"error: {args.csv} not found; run monet_evaluate -t TASK first", file=sys.stderr)
        return 1
    with open(args.csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    print(markdown(rows, select(header, args.columns)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
