"""Run a function over cases in worker processes with a progress bar, keeping input order.

Workers end with their parent: each holds the read end of a pipe whose only write end stays in the
parent, and a watchdog thread exits the worker when the pipe reports end-of-file, which the kernel
signals as soon as the parent is gone, however it died (even ``kill -9``, even while it is an
unreaped zombie). Without it, a killed ``-np N`` run left its workers computing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def _exit_when_parent_dies(parent_alive: Connection) -> None:
    try:
        parent_alive.recv()  # the parent never sends: this returns only by EOFError when it is gone
    except (EOFError, OSError):
        pass
    os._exit(1)  # a worker whose parent is gone has nobody to report to


def _init_worker(parent_alive: Connection | None = None) -> None:
    if parent_alive is not None:
        threading.Thread(target=_exit_when_parent_dies, args=(parent_alive,), daemon=True).start()
    # Each worker is one of N processes: let it use one thread, not all cores each.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def map_cases(fn: Callable[[T], R], items: Sequence[T], num_processes: int = 1, desc: str = "") -> list[R]:
    """``[fn(x) for x in items]`` in ``num_processes`` workers (in-process when 1), with tqdm.

    The first exception raised by ``fn`` propagates unchanged (its message names the file). Workers
    exit on their own when this process dies.
    """
    if num_processes <= 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, disable=not desc)]
    with worker_pool(num_processes) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=1), total=len(items), desc=desc, disable=not desc))


@contextlib.contextmanager
def worker_pool(max_workers: int) -> Iterator[ProcessPoolExecutor]:
    """A forkserver ``ProcessPoolExecutor`` whose workers use one thread each and exit with this process."""
    # forkserver: workers never inherit a parent's torch/OpenMP thread state (fork can deadlock there),
    # nor the pipe's write end, so its end-of-file means exactly "the parent is gone".
    ctx = multiprocessing.get_context("forkserver")
    parent_alive, keep_open = ctx.Pipe(duplex=False)
    try:
        with ProcessPoolExecutor(
            max_workers=max_workers, initializer=_init_worker, initargs=(parent_alive,), mp_context=ctx
        ) as pool:
            yield pool
    finally:
        parent_alive.close()
        keep_open.close()
