"""Reduced-precision inference: selection and fallback, the Dice check refusing a bad quantization, the int8
calibration stored beside the checkpoint and reused, and fp32 results identical to the default path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monetpipe.errors import MonetError
from monetpipe.inference.backends import make_inference_model
from monetpipe.inference.precision import (
    PrecisionFiles,
    check_validated,
    file_sha1,
    resolve_precision,
)
from monetpipe.networks import build_network


def _record(fold_dir: Path, entries: dict) -> None:
    """A validation record for fold_dir's checkpoint_final.pth, as prepare_precision writes it."""
    files = PrecisionFiles(fold_dir)
    files.folder.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint_sha1": file_sha1(files.checkpoint_file), "precisions": entries}
    files.validation.write_text(json.dumps(record))


@pytest.fixture()
def fold_dir(tmp_path) -> Path:
    folder = tmp_path / "monet__monetPlans" / "fold_0"
    folder.mkdir(parents=True)
    torch.save({"anything": 1}, folder / "checkpoint_final.pth")
    return folder


def _entry(passed: bool = True, faster: bool = True, difference: float = 0.001) -> dict:
    return {"passed": passed, "faster": faster, "difference": difference, "tolerance": 0.005}


def test_fp32_is_the_default_form_bit_for_bit():
    torch.manual_seed(0)
    model = build_network("monet", 1, 3).eval()
    x = torch.randn(2, 1, 48, 64)
    for backend in ("torch", "eager"):
        default = make_inference_model(model, backend)(x)
        fp32 = make_inference_model(model, backend, precision="fp32")(x)
        assert torch.equal(default, fp32)


def test_bf16_runs_on_any_cpu_and_keeps_the_masks_mostly():
    torch.manual_seed(0)
    model = build_network("monet", 1, 3).eval()
    x = torch.randn(2, 1, 48, 64)
    ref = make_inference_model(model, "torch")(x)
    out = make_inference_model(model, "torch", precision="bf16")(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.95  # an untrained net's near-ties may flip


def test_precision_and_backend_combinations_are_checked():
    model = build_network("monet", 1, 1).eval()
    with pytest.raises(MonetError, match="--precision bf16 runs with --backend"):
        make_inference_model(model, "onnxruntime", precision="bf16")
    with pytest.raises(MonetError, match="unknown --precision 'fp8'"):
        make_inference_model(model, "torch", precision="fp8")
    with pytest.raises(MonetError, match="needs the quantized model"):
        make_inference_model(model, "onnxruntime", precision="int8")


def test_auto_is_fp32_without_a_validated_record(fold_dir, monkeypatch):
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni,avx512_bf16")
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "fp32"


def test_auto_follows_the_cpu_and_the_record(fold_dir, monkeypatch):
    _record(fold_dir, {"int8": _entry(), "bf16": _entry()})
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2")  # int8 through AVX2, no bf16
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "int8"
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_bf16")
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "bf16"  # without VNNI bf16 first
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "")  # a CPU without any of them
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "fp32"
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni")
    assert resolve_precision("auto", [fold_dir], "final", "cuda") == "fp32"
    assert resolve_precision("bf16", [fold_dir], "final", "cpu") == "bf16"  # an explicit choice stays


def test_auto_picks_the_precision_measured_faster_when_both_passed(fold_dir, monkeypatch):
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni,avx512_bf16")
    _record(fold_dir, {"int8": _entry() | {"network_s": 9.0}, "bf16": _entry() | {"network_s": 7.5}})
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "bf16"
    _record(fold_dir, {"int8": _entry() | {"network_s": 6.0}, "bf16": _entry() | {"network_s": 7.5}})
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "int8"
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni")  # no native bf16: int8 however it timed
    _record(fold_dir, {"int8": _entry() | {"network_s": 9.0}, "bf16": _entry() | {"network_s": 7.5}})
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "int8"


def test_auto_ignores_a_precision_that_failed_was_slower_or_is_stale(fold_dir, monkeypatch):
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni,avx512_bf16")
    _record(fold_dir, {"int8": _entry(passed=False, difference=0.02), "bf16": _entry(faster=False)})
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "fp32"
    _record(fold_dir, {"int8": _entry()})
    torch.save({"retrained": 2}, fold_dir / "checkpoint_final.pth")  # the record is for the old file
    assert resolve_precision("auto", [fold_dir], "final", "cpu") == "fp32"


def test_auto_needs_every_fold_validated(fold_dir, monkeypatch):
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2,avx512_vnni")
    other = fold_dir.parent / "fold_1"
    other.mkdir()
    torch.save({"fold": 1}, other / "checkpoint_final.pth")
    _record(fold_dir, {"int8": _entry()})
    assert resolve_precision("auto", [fold_dir, other], "final", "cpu") == "fp32"


def test_a_failed_check_refuses_that_precision_by_name(fold_dir):
    _record(fold_dir, {"bf16": _entry(passed=False, difference=0.0123)})
    with pytest.raises(MonetError) as err:
        check_validated("bf16", [fold_dir], "final")
    text = str(err.value)
    assert "--precision bf16" in text and "0.0123" in text and "0.0050" in text and "--precision fp32" in text
    with pytest.raises(MonetError, match="no int8 model .* --prepare-precision int8"):
        check_validated("int8", [fold_dir], "final")
    check_validated("fp32", [fold_dir], "final")  # fp32 is never refused


