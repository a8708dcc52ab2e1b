"""Does the average of the weights (``monet_train --ema``) predict better than the weights it averaged?

A run with ``--ema`` saves both in its checkpoints: the average as ``model_state`` (what ``monet_predict``
uses) and the trained weights as ``training_model_state``. This script writes a copy of the fold's model
folder whose ``checkpoint_final.pth`` holds the trained weights instead, predicts the same images with
both folders (``monet_predict``, float32, so only the weights differ), scores both with
``monet_evaluate`` and prints their mean foreground Dice and the difference paired by case. One
training run gives both models, so the comparison has no run-to-run spread in it.

    python scripts/compare_ema_weights.py \\
        --model-folder MONET_results/Task04_Hippocampus/monet__monetPlans_ctx1 -f 0 \\
        -i val_images/ -ref Task04_Hippocampus/labelsTr \\
        --split MONET_preprocessed/Task04_Hippocampus/splits_final.json --out ema_vs_trained/

Writes only under ``--out`` (``trained_weights/`` the copy; ``average/`` and ``trained/`` the predictions
and ``summary.json`` of each; ``comparison.json``); the model folder is only read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate_task04 import paired, run_step, scores  # noqa: E402  (the ablation tables' own pieces)

from monetpipe.results import load_checkpoint  # noqa: E402
from monetpipe.training.checkpoint import save_checkpoint  # noqa: E402

AVERAGE_KEYS = ("training_model_state", "ema")


def trained_weights_copy(model_folder: Path, fold: int, out: Path) -> Path:
    """A copy of ``model_folder`` (its JSON files and fold ``fold``'s config and final checkpoint) whose
    checkpoint holds the trained weights as ``model_state``; returns the copy's folder.

    Raises:
        SystemExit: the fold has no final checkpoint, or its run did not average the weights.
    """
    source = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
    if not source.is_file():
        raise SystemExit(f"error: {source} not found; train the fold to its end first")
    checkpoint = load_checkpoint(source)
    if "training_model_state" not in checkpoint:
        raise SystemExit(f"error: {source} was not trained with --ema: it holds one set of weights only")
    copy = out / "trained_weights" / model_folder.name
    (copy / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    for file in model_folder.glob("*.json"):
        shutil.copy2(file, copy / file.name)
    config = model_folder / f"fold_{fold}" / "config.json"
    if config.is_file():
        shutil.copy2(config, copy / f"fold_{fold}" / "config.json")
    trained = {k: v for k, v in checkpoint.items() if k not in AVERAGE_KEYS}
    trained["model_state"] = checkpoint["training_model_state"]
    save_checkpoint(trained, copy / f"fold_{fold}" / "checkpoint_final.pth")
    return copy


def score(model_folder: Path, fold: int, args: argparse.Namespace, out: Path) -> Path:
    """Predict ``args.input`` with ``model_folder`` in float32 and evaluate; returns the summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    predictions, summary, log_file = out / "predictions", out / "summary.json", out / "commands.log"
    run_step(
        "predict",
        ["monet_predict", "-i", str(args.input), "-o", str(predictions), "--model-folder", str(model_folder)]
        + ["-f", str(fold), "--precision", "fp32", "--overwrite"],
        {},
        log_file,
    )
    evaluate = ["monet_evaluate", "-ref", str(args.reference), "-pred", str(predictions), "-o", str(summary)]
    if args.split:
        evaluate += ["--split", str(args.split), "--fold", str(fold)]
    run_step("evaluate", evaluate, {}, log_file)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-folder", type=Path, required=True, help="the --ema run's model folder")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("-i", "--input", type=Path, required=True, help="images to predict (monet_predict -i)")
    parser.add_argument("-ref", "--reference", type=Path, required=True, help="their reference labels")
    parser.add_argument("--split", type=Path, help="splits_final.json: score the fold's validation cases only")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    copy = trained_weights_copy(args.model_folder, args.fold, args.out)
    average = score(args.model_folder, args.fold, args, args.out / "average")
    trained = score(copy, args.fold, args, args.out / "trained")
    result = {"average": scores(average, {}), "trained": scores(trained, {}), **paired(average, trained)}
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    a, t = result["average"], result["trained"]
    diff, se = result.get("paired_diff", float("nan")), result.get("paired_se", float("nan"))
    print(
        f"average of the weights: Dice {a['dice_fg']:.4f} (HD95 {a['hd95_fg_mm']} mm); "
        f"trained weights: Dice {t['dice_fg']:.4f} (HD95 {t['hd95_fg_mm']} mm); "
        f"paired difference {diff:+.4f} +- {se:.4f} "
        f"(better in {result.get('better')}, worse in {result.get('worse')} cases)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
