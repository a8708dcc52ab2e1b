"""Measurements behind paper Tables 2 and 3: latency, the machine's matmul rate, sizes, GPU step time.

Timing rules (docs/performance.md): inputs are made before the clock starts; every timed pass runs
``slices`` slices in batches through the model and waits for the result (CUDA is synchronised); a
warm-up pass comes first; variants of one model are timed in alternation (A, B, A, B, ...) so that a
change in machine load hits them alike, and the matmul reference rate is measured between the rounds
at the same thread count, so the floor ratio compares numbers taken under the same load.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

PAPER_SLICES = 150  # paper Table 2: seconds to segment a 150-slice volume


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 4096, repeats: int = 3, device: str | torch.device = "cpu") -> float:
    """The machine's dense float32 rate: ``torch.matmul`` of two n x n matrices, best of ``repeats``.

    The best (not the mean) run is the rate the hardware can sustain; the thread count is whatever
    ``torch.get_num_threads()`` is at the call.

    Args:
        n: matrix size (4096: 137 GFLOP per product).
        repeats: timed products after one warm-up.
        device: where to multiply.

    Returns:
        GFLOP/s (2 n^3 FLOP per product).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)

    def product() -> None:
        torch.matmul(a, b)
        _sync(device)

    return 2 * n**3 / _best_seconds(product, repeats) / 1e9


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


#: n of the reduced-precision reference matmuls: emulated bfloat16 runs below 1 GFLOP/s on CPUs without
#: native bf16, where a 4096 product would take minutes.
REDUCED_MATMUL_SIZE = 1024


def _int8_matmul_gflops(n: int, repeats: int) -> float:
    """uint8 x int8 -> int32 products of two n x n matrices with ONNX Runtime's ``MatMulInteger``: the int8
    kernel (MLAS) that ``--precision int8`` runs its convolutions on, at ``torch.get_num_threads()`` threads."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}
    return 2 * n**3 / _best_seconds(lambda: session.run(None, feed), repeats) / 1e9


def precision_matmul_gflops(precision: str, n: int = REDUCED_MATMUL_SIZE, repeats: int = 3) -> float:
    """The dense matmul rate of ``precision`` on the CPU: the floor its network time is compared with.

    ``fp32``: :func:`matmul_gflops`; ``bf16``: ``torch.matmul`` of bfloat16 matrices (oneDNN; native only
    with AVX-512 BF16 / AMX); ``int8``: ONNX Runtime's ``MatMulInteger`` (uint8 x int8, the kernel of the
    int8 path), counted as 2 n^3 operations like the float rates. NaN when ONNX Runtime is missing.
    """
    if precision == "fp32":
        return matmul_gflops(n, repeats)
    if precision == "int8":
        try:
            return _int8_matmul_gflops(n, repeats)
        except ImportError:
            return float("nan")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).bfloat16()
    b = torch.randn(n, n, generator=gen).bfloat16()
    return 2 * n**3 / _best_seconds(lambda: torch.matmul(a, b), repeats) / 1e9


def make_slices(slices: int, size: int, in_channels: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible ``(slices, C, size, size)`` float32 batch of z-scored noise (the timed input)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(slices, in_channels, size, size, generator=gen)


def time_pass(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> float:
    """Seconds to run every slice of ``x`` through ``fn`` in batches of ``batch_size``.

    Args:
        fn: a model or :class:`~monetpipe.inference.backends.InferenceModel`.
        x: ``(S, C, H, W)`` on ``device`` (moved there beforehand, outside the clock).
        batch_size: slices per call.
        device: for CUDA, the clock stops after a synchronise.
    """
    device = torch.device(device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            fn(x[i : i + batch_size])
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Variant:
    """One way to run one model, timed in alternation with the model's other variants."""

    label: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int
    times: list[float] = field(default_factory=list)
    threads: int | None = None  # PyTorch intra-op threads set before each of its passes (None: leave)


def _run_pass(v: Variant, x: torch.Tensor, device: str | torch.device) -> float:
    if v.threads:
        torch.set_num_threads(v.threads)
    return time_pass(v.fn, x, v.batch_size, device)


def time_interleaved(
    variants: Sequence[Variant],
    x: torch.Tensor,
    repeats: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    matmul_size: int = 4096,
    progress: Callable[[str], None] | None = None,
) -> list[float]:
    """Time ``variants`` in rounds (each round: every variant once), after ``warmup`` untimed rounds.

    Args:
        variants: filled in place: ``variant.times`` gets one entry per round (seconds per pass).
        x: the slices, on ``device``.
        repeats: timed rounds.
        warmup: untimed rounds first (allocator, oneDNN primitive caches, compilation).
        device: where the models run.
        matmul_size: measure :func:`matmul_gflops` (n = this) before the first round and after each
            round; 0 skips it.
        progress: called with a short status line after each round.

    Returns:
        The matmul rates measured (GFLOP/s), empty when ``matmul_size`` is 0.
    """
    threads = torch.get_num_threads()
    for _ in range(warmup):
        for v in variants:
            _run_pass(v, x, device)
    torch.set_num_threads(threads)
    rates = [matmul_gflops(matmul_size, 2, device)] if matmul_size else []
    for r in range(repeats):
        for v in variants:
            v.times.append(_run_pass(v, x, device))
        torch.set_num_threads(threads)  # the matmul reference runs at the run's thread count
        if matmul_size:
            rates.append(matmul_gflops(matmul_size, 2, device))
        if progress is not None:
            progress(f"round {r + 1}/{repeats}: " + ", ".join(f"{v.label} {v.times[-1]:.2f}s" for v in variants))
    return rates


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def serialized_size_mib(model: nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Size in MiB of ``torch.save(model.state_dict())`` with floating tensors cast to ``dtype``.

    This is the file a federated client sends (weights plus BatchNorm statistics; the paper's "MB"
    are these MiB for float32). Integer buffers (``num_batches_tracked``) are kept as they are.
    """
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    fd, name = tempfile.mkstemp(suffix=".pth")
    os.close(fd)
    try:
        torch.save(state, name)
        return Path(name).stat().st_size / 2**20
    finally:
        Path(name).unlink(missing_ok=True)


def train_step_seconds(
    model: nn.Module,
    batch_size: int = 32,
    size: int = 256,
    steps: int = 10,
    warmup: int = 3,
    device: str | torch.device = "cuda",
) -> float:
    """Mean seconds of one training step (forward, loss, backward, NAdam step), as paper Table 2's GPU column.

    Args:
        model: a freshly built network (trained in place on random data; pass a copy to keep it).
        batch_size: 32 in the paper.
        size: slice height and width.
        steps: timed steps after ``warmup`` untimed ones.
        device: ``cuda`` for the paper's column (works on any device).

    Returns:
        Seconds per step (synchronised).
    """
    device = torch.device(device)
    model = model.to(device).train()
    in_channels = getattr(model, "in_channels", 1)
    classes = getattr(model, "num_classes", 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_channels, size, size, generator=gen).to(device)
    target = (torch.rand(batch_size, classes, size, size, generator=gen) > 0.5).float().to(device)
    optimizer = torch.optim.NAdam(model.parameters(), lr=5e-4)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps
