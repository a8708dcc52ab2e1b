"""``monet_inspect``: the paper's activation figure (Fig. 5) for trained models on one cached slice."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from monetpipe.preprocessing.plans import DEFAULT_PLANS

EXAMPLES = """examples:
  monet_inspect -t 4 -m monet unet16 --case hippocampus_367
  monet_inspect -t 4 -m monet unet64 attention_unet --case hippocampus_367 --slice 20 -o fig5.png
  monet_inspect -t 901 -m monet --case ct_000 --checkpoint best
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monet_inspect",
        description="For one preprocessed slice: input, target, prediction, the first 16 feature maps of an "
        "early, a middle and a late layer, and every layer's activation histogram, per model (the paper's "
        "Fig. 5). Writes a PNG and a CSV of per-layer statistics (share of values near zero, dead channels).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-t", "--task", required=True, help="Task04, 4, Task04_Hippocampus or a path")
    p.add_argument("-m", "--models", nargs="+", required=True, help="trained models to compare")
    p.add_argument("--case", required=True, help="case id in the plan's slice cache, e.g. hippocampus_367")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-f", "--fold", default="0", help="fold whose checkpoint to load (default 0)")
    p.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"), help="default final")
    p.add_argument("--slice", type=int, help="slice index along the plan's slice axis (default: most foreground)")
    p.add_argument("-o", "--output", help="PNG to write (default MONET_results/<Task>/inspect/<case>_z<slice>.png)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from monetpipe.cli_common import run_cli, setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from monetpipe.evaluation.inspection import inspect_models
        from monetpipe.paths import MonetPaths
        from monetpipe.results import parse_fold

        png, csv = inspect_models(
            args.task,
            args.models,
            args.case,
            MonetPaths.from_env(),
            plans_name=args.plans,
            fold=parse_fold(args.fold),
            checkpoint=args.checkpoint,
            slice_index=args.slice,
            output=args.output,
        )
        print(f"wrote {png}\nwrote {csv}")
        return 0

    return run_cli(body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
