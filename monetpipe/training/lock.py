"""One writer per run folder: :func:`run_folder_lock` refuses a second ``monet_train`` / ``monet_federated``.

The lock is an OS lock (``fcntl.flock``) on ``<fold_dir>/run.lock``, so it disappears with the process
that holds it, however that process ends (``kill -9``, power loss, a crashed node of a local
filesystem). The file also holds who took it (command, pid, host, start time) as JSON, only to make
the refusal message useful. A ``run.lock`` left behind by a killed process is therefore not a lock: the
next run takes it over and logs a warning naming the dead holder.

Where ``fcntl`` is missing (Windows), the file itself is the lock: created exclusively, and taken over
when the process it names is no longer running on this host. A lock of another host cannot be checked
there; the message then says which file to delete once that run is gone.

Not re-entrant: one process takes a folder's lock once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.atomic import ensure_writable_dir

try:
    import fcntl as _fcntl
except ImportError:  # Windows
    _fcntl = None

log = logging.getLogger(__name__)
LOCK_NAME = "run.lock"


class RunFolderBusyError(MonetError):
    """Another live process holds the run folder's lock."""


def _describe(holder: dict) -> str:
    return (
        f"{holder.get('command', 'another process')} (pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
    )


def _read_holder(path: Path) -> dict:
    """The JSON a lock file holds; ``{}`` when it is empty, unreadable or not ours."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _me(command: str) -> dict:
    return {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _busy(fold_dir: Path, holder: dict) -> RunFolderBusyError:
    return RunFolderBusyError(f"{fold_dir} is in use by {_describe(holder)}; wait for it or stop it.")


@contextlib.contextmanager
def run_folder_lock(fold_dir: Path, command: str = "monet_train") -> Iterator[Path]:
    """Hold ``fold_dir``'s lock for the ``with`` block (``fold_dir`` is created if needed).

    Args:
        fold_dir: the run folder (``.../fold_<k>``) that this process will write.
        command: the name shown to a process that is refused (``monet_train``, ``monet_federated``).

    Yields:
        The lock file.

    Raises:
        RunFolderBusyError: a live process holds the lock; the message names it (command, pid, host, start).
    """
    fold_dir = Path(fold_dir)
    created = [d for d in (fold_dir, *fold_dir.parents) if not d.is_dir()]  # innermost first
    ensure_writable_dir(fold_dir, "Make it writable, or set MONET_results to a writable folder.")
    path = fold_dir / LOCK_NAME
    take = _flock if _fcntl is not None else _exclusive_file
    try:
        with take(fold_dir, path, command):
            yield path
    finally:
        for folder in created:  # a refused or empty run leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def _flock(fold_dir: Path, path: Path, command: str) -> Iterator[None]:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise _busy(fold_dir, _read_holder(path)) from None
        # The previous holder may have unlinked the file between our open and our flock: then we locked
        # an orphan inode that nobody else will see. Start again on the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_holder(path)
        if previous:
            log.warning("%s: taking over the lock of %s, which is no longer running", fold_dir, _describe(previous))
        data = json.dumps(_me(command)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        yield
    finally:
        # unlink while still holding the lock, so that no one can be waiting on this inode's content
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def _exclusive_file(fold_dir: Path, path: Path, command: str) -> Iterator[None]:
    """The fallback without ``fcntl``: the file's existence is the lock; a dead holder's file is replaced."""
    me = _me(command)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            same_host = holder.get("host") == me["host"]
            pid = holder.get("pid")
            if not holder or (same_host and isinstance(pid, int) and not _pid_alive(pid)):
                log.warning("%s: taking over the lock of %s, which is no longer running", fold_dir, _describe(holder))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            if not same_host:
                raise RunFolderBusyError(
                    f"{fold_dir} is in use by {_describe(holder)}; wait for it or stop it (if that run is gone, "
                    f"delete {path})."
                ) from None
            raise _busy(fold_dir, holder) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise _busy(fold_dir, _read_holder(path))
    try:
        yield
    finally:
        if _read_holder(path).get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                os.unlink(path)
