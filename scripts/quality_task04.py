#!/usr/bin/env python
"""Quality bar of issue 4: default ``monet_train -t 4 -m monet`` on MSD Task04 (hippocampus), on CPU.

Runs ``monet_plan_and_preprocess -t 4`` and the default training command on
``../shared/data/Task04_Hippocampus`` (read-only; results go to a temporary or given folder), then
prints the per-label Dice on fold 0's ``val`` cases and the wall time. The bar: mean foreground Dice
>= 0.85 within one hour on 2 cores.

``--time-limit MIN`` stops training after MIN minutes (SIGTERM, then SIGKILL) and scores the last
completed epoch (``checkpoint_latest``) instead of ``checkpoint_final`` -- the honest way to ask "what
does the default reach in MIN minutes". Extra arguments after ``--`` go to ``monet_train``.

    python scripts/quality_task04.py                      # the full default run
    python scripts/quality_task04.py --time-limit 10 -o /tmp/q4 -- --num-threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from monetpipe.preprocessing.plans import DEFAULT_PLANS  # noqa: E402  (the plans the default planning writes)

DATA = REPO.parent / "shared" / "data"
TASK = "Task04_Hippocampus"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--data", type=Path, default=DATA, help="folder holding Task04_Hippocampus")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MIN",
        help="stop training after MIN minutes and score the last completed epoch",
    )
    p.add_argument("-np", "--num-processes", type=int, default=2, help="preprocessing processes")
    p.add_argument("train_args", nargs="*", help="extra monet_train arguments (after --)")
    return p.parse_args()


def run_training(cmd: list[str], env: dict, time_limit_min: float | None, log_file: Path) -> tuple[float, bool]:
    """Run the training command; returns (wall seconds, whether it was stopped by the time limit)."""
    start = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=None if time_limit_min is None else time_limit_min * 60)
            stopped = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopped = True
    if not stopped and proc.returncode != 0:
        sys.exit(f"training failed (exit {proc.returncode}); see {log_file}")
    return time.perf_counter() - start, stopped


def score_latest(fold_dir: Path, env: dict) -> dict:
    """Predict fold 0's val cases with checkpoint_latest (training was stopped) and evaluate them."""
    os.environ.update(env)
    import torch

    from monetpipe.networks import build_network
    from monetpipe.results import load_checkpoint
    from monetpipe.training.api import plan_fold
    from monetpipe.training.validation import validate_fold

    fp = plan_fold(TASK, "monet", 0)
    ckpt = load_checkpoint(fold_dir / "checkpoint_latest.pth")
    net = build_network(**ckpt["network"])
    net.load_state_dict(ckpt["model_state"])
    print(f"scoring checkpoint_latest (epoch {ckpt['epoch']})")
    return validate_fold(net, fp.layout, fp.plans, fp.val_cases, fold_dir / "validation_latest", torch.device("cpu"))


def main() -> int:
    args = parse_args()
    if not (args.data / TASK).is_dir():
        sys.exit(f"{args.data / TASK} not found; pass --data")
    work = args.output or Path(tempfile.mkdtemp(prefix="monet_q4_"))
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "MONET_raw": str(args.data),
        "MONET_preprocessed": str(work / "preprocessed"),
        "MONET_results": str(work / "results"),
    }
    py = sys.executable
    t0 = time.perf_counter()
    subprocess.run(
        [py, "-m", "monetpipe.preprocessing.cli", "-t", "4", "-np", str(args.num_processes)],
        env=env,
        check=True,
    )
    prep_s = time.perf_counter() - t0
    cmd = [py, "-m", "monetpipe.training", "-t", "4", "-m", "monet", *args.train_args]
    print("training:", " ".join(cmd[1:]), flush=True)
    train_s, stopped = run_training(cmd, env, args.time_limit, work / "train.log")

    fold_dir = work / "results" / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    summary = (
        score_latest(fold_dir, env) if stopped else json.loads((fold_dir / "validation" / "summary.json").read_text())
    )
    rows = (fold_dir / "training_log.csv").read_text().splitlines()
    print("\ntraining_log.csv (epoch, train_loss, val_loss, val_dice, lr, seconds):")
    elapsed = 0.0
    for row in rows[1:]:
        fields = row.split(",")
        elapsed += float(fields[-1])
        print(f"  {row}   (t = {elapsed / 60:.1f} min)")
    names = json.loads((work / "preprocessed" / TASK / f"{DEFAULT_PLANS}.json").read_text())["class_names"]
    print(f"\nwork folder: {work}")
    print(
        f"preprocessing: {prep_s:.0f} s; training{' (stopped at the time limit)' if stopped else ''}: "
        f"{train_s / 60:.1f} min wall"
    )
    for label, metrics in summary["mean"].items():
        print(f"  Dice {names[int(label)]:<10} {metrics['Dice']:.4f}")
    fg = summary["foreground_mean"]["Dice"]
    print(
        f"  mean foreground Dice {fg:.4f} over {summary['n_cases']} val cases "
        f"({'meets' if fg >= 0.85 else 'misses'} the 0.85 bar)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