# --- a trained model on the synthetic CT task: prepare, refuse, reuse, predict --------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from monetpipe.paths import MonetPaths
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.synthetic import make_synthetic_task
    from monetpipe.training import train_fold
    from monetpipe.training.config import TrainConfig

    root = tmp_path_factory.mktemp("precision")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    make_synthetic_task(paths.raw, kind="ct", num_cases=6, seed=0, shape=(48, 40, 10))
    plan_and_preprocess("901", paths, num_processes=1)
    config = TrainConfig(
        epochs=3, iters_per_epoch=10, batch_size=8, num_workers=0, num_threads=1, prepare_precision="none"
    )
    result = train_fold("901", "monet", 0, config, paths=paths)
    return paths, result.fold_dir.parent


def test_training_checks_the_reduced_precisions_the_cpu_runs():
    from monetpipe.cpu_features import cpu_features
    from monetpipe.inference.precision_check import precisions_to_prepare

    both = cpu_features(["avx2", "avx512_bf16", "avx512_vnni"])
    # int8 runs without VNNI too (slower or faster, by CPU): the check times it, so auto checks it there
    assert precisions_to_prepare("auto", "cpu", cpu_features(["avx2"])) == ["int8"]
    assert precisions_to_prepare("auto", "cpu", cpu_features(["sse4_2"])) == []  # no int8 kernels: nothing
    # both checked; if both pass and run faster, monet_predict's auto takes the one measured faster
    assert precisions_to_prepare("auto", "cpu", cpu_features(["avx2", "avx512_bf16"])) == ["bf16", "int8"]
    assert precisions_to_prepare("auto", "cpu", both) == ["bf16", "int8"]  # onnxruntime is a test extra
    assert precisions_to_prepare("auto", "cuda", both) == []  # trained on a GPU: ask for it by name
    assert precisions_to_prepare("int8", "cuda") == ["int8"] and precisions_to_prepare("none") == []
    assert precisions_to_prepare("all") == ["bf16", "int8"]
    with pytest.raises(MonetError, match="--prepare-precision"):
        precisions_to_prepare("fp16")


def test_the_check_times_fp32_and_the_reduced_form_in_turns_so_a_slowing_machine_hits_both(monkeypatch, tmp_path):
    """A shared CPU that slows down during the check must not make the faster form look slower: bf16 at 0.7x
    fp32's cost per case is recorded faster on a machine that gets about 5x slower over the check (one pass of
    fp32 and then one of bf16 would have timed bf16 slower), and every case is predicted once per form."""
    from types import SimpleNamespace

    from monetpipe.evaluation import evaluator
    from monetpipe.inference import api, precision_check
    from monetpipe.training import validation

    clock, calls = [0.0], []

    def predict(group, out_dir, _input_dir, models, *args, **kwargs):
        cost = {"fp32": 1.0, "bf16": 0.7}[models[0]] * len(group) * (1 + clock[0] / 60)  # slower as it goes
        clock[0] += cost
        calls.append((models[0], list(group)))
        return SimpleNamespace(failed={}, stage_seconds=lambda: {"network": cost})

    monkeypatch.setattr(api, "predict_cases", predict)
    monkeypatch.setattr(validation, "foreground_labels", lambda plans: [1])
    monkeypatch.setattr(evaluator, "evaluate_folders", lambda *a, **k: {"foreground_mean": {"Dice": 0.9}})
    cases = list(range(60))
    layout = SimpleNamespace(gt_segmentations=tmp_path)
    forms = {"fp32": "fp32", "bf16": "bf16"}
    timed = precision_check._predict_alternating(cases, forms, None, layout, cases, tmp_path, 1)
    assert timed["bf16"][1] < timed["fp32"][1]
    assert 0.6 < timed["bf16"][1] / timed["fp32"][1] < 0.8  # close to the true 0.7
    for name in forms:
        assert sorted(c for form, group in calls if form == name for c in group) == cases
    assert [form for form, _ in calls[:4]] == ["fp32", "bf16", "bf16", "fp32"]


