"""``run_benchmark``: paper Tables 2 and 3 for every model, measured side by side on the machine at hand.

For each model: parameters, serialized size (fp32 and fp16), GFLOP per slice, and for each backend and
batch size the CPU seconds per 150 slices, timed in alternation with the model's other variants,
with the machine's matmul rate taken between the rounds; on CUDA also the seconds per training batch
of 32 and the GPU inference time.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from monetpipe.benchmark.measure import (
    PAPER_SLICES,
    Variant,
    make_slices,
    mean_sd,
    serialized_size_mib,
    time_interleaved,
    time_pass,
    train_step_seconds,
)
from monetpipe.errors import MonetError

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkConfig:
    """What to measure; the defaults are the paper's protocol (150 slices, 256x256, 5 repeats)."""

    models: Sequence[str] = ("monet", "unet16", "unet64", "attention_unet")
    backends: Sequence[str] = ("torch",)
    batch_sizes: Sequence[int] = (4,)
    workers: Sequence[int] = (1,)  # slice-parallel workers (inference.backends.make_inference_model)
    slices: int = PAPER_SLICES
    size: int = 256
    repeats: int = 5
    warmup: int = 1
    devices: Sequence[str] = ("cpu",)
    threads: int | None = None
    channels_last: bool | None = None  # None: each backend's default (on for torch / torch_compile)
    in_channels: int = 1
    num_classes: int = 1
    train_steps: int = 10
    matmul_size: int = 4096  # n of the reference matmul; 0 skips it (no floor ratio)
    precisions: Sequence[str] = ("fp32",)  # inference.precision: fp32, bf16, int8
    model_folder: str | None = None  # a trained <model>__<plans>/ folder: its weights instead of random ones
    fold: int | str = 0  # the fold of model_folder


def resolve_devices(device: str) -> list[str]:
    """``auto``: the CPU, plus CUDA when present; ``cpu`` / ``cuda``: that one; ``all``: both (needs CUDA)."""
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return ["cpu", "cuda"] if has_cuda else ["cpu"]
    wanted = ["cpu", "cuda"] if device == "all" else [device]
    if "cuda" in wanted and not has_cuda:
        raise MonetError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    return wanted


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu_model": cpu, "torch_version": torch.__version__, "load_avg": round(load, 2)}


def model_facts(name: str, in_channels: int, num_classes: int, size: int) -> dict:
    """Table 3 and the FLOP count of one model: parameters, sizes in MiB, GFLOP per slice."""
    from monetpipe.networks import build_network, count_parameters, flops_per_slice

    model = build_network(name, in_channels, num_classes)
    return {
        "model": name,
        **count_parameters(model),
        "size_mib_fp32": serialized_size_mib(model, torch.float32),
        "size_mib_fp16": serialized_size_mib(model, torch.float16),
        "gflop_per_slice": flops_per_slice(model, size, size) / 1e9,
    }


def _network(name: str, config: BenchmarkConfig) -> torch.nn.Module:
    """The network to time: ``config.model_folder``'s trained fold, or a freshly built (random) one."""
    from monetpipe.networks import build_network

    if config.model_folder is None:
        return build_network(name, config.in_channels, config.num_classes).eval()
    from monetpipe.inference.loading import network_from_checkpoint
    from monetpipe.results import ModelFolder, load_checkpoint

    path = ModelFolder(Path(config.model_folder)).checkpoint(config.fold, "final")
    return network_from_checkpoint(load_checkpoint(path), path)


class _Int8Models:
    """The int8 forms' inputs, made once per model: the ONNX Runtime QDQ file and PT2E's calibration slices.

    With a trained model folder the fold's prepared int8 model is used (``monet_predict
    --prepare-precision int8``); otherwise the network is calibrated on the timed kind of input (noise).
    """

    def __init__(self, model: torch.nn.Module, config: BenchmarkConfig, folder: Path) -> None:
        self.model, self.config, self.folder = model, config, folder
        self.calibration = make_slices(32, config.size, config.in_channels, seed=1)
        self._file: Path | None = None

    def onnx_file(self) -> Path:
        from monetpipe.inference.precision import PrecisionFiles, quantize_onnx_int8

        if self._file is None:
            if self.config.model_folder is not None:
                fold_dir = Path(self.config.model_folder) / f"fold_{self.config.fold}"
                files = PrecisionFiles(fold_dir, "final")
                if not files.int8_current():
                    raise MonetError(
                        f"{files.int8_model}: no int8 model for this checkpoint. Prepare it first: monet_predict "
                        f"--prepare-precision int8 --model-folder {self.config.model_folder} -f {self.config.fold}"
                    )
                self._file = files.int8_model
            else:
                self._file = quantize_onnx_int8(self.model, self.calibration, self.folder / "int8.onnx")
        return self._file


