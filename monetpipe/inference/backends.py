"""Fast inference forms of a network: one call, ``make_inference_model(model, backend=...)``.

Every backend returns a callable ``f(x) -> logits`` for a float32 ``(B, C, H, W)`` batch (NCHW or
channels_last) that gives the eager model's logits up to float rounding (BatchNorm folding and fused
kernels reorder sums; masks agree on >= 99.99 % of voxels, tested in tests/test_backends.py):

``eager``
    The network as built, in eval mode (the reference; NCHW).
``torch``
    BatchNorm folded where exact (:func:`~monetpipe.networks.fuse_for_inference`), Dropout removed,
    activations that read a fresh conv output run in place, ``channels_last`` on CPU (oneDNN's NHWC
    convolutions), ``torch.inference_mode``. No compile step; the default on CPU and GPU.
``torch_compile``
    The ``torch`` form through ``torch.compile`` (Inductor, weights frozen): fuses the elementwise ops
    (ELU, residual additions, concatenations) into generated C++ loops. Needs a C++ compiler; the first
    batch of each shape compiles (a minute or more on 2 cores; cached on disk afterwards). Batches are
    padded to the first batch's size, so a short last batch does not compile again.
``onnxruntime``
    The folded graph exported to ONNX (one export per input size, cached) and run by ONNX Runtime's
    CPU provider with every graph optimisation. Optional: ``pip install 'monetpipe[onnx]'``.

Any backend can also run **slice-parallel** (``workers=N``): each call's batch is split into N parts
that N Python threads run at once, each with ``threads // N`` intra-op threads. On a 2-core machine two
one-thread workers beat one two-thread call (MoNet, batch 2 vs 1: docs/performance.md), because small
convolutions do not split well across threads; PyTorch's and ONNX Runtime's kernels release the GIL.

Which is fastest depends on the machine; docs/performance.md lists what was measured and how to re-run
it (``monet_benchmark --backend eager torch torch_compile onnxruntime``).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from monetpipe.errors import MonetError

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "torch", "torch_compile", "onnxruntime")
DEFAULT_BACKEND = "torch"
#: Environment variable Inductor reads for its on-disk cache (compiled kernels, FX graphs).
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

#: Held while Inductor's process-wide config is patched to compile a new input shape. Patching it from
#: several worker threads at once can interleave the saves and restores and leave ``freezing`` /
#: ``cpp_wrapper`` on for the whole process; under this lock one compilation patches and restores at a time.
COMPILE_LOCK = threading.Lock()


class InferenceModel:
    """A network prepared for inference: call it like the model, ``logits = f(x)``.

    Attributes:
        backend: the backend's name.
        setup_s: seconds spent preparing it (folding, exporting, compiling); ``torch_compile`` and
            ``onnxruntime`` add their per-shape compile / export time here on first use.
        module: the prepared PyTorch module (``eager`` / ``torch``; ``None`` otherwise), for profiling.
        workers: slice-parallel workers (1: each call runs in the calling thread).
        precision: ``fp32``, ``bf16`` or ``int8`` (:mod:`monetpipe.inference.precision`).
        in_channels, num_classes, size_divisor, model_name: copied from the network.
    """

    def __init__(
        self,
        backend: str,
        run: Callable[[torch.Tensor], torch.Tensor],
        source: nn.Module,
        device: torch.device,
        channels_last: bool,
        setup_s: float,
        module: nn.Module | None = None,
        workers: int = 1,
        precision: str = "fp32",
    ) -> None:
        self.backend = backend
        self.precision = precision
        self.workers = workers
        self.module = module
        self._run = run
        self.device = device
        self.channels_last = channels_last
        self.setup_s = setup_s
        for name in ("in_channels", "num_classes", "size_divisor", "model_name"):
            setattr(self, name, getattr(source, name, None))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` (contiguous NCHW, on the model's device) for a ``(B, C, H, W)`` batch."""
        return self._run(x)

    def eval(self) -> InferenceModel:
        """No-op (an inference model is always in eval mode); lets callers treat it as a module."""
        return self

    def __repr__(self) -> str:
        return (
            f"InferenceModel({self.model_name!r}, backend={self.backend!r}, precision={self.precision!r}, "
            f"device={self.device})"
        )


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op thread count (process-wide) and return the count now in use.

    Args:
        threads: threads; ``None`` or 0 keeps the current setting (PyTorch defaults to the cores).
    """
    if threads:
        if threads < 0:
            raise MonetError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def compile_cache_dir() -> Path:
    """Where ``torch_compile`` keeps what it compiled, so each slice shape compiles once per machine.

    ``$TORCHINDUCTOR_CACHE_DIR`` when set; else ``$XDG_CACHE_HOME/monetpipe/inductor`` (default
    ``~/.cache/monetpipe/inductor``). Inductor's own default lies under ``/tmp``, which is emptied on reboot.
    """
    chosen = _user_cache_dir()
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "monetpipe" / "inductor"


def _user_cache_dir() -> str | None:
    """``$TORCHINDUCTOR_CACHE_DIR`` unless it is Inductor's own default, which importing
    ``torch._inductor.config`` writes into the environment."""
    value = os.environ.get(INDUCTOR_CACHE_ENV)
    if not value:
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return value
    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


def use_compile_cache() -> Path:
    """Point Inductor's on-disk cache at :func:`compile_cache_dir` (unless the user set one) and return it.

    Inductor reads the variable when it first caches something in a process, so this runs before the
    first compilation. An unwritable folder leaves Inductor's default in place (with a warning).
    """
    folder = compile_cache_dir()
    if _user_cache_dir():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("%s: cannot create the compile cache (%s); using Inductor's default", folder, exc)
        return folder
    os.environ[INDUCTOR_CACHE_ENV] = str(folder)
    return folder


def available_backends() -> list[str]:
    """The backends usable in this environment (``onnxruntime`` needs onnxruntime, onnx, onnxscript)."""
    names = ["eager", "torch", "torch_compile"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return names
    return [*names, "onnxruntime"]


def _inplace_activations(model: nn.Module) -> int:
    """Run activations in place where their input is a fresh conv / BatchNorm output nobody else reads.

    Only the known-safe spots of the registered networks are touched: the activation of every
    ``ConvNormAct`` (MoNet's ELUs, fed by their own conv) and the ReLUs of the U-Net blocks (fed by
    their own conv). Saves one full-size tensor write per activation.
    """
    from monetpipe.networks.blocks import ConvNormAct
    from monetpipe.networks.unet import UNetBlock

    n = 0
    for m in model.modules():
        if isinstance(m, ConvNormAct):
            names = ["act"]
        elif isinstance(m, UNetBlock):
            names = ["act1", "act2"]
        else:
            continue
        for name in names:
            act = getattr(m, name)
            if isinstance(act, nn.ELU | nn.ReLU) and not act.inplace:
                act.inplace = True
                n += 1
    return n


class ExpELU(nn.Module):
    """ELU written with ``exp(x) - 1`` instead of ``expm1``, for code generators (torch.compile).

    ATen's ELU calls a vectorised ``expm1`` that is much slower than its ``exp`` (docs/performance.md,
    run A4); compiled, this form is one fused loop. For x <= 0 the two differ by at most 6e-8 (an
    absolute error of float32 rounding at 1), far below what changes a mask.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.alpha * (torch.exp(x) - 1))


