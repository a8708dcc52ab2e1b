"""``monet_train``: train MoNet or a baseline on a preprocessed task (also ``python -m monetpipe.training``,
which is what ``torchrun --nproc_per_node N -m monetpipe.training ...`` starts).

The settings' flags are generated from :class:`~monetpipe.training.config.TrainConfig`'s fields (their
help, flag and section live there); this module adds only what names the run (task, model, folds, plans),
how to start it (``--continue``, ``--val-only``) and ``--config``, which replays a run's ``config.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import types
import typing
from dataclasses import MISSING, Field, fields

from monetpipe.cli_common import command_parser, run_cli, setup_logging
from monetpipe.preprocessing.plans import DEFAULT_PLANS, PAPER_PLANS

NETWORKS = ("monet", "unet16", "unet64", "attention_unet")  # for --help only; the registry decides
_REQUIRED = ("task", "model")  # required unless --config names them
INTERRUPTED = (
    "interrupted: completed epochs are kept in checkpoint_latest.pth; add --continue to the same command to resume"
)


class _DefaultsFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)`` only where there is a value to show (not for None / off switches); keep the
    examples' layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _value_type(annotation: object) -> type:
    """``int`` for ``int`` and ``int | None`` (likewise float, str, bool)."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation  # type: ignore[return-value]


def _add_setting(group: argparse._ArgumentGroup, f: Field, value_type: type) -> None:
    """One :class:`TrainConfig` field as a flag: a switch for booleans, a typed value otherwise."""
    from monetpipe.training.config import flag_of

    meta = f.metadata
    flag = flag_of(f)
    default = f.default if f.default is not MISSING else None
    if value_type is bool:
        # off by default: a plain switch; on (or decided at run time): --x / --no-x
        action = "store_true" if default is False else argparse.BooleanOptionalAction
        group.add_argument(flag, dest=f.name, action=action, default=default, help=meta["help"])
        return
    group.add_argument(
        flag,
        dest=f.name,
        type=meta.get("parse") or value_type,
        default=default,
        choices=meta["choices"],
        metavar=meta["metavar"],
        help=meta["help"],
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What names the run: task, model(s), fold(s), plans (task and model may come from --config)."""
    p.add_argument("-t", "--task", help="Task04, 4, Task04_Hippocampus, Dataset004_Hippocampus or a path (required)")
    p.add_argument(
        "-m",
        "--model",
        nargs="+",
        metavar="MODEL",
        help=f"network(s): {', '.join(NETWORKS)}, or 'all' for every one (same split, one after another) (required)",
    )
    p.add_argument(
        "-f",
        "--fold",
        nargs="+",
        default=["0"],
        metavar="FOLD",
        help="fold(s) of splits_final.json, or 'all' to train on every case (no final validation) (default: 0)",
    )
    p.add_argument(
        "-p",
        "--plans",
        default=DEFAULT_PLANS,
        help=f"plans name (default {DEFAULT_PLANS}, 2.5D; {PAPER_PLANS}: 2D, the default with --recipe paper; "
        "monetPlans_binary_ctx1, ...)",
    )
    p.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="replay a run: task, model, fold, plans and every setting from a fold_<k>/config.json; flags given "
        "on the command line override it (e.g. -m to train another network with the same recipe)",
    )


def _add_start_arguments(g: argparse._ArgumentGroup) -> None:
    """How to start: fresh, resumed or validation only."""
    g.add_argument(
        "--continue",
        dest="continue_training",
        action="store_true",
        help="resume from checkpoint_latest.pth (a finished run: only a missing validation is redone)",
    )
    g.add_argument(
        "--continue-from",
        choices=("latest", "previous"),
        default="latest",
        help="with 'previous': resume from checkpoint_previous.pth, the state one epoch before "
        "checkpoint_latest.pth (when that one is lost or corrupt); implies --continue",
    )
    g.add_argument("--val-only", action="store_true", help="only re-run the final validation of a finished run")


EXAMPLES = """examples:
  monet_train -t 4 -m monet                       # fold 0 of the 70/30 hold-out, the default recipe
  monet_train -t 4 -m all -f all --continue       # every network on all cases, resuming where each stopped
  monet_train -t 4 -m monet --time-budget 1h      # train for one hour (final validation included), LR fitted
  monet_train -t 4 -m all --time-budget 15m       # every network gets the same 15 minutes
  monet_train -t 4 -m monet --recipe paper        # the paper's settings and 2D plans (monetPlans), pinned
  monet_train --config MONET_results/Task04_Hippocampus/monet__monetPlans_ctx1/fold_0/config.json --seed 2
"""


def build_parser() -> argparse.ArgumentParser:
    """``monet_train``'s parser: the run's names and start mode, plus one flag per :class:`TrainConfig` field."""
    from monetpipe.training.config import GROUPS, TrainConfig

    p = command_parser(
        "monet_train",
        "Train a network on MONET_preprocessed/<Task>/ into "
        "MONET_results/<Task>/<model>__<plans>/fold_<k>/. Defaults are the best recipe measured at one CPU "
        "hour, plus an output-layer prior (docs/training.md, Ablations; --recipe paper pins the paper's); "
        "every setting is recorded in fold_<k>/config.json (--config replays it). Multi-GPU / "
        "multi-node: torchrun --nproc_per_node N -m monetpipe.training ...",
        EXAMPLES,
        _DefaultsFormatter,
    )
    _add_run_arguments(p)
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    _add_start_arguments(groups["run"])
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        _add_setting(groups[f.metadata["group"]], f, _value_type(hints[f.name]))
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``monet_train``'s command line; with ``--config``, the recorded run supplies the defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        from monetpipe.training.fold import read_run_record

        record = read_run_record(args.config)
        names = {"task": record["task"], "model": [record["model"]], "fold": [str(record["fold"])]}
        parser.set_defaults(**names, plans=record["plans"], **record["config"])
        args = parser.parse_args(argv)  # flags on the command line win over the record
    recipe = _recipe_on_command_line(argv)
    if recipe is not None:
        from monetpipe.training.config import RECIPES

        # Over the record; flags win over both. The paper's recipe trains on the paper's 2D plans (a replayed
        # record keeps its own).
        plans = {"plans": PAPER_PLANS} if recipe == "paper" and not args.config else {}
        parser.set_defaults(**RECIPES[recipe], **plans, recipe=recipe)
        args = parser.parse_args(argv)
    missing = [f"-{n[0]}/--{n}" for n in _REQUIRED if getattr(args, n) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --config CONFIG_JSON)")
    return args


def _recipe_on_command_line(argv: list[str] | None) -> str | None:
    """The ``--recipe`` given on the command line (already checked by the parser), or None."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    return known.recipe


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` an argparse namespace describes."""
    from monetpipe.training.config import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _train(argv), interrupted=INTERRUPTED)


def _train(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # under torchrun, one process speaks
        logging.getLogger().setLevel(logging.WARNING)
    from monetpipe.training.api import train_models
    from monetpipe.training.distributed import shutdown

    try:
        results = train_models(
            args.task,
            args.model,
            args.fold,
            config_from_args(args),
            args.plans,
            continue_training=args.continue_training,
            val_only=args.val_only,
            continue_from=args.continue_from,
        )
    finally:
        shutdown()
    if rank == 0:
        for r in results:
            line = f"{r.fold_dir}: {r.epochs} epochs"
            if r.validation:
                line += f", validation foreground Dice {r.validation['foreground_mean']['Dice']:.4f}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
