"""scripts/reproduce_task04.sh's refusals and the two helpers docs/results.md is built with
(scripts/leaderboard_table.py, scripts/plot_curves.py). The full run is hours of training: not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def test_reproduce_task04_without_the_data_says_how_to_get_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BIN": str(Path(sys.executable).parent)}
    run = _run("bash", SCRIPTS / "reproduce_task04.sh", tmp_path / "work", cwd=REPO, env=env)
    assert run.returncode == 1
    assert f"{tmp_path}/work/raw/Task04_Hippocampus not found" in run.stderr
    assert "tar -xf Task04_Hippocampus.tar" in run.stderr and "TASK04_SRC" in run.stderr
    assert not (tmp_path / "work" / "preprocessed").exists()  # stopped before any work

    bad = _run("bash", SCRIPTS / "reproduce_task04.sh", tmp_path / "work", "everything", cwd=REPO, env=env)
    assert bad.returncode == 2 and "steps, budget or all" in bad.stderr


def test_leaderboard_table_keeps_the_csv_values(tmp_path):
    csv = tmp_path / "leaderboard.csv"
    csv.write_text(
        "task,model,dice_mean,dice_std,dice_1,dice_2,hd95_mean,hd95_1,params_keras,train_steps\n"
        "T,unet16,0.6189,0.05,0.6818,0.556,6.93,4.17,1946739,100\n"
        "T,monet,0.1356,0.02,0.1179,0.1534,23.37,25.96,403596,100\n"
    )
    out = _run(sys.executable, SCRIPTS / "leaderboard_table.py", csv)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "| model | dice_mean | dice_1 | dice_2 | hd95_mean | hd95_1 | params_keras | train_steps |"
    assert lines[2] == "| unet16 | 0.6189 | 0.6818 | 0.556 | 6.93 | 4.17 | 1946739 | 100 |"  # as written, in CSV order
    assert len(lines) == 4 and "dice_std" not in out.stdout and "task" not in lines[0]

    missing = _run(sys.executable, SCRIPTS / "leaderboard_table.py", tmp_path / "none.csv")
    assert missing.returncode == 1 and "monet_evaluate -t TASK" in missing.stderr


def test_plot_curves_puts_runs_of_different_epoch_lengths_on_one_step_axis(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import plot_curves
    finally:
        sys.path.remove(str(SCRIPTS))
    for model, per_epoch, rows in (("monet", 25, 3), ("unet64", 50, 1)):
        fold = tmp_path / f"{model}__monetPlans" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "config.json").write_text(json.dumps({"resolved": {"iterations_per_epoch": per_epoch}}))
        log = ["epoch,train_loss,val_loss,val_dice,lr,seconds"]
        log += [f"{e},0.{9 - e},0.9,0.{e},0.0005,30" for e in range(1, rows + 1)]
        (fold / "training_log.csv").write_text("\n".join(log) + "\n")
    runs = plot_curves.load_runs(tmp_path)
    assert list(runs["monet"]["steps"]) == [25, 50, 75] and list(runs["unet64"]["steps"]) == [50]
    assert list(runs["monet"]["minutes"]) == [0.5, 1.0, 1.5]
    png = tmp_path / "curves.png"
    assert _run(sys.executable, SCRIPTS / "plot_curves.py", tmp_path, "-o", png).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = _run(sys.executable, SCRIPTS / "plot_curves.py", tmp_path / "nothing", "-o", png)
    assert empty.returncode == 1 and "no training_log.csv" in empty.stderr
