"""Training under things going wrong: two runs in one folder, killed and corrupted checkpoints, crafted splits,
slow validations under torchrun."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from monetpipe.training import lock as lock_module
from monetpipe.training.lock import LOCK_NAME, RunFolderBusyError, run_folder_lock

REPO = Path(__file__).resolve().parents[1]


def _hold_lock_in_child(fold_dir: Path) -> subprocess.Popen:
    """A real second process that takes the lock and sleeps; returns once it holds it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from monetpipe.training.lock import run_folder_lock
        with run_folder_lock(Path({str(fold_dir)!r}), "monet_train"):
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "locked"
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_second_run_is_refused_while_the_first_lives_and_takes_over_after_a_kill(tmp_path, caplog):
    fold_dir = tmp_path / "results" / "Task04_Hippocampus" / "monet__monetPlans" / "fold_0"
    child = _hold_lock_in_child(fold_dir)
    try:
        with pytest.raises(RunFolderBusyError) as info:
            with run_folder_lock(fold_dir):
                pytest.fail("the lock was taken twice")
        message = str(info.value)
        assert str(fold_dir) in message and "in use by monet_train" in message
        assert f"pid {child.pid} on host {socket.gethostname()}" in message
        assert "wait for it or stop it" in message
    finally:
        _kill(child)
    assert (fold_dir / LOCK_NAME).is_file()  # killed: the file is left behind, the OS lock is not
    with caplog.at_level(logging.WARNING, logger="monetpipe.training.lock"):
        with run_folder_lock(fold_dir, "monet_federated"):
            assert lock_module._read_holder(fold_dir / LOCK_NAME)["pid"] == os.getpid()
    assert f"pid {child.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (fold_dir / LOCK_NAME).exists()  # a clean exit removes it


def test_the_lock_is_released_after_an_error_and_a_refusal_leaves_no_folder(tmp_path):
    fold_dir = tmp_path / "fold_0"
    with pytest.raises(ValueError):
        with run_folder_lock(fold_dir):
            (fold_dir / "config.json").write_text("{}")
            raise ValueError("boom")
    with run_folder_lock(fold_dir):  # free again
        pass
    other = tmp_path / "fold_1"
    with run_folder_lock(other):
        pass
    assert not other.exists()  # created for the lock, left empty: removed


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_the_fallback_without_fcntl_refuses_a_live_holder_and_replaces_a_dead_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lock_module, "_fcntl", None)
    fold_dir = tmp_path / "fold_0"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        fold_dir.mkdir()
        holder = {"command": "monet_train", "pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}
        (fold_dir / LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(RunFolderBusyError, match=f"pid {sleeper.pid} on host"):
            with run_folder_lock(fold_dir):
                pass
    finally:
        _kill(sleeper)
    with caplog.at_level(logging.WARNING, logger="monetpipe.training.lock"):
        with run_folder_lock(fold_dir):
            assert lock_module._read_holder(fold_dir / LOCK_NAME)["pid"] == os.getpid()
    assert "no longer running" in caplog.text
    assert not (fold_dir / LOCK_NAME).exists()
