"""Reduced-precision inference: bfloat16 and int8 forms of a network, their calibration and validation.

``fp32`` is the forms of :mod:`monetpipe.inference.backends` unchanged. ``bf16`` casts the folded
network and its activations to bfloat16 (``torch`` / ``torch_compile`` / ``eager``; oneDNN runs it
natively on CPUs with AVX-512 BF16 or AMX and emulates it, slower than fp32, elsewhere). ``int8`` is
ONNX Runtime's static QDQ quantization of the folded network (per-channel int8 weights, uint8
activations), calibrated on the model's own training slices and stored beside the checkpoint, so
prediction needs no data: ``fold_<k>/precision/int8_<checkpoint>.onnx``. PyTorch's PT2E quantization
(torchao's ``X86InductorQuantizer`` + Inductor) is the other maintained int8 path; ``monet_benchmark
--backend torch_compile --precision int8`` measures it, and docs/performance.md says why ONNX Runtime was
chosen for ``monet_predict``.

A reduced precision is used by ``--precision auto`` only after :func:`prepare_precision` checked it:
the fold's validation cases are predicted in fp32 and in the reduced precision, the difference in mean
foreground Dice is written to ``fold_<k>/precision/validation_<checkpoint>.json``, and a difference above
the tolerance is refused (:class:`~monetpipe.errors.MonetError`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monetpipe.cpu_features import PRECISIONS, auto_precision, cpu_features, supported_precisions
from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json

log = logging.getLogger(__name__)

CHOICES = (*PRECISIONS, "auto")
DEFAULT_TOLERANCE = 0.005  # mean foreground Dice, fp32 minus the reduced precision
CALIBRATION_SLICES = 256
PRECISION_DIR = "precision"
#: the backends each reduced precision runs with (the first is what monet_predict uses)
BACKENDS_FOR = {"fp32": ("torch", "torch_compile", "onnxruntime", "eager"), "bf16": ("torch", "torch_compile", "eager")}
BACKENDS_FOR["int8"] = ("onnxruntime", "torch_compile")


def check_precision(precision: str, allow_auto: bool = True) -> str:
    """``precision`` lower-cased, after refusing an unknown name."""
    key = str(precision).strip().lower()
    choices = CHOICES if allow_auto else PRECISIONS
    if key not in choices:
        raise MonetError(f"unknown --precision {precision!r}; choose one of {', '.join(choices)}")
    return key


def check_backend_precision(backend: str, precision: str, device: torch.device) -> str:
    """``precision`` checked against the backend and device it is to run with."""
    key = check_precision(precision, allow_auto=False)
    if key != "fp32" and device.type != "cpu":
        raise MonetError(f"--precision {key} is for the CPU; on {device} use --precision fp32 (CUDA has --amp)")
    if backend not in BACKENDS_FOR[key]:
        raise MonetError(
            f"--precision {key} runs with --backend {' or '.join(BACKENDS_FOR[key])}, not {backend}; "
            f"choose one of those (or --precision fp32)."
        )
    return key


def predict_backend(precision: str, backend: str) -> str:
    """The backend ``monet_predict`` runs ``precision`` with: ``backend`` if it can, else the precision's first."""
    return backend if backend in BACKENDS_FOR[precision] else BACKENDS_FOR[precision][0]


# ---------------------------------------------------------------------------------------------- int8


def _onnx_quantization():
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise MonetError(
            "--precision int8 needs ONNX Runtime: pip install 'monetpipe[onnx]' (or use --precision fp32)"
        ) from exc
    return quantization


