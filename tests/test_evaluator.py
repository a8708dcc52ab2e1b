"""evaluate_folders and the -ref/-pred command on tiny NIfTI folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monetpipe.evaluation.cli import main
from monetpipe.evaluation.evaluator import EvaluationError, evaluate_folders, summary_ok
from monetpipe.evaluation.metrics import compute_label_metrics
from monetpipe.io.image import Geometry, read_label, write_label

SHAPE = (6, 12, 10)  # Z, Y, X
GEOMETRY = Geometry((10, 12, 6), (0.8, 0.9, 2.5), (1.0, -2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def label_map(boxes: dict[int, tuple[slice, slice, slice]]) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    for value, box in boxes.items():
        a[box] = value
    return a


REF_A = label_map({1: np.s_[1:4, 2:8, 2:7], 2: np.s_[4:6, 8:11, 5:9]})
PRED_A = label_map({1: np.s_[1:4, 3:8, 2:7], 2: np.s_[3:6, 8:11, 5:9]})
REF_B = label_map({1: np.s_[2:5, 1:5, 1:5]})  # label 2 absent in the reference...
PRED_B = label_map({1: np.s_[2:5, 1:6, 1:5], 2: np.s_[0, 0, 0]})  # ...but predicted


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_label(REF_A, GEOMETRY, ref / "case_a.nii.gz")
    write_label(PRED_A, GEOMETRY, pred / "case_a.nii.gz")
    write_label(REF_B, GEOMETRY, ref / "case_b.nii.gz")
    write_label(PRED_B, GEOMETRY, pred / "case_b.nii.gz")
    write_label(REF_B, GEOMETRY, ref / "case_c.nii.gz")  # no prediction
    write_label(PRED_B, GEOMETRY, pred / "case_d.nii.gz")  # no reference
    shifted = Geometry(GEOMETRY.size, (0.8, 0.9, 5.0), GEOMETRY.origin, GEOMETRY.direction)
    write_label(REF_A, GEOMETRY, ref / "case_e.nii.gz")
    write_label(PRED_A, shifted, pred / "case_e.nii.gz")  # geometry mismatch
    (pred / "._case_a.nii.gz").write_bytes(b"macOS resource fork")  # ignored, not an unreadable case
    (pred / ".hidden.nii.gz").write_bytes(b"")
    return ref, pred


def test_summary_layout_values_and_csv(folders):
    ref, pred = folders
    summary = evaluate_folders(ref, pred, num_processes=1, progress=False)
    written = json.loads((pred / "summary.json").read_text())
    assert written == summary
    assert "NaN" not in (pred / "summary.json").read_text()  # JSON has no NaN: null instead

    assert summary["labels"] == [1, 2] and summary["n_cases"] == 2
    cases = {c["reference_file"].split("/")[-1]: c for c in summary["metric_per_case"]}
    assert set(cases) == {"case_a.nii.gz", "case_b.nii.gz"}
    assert cases["case_a.nii.gz"]["prediction_file"] == str(pred / "case_a.nii.gz")
    spacing_zyx = GEOMETRY.spacing_zyx
    expected = compute_label_metrics(REF_A, PRED_A, [1, 2], spacing_zyx)
    for label in ("1", "2"):
        got = cases["case_a.nii.gz"]["metrics"][label]
        assert got["Dice"] == pytest.approx(expected[int(label)]["Dice"])
        assert got["HD95"] == pytest.approx(expected[int(label)]["HD95"])
        assert {"Dice", "IoU", "HD", "HD95", "ASSD", "TP", "FP", "FN", "n_ref", "n_pred"} <= set(got)
    # label 2 of case_b: reference empty, predicted -> a false alarm: Dice 0 and every distance the case's
    # penalty, the diagonal of the reference image (10 x 0.8, 12 x 0.9, 6 x 2.5 mm), included in the mean
    penalty = math.sqrt(8.0**2 + 10.8**2 + 15.0**2)
    assert cases["case_b.nii.gz"]["distance_penalty_mm"] == pytest.approx(penalty)
    b2 = cases["case_b.nii.gz"]["metrics"]["2"]
    assert b2["Dice"] == 0.0 and b2["n_pred"] == 1 and b2["outcome"] == "false_alarm"
    assert b2["HD95"] == b2["HD"] == b2["ASSD"] == pytest.approx(penalty) and b2["Recall"] is None
    assert summary["mean"]["2"]["HD95"] == pytest.approx((expected[2]["HD95"] + penalty) / 2)
    assert summary["defined_mean"]["2"]["HD95"] == pytest.approx(expected[2]["HD95"])  # case_a only
    assert summary["mean"]["2"]["Dice"] == pytest.approx(expected[2]["Dice"] / 2)
    assert summary["hd95_n_undefined"] == 0 and summary["n_undefined"]["2"]["HD95"] == 0
    assert summary["outcomes"]["2"] == {"n_both_present": 1, "n_missed": 0, "n_false_alarm": 1, "n_both_empty": 0}
    assert summary["foreground_outcomes"] == {"n_both_present": 3, "n_missed": 0, "n_false_alarm": 1, "n_both_empty": 0}
    assert summary["summary_version"] == 2
    fg = (summary["mean"]["1"]["Dice"] + summary["mean"]["2"]["Dice"]) / 2
    assert summary["foreground_mean"]["Dice"] == pytest.approx(fg)
    # the reference's spacing is used: 1 slice of 2.5 mm between label-2 boxes along z
    assert expected[2]["HD"] == pytest.approx(2.5)

    table = pd.read_csv(pred / "summary.csv")
    assert len(table) == 4 and set(table["case"]) == {"case_a", "case_b"}
    row = table[(table["case"] == "case_b") & (table["label"] == 2)].iloc[0]
    assert row["Dice"] == 0.0 and row["HD95"] == pytest.approx(penalty) and row["outcome"] == "false_alarm"


def test_unpaired_and_mismatched_files_are_reported_by_name(folders, caplog):
    ref, pred = folders
    summary = evaluate_folders(ref, pred, num_processes=1, progress=False)
    assert summary["unpaired"]["missing_predictions"] == [str(ref / "case_c.nii.gz")]
    assert summary["unpaired"]["missing_references"] == [str(pred / "case_d.nii.gz")]
    assert [e["case"] for e in summary["errors"]] == ["case_e"]
    assert "spacing" in summary["errors"][0]["error"] and "case_e" in summary["errors"][0]["error"]
    assert not summary_ok(summary)
    assert "case_c" in caplog.text and "case_d" in caplog.text and "case_e" in caplog.text


def test_explicit_labels_case_ids_output_and_parallel(folders, tmp_path):
    ref, pred = folders
    out = tmp_path / "elsewhere" / "s.json"
    kw = {"labels": [1], "output_file": out, "case_ids": ["case_a", "case_b"], "progress": False}
    one = evaluate_folders(ref, pred, num_processes=1, **kw)
    two = evaluate_folders(ref, pred, num_processes=2, **kw)
    assert one == two and summary_ok(one)  # case_c not expected; case_d outside case_ids
    assert one["labels"] == [1] and set(one["mean"]) == {"1"}
    assert out.is_file() and out.with_suffix(".csv").is_file() and not (pred / "summary.json").exists()


def test_both_empty_label_is_nan_and_counted(tmp_path):
    ref, pred = tmp_path / "r", tmp_path / "p"
    write_label(REF_B, GEOMETRY, ref / "x.nii.gz")
    write_label(REF_B, GEOMETRY, pred / "x.nii.gz")
    summary = evaluate_folders(ref, pred, labels=[1, 3], num_processes=1, progress=False)
    assert summary["mean"]["1"]["Dice"] == 1.0
    assert summary["mean"]["3"]["Dice"] is None and summary["dice_n_undefined"] == 1
    assert summary["foreground_mean"]["Dice"] == 1.0  # undefined label 3 excluded, not counted as 0


def test_no_pairs_is_a_clear_error(tmp_path):
    ref, pred = tmp_path / "r", tmp_path / "p"
    write_label(REF_B, GEOMETRY, ref / "x.nii.gz")
    write_label(REF_B, GEOMETRY, pred / "y.nii.gz")
    with pytest.raises(EvaluationError, match="same cases"):
        evaluate_folders(ref, pred, num_processes=1, progress=False)
    with pytest.raises(EvaluationError, match="not found"):
        evaluate_folders(tmp_path / "nope", pred, num_processes=1, progress=False)


def test_cli_folder_mode(folders, tmp_path, capsys):
    ref, pred = folders
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "1"]) == 1  # case_c has no prediction
    captured = capsys.readouterr()
    assert "foreground" in captured.out and "without prediction" in captured.err
    (ref / "case_c.nii.gz").unlink()
    (pred / "case_e.nii.gz").unlink()
    (ref / "case_e.nii.gz").unlink()
    out = tmp_path / "out.json"
    assert main(["-ref", str(ref), "-pred", str(pred), "-l", "1", "-o", str(out), "-np", "1"]) == 0
    assert json.loads(out.read_text())["labels"] == [1]
    assert main(["-ref", str(tmp_path / "missing"), "-pred", str(pred)]) == 1
    err = capsys.readouterr().err
    assert "missing: folder not found" in err and "Traceback" not in err


def _clean_pair(folders):
    """The fixture without its geometry mismatch: case_c has no prediction, case_d no reference."""
    ref, pred = folders
    (pred / "case_e.nii.gz").unlink()
    (ref / "case_e.nii.gz").unlink()
    return ref, pred


def test_cli_only_predicted_scores_the_predicted_cases_and_passes(folders, capsys):
    ref, pred = _clean_pair(folders)
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "1"]) == 1  # case_c: reference without prediction
    capsys.readouterr()
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "1", "--only-predicted"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    scored = sorted(Path(c["reference_file"]).name for c in summary["metric_per_case"])
    assert scored == ["case_a.nii.gz", "case_b.nii.gz"]
    assert summary["unpaired"]["missing_predictions"] == []  # case_c left out, not missing
    assert summary["unpaired"]["missing_references"] == [str(pred / "case_d.nii.gz")]
    assert "2 case(s)" in capsys.readouterr().out


def test_cli_split_scores_that_folds_val_cases(folders, tmp_path, capsys):
    ref, pred = _clean_pair(folders)
    splits = tmp_path / "splits_final.json"
    splits.write_text(
        json.dumps(
            [{"train": ["case_b", "case_c"], "val": ["case_a"]}, {"train": ["case_a"], "val": ["case_b", "case_c"]}]
        )
    )
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "1", "--split", str(splits), "--fold", "0"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert [Path(c["reference_file"]).name for c in summary["metric_per_case"]] == ["case_a.nii.gz"]
    assert summary["unpaired"]["missing_references"] == []  # case_d is not in the split: not reported
    # fold 1 expects case_c, which has no prediction: scored without it, and the command fails naming it
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "1", "--split", str(splits), "--fold", "1"]) == 1
    err = capsys.readouterr().err
    assert "case_c.nii.gz: no prediction" in err
    summary = json.loads((pred / "summary.json").read_text())
    assert [Path(c["reference_file"]).name for c in summary["metric_per_case"]] == ["case_b.nii.gz"]


def test_cli_split_errors_name_the_file_and_the_fix(folders, tmp_path, capsys):
    ref, pred = _clean_pair(folders)
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": [], "val": ["case_a", "other_case"]}]))
    base = ["-ref", str(ref), "-pred", str(pred), "-np", "1", "--split"]
    assert main([*base, str(splits)]) == 1
    assert "other_case" in capsys.readouterr().err
    assert main([*base, str(splits), "--fold", "3"]) == 1
    assert "has folds 0 to 0, not fold 3" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "nope.json: split file not found" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([*base, str(splits), "--only-predicted"])
    with pytest.raises(SystemExit):
        main(["-ref", str(ref), "-pred", str(pred), "--fold", "0"])


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.skipif(not (SHARED_DATA / "Task04_Hippocampus").is_dir(), reason="shared MSD data not present")
def test_real_hippocampus_labels_agree_with_monai(tmp_path):
    """Real label maps (two labels) against a one-voxel shift: per-case HD95 matches MONAI's."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    labels_tr = SHARED_DATA / "Task04_Hippocampus" / "labelsTr"
    arrays = {}
    for name in ("hippocampus_001", "hippocampus_003"):  # 003 is stored as float32 in MSD
        ref, geometry = read_label(labels_tr / f"{name}.nii.gz")
        pred = np.roll(ref, 1, axis=2)
        write_label(ref, geometry, ref_dir / f"{name}.nii.gz")
        write_label(pred, geometry, pred_dir / f"{name}.nii.gz")
        arrays[name] = (ref, pred, geometry.spacing_zyx)
    summary = evaluate_folders(ref_dir, pred_dir, num_processes=1, progress=False)
    assert summary["labels"] == [1, 2] and summary_ok(summary)
    for entry in summary["metric_per_case"]:
        ref, pred, spacing = arrays[Path(entry["reference_file"]).name[: -len(".nii.gz")]]
        for label in (1, 2):
            y, yp = (torch.from_numpy((a == label)[None, None].astype(np.float32)) for a in (ref, pred))
            expected = monai_metrics.compute_hausdorff_distance(
                yp, y, include_background=True, percentile=95, spacing=list(spacing)
            ).item()
            assert entry["metrics"][str(label)]["HD95"] == pytest.approx(expected, rel=1e-6)
            assert 0 < entry["metrics"][str(label)]["Dice"] < 1


