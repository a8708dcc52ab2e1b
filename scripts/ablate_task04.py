#!/usr/bin/env python
"""Issue 16's ablation on MSD Task04_Hippocampus, fold 0 (60 val cases): one change from a baseline per row,
every row trained by ``monet_train --time-budget BUDGET`` into its own results folder (docs/ablations.md).

For each row: plan (``monet_plan_and_preprocess``, a no-op when its plans and cache exist), train
(``monet_train -t 4 -m monet --time-budget BUDGET --continue`` plus the row's flags), predict the fold's
validation images (``monet_predict``, timed, with the row's flags, e.g. ``--tta``) and score them
(``monet_evaluate --split ... --fold 0``). Collected per row: mean foreground Dice, Dice per label, HD95,
epochs and optimizer steps done, seconds per step, the training precision and whether the step ran
compiled (both from ``config.json``: the defaults differ between CPUs), prediction seconds and the load
average before and after, into OUT/ablation.csv and OUT/ablation.md. A finished row
(OUT/rows/<row>/row.json) is skipped, so a rerun resumes; an interrupted training continues
(``--continue`` counts its budget across the restart).

    python scripts/ablate_task04.py --data /path/to/Task04_Hippocampus --out ablation_work
    python scripts/ablate_task04.py --data ... --out smoke --budget 3m --rows baseline cosine
    python scripts/ablate_task04.py --list                      # the rows and their flags

Every command is printed before it runs, with the time, the load average and the MONET_* folders.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monetpipe.io.atomic import atomic_path, read_json, write_json  # noqa: E402
from monetpipe.preprocessing.plans import plans_name_for  # noqa: E402

TASK = "Task04_Hippocampus"
MODEL = "monet"
# The baseline's schedule, loss and learning rate are pinned (the paper's 5e-4 and soft Dice with the budget's
# poly decay), so every row stays one change from it when the defaults move.
BASELINE_TRAIN = ("--schedule", "poly", "--loss", "dice", "--lr", "5e-4")


@dataclass(frozen=True)
class Row:
    """One row of the table: what it changes from the baseline, as command-line flags."""

    name: str
    change: str
    train: tuple[str, ...] = ()  # flags changed from / added to BASELINE_TRAIN
    min_size: int = 0  # monet_plan_and_preprocess --min-size
    context_slices: int = 0  # monet_plan_and_preprocess --context-slices (0: 2D, as the rows began)
    predict: tuple[str, ...] = ()  # monet_predict flags
    model_of: str = ""  # predict with this row's trained model instead of training one (TTA)
    replace_baseline: bool = False  # the row's flags replace BASELINE_TRAIN (a whole recipe)
    model: str = MODEL  # monet_train -m (a reference row trains another network at the same budget)

    @property
    def plan_flags(self) -> tuple[str, ...]:
        flags = ("--min-size", str(self.min_size)) if self.min_size else ()
        # Always given: the planner's default moved from 2D to 2.5D, and a row keeps the input it was defined with.
        return flags + ("--context-slices", str(self.context_slices))

    @property
    def plans(self) -> str:
        return plans_name_for(min_size=self.min_size, context_slices=self.context_slices)

    @property
    def train_flags(self) -> tuple[str, ...]:
        """BASELINE_TRAIN with the row's values for the flags it sets, then the row's other flags."""
        if self.replace_baseline:
            return self.train
        pairs = list(zip(BASELINE_TRAIN[::2], BASELINE_TRAIN[1::2], strict=True))
        kept = tuple(x for flag, value in pairs if flag not in self.train for x in (flag, value))
        return kept + self.train


ROWS = {
    r.name: r
    for r in (
        Row("baseline", "the default recipe, poly schedule, Dice loss, plans monetPlans (64 x 48)"),
        Row("plateau", "the paper's schedule: ReduceLROnPlateau on the inner-val loss", ("--schedule", "plateau")),
        Row("cosine", "cosine decay to the LR floor at the budget's end", ("--schedule", "cosine")),
        Row("dice_ce", "loss Dice + cross-entropy", ("--loss", "dice_ce")),
        Row("lr2e3", "learning rate 2e-3 (4x the paper's 5e-4) at the start of the poly decay", ("--lr", "2e-3")),
        Row(
            "lr2e3_dice_ce",
            "the two one-hour winners together: learning rate 2e-3 and Dice + cross-entropy (two changes, on purpose)",
            ("--lr", "2e-3", "--loss", "dice_ce"),
        ),
        Row(
            "lr4e3_dice_ce",
            "learning rate 4e-3 with Dice + cross-entropy: one change from lr2e3_dice_ce",
            ("--lr", "4e-3", "--loss", "dice_ce"),
        ),
        Row(
            "lr2e3_dice_ce_batch16",
            "batch size 16 with lr2e3_dice_ce's settings: one change from it (twice the steps of half the slices)",
            ("--lr", "2e-3", "--loss", "dice_ce", "--batch-size", "16"),
        ),
        Row("mirror", "random flips of both axes", ("--mirror",)),
        Row("batch16", "batch size 16", ("--batch-size", "16")),
        Row("batch64", "batch size 64", ("--batch-size", "64")),
        Row("s128", "slices resampled up to 128 x 96 (plans monetPlans_s128)", min_size=128),
        Row(
            "s128_batch8",
            "128 x 96 slices at batch 8: the baseline's pixels per step",
            ("--batch-size", "8"),
            min_size=128,
        ),
        Row("s256", "slices resampled up to 256 x 192, the paper's scale (plans monetPlans_s256)", min_size=256),
        Row("ctx1", "2.5D: slices z-1, z, z+1 as input channels (plans monetPlans_ctx1)", context_slices=1),
        Row(
            "bf16",
            "bfloat16 autocast of the forward pass (a gain only on a CPU with native bf16)",
            ("--precision", "bf16"),
        ),
        # Mirror TTA needs a model trained with flips (monet_predict refuses it otherwise): the mirror row's.
        Row("tta", "the mirror row's model, mirror test-time augmentation", predict=("--tta",), model_of="mirror"),
        Row(
            "paper",
            "the paper's preset (--recipe paper: several changes)",
            ("--recipe", "paper"),
            replace_baseline=True,
        ),
        # The issue's target command as a user types it: no training flags, so every setting is monet_train's
        # default (including --precision auto and --prepare-precision auto); run it alone on idle cores. It was
        # the target while the planner planned 2D; since 2.5D won (ctx1_defaults) that row is the target.
        Row("defaults", "2D input (--context-slices 0) with monet_train's defaults, no flags", replace_baseline=True),
        # One change from `defaults` each: the levers that lost at one core-hour, when steps were the limit.
        Row("s128_defaults", "128 x 96 slices with monet_train's defaults", replace_baseline=True, min_size=128),
        Row(
            "ctx1_defaults",
            "the target: 2.5D (z-1, z, z+1), the planner's default, with monet_train's defaults",
            replace_baseline=True,
            context_slices=1,
        ),
        # After ctx1_defaults won on 2 idle cores: a wider context (one change from it) and U-Net-16 on the same input.
        Row("ctx2_defaults", "2.5D (z-2 .. z+2) with monet_train's defaults", replace_baseline=True, context_slices=2),
        Row(
            "cosine_defaults",
            "cosine decay with monet_train's defaults",
            ("--schedule", "cosine"),
            replace_baseline=True,
        ),
        # The cosine decay on the 2.5D default, one change from ctx1_defaults (cosine_defaults is on 2D plans).
        Row(
            "cosine_ctx1_defaults",
            "cosine decay on the 2.5D default (z-1, z, z+1) with monet_train's defaults",
            ("--schedule", "cosine"),
            replace_baseline=True,
            context_slices=1,
        ),
        # Training data on the 2.5D default, one change from ctx1_defaults: hold out one of the fold's 140
        # training cases for the inner validation instead of 14 (the poly decay does not use it; only plateau does).
        Row(
            "inner1_ctx1_defaults",
            "one inner-val case instead of 14 (139 training cases, not 126) on the 2.5D default",
            ("--inner-val-fraction", "0.01"),
            replace_baseline=True,
            context_slices=1,
        ),
        # Left-right flips on the 2.5D default (one change from ctx1_defaults): the `mirror` row flipped both
        # in-plane axes and lost 0.028, and one of them swaps anterior and posterior; Task04's slices hold
        # left and right hippocampi, so a left-right flip keeps the labels true.
        Row(
            "mirrorlr_ctx1_defaults",
            "left-right flips (--mirror --mirror-axes 1) on the 2.5D default (z-1, z, z+1)",
            ("--mirror", "--mirror-axes", "1"),
            replace_baseline=True,
            context_slices=1,
        ),
        # The same recipe in fewer seconds per step (one change from ctx1_defaults): Inductor fuses the batch
        # norms and ELUs that take about half of an eager step on the CPU, so the hour holds more steps.
        Row(
            "compile_ctx1_defaults",
            "torch.compile of the training step (--compile) on the 2.5D default (z-1, z, z+1)",
            ("--compile",),
            replace_baseline=True,
            context_slices=1,
        ),
        # Run-to-run noise, not a lever: compile_ctx1_defaults again from another seed (initial weights, batches,
        # augmentation), so the table's differences between single runs can be read against it.
        Row(
            "seed1_compile_ctx1_defaults",
            "compile_ctx1_defaults from another seed (--seed 1): the run-to-run spread",
            ("--compile", "--seed", "1"),
            replace_baseline=True,
            context_slices=1,
        ),
        # Fewer interpolated slices (one change from compile_ctx1_defaults, the default since the eleventh
        # session): the paper rotates and zooms every slice, so the network never trains on a slice as sharp as
        # the ones it predicts; nnU-Net draws each with probability 0.2.
        Row(
            "spatial02_ctx1_defaults",
            "rotation and zoom each drawn for 20 % of slices (--spatial-probability 0.2) on the 2.5D default",
            ("--spatial-probability", "0.2"),
            replace_baseline=True,
            context_slices=1,
        ),
        Row(
            "seed1_spatial02_ctx1_defaults",
            "spatial02_ctx1_defaults from another seed (--seed 1), its run-to-run pair",
            ("--spatial-probability", "0.2", "--seed", "1"),
            replace_baseline=True,
            context_slices=1,
        ),
        # nnU-Net's intensity augmentation (noise, blur, brightness, contrast, gamma): one change from the
        # 2.5D default, and one change from spatial02_ctx1_defaults.
        Row(
            "intensity_ctx1_defaults",
            "intensity augmentation (--intensity-augmentation) on the 2.5D default",
            ("--intensity-augmentation",),
            replace_baseline=True,
            context_slices=1,
        ),
        Row(
            "intensity_spatial02_ctx1_defaults",
            "intensity augmentation on spatial02_ctx1_defaults (rotation and zoom for 20 % of slices)",
            ("--spatial-probability", "0.2", "--intensity-augmentation"),
            replace_baseline=True,
            context_slices=1,
        ),
        # No dropout (fourteenth session): MoNet drops 20 % of the channels after three of the four
        # convolutions of every RDDC block, a regulariser chosen for the paper's long runs; an hour on a CPU
        # without bfloat16 makes about 5,000 steps (36 epochs), where fitting, not over-fitting, may be the limit.
        Row(
            "nodrop_ctx1_defaults",
            "no dropout (--dropout 0) on the 2.5D default",
            ("--dropout", "0"),
            replace_baseline=True,
            context_slices=1,
        ),
        # An average of the weights (fifteenth session): the poly decay anneals the last steps, but an hour is few
        # steps; an exponential moving average (ramped; about the last tenth of the steps) smooths what the last
        # batches pulled the weights to. The run keeps its trained weights too, so the same run also predicts
        # without the average (scripts/compare_ema_weights.py).
        Row(
            "ema_ctx1_defaults",
            "an exponential moving average of the weights (--ema 0.999) on the 2.5D default",
            ("--ema", "0.999"),
            replace_baseline=True,
            context_slices=1,
        ),
        Row(
            "tta_mirrorlr_ctx1_defaults",
            "mirrorlr_ctx1_defaults's model with test-time left-right flips (monet_predict --tta)",
            predict=("--tta",),
            model_of="mirrorlr_ctx1_defaults",
        ),
        Row(
            "unet16_defaults",
            "reference, not an ablation: U-Net-16 with monet_train's defaults, no flags at all",
            replace_baseline=True,
            model="unet16",
        ),
        Row(
            "unet16_ctx1_defaults",
            "reference, not an ablation: U-Net-16 on the 2.5D plans with monet_train's defaults",
            replace_baseline=True,
            model="unet16",
            context_slices=1,
        ),
        Row("unet16", "reference, not an ablation: U-Net-16 with the baseline's flags and budget", model="unet16"),
        Row(
            "unet16_lr2e3_dice_ce",
            "reference, not an ablation: U-Net-16 with lr2e3_dice_ce's flags (the default recipe) and budget",
            ("--lr", "2e-3", "--loss", "dice_ce"),
            model="unet16",
        ),
        Row("unet64", "reference, not an ablation: U-Net-64 with the baseline's flags and budget", model="unet64"),
        Row(
            "attention_unet",
            "reference, not an ablation: Attention U-Net with the baseline's flags and budget",
            model="attention_unet",
        ),
    )
}


@dataclass(frozen=True)
class Work:
    """The work folder's layout and the commands' environment."""

    out: Path
    data: Path
    budget: str
    bin: Path
    num_processes: int = 2
    extra_train: tuple[str, ...] = ()

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.out / "preprocessed"

    @property
    def val_images(self) -> Path:
        return self.out / "val_images"

    @property
    def split(self) -> Path:
        return self.preprocessed / TASK / "splits_final.json"

    def row_dir(self, name: str) -> Path:
        return self.out / "rows" / name

    def results(self, row: Row) -> Path:
        return self.row_dir(row.model_of or row.name) / "results"

    def model_folder(self, row: Row) -> Path:
        trained = ROWS[row.model_of] if row.model_of else row
        return self.results(row) / TASK / f"{trained.model}__{trained.plans}"

    def env(self, row: Row) -> dict[str, str]:
        return {
            "MONET_raw": str(self.raw),
            "MONET_preprocessed": str(self.preprocessed),
            "MONET_results": str(self.results(row)),
        }

    def commands(self, row: Row) -> list[tuple[str, list[str]]]:
        """The row's steps in order: (step, command). TTA's training step is its model's (a no-op once done)."""
        trained = ROWS[row.model_of] if row.model_of else row
        plan = [str(self.bin / "monet_plan_and_preprocess"), "-t", "4", "-np", str(self.num_processes)]
        train = [str(self.bin / "monet_train"), "-t", "4", "-m", trained.model, "-f", "0", "-p", trained.plans]
        train += ["--time-budget", self.budget, "--continue", *trained.train_flags, *self.extra_train]
        predictions = self.row_dir(row.name) / "predictions"
        predict = [str(self.bin / "monet_predict"), "-i", str(self.val_images), "-o", str(predictions)]
        predict += ["--model-folder", str(self.model_folder(row)), "-f", "0", "--overwrite", *row.predict]
        evaluate = [str(self.bin / "monet_evaluate"), "-ref", str(self.raw / TASK / "labelsTr")]
        evaluate += ["-pred", str(predictions), "--split", str(self.split), "--fold", "0"]
        evaluate += ["-o", str(self.row_dir(row.name) / "summary.json"), "-np", str(self.num_processes)]
        return [
            ("plan", plan + list(trained.plan_flags)),
            ("train", train),
            ("predict", predict),
            ("evaluate", evaluate),
        ]


