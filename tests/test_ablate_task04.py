"""scripts/ablate_task04.py: its rows are one change from the baseline, and a rerun skips finished rows."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablate_task04.py"


@pytest.fixture(scope="module")
def ablate():
    spec = importlib.util.spec_from_file_location("ablate_task04", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _work(ablate, tmp_path, budget="60m"):
    return ablate.Work(tmp_path / "out", tmp_path / "data", budget, Path("/bin"))


def test_each_single_change_row_differs_from_the_baseline_in_one_setting(ablate):
    def settings(flags):  # {"--schedule": "poly", "--mirror": True, ...}
        flags = list(flags)
        out = {}
        for i, flag in enumerate(flags):
            if flag.startswith("--"):
                has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
                out[flag] = flags[i + 1] if has_value else True
        return out

    def all_settings(row):
        trained = ablate.ROWS[row.model_of] if row.model_of else row
        flags = (*trained.plan_flags, *trained.train_flags, "--model", trained.model)
        return {**settings(flags), **settings(("--predict", *row.predict))}

    base = all_settings(ablate.ROWS["baseline"])
    for name in (
        "plateau",
        "cosine",
        "dice_ce",
        "lr2e3",
        "mirror",
        "batch16",
        "batch64",
        "s128",
        "s256",
        "ctx1",
        "bf16",
    ):
        row = all_settings(ablate.ROWS[name])
        changed = {k for k in base.keys() | row.keys() if base.get(k) != row.get(k)}
        assert len(changed) == 1, (name, changed)
    # TTA is one change from the mirror row, whose model it predicts with
    tta, mirror = all_settings(ablate.ROWS["tta"]), all_settings(ablate.ROWS["mirror"])
    assert {k for k in tta.keys() | mirror.keys() if tta.get(k) != mirror.get(k)} == {"--tta"}
    combined = all_settings(ablate.ROWS["lr2e3_dice_ce"])
    assert {k for k in base.keys() | combined.keys() if base.get(k) != combined.get(k)} == {"--lr", "--loss"}
    assert ablate.ROWS["cosine"].train_flags == ("--loss", "dice", "--lr", "5e-4", "--schedule", "cosine")
    assert ablate.ROWS["s128"].plans == "monetPlans_s128" and ablate.ROWS["ctx1"].plans == "monetPlans_ctx1"
    assert ablate.ROWS["paper"].train_flags == ("--recipe", "paper")  # the preset, not overridden by the baseline's
    defaults = all_settings(ablate.ROWS["defaults"])
    for name in ("s128_defaults", "ctx1_defaults", "cosine_defaults"):
        row = all_settings(ablate.ROWS[name])
        assert len({k for k in defaults.keys() | row.keys() if defaults.get(k) != row.get(k)}) == 1, name
    # the target rows pass no training flag at all: whatever monet_train's defaults are when they run
    assert ablate.ROWS["defaults"].train_flags == () and ablate.ROWS["unet16_defaults"].train_flags == ()
    assert ablate.ROWS["unet16_defaults"].model == "unet16" and ablate.ROWS["defaults"].model == "monet"
    # the 2.5D follow-ups: a wider context is one change from ctx1_defaults; U-Net-16 on the same plans, no flags
    ctx1, ctx2 = all_settings(ablate.ROWS["ctx1_defaults"]), all_settings(ablate.ROWS["ctx2_defaults"])
    assert {k for k in ctx1.keys() | ctx2.keys() if ctx1.get(k) != ctx2.get(k)} == {"--context-slices"}
    assert ablate.ROWS["ctx2_defaults"].plans == "monetPlans_ctx2"
    cosine = all_settings(ablate.ROWS["cosine_ctx1_defaults"])
    assert {k: cosine.get(k) for k in ctx1.keys() | cosine.keys() if ctx1.get(k) != cosine.get(k)} == {
        "--schedule": "cosine"
    }
    inner1 = all_settings(ablate.ROWS["inner1_ctx1_defaults"])
    assert {k: inner1.get(k) for k in ctx1.keys() | inner1.keys() if ctx1.get(k) != inner1.get(k)} == {
        "--inner-val-fraction": "0.01"
    }
    compiled = all_settings(ablate.ROWS["compile_ctx1_defaults"])
    assert {k: compiled.get(k) for k in ctx1.keys() | compiled.keys() if ctx1.get(k) != compiled.get(k)} == {
        "--compile": True
    }
    seed1 = all_settings(ablate.ROWS["seed1_compile_ctx1_defaults"])
    assert {k: seed1.get(k) for k in compiled.keys() | seed1.keys() if compiled.get(k) != seed1.get(k)} == {
        "--seed": "1"
    }
    # the augmentation rows: fewer interpolated slices, its seed pair, intensity augmentation on either; no dropout; EMA
    spatial = all_settings(ablate.ROWS["spatial02_ctx1_defaults"])
    for name, other, change in (
        ("spatial02_ctx1_defaults", ctx1, {"--spatial-probability": "0.2"}),
        ("seed1_spatial02_ctx1_defaults", spatial, {"--seed": "1"}),
        ("intensity_ctx1_defaults", ctx1, {"--intensity-augmentation": True}),
        ("intensity_spatial02_ctx1_defaults", spatial, {"--intensity-augmentation": True}),
        ("nodrop_ctx1_defaults", ctx1, {"--dropout": "0"}),
        ("ema_ctx1_defaults", ctx1, {"--ema": "0.999"}),
    ):
        row = all_settings(ablate.ROWS[name])
        assert {k: row.get(k) for k in other.keys() | row.keys() if other.get(k) != row.get(k)} == change, name
    mirror_lr = ablate.ROWS["mirrorlr_ctx1_defaults"]
    assert (mirror_lr.plans, mirror_lr.train_flags) == ("monetPlans_ctx1", ("--mirror", "--mirror-axes", "1"))
    tta_lr = all_settings(ablate.ROWS["tta_mirrorlr_ctx1_defaults"])
    assert {
        k for k in tta_lr.keys() | all_settings(mirror_lr).keys() if tta_lr.get(k) != all_settings(mirror_lr).get(k)
    } == {"--tta"}
    unet_ctx1 = ablate.ROWS["unet16_ctx1_defaults"]
    assert (unet_ctx1.model, unet_ctx1.plans, unet_ctx1.train_flags) == ("unet16", "monetPlans_ctx1", ())


def test_commands_train_to_the_budget_and_tta_predicts_with_the_mirror_rows_model(ablate, tmp_path):
    work = _work(ablate, tmp_path, "3m")
    steps = dict(work.commands(ablate.ROWS["s128"]))
    assert steps["plan"][-4:] == ["--min-size", "128", "--context-slices", "0"]  # 2D, whatever the default
    train = steps["train"]
    assert train[train.index("--time-budget") + 1] == "3m" and "--continue" in train
    assert train[train.index("-p") + 1] == "monetPlans_s128"
    assert work.env(ablate.ROWS["s128"])["MONET_results"] == str(work.out / "rows" / "s128" / "results")

    tta, mirror = dict(work.commands(ablate.ROWS["tta"])), dict(work.commands(ablate.ROWS["mirror"]))
    assert tta["train"] == mirror["train"] and work.env(ablate.ROWS["tta"]) == work.env(ablate.ROWS["mirror"])
    assert "--mirror" in tta["train"] and "--tta" in tta["predict"] and "--tta" not in mirror["predict"]
    folder = tta["predict"][tta["predict"].index("--model-folder") + 1]
    assert folder == str(work.out / "rows" / "mirror" / "results" / "Task04_Hippocampus" / "monet__monetPlans")
    assert tta["predict"][tta["predict"].index("-o") + 1] == str(work.out / "rows" / "tta" / "predictions")


def test_steps_and_seconds_per_step_come_from_the_log_and_config(ablate, tmp_path):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    config = {"config": {"loss": "dice", "mirror": False}, "resolved": {"iterations_per_epoch": 25}}
    config["resolved"] |= {"schedule": "poly", "batch_size": 32, "patch_size": [64, 48]}
    (fold / "config.json").write_text(json.dumps(config))
    (fold / "training_log.csv").write_text(
        "epoch,train_loss,val_loss,val_dice,lr,seconds,val_seconds,lr_end,elapsed\n"
        "1,0.9,0.8,0.1,0.0005,30,5,0.0003,31\n2,0.7,0.6,0.3,0.0003,27,2,0.000005,60\n"
    )
    numbers = ablate.training_numbers(fold)
    assert numbers["epochs"] == 2 and numbers["steps"] == 50
    assert numbers["sec_per_step"] == pytest.approx(50 / 50)  # (30 - 5 + 27 - 2) s of training / 50 steps
    assert numbers["final_lr"] == 0.000005 and numbers["patch_size"] == "64x48"
    assert numbers["step"] == "eager"  # a run from before compile_step was recorded
    config["resolved"]["compile_step"] = True  # monet_train compiled it (by default or --compile)
    (fold / "config.json").write_text(json.dumps(config))
    assert ablate.training_numbers(fold)["step"] == "compiled"


def test_finished_rows_are_skipped_and_tabled(ablate, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    out = tmp_path / "out"
    for i, name in enumerate(("baseline", "cosine")):
        values = {"row": name, "change": "x", "dice_fg": 0.8 + i / 100, "dice_Anterior": 0.81, "hd95_fg_mm": 2.0}
        values |= {"epochs": 3, "steps": 75, "sec_per_step": 0.9, "predict_s": 12.0, "load_start": 9, "load_end": 10}
        (out / "rows" / name).mkdir(parents=True)
        (out / "rows" / name / "row.json").write_text(json.dumps(values))

    def never(*args):
        raise AssertionError("a finished row ran again")

    monkeypatch.setattr(ablate, "run_row", never)
    assert ablate.main(["--data", str(data), "--out", str(out), "--rows", "cosine", "baseline"]) == 0
    assert "baseline: finished before" in capsys.readouterr().out
    with open(out / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["baseline", "cosine"]  # table order, not --rows order
    table = (out / "ablation.md").read_text()
    assert "| cosine | cosine decay to the LR floor at the budget's end | 0.8100 | 0.8100 | 2.00 |" in table


def test_each_row_is_compared_case_by_case_with_its_reference_row(ablate, tmp_path):
    """Paired by case: the mean difference, its standard error and the cases better / worse; tta is compared
    with the mirror row whose model it uses."""
    work = _work(ablate, tmp_path)

    def summary(name, dice_by_case):
        cases = [
            {"reference_file": f"/labels/{case}.nii.gz", "metrics": {"1": {"Dice": d}, "2": {"Dice": d - 0.1}}}
            for case, d in dice_by_case.items()
        ]
        (work.row_dir(name)).mkdir(parents=True, exist_ok=True)
        (work.row_dir(name) / "summary.json").write_text(json.dumps({"metric_per_case": cases}))

    summary("baseline", {"a": 0.80, "b": 0.70, "c": 0.90})
    summary("cosine", {"a": 0.82, "b": 0.73, "c": 0.89})  # +0.02, +0.03, -0.01
    summary("mirror", {"a": 0.80, "b": 0.70, "c": 0.90})
    summary("tta", {"a": 0.81, "b": 0.71, "c": 0.91})
    common = {"change": "x", "dice_fg": 0.8, "hd95_fg_mm": 2.0, "epochs": 3, "steps": 75, "sec_per_step": 0.9}
    common |= {"predict_s": 12.0, "load_start": 1, "load_end": 1}
    rows = [{"row": name, **common} for name in ("baseline", "cosine", "mirror", "tta")]
    ablate.write_tables(work, rows)
    by_row = {r["row"]: r for r in rows}
    assert "paired_diff" not in by_row["baseline"]
    assert by_row["cosine"]["paired_diff"] == pytest.approx(0.0133, abs=1e-4)
    assert by_row["cosine"]["paired_se"] == pytest.approx(0.0120, abs=1e-4)  # sd 0.0208 / sqrt(3)
    assert (by_row["cosine"]["better"], by_row["cosine"]["worse"]) == (2, 1)
    assert by_row["tta"]["paired_with"] == "mirror" and by_row["tta"]["better"] == 3
    assert "+0.0133 +- 0.0120 vs baseline (2 / 1)" in (work.out / "ablation.md").read_text()


def test_rows_can_be_compared_with_another_reference_row(ablate, tmp_path):
    """--reference bf16: on a machine where the baseline row was trained before bf16 became the default, the
    new rows (bf16 by default) are compared with the bf16 row; tta stays with mirror; precision is tabled."""
    work = _work(ablate, tmp_path)
    for name, dice in (("baseline", 0.70), ("bf16", 0.80), ("dice_ce", 0.82), ("mirror", 0.8), ("tta", 0.81)):
        cases = [
            {"reference_file": f"/labels/{c}.nii.gz", "metrics": {"1": {"Dice": dice + d}}}
            for c, d in (("a", 0.0), ("b", 0.01))
        ]
        work.row_dir(name).mkdir(parents=True, exist_ok=True)
        (work.row_dir(name) / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    common = {"change": "x", "dice_fg": 0.8, "hd95_fg_mm": 2.0, "epochs": 3, "steps": 75, "sec_per_step": 0.9}
    common |= {"predict_s": 12.0, "load_start": 1, "load_end": 1, "patch_size": "64x48", "batch_size": 32}
    common |= {"precision": "bf16", "step": "compiled"}
    rows = [{"row": n, **common} for n in ("baseline", "bf16", "dice_ce", "mirror", "tta")]
    ablate.write_tables(work, rows, reference="bf16")
    by_row = {r["row"]: r for r in rows}
    assert by_row["dice_ce"]["paired_with"] == "bf16" and by_row["dice_ce"]["paired_diff"] == pytest.approx(0.02)
    assert by_row["baseline"]["paired_with"] == "bf16" and "paired_diff" not in by_row["bf16"]
    assert by_row["tta"]["paired_with"] == "mirror"
    table = (work.out / "ablation.md").read_text()
    assert "| batch | precision | step |" in table and "| 64x48 | 32 | bf16 | compiled |" in table
    assert "+0.0200 +- 0.0000 vs bf16 (2 / 0)" in table
