"""``monet_plan_and_preprocess``: fingerprint, plan, cache slices, fix splits."""

from __future__ import annotations

import argparse

from monetpipe.cli_common import command_parser, run_cli, setup_logging
from monetpipe.preprocessing.plans import DEFAULT_CONTEXT_SLICES, DEFAULT_PLANS, PAPER_PLANS

EXAMPLES = """examples:
  monet_plan_and_preprocess -t 4 -np 4
      # Task04_Hippocampus in $MONET_raw, all labels, 2.5D input of slices z-1, z, z+1 (plans monetPlans_ctx1)
  monet_plan_and_preprocess -t 4 --context-slices 0   # the paper's 2D input (plans monetPlans)
  monet_plan_and_preprocess -t 7 --binary           # pancreas + tumour merged (plans monetPlans_binary_ctx1)
  monet_plan_and_preprocess -t 1 --channels FLAIR
      # BrainTumour: the FLAIR channel only (plans monetPlans_ch_FLAIR_ctx1)
  monet_plan_and_preprocess -t 4 --min-size 128
      # Hippocampus resampled up from 64 x 48 to 128 x 96 pixel slices (plans monetPlans_s128_ctx1)
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "monet_plan_and_preprocess",
        "Fingerprint an MSD task, plan a configuration, cache 2D slices and fix the splits. "
        "Reads MONET_raw, writes MONET_preprocessed/<Task>/.",
        EXAMPLES,
    )
    p.add_argument(
        "-t", "--task", required=True, help="Task04, 4, Task04_Hippocampus, Dataset004_Hippocampus or a path"
    )
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--binary", action="store_true", help="merge every foreground label into one (plans monetPlans_binary_ctx1)"
    )
    group.add_argument(
        "--labels",
        type=int,
        nargs="+",
        metavar="L",
        help="keep only these label values, renumbered 1..k (plans monetPlans_labels_..._ctx1)",
    )
    p.add_argument("--folds", type=int, default=1, help="1: the paper's 70/30 hold-out (default); K: K-fold CV")
    p.add_argument(
        "--max-size",
        type=int,
        default=256,
        help="largest in-plane slice size after resampling (default 256; another value plans monetPlans_max<N>_ctx1)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=0,
        metavar="N",
        help="resample small slices up (finer in-plane spacing) until the median slice's longer in-plane side "
        "is at least N pixels, e.g. 128 (default 0: never; plans ..._s<N>)",
    )
    p.add_argument("--overwrite-splits", action="store_true", help="replace an existing, different splits_final.json")
    p.add_argument(
        "--replan",
        action="store_true",
        help="plan from the current data even if plans exist (default: keep existing plans, so a changed or "
        "added case rebuilds only itself; the log says what re-planning would change)",
    )
    p.add_argument(
        "--channels",
        nargs="+",
        metavar="CH",
        help="input channels the network sees: dataset.json channel names (any case) or indices, e.g. FLAIR "
        "or 0 2 (default: all; plans monetPlans_ch_<names>_ctx1)",
    )
    p.add_argument(
        "--context-slices",
        type=int,
        default=DEFAULT_CONTEXT_SLICES,
        metavar="K",
        help="2.5D input: each slice with its K neighbours on each side as extra channels, edges replicated "
        f"(default {DEFAULT_CONTEXT_SLICES}: plans {DEFAULT_PLANS}); 0: the paper's 2D input (plans {PAPER_PLANS})",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from monetpipe.preprocessing.api import plan_and_preprocess

        result = plan_and_preprocess(
            args.task,
            num_processes=args.num_processes,
            binary=args.binary,
            labels=args.labels,
            folds=args.folds,
            max_size=args.max_size,
            overwrite_splits=args.overwrite_splits,
            replan=args.replan,
            channels=args.channels,
            context_slices=args.context_slices,
            min_size=args.min_size,
        )
        print(f"plans:  {result.layout.plans_file}")
        print(
            f"slices: {result.layout.slices} ({result.num_built} built, {result.num_skipped} up to date, "
            f"{result.seconds:.1f} s)"
        )
        print(f"splits: {result.task_dir / 'splits_final.json'} ({len(result.splits)} fold(s))")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
