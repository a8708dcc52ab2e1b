"""Where the work runs: the torch device, the CPUs this process may use, PyTorch's CPU threads.

One place for training, inference, benchmarking and federated runs. torch is imported inside the
functions, so importing this module stays cheap (``--help`` is instant).
"""

from __future__ import annotations

import os
from pathlib import Path

from monetpipe.errors import MonetError


def resolve_device(device: str | None = "auto"):
    """``auto`` -> CUDA if available, else Apple MPS, else CPU; an explicit device must exist.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` (``cuda:1``) or ``mps`` (case-insensitive; ``None`` = ``auto``).

    Returns:
        A ``torch.device``.

    Raises:
        MonetError: the requested device is unknown or not available on this machine.
    """
    import torch

    device = str(device or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MonetError("--device cuda: no CUDA GPU is visible to PyTorch. Use --device cpu (or auto).")
    if device == "mps" and not has_mps:
        raise MonetError("--device mps: Apple MPS is not available here. Use --device cpu (or auto).")
    try:
        return torch.device(device)
    except RuntimeError:
        raise MonetError(f"--device {device!r} unknown; use auto, cpu, cuda or mps.") from None


def available_cpus() -> int:
    """CPUs this process may run on, at least 1.

    The affinity mask (``taskset``, a cgroup cpuset) and a container's CPU quota (cgroup v2
    ``cpu.max``) are both respected: a container limited to 4 CPUs on a 64-core host gets 4.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        n = os.cpu_count() or 1
    try:  # a container's CPU quota (cgroup v2) can be far below the visible cores
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads(num_threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads for CPU inference and return the number used.

    Default: the user's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` if set (they know their machine),
    else :func:`available_cpus`, capped by PyTorch's own choice (physical cores, since hyper-threads
    slow convolutions down).
    """
    import torch

    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")
        if env and env.isdigit() and int(env) > 0:
            num_threads = int(env)
        else:
            num_threads = min(available_cpus(), torch.get_num_threads())
    num_threads = max(1, int(num_threads))
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads
