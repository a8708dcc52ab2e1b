"""Stage 1: fingerprint a task, plan a configuration, cache 2D slices, fix the splits.

Library use::

    from monetpipe.preprocessing import plan_and_preprocess
    plan_and_preprocess("Task04", num_processes=2)
"""

from __future__ import annotations

__all__ = ["plan_and_preprocess"]


def __getattr__(name: str):
    # Imported on first use, so `monet_plan_and_preprocess --help` (which imports this package's cli) stays instant.
    if name == "plan_and_preprocess":
        from monetpipe.preprocessing.api import plan_and_preprocess

        return plan_and_preprocess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
