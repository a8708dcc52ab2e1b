"""``monet_synthetic_task``: write the embedded synthetic task (no download needed)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monetpipe.cli_common import command_parser

EXAMPLES = """examples:
  monet_synthetic_task                               # Task901_SyntheticCT in $MONET_raw (./monet_data/raw)
  monet_synthetic_task --kind mr -o /data/raw        # Task902_SyntheticMR, two channels
  monet_synthetic_task --cases 40 --shape 128 128 32 --task-id 903   # a bigger CT task beside the default
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "monet_synthetic_task",
        "Write a small, seeded synthetic task in MSD format: 'ct' -> Task901_SyntheticCT "
        "(int16 HU, 0.8x0.8x2.5 mm), 'mr' -> Task902_SyntheticMR (4D, T1 + T2). Labels: "
        "0 background, 1 organ, 2 lesion. Prints the task folder written.",
        EXAMPLES,
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="raw-data folder to write the task into (default: $MONET_raw, else ./monet_data/raw)",
    )
    parser.add_argument("--kind", choices=("ct", "mr"), default="ct", help="which task to write (default: ct)")
    parser.add_argument("--cases", type=int, default=12, help="training cases (default: 12)")
    parser.add_argument("--test", type=int, default=2, help="test cases in imagesTs/, no labels (default: 2)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same data (default: 0)"
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="typical case size in voxels (default: 96 80 24 for ct, 72 88 36 for mr)",
    )
    parser.add_argument(
        "--task-id", type=int, default=None, help="task number in the folder name (default: 901 for ct, 902 for mr)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing task folder that differs from what would be written",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command. Returns the exit status (0 ok, 1 refused or bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from monetpipe.errors import MonetError
    from monetpipe.paths import MonetPaths
    from monetpipe.synthetic import make_synthetic_task

    output = args.output if args.output is not None else MonetPaths.from_env().raw
    try:
        folder = make_synthetic_task(
            output,
            kind=args.kind,
            num_cases=args.cases,
            num_test=args.test,
            seed=args.seed,
            task_id=args.task_id,
            shape=tuple(args.shape) if args.shape else None,
            overwrite=args.overwrite,
        )
    except (MonetError, ValueError) as exc:
        print(f"monet_synthetic_task: error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
