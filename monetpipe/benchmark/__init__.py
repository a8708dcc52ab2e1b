"""Paper Tables 2 and 3 on the machine at hand: latency, FLOP floor, parameters, serialized size.

``run_benchmark(BenchmarkConfig(...))`` measures; ``monet_benchmark`` is its command line. The fast
inference backends it compares live in :mod:`monetpipe.inference.backends`. See docs/performance.md.
Names are imported on first use, so ``monet_benchmark --help`` does not load PyTorch.
"""

from __future__ import annotations

import importlib

__all__ = ["BenchmarkConfig", "model_facts", "run_benchmark"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("monetpipe.benchmark.runner"), name)
    raise AttributeError(f"module 'monetpipe.benchmark' has no attribute {name!r}")
