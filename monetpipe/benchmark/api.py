"""``monet_benchmark`` as plain functions: measure, export, profile, feed the leaderboard.

:func:`monetpipe.benchmark.runner.run_benchmark` measures the rows; the functions here add what the
command's options ask for around it. Nothing here prints: each returns what the command reports.
Heavy imports (torch, pandas) happen inside the functions, so importing this module for ``--help`` is
cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths

MODELS = ("monet", "unet16", "unet64", "attention_unet")
BACKENDS = ("eager", "torch", "torch_compile", "onnxruntime")  # monetpipe.inference.backends.BACKENDS


def select_models(names: Sequence[str]) -> list[str]:
    """``["all"]`` -> every model; otherwise the names, lower-cased and checked.

    Raises:
        MonetError: a name that is not one of :data:`MODELS`.
    """
    models = list(MODELS) if "all" in names else [m.lower() for m in names]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise MonetError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)} or all")
    return models


def trained_network_spec(model_folder: str | Path, fold: str | int) -> tuple[str, int, int]:
    """(network name, input channels, outputs) of a results folder's fold (its final checkpoint)."""
    from monetpipe.results import ModelFolder, load_checkpoint, parse_fold

    path = ModelFolder(Path(model_folder)).checkpoint(parse_fold(fold), "final")
    spec = load_checkpoint(path).get("network") or {}
    try:
        return str(spec["name"]), int(spec["in_channels"]), int(spec["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise MonetError(f"{path}: checkpoint does not describe its network. Is it a monetpipe checkpoint?") from None


def export_models(rows: list[dict], config, export_dir: str | Path) -> dict[str, dict]:
    """Write each model's fp16 state_dict and folded ONNX to ``export_dir``; add their sizes and the fp16
    mask agreement (of the untrained network) to the model's rows.

    Args:
        rows: the benchmark rows (updated in place).
        config: the :class:`~monetpipe.benchmark.runner.BenchmarkConfig` the rows were measured with.
        export_dir: where the files go.

    Returns:
        Per model: ``fp16_file_mib``, ``onnx_mib``, ``fp16_mask_agreement`` and the other export columns.
    """
    import torch

    from monetpipe.benchmark.compact import export_compact, fp16_agreement
    from monetpipe.benchmark.measure import make_slices
    from monetpipe.networks import build_network

    x = make_slices(min(config.slices, 8), config.size, config.in_channels)
    extras = {}
    for name in config.models:
        torch.manual_seed(0)
        model = build_network(name, config.in_channels, config.num_classes).eval()
        extra = export_compact(model, export_dir, config.in_channels, config.size)
        extra["fp16_mask_agreement"] = fp16_agreement(model, x)
        for row in rows:
            if row["model"] == name:
                row.update(extra)
        extras[name] = extra
    return extras


def update_leaderboard(rows: list[dict], task: str, paths: MonetPaths | None = None) -> tuple[Path, list[str]]:
    """Write ``MONET_results/<Task>/benchmark.csv``: each model's fastest CPU row (``monet_evaluate -t``
    shows it as ``cpu_s_150``), keeping the rows of models this run did not measure.

    Returns:
        The file written and the models it holds.
    """
    import pandas as pd

    from monetpipe.benchmark.tables import leaderboard_times, write_csv
    from monetpipe.paths import find_task

    paths = paths or MonetPaths.from_env()
    name, _ = find_task(task, [paths.results, paths.preprocessed, paths.raw])
    target = paths.results / name / "benchmark.csv"
    best = leaderboard_times(rows)
    if target.is_file():  # keep the models this run did not measure
        old = pd.read_csv(target)
        best = pd.concat([old[~old["model"].isin(best["model"])], best], ignore_index=True)
    write_csv(best.to_dict("records"), target)
    return target, list(best["model"])


def profile_models(config, matmul_size: int) -> list[dict]:
    """Where each (model, backend)'s time goes per layer kind: one pass of ``config.slices`` slices at
    the first batch size.

    Returns:
        One dict per (model, backend): ``model``, ``backend``, ``batch_size``, ``threads``, ``kinds``
        (:class:`~monetpipe.benchmark.profile.KindTime` list), ``seconds`` (the pass), ``seconds_150``
        and ``matmul_gflops``; ``kinds`` is None for ``onnxruntime``, which has no per-layer profile here.
    """
    import torch

    from monetpipe.benchmark.measure import make_slices, matmul_gflops
    from monetpipe.benchmark.profile import profile_backend
    from monetpipe.networks import build_network

    batch = config.batch_sizes[0]
    x = make_slices(config.slices, config.size, config.in_channels)
    reports = []
    for name in config.models:
        model = build_network(name, config.in_channels, config.num_classes).eval()
        for backend in config.backends:
            report = {"model": name, "backend": backend, "batch_size": batch, "kinds": None}
            if backend != "onnxruntime":
                kinds, total = profile_backend(model, backend, x, batch, config.threads, config.channels_last)
                report |= {"kinds": kinds, "seconds": total, "seconds_150": total * 150 / config.slices}
                report |= {"matmul_gflops": matmul_gflops(matmul_size, 2), "threads": torch.get_num_threads()}
            reports.append(report)
    return reports
