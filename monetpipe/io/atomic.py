"""Atomic file writes: write to a hidden temporary file in the same folder, then ``os.replace``.

A reader therefore sees either the old file or the complete new one, never half a file, and an
interrupted run leaves at most a ``.tmp-*`` file that the next run ignores and overwrites.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from monetpipe.errors import MonetError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffixes); move it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_writable_dir(folder: str | os.PathLike, fix: str) -> Path:
    """Create ``folder`` if needed and prove it writable with a probe file, before any work starts.

    Args:
        folder: the output folder.
        fix: what the user should do, appended to the message (e.g. "point MONET_preprocessed elsewhere").

    Raises:
        MonetError: the folder cannot be created or written; the message names it, the reason and ``fix``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".tmp-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise MonetError(f"{folder}: folder is not writable ({exc.strerror or exc}). {fix}") from None
    return folder


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Save ``array`` as ``.npy`` (memory-mappable), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
