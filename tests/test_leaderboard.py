"""The leaderboard on a fabricated results tree: two models, validation predictions, plans.json."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monetpipe.evaluation.cli import main
from monetpipe.evaluation.leaderboard import BASE_COLUMNS, build_leaderboard
from monetpipe.evaluation.plots import most_informative_slice, plot_overlay
from monetpipe.io.image import Geometry, write_image, write_label
from monetpipe.paths import MonetPaths

TASK = "Task901_Toy"
SHAPE = (5, 16, 14)
GEOMETRY = Geometry((14, 16, 5), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
CASES = ["toy_000", "toy_001", "toy_002", "toy_003"]
VAL = ["toy_001", "toy_002", "toy_003"]


def reference(i: int) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[1:4, 3 + i : 10 + i, 3:10] = 1
    a[2:4, 4 + i : 7 + i, 4:7] = 2
    return a


def plans(binary: bool) -> dict:
    return {
        "num_input_channels": 1,
        "num_classes": 1 if binary else 3,
        "slice_axis": 0,
        "output_labels": {"0": 0, "1": 1} if binary else {"0": 0, "1": 1, "2": 2},
    }


def write_model(results: Path, model: str, plans_name: str, predictions: dict[str, np.ndarray]) -> None:
    folder = results / TASK / f"{model}__{plans_name}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans(plans_name.endswith("binary"))))
    for case, array in predictions.items():
        write_label(array, GEOMETRY, folder / "fold_0" / "validation" / f"{case}.nii.gz")


@pytest.fixture
def tree(tmp_path) -> MonetPaths:
    paths = MonetPaths(tmp_path / "raw", tmp_path / "pre", tmp_path / "res")
    pre = paths.preprocessed / TASK
    for i, case in enumerate(CASES):
        write_label(reference(i), GEOMETRY, pre / "gt_segmentations" / "monetPlans" / f"{case}.nii.gz")
        write_label(
            (reference(i) > 0).astype(np.uint8),
            GEOMETRY,
            pre / "gt_segmentations" / "monetPlans_binary" / f"{case}.nii.gz",
        )
        image = np.random.default_rng(i).normal(size=SHAPE).astype(np.float32) + reference(i)
        write_image(image, GEOMETRY, paths.raw / TASK / "imagesTr" / f"{case}.nii.gz")
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["toy_000"], "val": VAL}]))
    # "good" is perfect except one case that misses label 2; "poor" is shifted by one voxel everywhere
    good = {c: reference(CASES.index(c)) for c in VAL}
    good["toy_003"] = np.where(good["toy_003"] == 2, 1, good["toy_003"]).astype(np.uint8)
    poor = {c: np.roll(reference(CASES.index(c)), 1, axis=2) for c in VAL}
    write_model(paths.results, "monet", "monetPlans", good)
    write_model(paths.results, "unet16", "monetPlans", poor)
    write_model(paths.results, "monet", "monetPlans_binary", {c: (good[c] > 0).astype(np.uint8) for c in VAL})
    pd.DataFrame({"model": ["monet", "unet16"], "cpu_s_mean": [14.88, 7.03]}).to_csv(
        paths.results / TASK / "benchmark.csv", index=False
    )
    return paths


def test_leaderboard_rows_columns_and_files(tree):
    table = build_leaderboard("901", tree, num_processes=1)
    res = tree.results / TASK
    written = pd.read_csv(res / "leaderboard.csv")
    per_label = [f"{p}{v}" for p in ("dice_", "hd95_", "n_missed_", "n_false_alarm_", "n_both_empty_") for v in (1, 2)]
    assert list(written.columns) == list(BASE_COLUMNS) + per_label
    assert len(written) == len(table) == 3
    # sorted by dice_mean: the binary monet plan is perfect, then monet (one label missed), then unet16
    assert list(zip(written["model"], written["plans"], strict=True)) == [
        ("monet", "monetPlans_binary"),
        ("monet", "monetPlans"),
        ("unet16", "monetPlans"),
    ]
    assert written["dice_mean"].is_monotonic_decreasing
    binary, multi, poor = (written.iloc[i] for i in range(3))
    assert binary["dice_mean"] == 1.0 and binary["hd95_mean"] == 0.0 and np.isnan(binary["dice_2"])
    assert (binary["n_cases"], binary["fold"], binary["task"]) == (3, 0, TASK)
    # monet on toy_003: label 1 Dice < 1, label 2 missed: Dice 0, counted, and HD95 the image diagonal
    # (14 x 1, 16 x 1, 5 x 3 mm), so one missed structure costs more HD95 than unet16's shift everywhere
    assert (multi["n_missed"], multi["n_missed_2"], multi["n_missed_1"]) == (1, 1, 0)
    assert multi["n_false_alarm"] == multi["n_both_empty"] == 0 and multi["dice_2"] == round(2 / 3, 4)
    assert multi["hd95_2"] == round(677**0.5 / 3, 2)  # (0 + 0 + penalty) / 3 cases, mm to 0.01 in the CSV
    assert multi["dice_median"] == 1.0 and multi["dice_mean"] < 1.0
    assert poor["dice_mean"] < multi["dice_mean"] and 0 < poor["hd95_mean"] < multi["hd95_mean"]
    assert poor["n_missing"] == 0 and poor["n_missed"] == 0
    assert binary["n_both_empty_2"] != binary["n_both_empty_2"]  # blank: the binary plan has no label 2
    assert np.isnan(binary["federated_sites"]) and np.isnan(binary["federated_rounds"])
    assert poor["cpu_s_150"] == 7.03 and multi["cpu_s_150"] == 14.88
    # the reference labels come from the plan: the binary plan has no label 2 column values
    summary_file = res / "monet__monetPlans_binary" / "fold_0" / "validation" / "summary.json"
    summary = json.loads(summary_file.read_text())
    assert set(summary["mean"]) == {"1"}
    assert (res / "leaderboard.png").stat().st_size > 1000
    overlays = sorted(p.name for p in (res / "overlays").iterdir())
    assert overlays == sorted(
        f"{m}_{k}.png"
        for m in ("monet__monetPlans", "monet__monetPlans_binary", "unet16__monetPlans")
        for k in ("median", "worst")
    )


def test_csv_is_rounded_to_meaningful_digits(tree):
    table = build_leaderboard(TASK, tree, num_processes=1, make_plots=False)
    text = (tree.results / TASK / "leaderboard.csv").read_text()
    written = pd.read_csv(tree.results / TASK / "leaderboard.csv")
    row = table[table["run"] == "monet__monetPlans"].iloc[0]  # the returned table keeps full precision
    assert row["hd95_mean"] != round(row["hd95_mean"], 2)
    for column, decimals in (("dice_mean", 4), ("dice_std", 4), ("hd95_mean", 2), ("size_mib_fp32", 2)):
        for value in written[column].dropna():
            assert value == round(value, decimals), (column, value)
    assert written.loc[written["run"] == "monet__monetPlans", "hd95_mean"].item() == round(row["hd95_mean"], 2)
    assert "0000000" not in text and "9999999" not in text  # no float noise in any column


def write_training_record(fold_dir: Path, epochs: int, iterations: int, batch: int, seconds: float) -> None:
    """The two files monet_train leaves in a fold folder that say how long it trained."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "config.json").write_text(
        json.dumps({"resolved": {"iterations_per_epoch": iterations, "batch_size": batch}})
    )
    rows = "".join(f"{e + 1},0.5,0.5,0.5,0.0005,{seconds}\n" for e in range(epochs))
    (fold_dir / "training_log.csv").write_text("epoch,train_loss,val_loss,val_dice,lr,seconds\n" + rows)


