"""``monet_benchmark``: paper Tables 2 and 3 (CPU / GPU time, parameters, size) on this machine."""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Sequence

MODELS = ("monet", "unet16", "unet64", "attention_unet")
BACKENDS = ("eager", "torch", "torch_compile", "onnxruntime")  # monetpipe.inference.backends.BACKENDS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monet_benchmark",
        description=textwrap.fill(
            "Parameters, serialized size (fp32/fp16 MiB), GFLOP per slice, CPU seconds per 150 "
            "slices (mean +- sd over repeats after a warm-up), achieved GFLOP/s against this "
            "machine's torch.matmul rate (measured in the same run, same threads) and, on CUDA, "
            "seconds per training batch of 32. Variants of a model are timed in alternation. "
            "See docs/performance.md."
        ),
        epilog="""examples:
  monet_benchmark -m monet unet16 --slices 32 --repeats 3 -o bench.csv   # a quick CPU comparison
  monet_benchmark -m all --backend torch torch_compile onnxruntime --batch-size 2 --workers 2
  monet_benchmark -m all --update-leaderboard 4     # cpu_s_150 column of monet_evaluate -t 4
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[4],
        metavar="N",
        help="slices per forward pass; several values are compared (default 4)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        metavar="N",
        help="slice-parallel workers: each batch is split over N threads with threads/N intra-op threads "
        "each; several values are compared (default 1). Use a batch size of at least N",
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
        "--backend",
        nargs="+",
        default=["torch"],
        choices=BACKENDS,
        metavar="BACKEND",
        help=f"CPU inference backends to compare: {', '.join(BACKENDS)} (default torch)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC activations for the torch backends (default: on for CPU; --no-channels-last for NCHW)",
    )
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1, as the paper)")
    p.add_argument("--num-classes", type=int, default=1, help="output channels (default 1, as the paper)")
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
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul reference (no floor ratio)")
    p.add_argument(
        "--matmul-size",
        type=int,
        default=4096,
        help="n of the n x n float32 matmul that gives the machine's rate (default 4096)",
    )
    p.add_argument("--train-steps", type=int, default=10, help="timed GPU training steps (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _export(rows: list[dict], args: argparse.Namespace, models: Sequence[str]) -> None:
    import torch

    from monetpipe.benchmark.compact import export_compact, fp16_agreement
    from monetpipe.benchmark.measure import make_slices
    from monetpipe.networks import build_network

    x = make_slices(min(args.slices, 8), args.size, args.in_channels)
    for name in models:
        torch.manual_seed(0)
        model = build_network(name, args.in_channels, args.num_classes).eval()
        extra = export_compact(model, args.export_dir, args.in_channels, args.size)
        extra["fp16_mask_agreement"] = fp16_agreement(model, x)
        print(
            f"{name}: fp16 state_dict {extra['fp16_file_mib']:.2f} MiB, folded ONNX "
            f"{extra['onnx_mib']:.2f} MiB, fp16 masks agree on {extra['fp16_mask_agreement']:.4%} of voxels"
        )
        for row in rows:
            if row["model"] == name:
                row.update(extra)


def _update_leaderboard(rows: list[dict], task: str) -> None:
    import pandas as pd

    from monetpipe.benchmark.tables import leaderboard_times, write_csv
    from monetpipe.paths import MonetPaths, find_task

    paths = MonetPaths.from_env()
    name, _ = find_task(task, [paths.results, paths.preprocessed, paths.raw])
    target = paths.results / name / "benchmark.csv"
    best = leaderboard_times(rows)
    if target.is_file():  # keep the models this run did not measure
        old = pd.read_csv(target)
        best = pd.concat([old[~old["model"].isin(best["model"])], best], ignore_index=True)
    write_csv(best.to_dict("records"), target)
    print(f"wrote {target} (cpu_s_mean of {', '.join(best['model'])}); monet_evaluate -t {name} shows it")


def _profile(args: argparse.Namespace, models: Sequence[str]) -> None:
    import torch

    from monetpipe.benchmark.measure import make_slices, matmul_gflops
    from monetpipe.benchmark.profile import format_profile, profile_backend
    from monetpipe.networks import build_network

    batch = args.batch_size[0]
    x = make_slices(args.slices, args.size, args.in_channels)
    for name in models:
        model = build_network(name, args.in_channels, args.num_classes).eval()
        for backend in args.backend:
            if backend == "onnxruntime":
                print(f"\n{name}: no per-layer profile for onnxruntime (see SessionOptions.enable_profiling)")
                continue
            kinds, total = profile_backend(model, backend, x, batch, args.threads, args.channels_last)
            rate = matmul_gflops(args.matmul_size, 2)
            print(
                f"\n{name}, {backend}, batch {batch}, {torch.get_num_threads()} thread(s): "
                f"{total * 150 / args.slices:.2f} s per 150 slices (matmul {rate:.1f} GFLOP/s)"
            )
            print(format_profile(kinds, total, rate))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from monetpipe.cli_common import run_cli, setup_logging

    setup_logging(args.verbose)

    def body() -> int:
        from monetpipe.benchmark.runner import BenchmarkConfig, resolve_devices, run_benchmark
        from monetpipe.benchmark.tables import format_table, write_csv
        from monetpipe.errors import MonetError

        models = list(MODELS) if "all" in args.models else [m.lower() for m in args.models]
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            raise MonetError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)} or all")
        config = BenchmarkConfig(
            models=models,
            backends=args.backend,
            batch_sizes=args.batch_size,
            workers=args.workers,
            slices=args.slices,
            size=args.size,
            repeats=args.repeats,
            warmup=args.warmup,
            devices=resolve_devices(args.device),
            threads=args.threads,
            channels_last=args.channels_last,
            in_channels=args.in_channels,
            num_classes=args.num_classes,
            train_steps=args.train_steps,
            matmul_size=0 if args.no_matmul else args.matmul_size,
        )
        if args.profile:
            _profile(args, models)
            return 0
        rows = run_benchmark(config, log=logging.getLogger("monet_benchmark").info)
        if args.export_dir:
            _export(rows, args, models)
        print(format_table(rows))
        if args.output:
            print(f"wrote {write_csv(rows, args.output)}")
        if args.update_leaderboard:
            _update_leaderboard(rows, args.update_leaderboard)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