def _exp_elus(model: nn.Module) -> int:
    """Replace every ``nn.ELU`` of ``model`` by :class:`ExpELU`; returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.ELU)]
    for name in names:
        model.set_submodule(name, ExpELU(model.get_submodule(name).alpha))
    return len(names)


def prepared_module(
    model: nn.Module,
    device: torch.device,
    channels_last: bool,
    exp_elu: bool = False,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Folded, Dropout-free, in-place-activation copy of ``model`` on ``device`` (not modified).

    ``dtype`` (e.g. ``torch.bfloat16``) casts the folded weights: BatchNorm is folded in float64 first,
    so the reduced-precision weights are rounded once.
    """
    from monetpipe.networks import fuse_for_inference

    fused = fuse_for_inference(model)
    if exp_elu:
        _exp_elus(fused)
    else:
        _inplace_activations(fused)
    fused = fused.to(device)
    if dtype != torch.float32:
        fused = fused.to(dtype)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused.eval()


def _as_input(
    x: torch.Tensor, device: torch.device, channels_last: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    x = x.to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _module_runner(
    module: nn.Module, device: torch.device, channels_last: bool, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(_as_input(x, device, channels_last, dtype)).to(torch.float32).contiguous()

    return run


class _StaticBatchRunner:
    """Runs a shape-specialised callable at one batch size: short batches are zero-padded, long split."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], on_first: Callable[[float], None]) -> None:
        self.fn = fn
        self.batch: int | None = None
        self.shapes: set[tuple[int, ...]] = set()
        self.on_first = on_first

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None:
            self.batch = x.shape[0]
        b = self.batch
        if x.shape[0] > b:
            return torch.cat([self(part) for part in torch.split(x, b)])
        n = x.shape[0]
        if n < b:
            x = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))])
        key = tuple(x.shape)
        start = time.perf_counter()
        out = self.fn(x)
        if key not in self.shapes:
            self.shapes.add(key)
            self.on_first(time.perf_counter() - start)
        return out[:n]


class _SliceParallel:
    """Splits each batch into up to ``workers`` parts and runs them concurrently on a thread pool.

    Every worker thread runs PyTorch with ``threads`` intra-op threads (set in the thread itself, since
    OpenMP keeps a thread count per thread). The first call for each slice shape runs its first part
    alone, so code that compiles or exports per shape does so once, in one thread.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], workers: int, threads: int) -> None:
        self.run = run
        self.workers = workers
        self.threads = threads
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="monet-infer", initializer=self._init_thread)
        self.seen: set[tuple[int, ...]] = set()
        self.lock = threading.Lock()

    def _init_thread(self) -> None:
        torch.set_num_threads(self.threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.tensor_split(x, min(self.workers, x.shape[0]))
        key = tuple(x.shape[1:])
        outputs: list[torch.Tensor] = []
        with self.lock:
            if key not in self.seen:
                outputs.append(self.pool.submit(self.run, parts[0]).result())
                parts = parts[1:]
                self.seen.add(key)
        outputs += [f.result() for f in [self.pool.submit(self.run, p) for p in parts]]
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _compiled(
    model: nn.Module,
    device: torch.device,
    channels_last: bool,
    holder: list[InferenceModel],
    workers: int = 1,
    dtype: torch.dtype = torch.float32,
    prepared: nn.Module | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch._inductor.config as inductor_config

    use_compile_cache()
    if prepared is None:
        prepared = prepared_module(model, device, channels_last, exp_elu=True, dtype=dtype)
    try:
        compiled = torch.compile(prepared, dynamic=False)
    except Exception as exc:  # torch.compile raises many types when no backend is usable
        raise MonetError(f"torch.compile is unavailable here ({exc}); use --backend torch") from exc

    # Freezing (weights as constants) lets Inductor pre-pack them for oneDNN. It is read from the global
    # config when a graph compiles (torch.compile's options= does not reach it). For slice-parallel
    # workers the C++ wrapper runs the whole graph with the GIL released (the default Python wrapper
    # holds it in every generated kernel); what each bought is in docs/performance.md.
    options = {"freezing": True, "cpp_wrapper": workers > 1}

    compiled_shapes: set[tuple[int, ...]] = set()

    def run(x: torch.Tensor) -> torch.Tensor:
        x = _as_input(x, device, channels_last, dtype)
        key = tuple(x.shape)
        if key not in compiled_shapes:
            # A new shape compiles with the options, under the lock; the config is restored on leaving.
            with COMPILE_LOCK, torch.no_grad(), inductor_config.patch(**options):
                out = compiled(x)
                compiled_shapes.add(key)
            return out.to(torch.float32).contiguous()
        with torch.no_grad():  # compiled already: the graph no longer reads the config
            return compiled(x).to(torch.float32).contiguous()

    def first_use(seconds: float) -> None:
        holder[0].setup_s += seconds
        logger.info("torch.compile: compiled a new input shape in %.1f s", seconds)

    return _StaticBatchRunner(run, first_use)


def _onnx_session(onnx_file: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def _onnxruntime(
    model: nn.Module, threads: int | None, cache_dir: Path | None, holder: list[InferenceModel]
) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MonetError(
            "the onnxruntime backend needs ONNX Runtime: pip install 'monetpipe[onnx]' (or choose --backend torch)"
        ) from exc
    from monetpipe.networks import export_onnx

    fused = prepared_module(model, torch.device("cpu"), channels_last=False)
    sessions: dict[tuple[int, int, int], object] = {}
    name = getattr(model, "model_name", type(model).__name__)

    def export_and_load(c: int, h: int, w: int, folder: Path):
        path = export_onnx(fused, folder / f"{name}_{c}x{h}x{w}.onnx", c, h, w)
        return _onnx_session(path, threads)  # the session holds the graph; the file may go

    def session_for(c: int, h: int, w: int):
        key = (c, h, w)
        if key not in sessions:
            start = time.perf_counter()
            if cache_dir is not None:
                sessions[key] = export_and_load(c, h, w, cache_dir)
            else:
                with tempfile.TemporaryDirectory(prefix="monet_onnx_") as tmp:
                    sessions[key] = export_and_load(c, h, w, Path(tmp))
            seconds = time.perf_counter() - start
            holder[0].setup_s += seconds
            logger.info("onnxruntime: exported and loaded %s at %dx%dx%d in %.1f s", name, c, h, w, seconds)
        return sessions[key]

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise MonetError("the onnxruntime backend runs on the CPU; use --device cpu or --backend torch")
        x = x.detach().to(torch.float32).contiguous()
        session = session_for(*x.shape[1:])
        (logits,) = session.run(None, {"image": x.numpy()})
        return torch.from_numpy(logits)

    return run


def _int8(
    model: nn.Module,
    key: str,
    device: torch.device,
    channels_last: bool,
    threads: int | None,
    workers: int,
    int8_model: str | os.PathLike | None,
    calibration: torch.Tensor | None,
    holder: list[InferenceModel],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """The int8 runner of ``key`` (onnxruntime: QDQ file; torch_compile: PT2E) and its memory format."""
    from monetpipe.inference import precision

    if key == "onnxruntime":
        if int8_model is None:
            raise MonetError("int8 with onnxruntime needs the quantized model (precision.quantize_onnx_int8)")
        return precision.onnx_int8_runner(Path(int8_model), threads), False
    if calibration is None:
        raise MonetError("int8 with torch_compile (PT2E) needs calibration slices")
    prepared = precision.pt2e_int8_module(model, calibration, channels_last)
    return _compiled(model, device, channels_last, holder, workers, prepared=prepared), channels_last


def _checked_backend(backend: str, device: torch.device, workers: int) -> str:
    """``backend`` as a :data:`BACKENDS` key, after refusing what cannot run on ``device``."""
    key = backend.strip().lower()
    if key not in BACKENDS:
        raise MonetError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if key == "onnxruntime" and device.type != "cpu":
        raise MonetError(f"the onnxruntime backend runs on the CPU, not {device}; use --backend torch there")
    if workers < 1:
        raise MonetError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and device.type != "cpu":
        raise MonetError(f"slice-parallel workers are for the CPU, not {device}; use --workers 1 there")
    return key


def make_inference_model(
    model: nn.Module,
    backend: str = DEFAULT_BACKEND,
    *,
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    precision: str = "fp32",
    int8_model: str | os.PathLike | None = None,
    calibration: torch.Tensor | None = None,
) -> InferenceModel:
    """Prepare ``model`` for fast inference with the chosen backend.

    Args:
        model: a network from :func:`~monetpipe.networks.build_network` with trained weights (not
            modified; the backends work on copies).
        backend: one of :data:`BACKENDS`.
        device: where to run (``onnxruntime`` is CPU-only).
        channels_last: NHWC activations; default: on for CPU with ``torch`` / ``torch_compile``.
        threads: intra-op threads; set process-wide for PyTorch (``torch.set_num_threads``) and per
            session for ONNX Runtime. Default: leave PyTorch's setting (one per core).
        cache_dir: where ``onnxruntime`` keeps its ONNX files (default: a temporary folder, removed once
            the session is loaded).
        workers: run each batch as up to this many parts in parallel threads, each with
            ``threads // workers`` (at least 1) intra-op threads; PyTorch's thread count is set to that
            process-wide. 1 (default): the whole batch in the calling thread with ``threads`` threads.
            CPU only.
        precision: ``fp32`` (default: the forms above), ``bf16`` (weights and activations in bfloat16,
            with ``eager``, ``torch`` or ``torch_compile``) or ``int8`` (``onnxruntime``: the quantized ONNX
            file ``int8_model``; ``torch_compile``: PyTorch's PT2E quantization calibrated on
            ``calibration``, needs torchao). See :mod:`monetpipe.inference.precision`.
        int8_model: a QDQ ONNX file from :func:`monetpipe.inference.precision.quantize_onnx_int8`.
        calibration: ``(N, C, H, W)`` slices for PT2E calibration.

    Returns:
        An :class:`InferenceModel`; ``f(x)`` returns logits like ``model.eval()(x)``.

    Raises:
        MonetError: unknown backend, or a backend that is not installed / not usable on ``device``.
    """
    from monetpipe.inference.precision import check_backend_precision

    device = torch.device(device)
    key = _checked_backend(backend, device, workers)
    precision = check_backend_precision(key, precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    total = set_threads(threads)
    if workers > 1:
        threads = set_threads(max(1, total // workers))
    if channels_last is None:
        channels_last = device.type == "cpu" and key in ("torch", "torch_compile")
    start = time.perf_counter()
    holder: list[InferenceModel] = []
    module = None
    if precision == "int8":
        run, channels_last = _int8(model, key, device, channels_last, threads, workers, int8_model, calibration, holder)
    elif key == "eager":
        module = copy.deepcopy(model).to(device).to(dtype).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        run = _module_runner(module, device, channels_last, dtype)
    elif key == "torch":
        module = prepared_module(model, device, channels_last, dtype=dtype)
        run = _module_runner(module, device, channels_last, dtype)
    elif key == "torch_compile":
        run = _compiled(model, device, channels_last, holder, workers, dtype)
    else:
        run = _onnxruntime(model, threads, Path(cache_dir) if cache_dir else None, holder)
        channels_last = False
    if workers > 1:
        run = _SliceParallel(run, workers, torch.get_num_threads())
    inference_model = InferenceModel(
        key, run, model, device, channels_last, time.perf_counter() - start, module, workers, precision
    )
    holder.append(inference_model)
    logger.info(
        "prepared %s for inference: backend %s, %s on %s%s, %d thread(s)%s",
        inference_model.model_name,
        key,
        precision,
        device,
        ", channels_last" if channels_last else "",
        torch.get_num_threads(),
        f" in each of {workers} workers" if workers > 1 else "",
    )
    return inference_model
