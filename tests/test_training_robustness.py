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
import test_training

from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.training import lock as lock_module
from monetpipe.training.lock import LOCK_NAME, RunFolderBusyError, run_folder_lock

REPO = Path(__file__).resolve().parents[1]
TASK = test_training.TASK
synthetic_task, roots = test_training.synthetic_task, test_training.roots  # the planned Task901, shared fixtures


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
    fold_dir = tmp_path / "results" / "Task04_Hippocampus" / f"monet__{DEFAULT_PLANS}" / "fold_0"
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
    other = tmp_path / "results" / "Task04_Hippocampus" / f"monet__{DEFAULT_PLANS}" / "fold_1"
    with run_folder_lock(other):
        pass
    assert not (tmp_path / "results").exists()  # created for the lock, left empty: removed


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


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_monet_train_refuses_a_fold_another_process_trains(roots, monkeypatch, capsys):
    fold_dir = roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    child = _hold_lock_in_child(fold_dir)
    try:
        assert _monet_train(monkeypatch, *TINY_ARGS) == 1
    finally:
        _kill(child)
    err = capsys.readouterr().err
    assert f"error: {fold_dir} is in use by monet_train (pid {child.pid} on host" in err
    assert sorted(p.name for p in fold_dir.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing


# ---- --continue, checkpoint_previous and the write order ---------------------------------------------

TINY_ARGS = ["--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "4", "--num-workers", "0"]
TINY_ARGS += ["--num-threads", "1", "--val-batch-size", "16"]


def _monet_train(monkeypatch, *args: str) -> int:
    """``monet_train`` in this process, with ``sys.argv`` as the console script sees it."""
    from monetpipe.training.cli import main

    argv = ["-t", "901", "-m", "monet", *args]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/monet_train", *argv])
    return main(argv)


@pytest.fixture()
def unfinished_run(roots, monkeypatch):
    """A real 2-epoch run whose checkpoint_final was removed: a run stopped after epoch 2 of 3."""
    assert _monet_train(monkeypatch, *TINY_ARGS) == 0
    fold = roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    (fold / "checkpoint_final.pth").unlink()
    return fold


def test_latest_previous_and_best_are_consistent_after_each_epoch(unfinished_run):
    import torch

    latest = torch.load(unfinished_run / "checkpoint_latest.pth", weights_only=True)
    previous = torch.load(unfinished_run / "checkpoint_previous.pth", weights_only=True)
    best = torch.load(unfinished_run / "checkpoint_best.pth", weights_only=True)
    assert (latest["epoch"], previous["epoch"]) == (2, 1)
    assert previous["history"] == latest["history"][:1]
    assert best["best_dice"] == latest["best_dice"] and best["epoch"] <= latest["epoch"]
    assert not list(unfinished_run.glob(".tmp-*"))
    assert not (unfinished_run / LOCK_NAME).exists()


def test_continue_without_latest_but_with_a_log_refuses_and_keeps_the_log(unfinished_run, monkeypatch, capsys):
    (unfinished_run / "checkpoint_latest.pth").unlink()
    log_before = (unfinished_run / "training_log.csv").read_bytes()
    assert _monet_train(monkeypatch, *TINY_ARGS, "--epochs", "3", "--continue") == 1
    err = capsys.readouterr().err
    assert f"{unfinished_run} holds a started run (training_log.csv with 2 epoch(s)" in err
    assert "no checkpoint_latest.pth; --continue has nothing to continue from" in err
    assert "monet_train -t 901 -m monet" in err and "--continue-from previous" in err
    assert f"delete {unfinished_run} to start over" in err
    assert _monet_train(monkeypatch, *TINY_ARGS, "--epochs", "3") == 1  # without --continue: the same refusal
    assert "starting over would overwrite it" in capsys.readouterr().err
    assert (unfinished_run / "training_log.csv").read_bytes() == log_before


def test_a_corrupt_latest_names_itself_and_its_command_continues_from_previous(unfinished_run, monkeypatch, capsys):
    from monetpipe.training.progress import read_log_csv

    latest = unfinished_run / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # cut, as a full disk leaves it
    log_before = (unfinished_run / "training_log.csv").read_bytes()
    assert _monet_train(monkeypatch, *TINY_ARGS, "--epochs", "3", "--continue") == 1
    err = capsys.readouterr().err
    assert f"{latest}: cannot load checkpoint" in err and "truncated or corrupt" in err
    command = err.split("run: ", 1)[1].strip()
    assert command.startswith("monet_train -t 901 -m monet ") and command.endswith(" --continue-from previous")
    assert " --continue " not in command
    assert (unfinished_run / "training_log.csv").read_bytes() == log_before

    assert _monet_train(monkeypatch, *command.split()[1:]) == 0  # the command, as printed
    assert [r["epoch"] for r in read_log_csv(unfinished_run / "training_log.csv")] == [1, 2, 3]
    assert (unfinished_run / "checkpoint_final.pth").is_file()
    assert (unfinished_run / "checkpoint_latest_replaced.pth").is_file()  # the cut file, set aside


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_save_latest_leaves_a_loadable_latest_wherever_it_is_interrupted(tmp_path, monkeypatch, fail_at):
    import torch

    from monetpipe.training import checkpoint as ckpt_module

    latest, previous = tmp_path / "checkpoint_latest.pth", tmp_path / "checkpoint_previous.pth"
    ckpt_module.save_latest({"epoch": 1}, latest, previous)
    ckpt_module.save_latest({"epoch": 2}, latest, previous)
    calls = {"n": 0}
    real_replace, real_link = os.replace, os.link

    def step(real):
        def wrapped(*args):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise KeyboardInterrupt("killed")
            return real(*args)

        return wrapped

    monkeypatch.setattr(ckpt_module.os, "link", step(real_link))
    monkeypatch.setattr("monetpipe.io.atomic.os.replace", step(real_replace))
    with pytest.raises(KeyboardInterrupt):
        ckpt_module.save_latest({"epoch": 3}, latest, previous)
    got = torch.load(latest, weights_only=True)["epoch"], torch.load(previous, weights_only=True)["epoch"]
    assert got in ((2, 1), (2, 2))  # the old latest, and previous older or equal: never lost, never newer
    assert not list(tmp_path.glob(".tmp-*"))


# ---- splits_final.json case ids ----------------------------------------------------------------------


@pytest.fixture()
def own_preprocessed(roots, tmp_path, monkeypatch):
    """A private copy of the planned Task901 (its splits_final.json may be edited)."""
    import shutil

    from monetpipe.paths import MonetPaths

    copy = tmp_path / "preprocessed"
    shutil.copytree(roots.preprocessed / TASK, copy / TASK)
    monkeypatch.setenv("MONET_preprocessed", str(copy))
    return MonetPaths(roots.raw, copy, roots.results)


@pytest.mark.parametrize(
    ("crafted", "why"),
    [
        ("../../x", "is not a plain case name"),
        ("/tmp/x", "is an absolute path"),
        ("case_999", "is not in the slice cache"),
    ],
)
def test_a_crafted_case_id_in_splits_is_refused_by_name(own_preprocessed, monkeypatch, capsys, crafted, why):
    splits_file = own_preprocessed.preprocessed / TASK / "splits_final.json"
    splits = json.loads(splits_file.read_text())
    splits[0]["val"].append(crafted)
    splits_file.write_text(json.dumps(splits))
    before = sorted(p.relative_to(own_preprocessed.preprocessed) for p in own_preprocessed.preprocessed.rglob("*"))

    assert _monet_train(monkeypatch, *TINY_ARGS) == 1
    err = capsys.readouterr().err
    assert f"{splits_file}: case id {crafted!r} (fold 0, val) {why}" in err
    assert f"monet_plan_and_preprocess -t {TASK} --overwrite-splits, or edit the file" in err
    assert "Traceback" not in err
    after = sorted(p.relative_to(own_preprocessed.preprocessed) for p in own_preprocessed.preprocessed.rglob("*"))
    assert after == before and not own_preprocessed.results.exists()  # nothing written anywhere


def test_the_raw_task_folder_given_to_training_means_the_preprocessed_task(roots):
    from monetpipe.training.api import plan_fold

    fp = plan_fold(str(roots.raw / TASK), "monet", 0, paths=roots)
    assert fp.layout.task_dir == (roots.preprocessed / TASK).resolve()
    assert fp.fold_dir == roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"


# ---- torchrun: ranks wait for rank 0's final validation ----------------------------------------------

_RANK_SCRIPT = """
import datetime, sys, time
import torch.distributed as dist

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(sys.argv[1])))
from monetpipe.training import session
from monetpipe.training.api import train_models
from monetpipe.training.config import TrainConfig

real_finish, slept = session._finish, []


def slow_finish(*args, **kwargs):  # rank 0 only: the first model's final validation outlasts the timeout
    if not slept:
        slept.append(1)
        time.sleep(float(sys.argv[2]))
    return real_finish(*args, **kwargs)


session._finish = slow_finish
config = TrainConfig(epochs=1, iters_per_epoch=1, batch_size=2, num_workers=0, num_threads=1, device="cpu")
results = train_models("901", ["monet", "unet16"], [0], config)
print("trained", [r.fold_dir.parent.name for r in results], flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow  # 45 s on the shared 2-core machine: two processes train two models
def test_torchrun_ranks_wait_for_a_final_validation_longer_than_the_process_group_timeout(roots, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = test_training._env(roots) | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    env |= {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, "5", "9"],
            env=env | {"RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "trained ['monet__monetPlans', 'unet16__monetPlans']" in out
    for model in ("monet", "unet16"):
        fold = roots.results / TASK / f"{model}__{DEFAULT_PLANS}" / "fold_0"
        assert (fold / "validation" / "summary.json").is_file()


@pytest.mark.slow  # torchrun starts two Python processes
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_torchrun_on_a_locked_fold_stops_every_rank_with_the_message(roots):
    fold_dir = roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    child = _hold_lock_in_child(fold_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "monetpipe.training", "-t", "901", "-m", "monet", *TINY_ARGS, "--device", "cpu"]
    try:
        proc = subprocess.run(cmd, env=test_training._env(roots), capture_output=True, text=True, timeout=300)
    finally:
        _kill(child)
    assert proc.returncode != 0
    assert f"{fold_dir} is in use by monet_train (pid {child.pid}" in proc.stderr
    assert sorted(p.name for p in fold_dir.iterdir()) == [LOCK_NAME]


def test_an_unwritable_results_folder_is_refused_before_training(tmp_path):
    from monetpipe.errors import MonetError
    from monetpipe.training.lock import run_folder_lock

    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")  # no folder can be made inside a file, even as root
    with pytest.raises(MonetError, match="not writable") as info:
        with run_folder_lock(blocked / f"monet__{DEFAULT_PLANS}" / "fold_0"):
            pass
    assert str(blocked) in str(info.value)


def test_a_task_that_was_never_preprocessed_says_to_preprocess_it(monet_roots):
    from monetpipe.errors import TaskNotFoundError
    from monetpipe.synthetic import make_synthetic_task
    from monetpipe.training.fold import plan_fold

    make_synthetic_task(monet_roots.raw, "ct", num_cases=2, num_test=0, shape=(32, 32, 8))
    with pytest.raises(TaskNotFoundError, match=r"not been preprocessed.*monet_plan_and_preprocess -t Task901"):
        plan_fold("901", "monet", 0, DEFAULT_PLANS, monet_roots)
    with pytest.raises(TaskNotFoundError, match="No task matches"):  # nowhere at all: the listing as before
        plan_fold("7", "monet", 0, DEFAULT_PLANS, monet_roots)


def test_continue_with_other_settings_names_the_flags_that_keep_the_checkpoints(unfinished_run, monkeypatch, caplog):
    """A run continued with other settings (as after monet_train's defaults changed) says so, and how to keep them."""
    from monetpipe.training.config import DEFAULT_LOSS, DEFAULT_LR

    other = ["--lr", "1e-4", "--loss", "dice", "--schedule", "plateau"]
    with caplog.at_level(logging.WARNING, logger="monetpipe.training.session"):
        assert _monet_train(monkeypatch, *TINY_ARGS, "--epochs", "3", *other, "--continue") == 0
    assert f"lr: {DEFAULT_LR} -> 0.0001; loss: {DEFAULT_LOSS} -> dice; schedule: poly -> plateau" in caplog.text
    flags = caplog.text.split("to the --continue command: ", 1)[1].splitlines()[0].split()
    assert flags == ["--lr", str(DEFAULT_LR), "--loss", DEFAULT_LOSS, "--schedule", "poly"]


def test_only_the_main_rank_warns_about_other_settings_on_continue(unfinished_run, caplog):
    """Under torchrun every rank loads the checkpoint; the warning is said once (rank 0), not once per rank."""
    from monetpipe.training.config import TrainConfig
    from monetpipe.training.fold import plan_fold
    from monetpipe.training.session import _load_resume

    fp = plan_fold(TASK, "monet", 0)
    other = TrainConfig(lr=1e-4)
    latest = unfinished_run / "checkpoint_latest.pth"
    with caplog.at_level(logging.WARNING, logger="monetpipe.training.session"):
        assert _load_resume(latest, fp, other, warn=False)["epoch"] == 2
        assert "differ from the checkpoint's" not in caplog.text
        _load_resume(latest, fp, other, warn=True)
    assert "differ from the checkpoint's (lr: " in caplog.text