def test_budget_columns_tell_a_short_run_from_a_long_one(tree):
    results = tree.results / TASK
    write_training_record(results / "monet__monetPlans" / "fold_0", epochs=8, iterations=21, batch=8, seconds=3.25)
    write_training_record(results / "unet16__monetPlans" / "fold_0", epochs=1, iterations=3, batch=4, seconds=2.0)
    build_leaderboard(TASK, tree, num_processes=1, make_plots=False)
    written = pd.read_csv(results / "leaderboard.csv").set_index("run")
    long, short = written.loc["monet__monetPlans"], written.loc["unet16__monetPlans"]
    assert (long["epochs"], long["train_steps"], long["batch_size"], long["train_s"]) == (8, 168, 8, 26.0)
    assert (short["epochs"], short["train_steps"], short["batch_size"], short["train_s"]) == (1, 3, 4, 2.0)
    assert written.loc["monet__monetPlans_binary", ["epochs", "train_steps", "train_s"]].isna().all()  # no record


def test_parameter_columns(tree):
    table = build_leaderboard(TASK, tree, models=["monet"], num_processes=1, make_plots=False)
    assert set(table["model"]) == {"monet"}
    try:
        from monetpipe.networks import build_network, count_parameters
    except ImportError:  # networks not available yet: the columns stay blank rather than failing
        assert table["params_keras"].isna().all() and table["size_mib_fp32"].isna().all()
        return
    expected = count_parameters(build_network("monet", 1, 1))
    row = table[table["plans"] == "monetPlans_binary"].iloc[0]
    assert row["params_keras"] == expected["params_keras"]
    assert row["params_trainable"] == expected["params_trainable"]
    assert row["size_mib_fp32"] == pytest.approx(expected["params_keras"] * 4 / 2**20)