def is_finished(work: Work, name: str) -> bool:
    return (work.row_dir(name) / "row.json").is_file()


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run_step(step: str, cmd: list[str], env: dict[str, str], log_file: Path) -> float:
    """Run one command (printed first), its output appended to ``log_file``; returns its wall seconds."""
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    print(f"== {time.strftime('%H:%M:%S')} load {load():.2f} {step}: {shown} {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log_file, "a") as log:
        code = subprocess.call(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"error: {step} failed (exit {code}); its output is in {log_file}")
    return time.perf_counter() - start


def link_val_images(work: Work) -> None:
    """monet_predict's input: links to fold 0's validation images."""
    work.val_images.mkdir(parents=True, exist_ok=True)
    for case in read_json(work.split)[0]["val"]:
        link = work.val_images / f"{case}_0000.nii.gz"
        if not link.is_symlink():
            link.symlink_to(work.raw / TASK / "imagesTr" / f"{case}.nii.gz")


def trained_precision(config: dict) -> str:
    """The precision a row trained in, from its ``config.json`` (runs before the setting existed: fp32)."""
    return config["resolved"].get("precision", "fp32")


def trained_step(config: dict) -> str:
    """``compiled`` or ``eager``: how a row's training step ran, from its ``config.json`` (``monet_train``
    compiles MoNet by default on some CPUs, so a row's flags alone do not say; runs before the setting was
    recorded: eager)."""
    return "compiled" if config["resolved"].get("compile_step") else "eager"


def training_numbers(fold: Path) -> dict:
    """Epochs, optimizer steps, seconds per step (training time without inner validation) and the resolved
    settings, from ``fold_0/training_log.csv`` and ``config.json``."""
    config = read_json(fold / "config.json")
    with open(fold / "training_log.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    iterations = int(config["resolved"]["iterations_per_epoch"])
    steps = sum(int(float(e.get("steps") or iterations)) for e in epochs)  # a cut first epoch has fewer
    train_s = sum(float(e["seconds"]) - float(e.get("val_seconds") or 0) for e in epochs)
    settings = config["config"]
    return {
        "epochs": len(epochs),
        "steps": steps,
        "sec_per_step": round(train_s / steps, 3) if steps else None,
        "elapsed_s": float(epochs[-1].get("elapsed") or 0) if epochs else 0.0,
        "final_lr": float(epochs[-1].get("lr_end") or epochs[-1]["lr"]) if epochs else None,
        "schedule": config["resolved"].get("schedule"),
        "loss": settings.get("loss"),
        "mirror": settings.get("mirror"),
        "batch_size": config["resolved"].get("batch_size"),
        "precision": trained_precision(config),
        "step": trained_step(config),
        "patch_size": "x".join(str(p) for p in config["resolved"].get("patch_size", [])),
    }


def scores(summary_file: Path, label_names: dict[str, str]) -> dict:
    summary = read_json(summary_file)
    values = {"dice_fg": round(summary["foreground_mean"]["Dice"], 4), "n_cases": summary["n_cases"]}
    for label, name in label_names.items():
        values[f"dice_{name}"] = round(summary["mean"][label]["Dice"], 4)
    values["hd95_fg_mm"] = round(summary["foreground_mean"]["HD95"], 3)
    return values


def run_row(work: Work, row: Row) -> dict:
    row_dir = work.row_dir(row.name)
    row_dir.mkdir(parents=True, exist_ok=True)
    load_start = load()
    seconds = {}
    for step, cmd in work.commands(row):
        seconds[step] = run_step(f"{row.name} {step}", cmd, work.env(row), row_dir / f"{step}.log")
        if step == "plan":
            link_val_images(work)
    labels = read_json(work.raw / TASK / "dataset.json")["labels"]
    values = {
        "row": row.name,
        "change": row.change,
        "plans": (ROWS[row.model_of] if row.model_of else row).plans,
        "train_flags": " ".join((ROWS[row.model_of] if row.model_of else row).train_flags + work.extra_train),
        "predict_flags": " ".join(row.predict),
        "budget": work.budget,
        **scores(row_dir / "summary.json", {k: v for k, v in labels.items() if k != "0"}),
        **training_numbers(work.model_folder(row) / "fold_0"),
        "train_wall_s": round(seconds["train"], 1),
        "predict_s": round(seconds["predict"], 1),
        "load_start": load_start,
        "load_end": load(),
        "load_15min_end": round(os.getloadavg()[2], 2),
    }
    write_json(values, row_dir / "row.json")
    return values


def case_dice(summary_file: Path) -> dict[str, float]:
    """Each case's mean foreground Dice (over the labels other than 0), by case id, from a summary.json."""
    out = {}
    for case in read_json(summary_file)["metric_per_case"]:
        values = [m["Dice"] for label, m in case["metrics"].items() if label != "0" and m.get("Dice") is not None]
        out[Path(case["reference_file"]).name.split(".")[0]] = sum(values) / len(values)
    return out


def paired(row_file: Path, reference_file: Path) -> dict:
    """The row's Dice minus its reference row's, paired by case: mean, standard error, cases better / worse.

    A difference smaller than about two standard errors is not evidence of a setting's effect: the
    cases differ far more from each other than the settings do, and pairing removes that.
    """
    a, b = case_dice(row_file), case_dice(reference_file)
    diffs = [a[c] - b[c] for c in sorted(a.keys() & b.keys())]
    if len(diffs) < 2:
        return {}
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    return {
        "paired_diff": round(mean, 4),
        "paired_se": round(se, 4),
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
    }


def reference_of(name: str, reference: str = "baseline") -> str:
    """The row a row is compared with: the one whose model it predicts with (tta: mirror), else ``reference``
    (the baseline, or the row that is the baseline's recipe on this machine, e.g. ``bf16`` for a baseline
    trained before ``--precision auto`` became the default)."""
    return ROWS[name].model_of if name in ROWS and ROWS[name].model_of else reference


def write_tables(work: Work, rows: list[dict], reference: str = "baseline") -> tuple[Path, Path]:
    """OUT/ablation.csv (every collected value, with the paired comparison to each row's reference row where
    both summaries exist) and OUT/ablation.md, in row order."""
    for r in rows:
        ref = reference_of(r["row"], reference)
        files = work.row_dir(r["row"]) / "summary.json", work.row_dir(ref) / "summary.json"
        if r["row"] != ref and all(f.is_file() for f in files):
            r.update({"paired_with": ref, **paired(*files)})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_file, md_file = work.out / "ablation.csv", work.out / "ablation.md"
    with atomic_path(csv_file) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    dice_labels = [c for c in columns if c.startswith("dice_") and c != "dice_fg"]
    head = ["row", "change", "Dice (fg mean)", *[c[5:] for c in dice_labels], "HD95 mm", "patch", "batch", "precision"]
    head += ["step", "epochs", "steps", "s / step", "predict s (60 cases)", "load start / end"]
    head += ["paired Dice diff +- s.e. (better / worse cases)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        change = ROWS[r["row"]].change if r["row"] in ROWS else r["change"]
        cells = [r["row"], change, f"{r['dice_fg']:.4f}", *[f"{r[c]:.4f}" for c in dice_labels]]
        cells += [f"{r['hd95_fg_mm']:.2f}", str(r.get("patch_size")), str(r.get("batch_size"))]
        cells += [str(r.get("precision", "-")), str(r.get("step", "-"))]
        cells += [str(r["epochs"]), str(r["steps"]), f"{r['sec_per_step']}"]
        cells += [f"{r['predict_s']:.1f}", f"{r['load_start']:.1f} / {r['load_end']:.1f}"]
        if "paired_diff" in r:
            diff = (
                f"{r['paired_diff']:+.4f} +- {r['paired_se']:.4f} vs {r['paired_with']} ({r['better']} / {r['worse']})"
            )
        cells.append(diff if "paired_diff" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(md_file) as tmp:
        extra = f"; every row also ran monet_train {shlex.join(work.extra_train)}" if work.extra_train else ""
        tmp.write_text(f"Budget {work.budget} per row, fold 0 of {TASK}{extra}.\n\n" + "\n".join(lines) + "\n")
    return csv_file, md_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="the MSD Task04_Hippocampus folder (dataset.json, imagesTr, labelsTr)")
    p.add_argument("--out", type=Path, help="work folder: plans, one results folder per row, ablation.csv / .md")
    p.add_argument("--budget", default="60m", help="monet_train --time-budget of every row (default 60m)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW", help="rows to run")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="preprocessing / evaluation processes")
    p.add_argument("--bin", type=Path, default=Path(sys.executable).parent, help="folder of the monet_* commands")
    p.add_argument(
        "--train-args", default="", help="extra monet_train flags for every row, one string, e.g. '--num-threads 2'"
    )
    p.add_argument(
        "--reference",
        default="baseline",
        choices=list(ROWS),
        metavar="ROW",
        help="the row every other row is compared with, case by case (default baseline; tta: always mirror)",
    )
    p.add_argument("--list", action="store_true", help="print the rows and their flags, run nothing")
    args = p.parse_args(argv)
    if not args.list and (args.data is None or args.out is None):
        p.error("--data and --out are required (or --list)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for row in ROWS.values():
            plan = " ".join(row.plan_flags) or "-"
            print(
                f"{row.name:12} plans {row.plans:18} plan [{plan}] train [{' '.join(row.train_flags)}] "
                f"predict [{' '.join(row.predict)}]: {row.change}"
            )
        return 0
    data = args.data.expanduser().resolve()
    if not (data / "dataset.json").is_file():
        raise SystemExit(f"error: {data}/dataset.json not found; --data must be the Task04_Hippocampus folder")
    work = Work(
        args.out.expanduser().resolve(),
        data,
        args.budget,
        args.bin,
        args.num_processes,
        tuple(shlex.split(args.train_args)),
    )
    work.raw.mkdir(parents=True, exist_ok=True)
    if not (work.raw / TASK).exists():
        (work.raw / TASK).symlink_to(data)
    print(f"== {time.strftime('%H:%M:%S')} load {os.getloadavg()}, {os.cpu_count()} CPUs, budget {args.budget}")
    done = []
    for name in [n for n in ROWS if n in args.rows]:  # table order, whatever order --rows gives
        row_file = work.row_dir(name) / "row.json"
        if is_finished(work, name):
            print(f"== {name}: finished before ({row_file}), skipped")
        else:
            run_row(work, ROWS[name])
        values = read_json(row_file)
        config = work.model_folder(ROWS[name]) / "fold_0" / "config.json"
        if "precision" not in values and config.is_file():  # rows tabled before the column existed
            values["precision"] = trained_precision(read_json(config))
        if "step" not in values and config.is_file():
            values["step"] = trained_step(read_json(config))
        done.append(values)
    csv_file, md_file = write_tables(work, done, args.reference)
    print(f"== {time.strftime('%H:%M:%S')} load {load():.2f} wrote {csv_file} and {md_file}")
    print(md_file.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
