"""What this CPU can compute fast: native bfloat16, int8 dot products (VNNI), AMX.

Reduced precision only pays where the CPU has instructions for it: ``avx512_bf16`` / ``amx_bf16`` do
bfloat16 dot products at twice the fp32 rate, ``avx512_vnni`` / ``avx_vnni`` / ``amx_int8`` int8 ones at
four times; without them PyTorch emulates bfloat16 (slower than fp32). int8 still runs on plain AVX2
(``vpmaddubsw``), at a smaller gain that must be measured. :func:`cpu_features` reads the flags once
(Linux ``/proc/cpuinfo``; elsewhere none are reported, so every ``auto`` choice falls back to fp32) and
:func:`auto_precision` turns them into the precision ``--precision auto`` uses.

Set ``MONETPIPE_CPU_FLAGS`` (comma-separated, e.g. ``avx2,avx512_bf16``; empty for none) to override
the detected flags: to test the fallbacks, or to keep ``auto`` at fp32 on a machine where the fast path
misbehaves. torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "int8")
ENV_FLAGS = "MONETPIPE_CPU_FLAGS"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 / AMX; "bf16" is Arm's (Neoverse V1 / Graviton3)
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's reduced-precision abilities, as flags and as yes/no answers."""

    flags: frozenset[str]
    model: str = ""

    @property
    def bf16(self) -> bool:
        """Native bfloat16 dot products (no emulation)."""
        return any(f in self.flags for f in _BF16_FLAGS)

    @property
    def vnni(self) -> bool:
        """int8 dot products with 32-bit accumulation in one instruction (VNNI or AMX)."""
        return any(f in self.flags for f in _VNNI_FLAGS)

    @property
    def amx(self) -> bool:
        return any(f in self.flags for f in _AMX_FLAGS)

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def int8(self) -> bool:
        """Some int8 path exists (VNNI, or AVX2's 8-bit multiply-add; gains without VNNI are smaller)."""
        return self.vnni or self.avx2 or "asimddp" in self.flags

    def summary(self) -> str:
        """One line for logs and benchmark tables, e.g. ``AMD EPYC: avx2; no bf16, no VNNI, no AMX``."""
        yes = [n for n, ok in (("avx2", self.avx2), ("bf16", self.bf16), ("VNNI", self.vnni), ("AMX", self.amx)) if ok]
        no = [n for n, ok in (("bf16", self.bf16), ("VNNI", self.vnni), ("AMX", self.amx)) if not ok]
        text = ", ".join(yes) or "no SIMD extensions reported"
        if no:
            text += "; no " + ", no ".join(no)
        return f"{self.model or platform.machine() or 'CPU'}: {text}"

    def to_dict(self) -> dict:
        return {"model": self.model, "bf16": self.bf16, "vnni": self.vnni, "amx": self.amx, "avx2": self.avx2}


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[frozenset[str], str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return frozenset(), ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:  # x86: flags; Arm: Features
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return frozenset(flags), model


def parse_flags(text: str) -> frozenset[str]:
    """``"avx2, avx512_bf16"`` -> ``{"avx2", "avx512_bf16"}`` (lower case, blanks dropped)."""
    return frozenset(f.strip().lower() for f in text.replace(" ", ",").split(",") if f.strip())


@functools.lru_cache(maxsize=1)
def _detected() -> CpuFeatures:
    flags, model = _read_cpuinfo()
    return CpuFeatures(flags, model)


def cpu_features(flags: Iterable[str] | None = None) -> CpuFeatures:
    """This machine's features (``MONETPIPE_CPU_FLAGS`` overrides the detected flags), or those of ``flags``."""
    if flags is not None:
        return CpuFeatures(frozenset(f.lower() for f in flags))
    override = os.environ.get(ENV_FLAGS)
    if override is not None:
        return CpuFeatures(parse_flags(override), _detected().model)
    return _detected()


def supported_precisions(features: CpuFeatures | None = None) -> list[str]:
    """The precisions worth trying on this CPU, fp32 first: bf16 only where it is native."""
    f = features or cpu_features()
    return ["fp32"] + (["bf16"] if f.bf16 else []) + (["int8"] if f.int8 else [])


def auto_precision(
    validated: Iterable[str] = ("fp32",), features: CpuFeatures | None = None, device_type: str = "cpu"
) -> str:
    """The precision ``--precision auto`` runs: the fastest the CPU supports *and* the model was validated for.

    Args:
        validated: precisions the model passed its check against fp32 in (fp32 always counts).
        features: the CPU's features (default: this machine's).
        device_type: ``cpu``; any other device keeps fp32 here (CUDA has its own float16 AMP).

    Order of preference: int8 with VNNI/AMX, then native bf16, then int8 without VNNI (plain AVX2: a
    smaller gain, so whoever marks int8 validated there should also have measured it faster), else fp32.
    """
    if device_type != "cpu":
        return "fp32"
    f = features or cpu_features()
    ok = set(validated) | {"fp32"}
    if "int8" in ok and f.vnni:
        return "int8"
    if "bf16" in ok and f.bf16:
        return "bf16"
    if "int8" in ok and f.int8:
        return "int8"
    return "fp32"