def _variants(model, config: BenchmarkConfig, threads: int, int8: _Int8Models, log) -> list[Variant]:
    from monetpipe.inference.backends import make_inference_model
    from monetpipe.inference.precision import BACKENDS_FOR

    variants = []
    for backend in config.backends:
        for precision in config.precisions:
            if backend not in BACKENDS_FOR[precision]:
                log(f"skipped {backend}/{precision}: {precision} runs with {', '.join(BACKENDS_FOR[precision])}")
                continue
            for workers in config.workers:
                fn = None
                for batch in config.batch_sizes:
                    if fn is None or backend == "torch_compile":  # compiled code is specialised to one batch size
                        fn = make_inference_model(
                            model,
                            backend,
                            device="cpu",
                            threads=threads,
                            channels_last=config.channels_last,
                            workers=workers,
                            precision=precision,
                            int8_model=int8.onnx_file() if (precision, backend) == ("int8", "onnxruntime") else None,
                            calibration=int8.calibration if precision == "int8" else None,
                        )
                    label = f"{backend}/{precision}/b{batch}" + (f"/w{workers}" if workers > 1 else "")
                    variants.append(Variant(label, fn, batch, threads=max(1, threads // workers)))
    return variants


def _precision_rates(precisions: Sequence[str], threads: int, matmul_size: int) -> dict[str, float]:
    """bf16 / int8 matmul rates at ``threads``, n = the fp32 reference's, at most REDUCED_MATMUL_SIZE."""
    from monetpipe.benchmark.measure import REDUCED_MATMUL_SIZE, precision_matmul_gflops

    torch.set_num_threads(threads)
    n = min(matmul_size, REDUCED_MATMUL_SIZE)
    return {p: precision_matmul_gflops(p, n) for p in precisions if p != "fp32"}


def _cpu_rows(name: str, facts: dict, config: BenchmarkConfig, log: Callable[[str], None]) -> list[dict]:
    import tempfile

    from monetpipe.inference.backends import set_threads

    threads = set_threads(config.threads)
    model = _network(name, config)
    x = make_slices(config.slices, config.size, config.in_channels)
    with tempfile.TemporaryDirectory(prefix="monet_bench_") as tmp:
        int8 = _Int8Models(model, config, Path(tmp))
        variants = _variants(model, config, threads, int8, log)
        set_threads(threads)
        before = _precision_rates(config.precisions, threads, config.matmul_size) if config.matmul_size else {}
        rows = _time_variants(name, facts, config, variants, x, threads, log)
        after = _precision_rates(config.precisions, threads, config.matmul_size) if config.matmul_size else {}
        sizes = _precision_sizes(model, facts, int8)
    return _precision_columns(rows, before, after, sizes, config)


def _time_variants(name, facts, config, variants, x, threads, log) -> list[dict]:
    rates = time_interleaved(
        variants,
        x,
        config.repeats,
        config.warmup,
        "cpu",
        config.matmul_size,
        progress=lambda s: log(f"{name}: {s}"),
    )
    matmul = statistics.median(rates) if rates else float("nan")
    scale = PAPER_SLICES / config.slices
    flop_150 = facts["gflop_per_slice"] * PAPER_SLICES
    rows = []
    for v in variants:
        backend, precision = v.label.split("/")[:2]
        per_150 = [t * scale for t in v.times]
        mean, sd = mean_sd(per_150)
        median = statistics.median(per_150)
        floor = flop_150 / matmul if rates else float("nan")
        rows.append(
            {
                **facts,
                "device": "cpu",
                "backend": backend,
                "precision": precision,
                "channels_last": v.fn.channels_last,
                "batch_size": v.batch_size,
                "workers": v.fn.workers,
                "threads": threads,
                "size": config.size,
                "slices_timed": config.slices,
                "repeats": config.repeats,
                "cpu_s_mean": mean,
                "cpu_s_std": sd,
                "cpu_s_median": median,
                "achieved_gflops": flop_150 / median,
                "matmul_gflops": matmul,
                "floor_s": floor,
                "floor_ratio": median / floor if rates else float("nan"),
                "setup_s": v.fn.setup_s,
                "cpu_times": " ".join(f"{t:.3f}" for t in per_150),
            }
        )
    return rows


def _precision_sizes(model, facts: dict, int8: _Int8Models) -> dict[str, float]:
    """MiB of each precision's stored model: fp32 / bf16 state_dict, the int8 ONNX file."""
    sizes = {"fp32": facts["size_mib_fp32"], "bf16": serialized_size_mib(model, torch.bfloat16)}
    if int8._file is not None:
        sizes["int8"] = int8._file.stat().st_size / 2**20
    return sizes


def _dice_differences(config: BenchmarkConfig) -> dict[str, float]:
    """fp32 minus reduced mean foreground Dice from the fold's precision check (trained model only)."""
    if config.model_folder is None:
        return {}
    from monetpipe.inference.precision import PrecisionFiles

    fold_dir = Path(config.model_folder) / f"fold_{config.fold}"
    entries = PrecisionFiles(fold_dir, "final").read_validation().get("precisions", {})
    return {p: e["difference"] for p, e in entries.items()} | {"fp32": 0.0}


def _precision_columns(rows, before: dict, after: dict, sizes: dict, config: BenchmarkConfig) -> list[dict]:
    """Per row: the precision's own floor and ratio to it, the ratio to fp32, size, Dice difference."""
    dice = _dice_differences(config)
    fp32 = {(r["backend"], r["batch_size"], r["workers"]): r["cpu_s_median"] for r in rows if r["precision"] == "fp32"}
    best_fp32 = min(fp32.values(), default=float("nan"))
    for r in rows:
        p = r["precision"]
        fp32_floor = r["floor_s"]
        if p != "fp32":
            rate = statistics.median([before.get(p, float("nan")), after.get(p, float("nan"))])
            r["floor_s"] = r["gflop_per_slice"] * PAPER_SLICES / rate if before else float("nan")
            r["floor_ratio"] = r["cpu_s_median"] / r["floor_s"]
            r["precision_matmul_gflops"] = rate
        r["fp32_floor_ratio"] = r["cpu_s_median"] / fp32_floor
        r["vs_fp32"] = r["cpu_s_median"] / fp32.get((r["backend"], r["batch_size"], r["workers"]), best_fp32)
        stored = not (p == "int8" and r["backend"] != "onnxruntime")  # PT2E keeps no file
        r["precision_mib"] = sizes.get(p, float("nan")) if stored else float("nan")
        r["dice_diff"] = dice.get(p, float("nan"))
    return rows


def _gpu_row(name: str, facts: dict, config: BenchmarkConfig, device: str = "cuda") -> dict:
    """Paper Table 2's GPU column (seconds per training batch of 32) and GPU inference time."""
    from monetpipe.inference.backends import make_inference_model
    from monetpipe.networks import build_network

    model = build_network(name, config.in_channels, config.num_classes)
    step = train_step_seconds(model, 32, config.size, steps=config.train_steps, device=device)
    fn = make_inference_model(model, "torch", device=device)
    batch = config.batch_sizes[0]
    x = make_slices(config.slices, config.size, config.in_channels).to(device)
    for _ in range(config.warmup):
        time_pass(fn, x, batch, device)
    times = [time_pass(fn, x, batch, device) * PAPER_SLICES / config.slices for _ in range(config.repeats)]
    return {
        **facts,
        "device": device,
        "backend": "torch",
        "batch_size": batch,
        "size": config.size,
        "slices_timed": config.slices,
        "repeats": config.repeats,
        "gpu_s_per_batch32": step,
        "gpu_s_150": statistics.fmean(times),
        "gpu_model": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
    }


def run_benchmark(config: BenchmarkConfig, log: Callable[[str], None] = logger.info) -> list[dict]:
    """Measure every model of ``config`` on every requested device.

    Args:
        config: models, backends, batch sizes, protocol.
        log: receives progress lines (one per timing round).

    Returns:
        One row per (model, device, backend, batch size) with the columns of
        :data:`~monetpipe.benchmark.tables.COLUMNS` and :data:`~monetpipe.benchmark.tables.RUN_COLUMNS`.
    """
    from monetpipe.networks import list_networks

    unknown = [m for m in config.models if m not in list_networks()]
    if unknown:
        raise MonetError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_networks())}")
    if config.slices < 1 or config.repeats < 1 or any(b < 1 for b in config.batch_sizes):
        raise MonetError("--slices, --repeats and --batch-size must be at least 1")
    rows = []
    for name in config.models:
        facts = model_facts(name, config.in_channels, config.num_classes, config.size)
        machine = _machine()
        cpu_rows = []
        if "cpu" in config.devices:
            cpu_rows = [{**r, **machine} for r in _cpu_rows(name, facts, config, log)]
        if "cuda" in config.devices:
            gpu = _gpu_row(name, facts, config)
            log(
                f"{name}: GPU {gpu['gpu_s_per_batch32']:.4f} s per training batch of 32, "
                f"{gpu['gpu_s_150']:.3f} s per {PAPER_SLICES} slices"
            )
            if cpu_rows:  # paper Table 2 puts both columns in one row
                gpu_columns = {k: gpu[k] for k in ("gpu_s_per_batch32", "gpu_s_150")}
                cpu_rows = [{**r, **gpu_columns, "gpu_model": gpu["gpu_model"]} for r in cpu_rows]
            else:
                cpu_rows = [{**machine, **gpu}]
        rows += cpu_rows
    return rows