def test_truncated_prediction_fails_the_evaluation_naming_the_file(folders, capsys):
    """A cut prediction is never scored (as zeros) nor silently skipped: exit 1, one line naming it."""
    ref, pred = folders
    (ref / "case_c.nii.gz").unlink()  # leave only case_a, case_b and the mismatched case_e
    (pred / "case_e.nii.gz").unlink()
    (ref / "case_e.nii.gz").unlink()
    data = (pred / "case_a.nii.gz").read_bytes()
    (pred / "case_a.nii.gz").write_bytes(data[: len(data) // 2])
    for processes in ("1", "2"):
        assert main(["-ref", str(ref), "-pred", str(pred), "-np", processes]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "case_a.nii.gz" in line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(pred / "case_a.nii.gz") in lines[0]
        assert "truncated" in lines[0] or "corrupt" in lines[0]
        summary = json.loads((pred / "summary.json").read_text())
        assert summary["n_cases"] == 1 and [e["case"] for e in summary["errors"]] == ["case_a"]
        assert not summary_ok(summary)


@pytest.mark.skipif(not (SHARED_DATA / "Task04_Hippocampus").is_dir(), reason="shared MSD data not present")
def test_truncated_real_prediction_is_refused(tmp_path, capsys):
    labels_tr = SHARED_DATA / "Task04_Hippocampus" / "labelsTr"
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for name in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        (ref_dir / name).write_bytes((labels_tr / name).read_bytes())
        (pred_dir / name).write_bytes((labels_tr / name).read_bytes())
    cut = pred_dir / "hippocampus_003.nii.gz"
    cut.write_bytes(cut.read_bytes()[:-200])  # the end of the gzip stream is gone
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {cut}:" in err
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["mean"]["1"]["Dice"] == 1.0  # the good case, and only it


def test_an_unwritable_summary_folder_is_refused_before_any_case_is_scored(tmp_path, capsys):
    from monetpipe.io.image import Geometry, write_label

    geometry = Geometry((8, 8, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:5, 2:5] = 1
    for folder in ("ref", "pred"):
        write_label(mask, geometry, tmp_path / folder / "c1.nii.gz")
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")  # a folder cannot be made inside a file, even as root
    code = main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(blocked / "s.json")])
    err = capsys.readouterr().err
    assert code == 1 and str(blocked) in err and "not writable" in err and "Traceback" not in err
    assert not (tmp_path / "pred" / "summary.json").exists()
