"""Stage 1: fingerprint a task, plan a configuration, cache 2D slices, fix the splits.

Library use::

    from monetpipe.preprocessing import plan_and_preprocess
    plan_and_preprocess("Task04", num_processes=2)
"""

from monetpipe.preprocessing.api import plan_and_preprocess

__all__ = ["plan_and_preprocess"]