def test_summary_reused_until_a_prediction_changes(tree):
    build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    val = tree.results / TASK / "unet16__monetPlans" / "fold_0" / "validation"
    summary_file = val / "summary.json"
    stamp = summary_file.stat().st_mtime_ns
    build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    assert summary_file.stat().st_mtime_ns == stamp  # reused, not re-evaluated
    # a re-predicted case (newer than the summary) is evaluated again
    time.sleep(0.01)
    write_label(reference(1), GEOMETRY, val / "toy_001.nii.gz")
    future = time.time() + 5
    os.utime(val / "toy_001.nii.gz", (future, future))
    table = build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    assert summary_file.stat().st_mtime_ns != stamp
    assert json.loads(summary_file.read_text())["metric_per_case"][0]["metrics"]["1"]["Dice"] == 1.0
    assert len(table) == 1


def test_missing_validation_prediction_is_counted(tree, caplog):
    (tree.results / TASK / "unet16__monetPlans" / "fold_0" / "validation" / "toy_002.nii.gz").unlink()
    table = build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    row = table.iloc[0]
    assert row["n_cases"] == 2 and row["n_missing"] == 1
    assert "missing" in caplog.text


def test_cli_leaderboard(tree, monkeypatch, capsys):
    monkeypatch.setenv("MONET_raw", str(tree.raw))
    monkeypatch.setenv("MONET_preprocessed", str(tree.preprocessed))
    monkeypatch.setenv("MONET_results", str(tree.results))
    assert main(["-t", "Task901", "-m", "unet16", "--no-plots", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "unet16" in out and "dice_mean" in out and "monetPlans" in out
    assert main(["-t", "Task901", "-m", "nosuchmodel"]) == 1
    assert "no fold with validation predictions" in capsys.readouterr().err
    assert main(["-t", "999"]) == 1
    assert "No task matches" in capsys.readouterr().err


def test_most_informative_slice_prefers_errors():
    ref = np.zeros((4, 6, 6), np.uint8)
    pred = ref.copy()
    ref[1, 1:4, 1:4] = pred[1, 1:4, 1:4] = 1  # agreement: score 18
    ref[2, 1:4, 1:4] = 1
    pred[2, 1:4, 1:4] = 2  # same amount of foreground, all wrong: score 18 + 9
    assert most_informative_slice(ref, pred, axis=0) == 2
    assert most_informative_slice(ref, pred, axis=1) in (1, 2, 3)


def test_overlay_without_image_draws_on_the_reference(tmp_path):
    ref = tmp_path / "r.nii.gz"
    write_label(reference(0), GEOMETRY, ref)
    out = plot_overlay(ref, ref, tmp_path / "o" / "x.png", image_file=tmp_path / "absent.nii.gz", title="t")
    assert out.stat().st_size > 1000


def _has_color(png: Path, hex_color: str, tol: float = 0.03) -> bool:
    from matplotlib.image import imread

    rgb = np.array([int(hex_color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    pixels = imread(png)[..., :3]
    return bool((np.abs(pixels - rgb).max(axis=-1) < tol).any())


def test_overlay_colours_each_label_and_names_it(tmp_path):
    from monetpipe.evaluation.plots import LABEL_COLORS

    ref, both = tmp_path / "r.nii.gz", reference(0)
    both[1, 4:7, 4:7] = 2  # both labels in every slice
    write_label(both, GEOMETRY, ref)
    image = tmp_path / "img.nii.gz"
    write_image(np.full(SHAPE, 40.0, np.float32), GEOMETRY, image)
    toy_plans = {**plans(False), "class_names": ["background", "organ", "lesion"]}
    toy_plans["normalization"] = [{"scheme": "ct", "clip": [-50.0, 300.0]}]
    out = plot_overlay(ref, ref, tmp_path / "both.png", image_file=image, title="t", plans=toy_plans)
    assert _has_color(out, LABEL_COLORS[0]) and _has_color(out, LABEL_COLORS[1])  # one colour per label
    binary = tmp_path / "b.nii.gz"
    write_label((reference(0) > 0).astype(np.uint8), GEOMETRY, binary)
    out = plot_overlay(binary, binary, tmp_path / "one.png", image_file=image, plans=toy_plans)
    assert _has_color(out, LABEL_COLORS[0]) and not _has_color(out, LABEL_COLORS[1])


def test_display_window_ct_and_mr():
    from monetpipe.evaluation.plots import SOFT_TISSUE_HU, display_window, label_names

    image = np.random.default_rng(0).normal(500.0, 100.0, size=(4, 20, 20))
    ct = {"normalization": [{"scheme": "ct", "clip": [38.0, 151.0]}]}
    assert display_window(image, ct) == SOFT_TISSUE_HU  # a narrow clip range: the soft-tissue window
    wide = {"normalization": [{"scheme": "ct", "clip": [-1000.0, 1500.0]}]}
    assert display_window(image, wide) == (-1000.0, 1500.0)  # never saturate what the plan kept
    lo, hi = display_window(image, {"normalization": [{"scheme": "zscore"}]})  # MR: percentiles of the image
    assert lo == pytest.approx(np.percentile(image, 1)) and hi == pytest.approx(np.percentile(image, 99))
    binary = {"class_names": ["background", "foreground"], "output_labels": {"0": 0, "1": 1}}
    assert label_names(binary) == {1: "foreground"}
    assert label_names({"class_names": ["bg", "hippocampus"], "output_labels": {"0": 0, "1": 2}}) == {2: "hippocampus"}


def test_scale_bar_is_a_round_length_of_at_most_a_quarter_width():
    from monetpipe.evaluation.plots import _scale_bar_mm

    assert _scale_bar_mm(96 * 0.8) == 10.0  # the demo CT: 76.8 mm wide
    assert _scale_bar_mm(512 * 0.7) == 50.0
    assert _scale_bar_mm(35 * 1.0) == 5.0  # a Task04 crop


def test_truncated_validation_prediction_is_named_and_fails_the_command(tree, monkeypatch, capsys, caplog):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(tree, name)))
    cut = tree.results / TASK / "unet16__monetPlans" / "fold_0" / "validation" / "toy_002.nii.gz"
    cut.write_bytes(cut.read_bytes()[:-20])
    assert main(["-t", TASK, "-m", "unet16", "--no-plots", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unet16__monetPlans/fold_0 (1)" in err
    assert str(cut) in caplog.text
    row = pd.read_csv(tree.results / TASK / "leaderboard.csv").iloc[0]
    assert row["n_cases"] == 2 and row["n_missing"] == 1


def test_federated_runs_get_their_sites_and_rounds(tree):
    """A monet_federated folder <model>__<plans>__<tag> beside the centralised one: same model and plans,
    told apart by ``run`` and the federated columns read from the fold's config.json."""
    results = tree.results / TASK
    shutil.copytree(results / "monet__monetPlans", results / "monet__monetPlans__fedavg3")
    record = {"model": "monet", "federated": {"sites": 3, "rounds": 10, "strategy": "fedavg", "local_steps": 5}}
    (results / "monet__monetPlans__fedavg3" / "fold_0" / "config.json").write_text(json.dumps(record))
    (results / "monet__monetPlans" / "fold_0" / "config.json").write_text(json.dumps({"model": "monet"}))
    table = build_leaderboard(TASK, tree, num_processes=1, make_plots=False)
    written = pd.read_csv(results / "leaderboard.csv").set_index("run")
    federated = ["federated_sites", "federated_rounds", "federated_strategy"]
    fed = written.loc["monet__monetPlans__fedavg3"]
    assert (fed["model"], fed["plans"]) == ("monet", "monetPlans") and fed[federated].tolist() == [3, 10, "fedavg"]
    for centralised in ("monet__monetPlans", "monet__monetPlans_binary", "unet16__monetPlans"):
        assert written.loc[centralised, federated].isna().all()  # no "federated" object / no config.json
    assert fed["dice_mean"] == written.loc["monet__monetPlans", "dice_mean"]  # same predictions, same score
    assert str(table["federated_sites"].dtype) == "Int64"


def test_a_time_budgeted_federated_run_shows_the_rounds_it_trained(tmp_path):
    from monetpipe.evaluation.leaderboard import federated_settings

    record = {"federated": {"sites": 2, "rounds": None, "time_budget": 3600.0, "strategy": "fedavg", "rounds_done": 7}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert federated_settings(tmp_path) == {"federated_sites": 2, "federated_rounds": 7, "federated_strategy": "fedavg"}


def test_an_old_format_summary_is_not_reused(tree):
    build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    summary_file = tree.results / TASK / "unet16__monetPlans" / "fold_0" / "validation" / "summary.json"
    old = json.loads(summary_file.read_text())
    del old["summary_version"]  # as written before misses were penalised
    summary_file.write_text(json.dumps(old))
    future = time.time() + 5
    os.utime(summary_file, (future, future))  # newer than every prediction: only the version stops reuse
    build_leaderboard(TASK, tree, models=["unet16"], num_processes=1, make_plots=False)
    assert json.loads(summary_file.read_text())["summary_version"] == 2


def test_cli_advice_names_the_model_option(tree, monkeypatch, capsys):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(tree, name)))
    assert main(["-t", TASK, "-m", "unet64", "--no-plots"]) == 1
    assert f"monet_train -t {TASK} -m unet64" in capsys.readouterr().err
    empty = MonetPaths(tree.raw, tree.preprocessed, tree.results.parent / "elsewhere")
    monkeypatch.setenv("MONET_results", str(empty.results))
    assert main(["-t", TASK, "--no-plots"]) == 1
    assert f"monet_train -t {TASK} -m MODEL" in capsys.readouterr().err


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "Task04_Hippocampus").is_dir(), reason="shared MSD data not present")
def test_issue_11_deleting_a_shifted_structure_never_improves_the_leaderboard(tmp_path):
    """Issue 11: perfect predictions except one case's label 2 shifted by 3 voxels, then that label deleted.

    Averaging a case's labels with the undefined HD95 skipped (the old convention, recomputed below) made
    the deletion *improve* hd95_mean to 0; now it is counted as a miss and scores the case's image diagonal.
    """
    from monetpipe.evaluation.evaluator import case_table
    from monetpipe.io.image import read_label

    labels_tr = SHARED_DATA / "Task04_Hippocampus" / "labelsTr"
    cases = sorted(strip(p.name) for p in labels_tr.glob("hippocampus_*.nii.gz"))[:10]
    paths = MonetPaths(tmp_path / "raw", tmp_path / "pre", tmp_path / "res")
    maps = {}
    for case in cases:
        array, geometry = read_label(labels_tr / f"{case}.nii.gz")
        maps[case] = (array, geometry)
        write_label(array, geometry, paths.preprocessed / "Task004_Hippo" / "gt_segmentations" / "p" / f"{case}.nii.gz")
    for variant in ("shifted", "deleted"):
        folder = paths.results / "Task004_Hippo" / f"{variant}__p"
        folder.mkdir(parents=True)
        (folder / "plans.json").write_text(json.dumps({"output_labels": {"0": 0, "1": 1, "2": 2}}))
        for i, case in enumerate(cases):
            array, geometry = maps[case]
            pred = array.copy()
            if i == 0:
                pred[pred == 2] = 0
                if variant == "shifted":  # label 2 moved 3 voxels along x, over background only
                    moved = np.roll(array == 2, 3, axis=2)
                    pred[moved & (pred == 0)] = 2
            write_label(pred, geometry, folder / "fold_0" / "validation" / f"{case}.nii.gz")
    table = build_leaderboard("Task004_Hippo", paths, num_processes=1, make_plots=False).set_index("model")
    shifted, deleted = table.loc["shifted"], table.loc["deleted"]
    assert shifted["hd95_mean"] > 0 and shifted["n_missed"] == 0
    assert deleted["n_missed"] == 1 and deleted["n_missed_2"] == 1
    assert deleted["hd95_mean"] > shifted["hd95_mean"] and deleted["hd95_2"] > shifted["hd95_2"]
    assert deleted["hd95_median"] >= shifted["hd95_median"] and deleted["dice_mean"] <= shifted["dice_mean"]
    boards = pd.read_csv(paths.results / "Task004_Hippo" / "leaderboard.csv").set_index("model")
    assert boards.loc["deleted", "hd95_mean"] == round(deleted["hd95_mean"], 2)
    old_convention = {}
    for variant in ("shifted", "deleted"):
        summary_file = paths.results / "Task004_Hippo" / f"{variant}__p" / "fold_0" / "validation" / "summary.json"
        summary = json.loads(summary_file.read_text())
        cases_table = case_table(summary)
        defined = cases_table["HD95"].where(cases_table["outcome"] == "both_present")
        old_convention[variant] = defined.groupby(cases_table["case"]).mean().mean()
        penalty = summary["metric_per_case"][0]["distance_penalty_mm"]
    assert old_convention["deleted"] == 0.0 < old_convention["shifted"] == pytest.approx(shifted["hd95_mean"])
    # 10 cases, 2 labels: the shifted label's HD95 is 3 voxels x 1 mm, the deleted one's the diagonal
    assert shifted["hd95_mean"] == pytest.approx(3.0 / 2 / 10)
    assert deleted["hd95_mean"] == pytest.approx(penalty / 2 / 10)
    assert cases[0] == "hippocampus_001" and penalty == pytest.approx(71.07, abs=0.01)  # quoted in the docs


def strip(name: str) -> str:
    return name[: -len(".nii.gz")]


def test_a_fold_that_cannot_be_evaluated_is_named_and_fails_the_command(tree, monkeypatch, capsys):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(tree, name)))
    validation = tree.results / TASK / "unet16__monetPlans" / "fold_0" / "validation"
    for path in validation.glob("*.nii.gz"):
        path.write_bytes(b"")  # every prediction of the fold unreadable: the fold has no row at all
    assert main(["-t", TASK, "--no-plots", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: unet16__monetPlans/fold_0: None of the 3 case(s)" in err and "toy_00" in err
    written = pd.read_csv(tree.results / TASK / "leaderboard.csv")
    assert sorted(written["model"]) == ["monet", "monet"]  # the other folds are still ranked


def test_box_plot_labels_carry_the_training_steps():
    from monetpipe.evaluation.plots import _labels

    names = ["monet__monetPlans", "unet64__monetPlans"]
    assert _labels(names, {"monet__monetPlans": {63}, "unet64__monetPlans": {None}}) == ["monet\n63 steps", "unet64"]
    assert _labels(["monet__p", "monet__q"], {"monet__p": {5, 7}}) == ["monet\np\n5/7 steps", "monet\nq"]
