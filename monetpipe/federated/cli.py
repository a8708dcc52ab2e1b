"""``monet_federated``: train one model across sites with Flower (argument parsing only; see api.py)."""

from __future__ import annotations

import argparse
import importlib.util

from monetpipe.cli_common import command_parser, run_cli, setup_logging
from monetpipe.errors import MonetError
from monetpipe.preprocessing.plans import DEFAULT_PLANS

EXAMPLES = """examples:
  monet_federated -t 4 -m monet --sites 3 --rounds 10 --local-epochs 2     # the paper's setting, on this machine
  monet_federated -t 4 -m monet --site-map sites.json --update-dtype float16 # your split, half the traffic
  monet_federated -t 4 -m monet --sites 3 --time-budget 1h --local-iters 50 # the rounds that fit in an hour
  monet_federated -t 4 -m monet --sites 3 --rounds 10 --continue            # resume after the last round
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, the examples' layout kept."""


def build_parser() -> argparse.ArgumentParser:
    from monetpipe.federated.settings import STRATEGIES, UPDATE_DTYPES, FederatedConfig

    d = FederatedConfig()
    p = command_parser(
        "monet_federated",
        "Federated training on Flower: each site trains on its own cases of the fold, only weights "
        "travel. Writes MONET_results/<Task>/<model>__<plans>__<tag>/fold_<k>/ like monet_train (tag: "
        "fedavg3, fedprox3, fedavg3_fp16, ...). Without --superlink, a local federation (SuperLink + one "
        "SuperNode per site on 127.0.0.1) is started and stopped. See docs/federated.md.",
        EXAMPLES,
        _Formatter,
    )
    p.add_argument(
        "-t", "--task", required=True, help="Task04, 4, Task04_Hippocampus, Dataset004_Hippocampus or a path"
    )
    p.add_argument("-m", "--model", required=True, help="monet, unet16, unet64 or attention_unet")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-f", "--fold", default="0", help="fold of splits_final.json, or 'all'")
    sites = p.add_mutually_exclusive_group()
    sites.add_argument("--sites", type=int, help=f"split the fold's training cases over N sites (default {d.sites})")
    sites.add_argument("--site-map", help='JSON file {"site_a": ["case_001", ...], ...}: which site has which cases')
    g = p.add_argument_group("rounds")
    g.add_argument(
        "--rounds", type=int, help="federated rounds (default: 10; with --time-budget: as many as fit, capped by this)"
    )
    g.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="wall-clock budget for the rounds plus the final validation, e.g. 90s, 45m, 1.5h; fits the rounds "
        "and a poly LR decay from --lr to --lr-floor to it; counts across --continue",
    )
    local = g.add_mutually_exclusive_group()
    local.add_argument(
        "--local-epochs", type=int, default=d.local_epochs, help="passes over its slices per site and round"
    )
    local.add_argument("--local-iters", type=int, help="optimizer steps per site and round (instead of --local-epochs)")
    g.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch, help="cap on steps of one local epoch")
    g.add_argument("--batch-size", type=int, help="batch size at each site (default: the plans')")
    g.add_argument("--lr", type=float, default=d.lr, help="NAdam learning rate at the sites")
    g.add_argument("--lr-floor", type=float, default=d.lr_floor, help="the LR of the last round (with --time-budget)")
    g.add_argument("--loss", default=d.loss, choices=("dice", "dice_ce"), help="training loss")
    g.add_argument("--strategy", default=d.strategy, choices=STRATEGIES, help="Flower strategy")
    g.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx's mu (with --strategy fedprox)")
    g.add_argument("--min-sites", type=int, help="updates a round needs (default: every site)")
    g.add_argument("--update-dtype", default=d.update_dtype, choices=UPDATE_DTYPES, help="dtype of the sites' updates")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds the split, initial weights and batches")
    r = p.add_argument_group("runtime")
    r.add_argument(
        "--device", default=d.device, choices=("auto", "cpu", "cuda", "mps"), help="device at server and sites"
    )
    r.add_argument("--threads", type=int, help="torch threads per site (default: cores / sites locally)")
    r.add_argument("--round-timeout", type=float, default=d.round_timeout, help="seconds to wait for a round's updates")
    r.add_argument(
        "--connect-timeout", type=float, default=d.connect_timeout, help="seconds to wait for sites to connect"
    )
    r.add_argument(
        "--superlink", help="HOST:PORT of a running SuperLink to submit to (default: start a local federation)"
    )
    r.add_argument("--root-certificates", help="CA certificate of that SuperLink (TLS); without it: insecure")
    r.add_argument("--continue", dest="continue_run", action="store_true", help="resume from the last completed round")
    r.add_argument("--keep-work-dir", action="store_true", help="keep the generated Flower App, logs and Flower home")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`FederatedConfig` of the parsed flags: every field that has a flag of the same name."""
    from dataclasses import fields

    from monetpipe.federated.settings import FederatedConfig

    values = {f.name: getattr(args, f.name) for f in fields(FederatedConfig) if f.name != "sites" and f.name in args}
    if args.sites is not None:
        values["sites"] = args.sites
    elif args.site_map is not None and args.min_sites is not None:
        values["sites"] = max(args.min_sites, 1)  # replaced by the map's size once it is read
    return FederatedConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        if importlib.util.find_spec("flwr") is None:
            raise MonetError("monet_federated needs Flower: pip install 'monetpipe[federated]' (or pip install flwr).")
        from monetpipe.federated.api import run_federated

        result = run_federated(
            args.task,
            args.model,
            args.fold,
            settings_from_args(args),
            args.plans,
            site_map=args.site_map,
            continue_run=args.continue_run,
            superlink=args.superlink,
            root_certificates=args.root_certificates,
            keep_work_dir=args.keep_work_dir,
        )
        line = f"{result.fold_dir}: {result.rounds} rounds"
        if result.best_dice is not None:
            line += f", best inner-val Dice {result.best_dice:.4f}"
        if result.validation_dice is not None:
            line += f", validation foreground Dice {result.validation_dice:.4f}"
        print(line)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
