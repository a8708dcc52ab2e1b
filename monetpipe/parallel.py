"""Run a function over cases in worker processes with a progress bar, keeping input order."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def _init_worker() -> None:
    # Each worker is one of N processes: let it use one thread, not all cores each.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def map_cases(fn: Callable[[T], R], items: Sequence[T], num_processes: int = 1, desc: str = "") -> list[R]:
    """``[fn(x) for x in items]`` in ``num_processes`` workers (in-process when 1), with tqdm.

    The first exception raised by ``fn`` propagates unchanged (its message names the file).
    """
    if num_processes <= 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, disable=not desc)]
    # forkserver: workers never inherit a parent's torch/OpenMP thread state (fork can deadlock there).
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=num_processes, initializer=_init_worker, mp_context=ctx) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=1), total=len(items), desc=desc, disable=not desc))
