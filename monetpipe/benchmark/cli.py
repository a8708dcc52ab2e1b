"""``monet_benchmark``: paper Tables 2 and 3 (CPU / GPU time, parameters, size) on this machine.

Only parses and reports; the work is :mod:`monetpipe.benchmark.api` and
:func:`monetpipe.benchmark.runner.run_benchmark`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from monetpipe.benchmark.api import BACKENDS, MODELS
from monetpipe.cli_common import command_parser

__all__ = ["BACKENDS", "MODELS", "main"]


EXAMPLES = """examples:
  monet_benchmark -m monet unet16 --slices 32 --repeats 3 -o bench.csv   # a quick CPU comparison
  monet_benchmark -m all --backend torch torch_compile onnxruntime --batch-size 2 --workers 2
  monet_benchmark -m all --update-leaderboard 4     # cpu_s_150 column of monet_evaluate -t 4
  monet_benchmark -m monet --precision all --backend torch onnxruntime --batch-size 2 --workers 2
  monet_benchmark --model-folder $MONET_results/Task04_Hippocampus/monet__monetPlans_ctx1 -f 0 --precision all
"""


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "monet_benchmark",
        "Parameters, serialized size (fp32/fp16 MiB), GFLOP per slice, CPU seconds per 150 "
        "slices (mean +- sd over repeats after a warm-up), achieved GFLOP/s against this "
        "machine's torch.matmul rate (measured in the same run, same threads) and, on CUDA, "
        "seconds per training batch of 32. Variants of a model are timed in alternation. "
        "See docs/performance.md.",
        EXAMPLES,
    )
    _add_what_to_measure(p)
    _add_how_to_run(p)
    _add_outputs(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _add_what_to_measure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--models",
        nargs="+",
        default=["all"],
        metavar="MODEL",
        help=f"networks to measure: {', '.join(MODELS)} or all (default all)",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=150,
        help="slices per timed pass (default 150, the paper's volume); times are reported "
        "per 150 slices whatever this is",
    )
    p.add_argument("--size", type=int, default=256, help="slice height = width (default 256)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1, as the paper)")
    p.add_argument("--num-classes", type=int, default=1, help="output channels (default 1, as the paper)")
    p.add_argument(
        "--backend",
        nargs="+",
        default=["torch"],
        choices=BACKENDS,
        metavar="BACKEND",
        help=f"CPU inference backends to compare: {', '.join(BACKENDS)} (default torch)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=("fp32", "bf16", "int8", "all"),
        metavar="PRECISION",
        help="fp32, bf16, int8 or all (default fp32); each runs with the backends it supports (int8: "
        "onnxruntime = ONNX Runtime QDQ, torch_compile = PT2E; bf16: torch, torch_compile, eager); "
        "a reduced precision's floor is its own matmul rate",
    )
    p.add_argument(
        "--model-folder",
        help="time a trained <model>__<plans>/ folder's fold (-f) instead of random weights; int8 uses its "
        "prepared model (monet_predict --prepare-precision int8) and the Dice difference of that check is shown",
    )
    p.add_argument("-f", "--fold", default="0", help="fold of --model-folder (default 0)")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul reference (no floor ratio)")
    p.add_argument(
        "--matmul-size",
        type=int,
        default=4096,
        help="n of the n x n float32 matmul that gives the machine's rate (default 4096)",
    )
    p.add_argument("--train-steps", type=int, default=10, help="timed GPU training steps (default 10)")


def _add_how_to_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="slices per forward pass; several values are compared (default: monet_predict's CPU batch for "
        "--size, i.e. per worker as many slices as make 64 x 64 x 16 pixels, at least 1: 2 at 256 x 256 "
        "with 2 workers)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="slice-parallel workers: each batch is split over N threads with threads/N intra-op threads "
        "each; several values are compared (default: monet_predict's, 2 with 2+ threads). Use a batch size "
        "of at least N",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed passes per variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "all"],
        help="auto: CPU, plus the GPU columns when CUDA is present (default)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC activations for the torch backends (default: on for CPU; --no-channels-last for NCHW)",
    )


def _add_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write every row to this CSV")
    p.add_argument(
        "--update-leaderboard",
        metavar="TASK",
        help="also write MONET_results/<TASK>/benchmark.csv (each model's fastest CPU row), "
        "which monet_evaluate -t TASK shows as cpu_s_150",
    )
    p.add_argument(
        "--export-dir",
        help="write each model's fp16 state_dict and folded ONNX here, with "
        "their sizes and the fp16 mask agreement as extra columns",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the table, print where each backend's time goes per layer kind "
        "(eager, torch, torch_compile; one pass of --slices at the first --batch-size)",
    )


def predict_defaults(
    batch_sizes: list[int] | None, workers: list[int] | None, size: int, threads: int | None
) -> tuple[list[int], list[int]]:
    """``--batch-size`` / ``--workers`` where left out: what ``monet_predict`` runs on this CPU, so the
    command's default row is the time a user gets (its slice-parallel workers and pixel-sized batch)."""
    import torch

    from monetpipe.inference.api import cpu_batch_size
    from monetpipe.inference.loading import default_workers

    if workers is None:
        workers = [default_workers("cpu", threads or torch.get_num_threads())]
    if batch_sizes is None:
        batch_sizes = [cpu_batch_size(size, size, max(workers))]
    return batch_sizes, workers


