"""``monet_evaluate``: score a prediction folder (``-ref/-pred``) or build a task's leaderboard (``-t``)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from monetpipe.cli_common import command_parser, run_cli, setup_logging

EXAMPLES = """examples:
  monet_evaluate -ref labelsTr -pred seg -l 1 2 -np 4        # every reference must have a prediction
  monet_evaluate -ref labelsTr -pred seg --only-predicted    # score only the cases in seg/
  monet_evaluate -ref labelsTr -pred seg --split splits_final.json --fold 0   # that fold's val cases
  monet_evaluate -t 4 -m monet unet16                        # leaderboard of two trained models
"""


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "monet_evaluate",
        "Dice / IoU / precision / recall / HD / HD95 / ASSD (mm, reference spacing) per case "
        "and label. With -ref/-pred: one folder pair -> summary.json + summary.csv (nnU-Net v2 "
        "layout). With -t: every trained model/fold of a task -> leaderboard.csv, "
        "leaderboard.png, overlays/.",
        EXAMPLES,
    )
    p.add_argument("-ref", help="folder of reference label maps (<case>.nii.gz)")
    p.add_argument("-pred", help="folder of predicted label maps, same file names")
    p.add_argument(
        "-l",
        "--labels",
        type=int,
        nargs="+",
        help="labels to evaluate (default: every non-zero label in references and predictions)",
    )
    p.add_argument(
        "--only-predicted",
        action="store_true",
        help="-ref/-pred: evaluate only the cases that have a prediction (a reference without one is left out "
        "instead of failing the run)",
    )
    p.add_argument(
        "--split",
        metavar="FILE",
        help="-ref/-pred: evaluate the val cases of --fold in this nnU-Net splits_final.json (a val case "
        "without a prediction fails the run)",
    )
    p.add_argument("--fold", type=int, help="with --split: the fold (default 0)")
    p.add_argument("-o", "--output", help="summary file (default PRED/summary.json; the CSV goes beside it)")
    p.add_argument("-t", "--task", help="task for the leaderboard: Task04, 4, Task04_Hippocampus or a path")
    p.add_argument("-m", "--models", nargs="+", help="leaderboard: only these models (default all)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-plots", action="store_true", help="leaderboard: skip leaderboard.png and overlays/")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _folders(args: argparse.Namespace) -> int:
    from monetpipe.evaluation.api import evaluate_prediction_folder
    from monetpipe.evaluation.evaluator import summary_ok

    summary = evaluate_prediction_folder(
        args.ref,
        args.pred,
        labels=args.labels,
        output_file=args.output,
        num_processes=args.num_processes,
        only_predicted=args.only_predicted,
        split_file=args.split,
        fold=args.fold or 0,
    )
    print(f"{summary['n_cases']} case(s); labels {summary['labels']}")
    print(f"{'label':>10} " + " ".join(f"{k:>9}" for k in ("Dice", "IoU", "HD95", "HD", "ASSD")))
    rows = [(k, v) for k, v in summary["mean"].items()] + [("foreground", summary["foreground_mean"])]
    for label, m in rows:
        print(f"{label:>10} " + " ".join(f"{_fmt(m[k]):>9}" for k in ("Dice", "IoU", "HD95", "HD", "ASSD")))
    fg = summary["foreground_outcomes"]
    print(
        f"case-label pairs: {fg['n_missed']} missed, {fg['n_false_alarm']} false alarm(s) (HD/HD95/ASSD = the "
        f"image diagonal, included above), {fg['n_both_empty']} empty in both (excluded); HD95 over pairs "
        f"where both are present: {_fmt(summary['foreground_defined_mean']['HD95'])}"
    )
    if not summary_ok(summary):
        missing = summary["unpaired"]["missing_predictions"]
        for path in missing:
            print(f"error: {path}: no prediction for this reference.", file=sys.stderr)
        for error in summary["errors"]:
            print(f"error: {error['error']}", file=sys.stderr)
        print(
            f"error: {len(missing)} reference(s) without prediction and {len(summary['errors'])} case(s) "
            f"not evaluable (listed under 'unpaired' and 'errors' in the summary); the means above exclude "
            f"them, so they are not a result for the whole folder.",
            file=sys.stderr,
        )
        return 1
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    import pandas as pd

    from monetpipe.evaluation.api import task_leaderboard
    from monetpipe.evaluation.leaderboard import rounded

    table = task_leaderboard(
        args.task, models=args.models, num_processes=args.num_processes, make_plots=not args.no_plots
    )
    shown = [
        "run",
        "fold",
        "federated_sites",
        "federated_rounds",
        "n_cases",
        "dice_mean",
        "dice_std",
        "hd95_mean",
        "hd95_std",
        "n_missed",
        "n_false_alarm",
        "params_keras",
        "size_mib_fp32",
        "cpu_s_150",
        "epochs",
        "train_steps",
        "n_missing",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        display = rounded(table[shown])
        for column in display.columns:  # nullable integers print <NA> whatever na_rep says
            if str(display[column].dtype) == "Int64":
                display[column] = display[column].astype(object).where(display[column].notna(), "")
        print(display.to_string(index=False, na_rep=""))
    skipped = table.attrs.get("skipped_folds", [])
    for line in skipped:
        print(f"error: {line} (this fold has no row)", file=sys.stderr)
    incomplete = table[table["n_missing"] > 0]
    if len(incomplete):
        runs = ", ".join(f"{r.run}/fold_{r.fold} ({r.n_missing})" for r in incomplete.itertuples())
        print(
            f"error: validation cases without a usable prediction (missing, unreadable or on another grid; "
            f"named in the warnings above and in each fold's validation/summary.json): {runs}. Their rows "
            f"exclude those cases.",
            file=sys.stderr,
        )
    return 1 if skipped or len(incomplete) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``monet_evaluate``; returns the exit code (1 on a user error, with one message)."""
    parser = _parser()
    args = parser.parse_args(argv)
    folder_mode = args.ref is not None or args.pred is not None
    if folder_mode == (args.task is not None):
        parser.error("give either -ref REF -pred PRED, or -t TASK")
    if folder_mode and (args.ref is None or args.pred is None):
        parser.error("-ref and -pred go together")
    if folder_mode and args.models:
        parser.error("-m applies to the leaderboard (-t TASK) only")
    if not folder_mode and (args.only_predicted or args.split):
        parser.error("--only-predicted and --split apply to -ref/-pred (the leaderboard reads each fold's split)")
    if args.only_predicted and args.split:
        parser.error("give either --only-predicted or --split FILE, not both")
    if args.fold is not None and not args.split:
        parser.error("--fold goes with --split FILE")
    setup_logging(args.verbose)
    return run_cli(lambda: _folders(args) if folder_mode else _leaderboard(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
