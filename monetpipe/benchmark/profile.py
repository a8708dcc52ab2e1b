"""Where inference time goes, per layer type: which kind of layer keeps a model from its FLOP floor.

Forward hooks time every leaf layer of a (prepared) PyTorch model; the time left over is the
model's own ``forward`` code (MoNet's residual additions and concatenations, the U-Nets' cat, the
attention products). Convolutions are split by kind (3x3 dilated, 3x3, strided, transposed, 1x1) and
get their FLOPs, so each kind's GFLOP/s can be set against the machine's matmul rate.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from monetpipe.networks.flops import layer_flops

OTHER = "forward code (add, cat, gates)"
GENERATED = "generated C++ (ELU, add, cat, fused)"


def layer_kind(module: nn.Module) -> str | None:
    """A short category name for a leaf layer, or ``None`` for layers not timed (Identity, containers)."""
    if isinstance(module, nn.ConvTranspose2d):
        return f"transposed conv {module.kernel_size[0]}x{module.kernel_size[1]} s{module.stride[0]}"
    if isinstance(module, nn.Conv2d):
        k = f"{module.kernel_size[0]}x{module.kernel_size[1]}"
        if module.stride[0] > 1:
            return f"conv {k} stride {module.stride[0]}"
        if module.dilation[0] > 1:
            return f"conv {k} dilated"
        return f"conv {k}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.ELU | nn.ReLU | nn.Sigmoid | nn.LeakyReLU | nn.GELU):
        return type(module).__name__.lower()
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        return "pooling"
    if isinstance(module, nn.Dropout2d | nn.Dropout | nn.Identity):
        return None
    if not list(module.children()):
        return type(module).__name__
    return None


@dataclass
class KindTime:
    """Seconds and FLOPs of one layer kind over the profiled passes."""

    kind: str
    seconds: float
    flops: int
    calls: int

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 and self.flops else float("nan")


def profile_layer_kinds(
    model: nn.Module, x: torch.Tensor, batch_size: int, passes: int = 1
) -> tuple[list[KindTime], float]:
    """Time each layer kind of ``model`` over ``passes`` passes of ``x`` (after one warm-up pass).

    Args:
        model: a PyTorch module (e.g. the ``torch`` backend's prepared model), CPU.
        x: ``(S, C, H, W)`` slices, already in the memory format the model expects.
        batch_size: slices per call.
        passes: timed passes.

    Returns:
        Kinds sorted by time (the leftover ``forward`` code as its own kind) and the total seconds.
    """
    seconds: dict[str, float] = defaultdict(float)
    flops: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    starts: dict[int, float] = {}
    active = [False]

    def pre(module: nn.Module, args: tuple) -> None:
        starts[id(module)] = time.perf_counter()

    def post(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if not active[0]:
            return
        kind = layer_kind(module)
        seconds[kind] += time.perf_counter() - starts.pop(id(module))
        flops[kind] += layer_flops(module, args[0], out)
        calls[kind] += 1

    handles = []
    for m in model.modules():
        if layer_kind(m) is not None:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch_size):  # warm-up
                model(x[i : i + batch_size])
            active[0] = True
            start = time.perf_counter()
            for _ in range(passes):
                for i in range(0, x.shape[0], batch_size):
                    model(x[i : i + batch_size])
            total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    kinds = [KindTime(k, seconds[k], flops[k], calls[k]) for k in seconds]
    kinds.append(KindTime(OTHER, max(0.0, total - sum(seconds.values())), 0, passes))
    return sorted(kinds, key=lambda k: -k.seconds), total


def format_profile(kinds: Iterable[KindTime], total: float, matmul_gflops: float | None = None) -> str:
    """A text table: kind, seconds, share of the total, GFLOP, GFLOP/s (and % of the matmul rate)."""
    lines = [
        f"{'layer kind':34} {'seconds':>8} {'share':>6} {'GFLOP':>8} {'GFLOP/s':>8}"
        + (f" {'% matmul':>8}" if matmul_gflops else "")
    ]
    for k in kinds:
        rate = f"{k.gflops:8.1f}" if k.flops else f"{'':8}"
        line = f"{k.kind:34} {k.seconds:8.3f} {k.seconds / total:6.1%} {k.flops / 1e9:8.1f} {rate}"
        if matmul_gflops and k.flops:
            line += f" {k.gflops / matmul_gflops:8.0%}"
        lines.append(line)
    lines.append(f"{'total':34} {total:8.3f}")
    return "\n".join(lines)


def _conv_flops(name: str, shapes: list, args: list) -> tuple[str, int]:
    """(kind, FLOPs) of a oneDNN convolution event recorded by the profiler (shapes and int args)."""
    x, w = shapes[0], shapes[1]
    kh, kw = w[2], w[3]
    if "transpose" in name:  # args: padding, output_padding, stride, dilation (fvcore's MAC rule)
        stride = args[5][0]
        return f"transposed conv {kh}x{kw} s{stride}", 2 * x[0] * x[2] * x[3] * x[1] * w[1] * kh * kw
    padding, stride, dilation = args[3], args[4], args[5]
    h = (x[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wd = (x[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if stride[0] > 1:
        kind = f"conv {kh}x{kw} stride {stride[0]}"
    elif dilation[0] > 1:
        kind = f"conv {kh}x{kw} dilated"
    else:
        kind = f"conv {kh}x{kw}"
    return kind, 2 * x[0] * h * wd * w[0] * x[1] * kh * kw


def profile_compiled(fn, x: torch.Tensor, batch_size: int, passes: int = 1) -> tuple[list[KindTime], float]:
    """Per-kind time of a ``torch_compile`` backend: oneDNN convolutions by kind, generated C++ kernels.

    Inductor hands convolutions to oneDNN (``mkldnn::_convolution_pointwise``) and fuses everything
    else (ELU, additions, concatenation copies) into generated loops, which the profiler sees as the
    compiled graph's own time.

    Args:
        fn: an :class:`~monetpipe.inference.backends.InferenceModel` with backend ``torch_compile``,
            already run once on this batch size (compiled).
        x: ``(S, C, H, W)`` slices.
        batch_size: slices per call.
        passes: profiled passes.

    Returns:
        Kinds sorted by time, and the total seconds.
    """
    from torch.profiler import ProfilerActivity, profile

    seconds: dict[str, float] = defaultdict(float)
    flops: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(passes):
            for i in range(0, x.shape[0], batch_size):
                fn(x[i : i + batch_size])
        total = time.perf_counter() - start
    for event in prof.events():
        if event.name.startswith("mkldnn::_convolution"):
            kind, n = _conv_flops(event.name, event.input_shapes, list(event.concrete_inputs))
            seconds[kind] += event.cpu_time_total / 1e6
            flops[kind] += n
            calls[kind] += 1
        elif "CompiledFxGraph" in event.name:
            seconds[GENERATED] += event.self_cpu_time_total / 1e6
            calls[GENERATED] += 1
    kinds = [KindTime(k, seconds[k], flops[k], calls[k]) for k in seconds]
    kinds.append(KindTime(OTHER, max(0.0, total - sum(seconds.values())), 0, passes))
    return sorted(kinds, key=lambda k: -k.seconds), total


def profile_backend(
    model: nn.Module,
    backend: str,
    x: torch.Tensor,
    batch_size: int,
    threads: int | None = None,
    channels_last: bool | None = None,
) -> tuple[list[KindTime], float]:
    """Per-kind time of ``model`` run by one backend (``eager``, ``torch`` or ``torch_compile``).

    Args:
        model: the network.
        backend: the backend (ONNX Runtime has its own profiler: ``SessionOptions.enable_profiling``).
        x: ``(S, C, H, W)`` slices.
        batch_size: slices per call.
        threads: intra-op threads.
        channels_last: as for :func:`~monetpipe.inference.backends.make_inference_model`.

    Returns:
        Kinds sorted by time, and the total seconds of one pass (after a warm-up / compile pass).
    """
    from monetpipe.errors import MonetError
    from monetpipe.inference.backends import make_inference_model

    if backend not in ("eager", "torch", "torch_compile"):
        raise MonetError(f"per-layer profiles cover eager, torch and torch_compile, not {backend}")
    fn = make_inference_model(model, backend, threads=threads, channels_last=channels_last)
    if fn.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if backend == "torch_compile":
        for i in range(0, x.shape[0], batch_size):  # compile and warm up
            fn(x[i : i + batch_size])
        return profile_compiled(fn, x, batch_size)
    return profile_layer_kinds(fn.module, x, batch_size)