def quantize_onnx_int8(model: nn.Module, calibration: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``model`` (folded) as a static QDQ int8 ONNX graph with free batch, height and width.

    Weights int8 per output channel with 7-bit range (``reduce_range``: CPUs without VNNI multiply
    uint8 x int8 pairs into 16-bit sums that saturate at full range), activations uint8 with ranges
    from min/max calibration on ``calibration``.

    Args:
        model: an eval-mode network (not modified).
        calibration: ``(N, C, H, W)`` float32 slices, H and W multiples of the network's size divisor.
        path: the ``.onnx`` file to write (atomically).
    """
    from monetpipe.inference.backends import prepared_module
    from monetpipe.networks import export_onnx

    quant = _onnx_quantization()
    path = Path(path)
    fused = prepared_module(model, torch.device("cpu"), channels_last=False)
    batches = [{"image": calibration[i : i + 8].numpy()} for i in range(0, calibration.shape[0], 8)]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    c, h, w = calibration.shape[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="monet_int8_", dir=path.parent) as tmp:
        fp32 = export_onnx(fused, Path(tmp) / "fp32.onnx", c, h, w, dynamic_size=True)
        out = Path(tmp) / "int8.onnx"
        quant.quantize_static(
            str(fp32),
            str(out),
            Reader(),
            quant_format=quant.QuantFormat.QDQ,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            calibrate_method=quant.CalibrationMethod.MinMax,
        )
        os.replace(out, path)
    return path


def onnx_int8_runner(path: Path, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> logits`` running the quantized ONNX file with ONNX Runtime (CPU)."""
    from monetpipe.inference.backends import _onnx_session

    _onnx_quantization()
    if not path.is_file():
        raise MonetError(f"{path}: int8 model not found. Prepare it: monet_predict --prepare-precision int8 ...")
    session = _onnx_session(path, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        (logits,) = session.run(None, {"image": x.numpy()})
        return torch.from_numpy(logits)

    return run


def pt2e_int8_module(model: nn.Module, calibration: torch.Tensor, channels_last: bool) -> nn.Module:
    """PyTorch's PT2E int8 form: torchao's ``X86InductorQuantizer`` on the exported folded network,
    calibrated on ``calibration``; run it through ``torch.compile`` with freezing (backends does)."""
    from monetpipe.inference.backends import prepared_module

    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise MonetError(
            "int8 with --backend torch_compile (PT2E) needs torchao: pip install 'monetpipe[int8]'"
        ) from exc
    fused = prepared_module(model, torch.device("cpu"), channels_last, exp_elu=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    example = calibration[:1].contiguous(memory_format=fmt)
    exported = torch.export.export(fused, (example,)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(calibration.shape[0]):  # exported for batch 1
            prepared(calibration[i : i + 1].contiguous(memory_format=fmt))
    return convert_pt2e(prepared)


# ------------------------------------------------------------------------------------- calibration


def calibration_slices(
    data_files: Sequence[Path],
    count: int = CALIBRATION_SLICES,
    multiple: int = 16,
    seed: int = 0,
    context: int = 0,
) -> torch.Tensor:
    """``count`` slices drawn evenly from cached cases (``<case>_data.npy``, ``(C, S, H, W)``), each
    zero-padded (centred, as prediction pads) to one size, a multiple of ``multiple``: ``(N, C, H, W)``.
    With ``context`` K (2.5D plans) each slice comes with its K neighbours on each side as channels, as the
    network is fed: ``(N, C * (2K + 1), H, W)``."""
    from monetpipe.preprocessing.context import stack_context

    rng = np.random.default_rng(seed)
    arrays = [np.load(f, mmap_mode="r") for f in data_files]
    total = sum(a.shape[1] for a in arrays)
    if total == 0:
        raise MonetError(f"{data_files[0].parent}: the cached training cases hold no slices to calibrate on")
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    offsets = np.cumsum([0] + [a.shape[1] for a in arrays])
    slices = []
    for index in chosen:
        case = int(np.searchsorted(offsets, index, side="right") - 1)
        stack = stack_context(arrays[case], [index - offsets[case]], context)[0]  # (C * (2K + 1), H, W)
        slices.append(np.asarray(stack, dtype=np.float32))
    h = -(-max(s.shape[-2] for s in slices) // multiple) * multiple
    w = -(-max(s.shape[-1] for s in slices) // multiple) * multiple
    out = np.zeros((len(slices), slices[0].shape[0], h, w), np.float32)
    for i, s in enumerate(slices):
        top, left = (h - s.shape[-2]) // 2, (w - s.shape[-1]) // 2
        out[i, :, top : top + s.shape[-2], left : left + s.shape[-1]] = s
    return torch.from_numpy(out)


def file_sha1(path: Path) -> str:
    """SHA-1 of a file's content; hashed once per (path, size, modification time) in a process, since
    resolving ``auto`` and checking a precision both read the same checkpoints' records."""
    st = os.stat(path)
    return _sha1(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha1(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PrecisionFiles:
    """What a fold keeps for reduced precision, per checkpoint: ``fold_<k>/precision/``."""

    fold_dir: Path
    checkpoint: str = "final"

    @property
    def folder(self) -> Path:
        return self.fold_dir / PRECISION_DIR

    @property
    def checkpoint_file(self) -> Path:
        return self.fold_dir / f"checkpoint_{self.checkpoint}.pth"

    @property
    def int8_model(self) -> Path:
        return self.folder / f"int8_{self.checkpoint}.onnx"

    @property
    def int8_record(self) -> Path:
        """How the int8 model was made: checkpoint hash, calibration cases and slices."""
        return self.folder / f"int8_{self.checkpoint}.json"

    @property
    def validation(self) -> Path:
        return self.folder / f"validation_{self.checkpoint}.json"

    def read_validation(self) -> dict:
        """The validation record, or an empty one when absent, unreadable or for another checkpoint file."""
        if not self.validation.is_file() or not self.checkpoint_file.is_file():
            return {"precisions": {}}
        try:
            record = read_json(self.validation)
        except (OSError, ValueError):
            log.warning("%s: unreadable; treated as not validated", self.validation)
            return {"precisions": {}}
        if record.get("checkpoint_sha1") != file_sha1(self.checkpoint_file):
            log.warning("%s: made for an earlier %s; prepare again", self.validation, self.checkpoint_file.name)
            return {"precisions": {}}
        return record

    def validated(self, record: dict | None = None) -> set[str]:
        """Precisions that passed the Dice check and ran faster than fp32 in it (fp32 always), from
        ``record`` (:meth:`read_validation`, read here when not given)."""
        entries = (self.read_validation() if record is None else record).get("precisions", {})
        return {"fp32"} | {p for p, e in entries.items() if e.get("passed") and e.get("faster")}

    def int8_current(self) -> bool:
        """The stored int8 model was made from this checkpoint file (so it can be reused)."""
        if not (self.int8_model.is_file() and self.int8_record.is_file()):
            return False
        try:
            return read_json(self.int8_record).get("checkpoint_sha1") == file_sha1(self.checkpoint_file)
        except (OSError, ValueError):
            return False


def resolve_precision(requested: str, fold_dirs: Sequence[Path], checkpoint: str, device) -> str:
    """``auto`` -> :func:`~monetpipe.cpu_features.auto_precision` of what every fold validated; else as given."""
    key = check_precision(requested)
    if key != "auto":
        return key
    validated = set(PRECISIONS)
    seconds: dict[str, float] = {}
    for fold_dir in fold_dirs:
        files = PrecisionFiles(Path(fold_dir), checkpoint)
        record = files.read_validation()
        validated &= files.validated(record)
        for name, entry in record.get("precisions", {}).items():
            seconds[name] = seconds.get(name, 0.0) + float(entry.get("network_s", math.nan))
    features = cpu_features()
    supported = supported_precisions(features)
    chosen = auto_precision(validated, features, getattr(device, "type", str(device)))
    # Two reduced precisions both passed and both ran faster than fp32: the one measured faster on these
    # folds' validation cases wins (auto_precision's order by CPU features is only the fallback).
    usable = [p for p in ("bf16", "int8") if p in validated and p in supported]
    if chosen != "fp32" and len(usable) == 2 and all(math.isfinite(seconds.get(p, math.nan)) for p in usable):
        chosen = min(usable, key=lambda p: seconds[p])
    log.info("--precision auto: %s (validated: %s; %s)", chosen, ", ".join(sorted(validated)), features.summary())
    untried = [p for p in supported if p != "fp32" and p not in seconds]
    if chosen == "fp32" and untried and getattr(device, "type", str(device)) == "cpu" and fold_dirs:
        folder = Path(fold_dirs[0]).parent
        log.info(
            "this CPU also runs %s; to let auto use it, check it against fp32 once: monet_predict "
            "--prepare-precision %s --model-folder %s (models trained on such a CPU are checked by monet_train)",
            " and ".join(untried),
            untried[0],
            folder,
        )
    return chosen


def check_validated(precision: str, fold_dirs: Sequence[Path], checkpoint: str) -> None:
    """Refuse a reduced precision that failed its Dice check for a fold, and int8 without a current model.

    bf16 needs nothing stored, so an unchecked bf16 runs when asked for explicitly (``auto`` never
    picks it unchecked).
    """
    if precision == "fp32":
        return
    for fold_dir in fold_dirs:
        files = PrecisionFiles(Path(fold_dir), checkpoint)
        fold = Path(fold_dir).name.removeprefix("fold_")
        command = f"monet_predict --prepare-precision int8 --model-folder {Path(fold_dir).parent} -f {fold}"
        if precision == "int8" and not files.int8_current():
            raise MonetError(
                f"{files.int8_model}: no int8 model for this {files.checkpoint_file.name}. Prepare and validate "
                f"it first: {command}"
            )
        entry = files.read_validation().get("precisions", {}).get(precision)
        if entry is not None and not entry.get("passed"):
            raise MonetError(refusal_message(precision, entry["difference"], entry["tolerance"], files.validation))


def refusal_message(precision: str, difference: float, tolerance: float, record: Path) -> str:
    return (
        f"--precision {precision}: mean foreground Dice on the fold's validation cases is {difference:.4f} "
        f"below fp32, more than the tolerance {tolerance:.4f} ({record}). Predict with --precision fp32 "
        f"(or auto, which then stays at fp32); for int8 you may re-prepare with more calibration slices "
        f"(--calibration-slices), or accept the loss explicitly with a larger --tolerance."
    )
