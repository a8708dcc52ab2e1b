"""Federated vs centralized MoNet at the same number of optimizer steps (the table in docs/federated.md).

Federated: ``--sites`` sites (monet_federated's seeded split of fold 0's training cases), ``--rounds``
rounds of ``--local-iters`` steps per site, FedAvg. Centralized: ``monet_train`` on all of those cases for
``sites x rounds`` epochs of ``--local-iters`` steps, i.e. the same total number of steps of the same
batch size. Both use a constant learning rate (the centralized LR schedule and early stopping are
switched off, the output-bias prior too, as the federation has neither), the same inner-validation cases
and the same final validation on fold 0's validation cases.

    MONET_preprocessed=... MONET_results=/tmp/compare python scripts/federated_compare.py -t 4 \
        --sites 3 --rounds 5 --local-iters 30 --batch-size 32 -o compare.json

Prints a Markdown table and writes the numbers as JSON. Each run writes its usual results folder;
``--report MONET_results/<Task>`` prints the inner-validation Dice of both at equal step counts (also of
an unfinished centralized run).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def _dice(fold_dir: Path) -> dict:
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    return {
        "validation_dice": summary["foreground_mean"]["Dice"],
        "validation_dice_per_label": {k: v.get("Dice") for k, v in summary["mean"].items()},
    }


def matched_steps(federated_fold: Path, centralized_fold: Path) -> list[dict]:
    """Inner-validation Dice of both runs at the same cumulative number of optimizer steps.

    Federated: the global model after each round (steps summed over sites, ``federated_log.csv``).
    Centralized: the model after each epoch (``training_log.csv`` x iterations per epoch from config.json).
    Both are scored on the same inner-validation cases. Works on unfinished runs too.
    """
    import csv

    with open(federated_fold / "federated_log.csv", newline="") as f:
        glob = [r for r in csv.DictReader(f) if r["site"] == "global"]
    fed, total = {}, 0
    for r in glob:
        total += int(float(r["steps"]))
        fed[total] = float(r["val_dice"])
    per_epoch = json.loads((centralized_fold / "config.json").read_text())["resolved"]["iterations_per_epoch"]
    with open(centralized_fold / "training_log.csv", newline="") as f:
        cen = {int(r["epoch"]) * per_epoch: float(r["val_dice"]) for r in csv.DictReader(f)}
    return [
        {"steps": s, "federated_inner_val_dice": fed[s], "centralized_inner_val_dice": cen.get(s)} for s in sorted(fed)
    ]


def report(results_task: Path, model: str, tag: str) -> None:
    from monetpipe.preprocessing.plans import DEFAULT_PLANS  # both runs train on the default plans

    rows = matched_steps(
        results_task / f"{model}__{DEFAULT_PLANS}__{tag}" / "fold_0",
        results_task / f"{model}__{DEFAULT_PLANS}" / "fold_0",
    )
    print("| optimizer steps | federated inner-val Dice | centralized inner-val Dice |")
    print("|---|---|---|")
    for r in rows:
        cen = "not reached" if r["centralized_inner_val_dice"] is None else f"{r['centralized_inner_val_dice']:.4f}"
        print(f"| {r['steps']} | {r['federated_inner_val_dice']:.4f} | {cen} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-t", "--task", default="4")
    p.add_argument("-m", "--model", default="monet")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-iters", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", choices=("federated", "centralized"), help="run one side only")
    p.add_argument("-o", "--output", default="federated_compare.json")
    p.add_argument("--report", metavar="RESULTS_TASK_DIR", help="only print the matched-steps table of two runs there")
    args = p.parse_args()
    if args.report:
        report(Path(args.report), args.model, f"fedavg{args.sites}")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from monetpipe.federated import FederatedConfig, run_federated
    from monetpipe.training import TrainConfig, train_fold

    steps = args.sites * args.rounds * args.local_iters
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.only in (None, "federated"):
        settings = FederatedConfig(
            sites=args.sites, rounds=args.rounds, local_iters=args.local_iters, batch_size=args.batch_size
        )
        start = time.perf_counter()
        fed = run_federated(args.task, args.model, 0, settings)
        results["federated"] = {
            "steps": steps,
            "seconds": round(time.perf_counter() - start, 1),
            "best_inner_val_dice": fed.best_dice,
            "fold_dir": str(fed.fold_dir),
            **_dice(fed.fold_dir),
        }
        out.write_text(json.dumps(results, indent=2))
    if args.only in (None, "centralized"):
        config = TrainConfig(
            epochs=args.sites * args.rounds,
            iters_per_epoch=args.local_iters,
            batch_size=args.batch_size,
            lr_patience=10**6,
            early_stop_patience=10**6,
            output_prior=False,
        )
        start = time.perf_counter()
        cen = train_fold(args.task, args.model, 0, config)
        results["centralized"] = {
            "steps": cen.epochs * args.local_iters,
            "seconds": round(time.perf_counter() - start, 1),
            "best_inner_val_dice": cen.best_dice,
            "fold_dir": str(cen.fold_dir),
            **_dice(cen.fold_dir),
        }
        out.write_text(json.dumps(results, indent=2))
    print(f"| run | optimizer steps (batch {args.batch_size}) | wall s | best inner-val Dice | validation Dice |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['steps']} | {r['seconds']:.0f} | {r['best_inner_val_dice']:.4f} | "
            f"{r['validation_dice']:.4f} |"
        )


if __name__ == "__main__":
    main()