def test_monet_train_prepares_bf16_and_a_failed_check_does_not_fail_it(monet_roots, monkeypatch, caplog):
    from monetpipe.inference import precision_check
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.synthetic import make_synthetic_task
    from monetpipe.training import train_fold
    from monetpipe.training.config import TrainConfig

    make_synthetic_task(monet_roots.raw, kind="ct", num_cases=5, seed=1, shape=(40, 32, 8))
    plan_and_preprocess("901", monet_roots, num_processes=1)
    quick = dict(epochs=1, iters_per_epoch=4, batch_size=8, num_workers=0, num_threads=1)
    result = train_fold("901", "monet", 0, TrainConfig(**quick, prepare_precision="bf16"), paths=monet_roots)
    record = json.loads(PrecisionFiles(result.fold_dir).validation.read_text())
    entry = record["precisions"]["bf16"]
    assert entry["cases"] == 2 and {"dice_fp32", "dice", "difference", "passed", "faster"} <= set(entry)
    assert record["checkpoint_sha1"] == file_sha1(result.fold_dir / "checkpoint_final.pth")

    def refuse(*args, **kwargs):  # not even a MonetError: the trained model must survive any failure here
        raise RuntimeError("bf16: mean foreground Dice dropped by 0.2")

    monkeypatch.setattr(precision_check, "prepare_precision", refuse)
    elsewhere = replace(monet_roots, results=monet_roots.results.parent / "results2")
    again = train_fold("901", "monet", 0, TrainConfig(**quick, prepare_precision="bf16"), paths=elsewhere)
    assert (again.fold_dir / "checkpoint_final.pth").is_file() and again.validation is not None
    assert "bf16 inference not enabled for fold 0" in caplog.text and "dropped by 0.2" in caplog.text


@pytest.mark.slow
def test_int8_is_calibrated_once_stored_and_reused(trained, monkeypatch):
    from monetpipe.inference import precision_check

    paths, folder = trained
    first = precision_check.prepare_precision(folder, "int8", folds=[0], tolerance=1.0, paths=paths)[0]
    files = PrecisionFiles(folder / "fold_0")
    assert files.int8_model.is_file() and files.int8_record.is_file()
    assert first["calibration"]["reused"] is False and first["calibration"]["slices"] > 0
    record = json.loads(files.validation.read_text())
    assert set(record["precisions"]["int8"]) >= {"dice_fp32", "dice", "difference", "passed", "faster"}

    def no_recalibration(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(precision_check, "quantize_onnx_int8", no_recalibration)
    second = precision_check.prepare_precision(folder, "int8", folds=[0], tolerance=1.0, paths=paths)[0]
    assert second["calibration"]["reused"] is True
    assert second["dice"] == first["dice"]


@pytest.mark.slow
def test_int8_calibrated_on_garbage_is_refused(trained, monkeypatch, tmp_path):
    from monetpipe.inference import precision_check

    paths, folder = trained
    copy = tmp_path / "Task901_SyntheticCT" / folder.name  # a copy: the refusal must not touch the good model
    import shutil

    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("precision"))
    real = precision_check.calibration_slices
    monkeypatch.setattr(precision_check, "calibration_slices", lambda *a, **k: real(*a, **k) * 1e4)
    with pytest.raises(MonetError) as err:
        precision_check.prepare_precision(copy, "int8", folds=[0], paths=paths)
    text = str(err.value)
    assert "--precision int8" in text and "tolerance 0.0050" in text and "--precision fp32" in text
    entry = json.loads(PrecisionFiles(copy / "fold_0").validation.read_text())["precisions"]["int8"]
    assert entry["passed"] is False and entry["dice"] < entry["dice_fp32"] - 0.005
    with pytest.raises(MonetError, match="--precision int8"):  # and predicting with it is refused too
        check_validated("int8", [copy / "fold_0"], "final")


@pytest.mark.slow
def test_predict_in_int8_and_auto_without_cpu_features_is_fp32(trained, monkeypatch, tmp_path):
    from monetpipe.inference import precision_check
    from monetpipe.inference.api import predict_folder

    paths, folder = trained
    precision_check.prepare_precision(folder, "int8", folds=[0], tolerance=1.0, paths=paths)
    images = paths.raw / "Task901_SyntheticCT" / "imagesTs"

    def labels(out: Path) -> list[np.ndarray]:
        return [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted(out.glob("*.nii.gz"))]

    fp32 = predict_folder(images, tmp_path / "fp32", folder, folds=[0], precision="fp32")
    int8 = predict_folder(images, tmp_path / "int8", folder, folds=[0], precision="int8")
    assert fp32.ok and int8.ok and len(labels(tmp_path / "int8")) == len(labels(tmp_path / "fp32")) > 0
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "")
    auto = predict_folder(images, tmp_path / "auto", folder, folds=[0], precision="auto")
    assert auto.ok
    for a, b in zip(labels(tmp_path / "auto"), labels(tmp_path / "fp32"), strict=True):
        assert np.array_equal(a, b)


def test_calibration_slices_carry_the_context_channels_of_2_5d_plans(tmp_path):
    from monetpipe.inference.precision import calibration_slices

    data = np.arange(2 * 5 * 4 * 4, dtype=np.float32).reshape(2, 5, 4, 4)  # C = 2 channels, S = 5 slices
    np.save(tmp_path / "case_data.npy", data)
    out = calibration_slices([tmp_path / "case_data.npy"], count=5, multiple=4, context=1).numpy()
    assert out.shape == (5, 6, 4, 4)  # C * (2K + 1) channels, as the network is fed
    first, last = out[0], out[4]  # slices z-1, z, z+1 with edges replicated
    assert np.array_equal(first, np.concatenate([data[:, 0], data[:, 0], data[:, 1]]))
    assert np.array_equal(last, np.concatenate([data[:, 3], data[:, 4], data[:, 4]]))
    assert calibration_slices([tmp_path / "case_data.npy"], count=5, multiple=4).shape == (5, 2, 4, 4)