def _config(args: argparse.Namespace):
    from monetpipe.benchmark.api import select_models, trained_network_spec
    from monetpipe.benchmark.runner import BenchmarkConfig, resolve_devices

    batch_sizes, workers = predict_defaults(args.batch_size, args.workers, args.size, args.threads)

    models, in_channels, num_classes = select_models(args.models), args.in_channels, args.num_classes
    if args.model_folder:
        name, in_channels, num_classes = trained_network_spec(args.model_folder, args.fold)
        models = [name]
    return BenchmarkConfig(
        models=models,
        backends=args.backend,
        batch_sizes=batch_sizes,
        workers=workers,
        slices=args.slices,
        size=args.size,
        repeats=args.repeats,
        warmup=args.warmup,
        devices=resolve_devices(args.device),
        threads=args.threads,
        channels_last=args.channels_last,
        in_channels=in_channels,
        num_classes=num_classes,
        train_steps=args.train_steps,
        matmul_size=0 if args.no_matmul else args.matmul_size,
        precisions=["fp32", "bf16", "int8"] if "all" in args.precision else list(dict.fromkeys(args.precision)),
        model_folder=args.model_folder,
        fold=args.fold,
    )


def _print_profiles(reports: list[dict]) -> None:
    from monetpipe.benchmark.profile import format_profile

    for r in reports:
        if r["kinds"] is None:
            print(f"\n{r['model']}: no per-layer profile for onnxruntime (see SessionOptions.enable_profiling)")
            continue
        print(
            f"\n{r['model']}, {r['backend']}, batch {r['batch_size']}, {r['threads']} thread(s): "
            f"{r['seconds_150']:.2f} s per 150 slices (matmul {r['matmul_gflops']:.1f} GFLOP/s)"
        )
        print(format_profile(r["kinds"], r["seconds"], r["matmul_gflops"]))


def _run(args: argparse.Namespace) -> int:
    from monetpipe.benchmark import api
    from monetpipe.benchmark.runner import run_benchmark
    from monetpipe.benchmark.tables import format_table, write_csv
    from monetpipe.cpu_features import cpu_features

    config = _config(args)
    print(f"CPU: {cpu_features().summary()}")
    if args.profile:
        _print_profiles(api.profile_models(config, args.matmul_size))
        return 0
    rows = run_benchmark(config, log=logging.getLogger("monet_benchmark").info)
    if args.export_dir:
        for name, extra in api.export_models(rows, config, args.export_dir).items():
            print(
                f"{name}: fp16 state_dict {extra['fp16_file_mib']:.2f} MiB, folded ONNX "
                f"{extra['onnx_mib']:.2f} MiB, fp16 masks agree on {extra['fp16_mask_agreement']:.4%} of voxels"
            )
    print(format_table(rows))
    if args.output:
        print(f"wrote {write_csv(rows, args.output)}")
    if args.update_leaderboard:
        target, models = api.update_leaderboard(rows, args.update_leaderboard)
        task = target.parent.name
        print(f"wrote {target} (cpu_s_mean of {', '.join(models)}); monet_evaluate -t {task} shows it")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from monetpipe.cli_common import run_cli, setup_logging

    setup_logging(args.verbose)
    return run_cli(lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
