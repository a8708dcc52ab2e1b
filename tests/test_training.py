"""monet_train on the embedded synthetic CT task: run folder, final validation, refusal, resume after
SIGKILL, ``-m all`` / ``-f all``, every network, learning, and a 2-process gloo DDP run.

Budgets are tiny (a few iterations of a few 48x48 slices) and torch uses one thread, so the suite
stays fast on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.training.config import TrainConfig
from monetpipe.training.progress import read_log_csv

TASK = "Task901_SyntheticCT"
TINY = TrainConfig(epochs=2, iters_per_epoch=2, batch_size=4, num_workers=0, num_threads=1, val_batch_size=16)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_task(tmp_path_factory) -> MonetPaths:
    """Task901 (12 small cases, 48x40 in-plane, 10 slices), planned and cached once per session."""
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.synthetic import make_synthetic_task

    root = tmp_path_factory.mktemp("training_task")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    make_synthetic_task(paths.raw, kind="ct", num_cases=12, seed=0, shape=(48, 40, 10))
    plan_and_preprocess("901", paths, num_processes=1)
    return paths


@pytest.fixture()
def roots(synthetic_task, tmp_path, monkeypatch) -> MonetPaths:
    """The shared task with a results root of this test's own (also exported for subprocesses)."""
    paths = MonetPaths(synthetic_task.raw, synthetic_task.preprocessed, tmp_path / "results")
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(paths, name)))
    return paths


@pytest.fixture(scope="module")
def finished_run(synthetic_task, tmp_path_factory):
    """One finished 2-epoch MoNet run (with a background augmentation worker)."""
    from monetpipe.training import train_fold

    paths = MonetPaths(synthetic_task.raw, synthetic_task.preprocessed, tmp_path_factory.mktemp("run") / "results")
    result = train_fold("901", "monet", 0, TINY.with_changes(num_workers=1), paths=paths)
    return paths, result


def _split(paths: MonetPaths) -> dict:
    return json.loads((paths.preprocessed / TASK / "splits_final.json").read_text())[0]


def _cli(paths: MonetPaths, *args: str) -> list[str]:
    return [sys.executable, "-m", "monetpipe.training", "-t", "901", *args]


def _env(paths: MonetPaths) -> dict:
    return os.environ | {
        "MONET_raw": str(paths.raw),
        "MONET_preprocessed": str(paths.preprocessed),
        "MONET_results": str(paths.results),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


# ---- a finished run ---------------------------------------------------------------------------------


def test_run_folder_is_self_contained_and_records_everything(finished_run):
    paths, result = finished_run
    model_dir = paths.results / TASK / f"monet__{DEFAULT_PLANS}"
    fold = model_dir / "fold_0"
    assert result.fold_dir == fold and result.epochs == 2
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model_dir / name).read_bytes() == (
            paths.preprocessed / TASK / (f"{DEFAULT_PLANS}.json" if name == "plans.json" else name)
        ).read_bytes()
    assert (fold / "progress.png").read_bytes()[:4] == b"\x89PNG"
    log = read_log_csv(fold / "training_log.csv")
    assert [r["epoch"] for r in log] == [1, 2]
    columns = {"epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "val_seconds", "steps"}
    assert set(log[0]) == columns | {"lr_end"}  # the default poly schedule logs each epoch's last LR too
    record = json.loads((fold / "config.json").read_text())
    assert record["config"] == TINY.with_changes(num_workers=1).to_dict()
    assert record["resolved"]["iterations_per_epoch"] == 2 and record["resolved"]["num_workers"] == 1
    # no leakage: the fold's val cases are in neither the training nor the inner validation set
    split, cases = _split(paths), record["cases"]
    assert cases["val"] == sorted(split["val"])
    assert sorted(cases["train"] + cases["inner_val"]) == sorted(split["train"])
    assert len(cases["inner_val"]) == 1 and not set(cases["inner_val"]) & set(cases["train"])


def test_checkpoints_load_with_weights_only_and_rebuild_the_network(finished_run):
    from monetpipe.networks import build_network

    paths, _ = finished_run
    fold = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    for which in ("latest", "best", "final"):
        ckpt = torch.load(fold / f"checkpoint_{which}.pth", weights_only=True)
        assert ckpt["network"] == {"name": "monet", "in_channels": 3, "num_classes": 3}  # 2.5D: z-1, z, z+1
        assert ckpt["plans"]["plans_name"] == DEFAULT_PLANS
        net = build_network(**ckpt["network"])
        net.load_state_dict(ckpt["model_state"])
        assert {"optimizer", "scheduler", "scaler", "rng", "early_stopping", "best_dice"} <= set(ckpt)
    assert torch.load(fold / "checkpoint_final.pth", weights_only=True)["epoch"] == 2


def test_final_validation_has_the_reference_geometry_and_a_summary(finished_run):
    paths, result = finished_run
    val_dir = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "validation"
    val_cases = sorted(_split(paths)["val"])
    assert sorted(p.name for p in val_dir.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in val_cases]
    for case in val_cases:
        pred = sitk.ReadImage(str(val_dir / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(paths.preprocessed / TASK / "gt_segmentations" / DEFAULT_PLANS / f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        assert pred.GetSpacing() == ref.GetSpacing() and pred.GetOrigin() == ref.GetOrigin()
        assert pred.GetDirection() == ref.GetDirection()
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
    summary = json.loads((val_dir / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(val_cases)
    assert all(set(c["metrics"]) == {"1", "2"} for c in summary["metric_per_case"])
    assert result.validation["foreground_mean"]["Dice"] == summary["foreground_mean"]["Dice"]


def test_a_finished_run_is_never_overwritten(finished_run, capsys, monkeypatch):
    from monetpipe.training import train_fold
    from monetpipe.training.cli import main

    paths, _ = finished_run
    final = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "checkpoint_final.pth"
    before = final.stat().st_mtime_ns
    with pytest.raises(MonetError, match="finished run"):
        train_fold("901", "monet", 0, TINY, paths=paths)
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(paths, name)))
    assert main(["-t", "901", "-m", "monet", "--epochs", "2"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert final.stat().st_mtime_ns == before


def test_config_replays_a_recorded_run(finished_run, roots, monkeypatch):
    """``monet_train --config fold_0/config.json`` into a new results root records the same run.

    Only ``written`` (the clock) and ``command`` (the replay's own command line) may differ.
    """
    from monetpipe.training.cli import main

    paths, _ = finished_run
    recorded = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "config.json"
    assert roots.results != paths.results
    argv = ["--config", str(recorded)]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/monet_train", *argv])
    assert main(argv) == 0
    original = json.loads(recorded.read_text())
    replayed = json.loads((roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "config.json").read_text())
    assert replayed["command"] == ["/usr/local/bin/monet_train", *argv]
    for record in (original, replayed):
        del record["written"], record["command"]
    assert replayed == original


def test_flags_override_the_replayed_config(finished_run):
    from monetpipe.training.cli import config_from_args, parse_args

    paths, _ = finished_run
    recorded = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "config.json"
    args = parse_args(["--config", str(recorded), "-m", "unet16", "--epochs", "5", "--no-output-prior"])
    assert (args.task, args.model, args.fold, args.plans) == (TASK, ["unet16"], ["0"], DEFAULT_PLANS)
    expected = TINY.with_changes(num_workers=1, epochs=5, output_prior=False)
    assert config_from_args(args) == expected


def test_val_only_and_continue_redo_only_the_validation(finished_run):
    from monetpipe.training import train_fold

    paths, _ = finished_run
    val_dir = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "validation"
    victim = sorted(val_dir.glob("*.nii.gz"))[0]
    victim.unlink()
    (val_dir / "summary.json").unlink()
    result = train_fold("901", "monet", 0, TINY, paths=paths, continue_training=True)
    assert victim.is_file() and (val_dir / "summary.json").is_file() and result.epochs == 2
    (val_dir / "summary.json").write_text("{}")
    train_fold("901", "monet", 0, TINY, paths=paths, val_only=True)
    assert json.loads((val_dir / "summary.json").read_text())["n_cases"] == len(_split(paths)["val"])


def test_pretrained_weights_start_a_new_run_from_a_checkpoint(finished_run, roots, caplog):
    from monetpipe.training import train_fold

    paths, _ = finished_run
    source = paths.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "checkpoint_final.pth"
    config = TINY.with_changes(epochs=1, iters_per_epoch=1, lr=1e-12, lr_floor=0.0, pretrained_weights=str(source))
    with caplog.at_level("INFO"):
        result = train_fold("901", "monet", 0, config, paths=roots)
    assert "pretrained weights" in caplog.text
    record = json.loads((result.fold_dir / "config.json").read_text())
    assert record["config"]["pretrained_weights"] == str(source)
    start = torch.load(source, weights_only=True)["model_state"]
    after = torch.load(result.fold_dir / "checkpoint_final.pth", weights_only=True)["model_state"]
    conv = next(k for k in start if k.endswith("conv.weight"))
    assert torch.allclose(start[conv], after[conv], atol=1e-6)  # lr 1e-12: still the pretrained weights


def test_bad_model_or_fold_is_a_one_line_error(roots, capsys):
    from monetpipe.training.cli import main

    assert main(["-t", "901", "-m", "unet3d"]) == 1
    assert "unknown model 'unet3d'" in capsys.readouterr().err
    assert main(["-t", "901", "-m", "monet", "-f", "3"]) == 1
    assert "fold 3 does not exist" in capsys.readouterr().err


# ---- training behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["monet", "unet16", "unet64", "attention_unet"])
def test_every_network_takes_training_steps(synthetic_task, cpu_parts, name):
    from monetpipe.networks import build_network
    from monetpipe.preprocessing.plans import Plans
    from monetpipe.preprocessing.slice_cache import CacheLayout
    from monetpipe.training.augmentation import batch_stream, training_transforms
    from monetpipe.training.data import SliceBatchLoader, SliceIndex
    from monetpipe.training.trainer import train_epoch

    torch.set_num_threads(1)
    layout = CacheLayout(synthetic_task.preprocessed / TASK, DEFAULT_PLANS)
    plans = Plans.load(layout.plans_file)
    index = SliceIndex.build(layout, _split(synthetic_task)["train"], plans)
    torch.manual_seed(0)
    net = build_network(name, plans.num_input_channels, plans.num_classes)
    before = [p.detach().clone() for p in net.parameters()]
    parts = cpu_parts(net, patience=10)
    patch = (32, 32)  # a crop of the 48x48 slices keeps the 31M-parameter U-Nets quick
    loader = SliceBatchLoader(index, patch, plans.num_input_channels, 2, 2, 1 / 3, seed=0)
    with batch_stream(loader, training_transforms(TrainConfig(), patch), 0) as batches:
        loss = train_epoch(parts, batches, iterations=2, first_batch=0, progress=False)
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_training_loss_falls_on_the_easy_task(roots):
    """A small fixed budget clearly lowers the training loss (U-Net-16: the quickest learner here)."""
    from monetpipe.training import train_fold

    config = TrainConfig(
        epochs=3, iters_per_epoch=10, batch_size=8, lr=2e-3, loss="dice_ce", num_workers=0, num_threads=1
    )
    result = train_fold("901", "unet16", 0, config, paths=roots)
    log = read_log_csv(result.fold_dir / "training_log.csv")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"], log


def test_binary_plans_train_a_sigmoid_head(roots):
    """--binary plans (the paper's pancreas + tumour setting): one sigmoid channel, labels 0/1 written."""
    from monetpipe.preprocessing import plan_and_preprocess
    from monetpipe.training import train_fold

    plan_and_preprocess("901", roots, num_processes=1, binary=True)
    result = train_fold("901", "monet", 0, TINY, plans_name="monetPlans_binary_ctx1", paths=roots)
    assert result.fold_dir.parent.name == "monet__monetPlans_binary_ctx1"
    ckpt = torch.load(result.fold_dir / "checkpoint_final.pth", weights_only=True)
    assert ckpt["network"]["num_classes"] == 1
    assert result.validation["labels"] == [1]
    case = sorted(_split(roots)["val"])[0]
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(result.fold_dir / "validation" / f"{case}.nii.gz")))
    assert set(np.unique(pred)) <= {0, 1}


@pytest.mark.slow
def test_monet_beats_its_untrained_self_on_inner_validation(roots):
    """Inner-val Dice after a few hundred steps clearly beats the untrained network's. (The networks keep
    Keras' BatchNorm momentum 0.99, so eval-mode statistics need a few hundred steps to settle.)"""
    from monetpipe.networks import build_network
    from monetpipe.training import plan_fold, train_fold
    from monetpipe.training.distributed import DistContext
    from monetpipe.training.inner_validation import inner_validation

    # 68 training slices / batch 4 = 17 steps per epoch; 20 epochs = 340 steps. The schedule's patience is
    # raised because eval-mode validation is meaningless until the BatchNorm statistics have settled.
    config = TrainConfig(
        epochs=20,
        batch_size=4,
        lr=2e-3,
        loss="dice_ce",
        num_workers=1,
        num_threads=1,
        lr_patience=100,
        early_stop_patience=100,
    )
    fp = plan_fold("901", "monet", 0, paths=roots)
    torch.manual_seed(config.seed)  # the very initialization training starts from
    untrained = build_network("monet", 1, fp.plans.num_classes)
    before = inner_validation(
        untrained,
        fp.layout,
        fp.inner_val_cases,
        "dice_ce",
        fp.plans.num_classes,
        torch.device("cpu"),
        DistContext(),
    )
    result = train_fold("901", "monet", 0, config, paths=roots)
    assert result.best_dice > before["val_dice"] + 0.3, before
    assert result.validation["foreground_mean"]["Dice"] > before["val_dice"] + 0.3


def test_fold_all_trains_on_every_case_and_skips_validation(roots, caplog):
    from monetpipe.training import train_fold

    with caplog.at_level("INFO"):
        result = train_fold("901", "monet", "all", TINY.with_changes(epochs=1, iters_per_epoch=1), paths=roots)
    record = json.loads((result.fold_dir / "config.json").read_text())
    split = _split(roots)
    assert result.fold_dir.name == "fold_all" and result.validation is None
    assert sorted(record["cases"]["train"] + record["cases"]["inner_val"]) == sorted(split["train"] + split["val"])
    assert not (result.fold_dir / "validation").exists()
    assert "skipping the final validation" in caplog.text


def test_model_all_trains_each_network_on_the_same_split(roots, monkeypatch):
    import monetpipe.networks as networks
    from monetpipe.training import train_models

    monkeypatch.setattr(networks, "list_networks", lambda: ["monet", "unet16"])  # the two small ones
    results = train_models("901", ["all"], [0], TINY.with_changes(epochs=1, iters_per_epoch=1), paths=roots)
    assert [r.fold_dir.parent.name for r in results] == [f"monet__{DEFAULT_PLANS}", f"unet16__{DEFAULT_PLANS}"]
    records = [json.loads((r.fold_dir / "config.json").read_text()) for r in results]
    assert records[0]["cases"] == records[1]["cases"]
    predicted = [sorted(p.name for p in (r.fold_dir / "validation").glob("*.nii.gz")) for r in results]
    assert predicted[0] == predicted[1] == [f"{c}.nii.gz" for c in sorted(_split(roots)["val"])]


# ---- crash and resume, distributed ----------------------------------------------------------------------


def _wait_for_gone(pgid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_continue_after_sigkill_resumes_without_gap_or_duplicate(roots, tmp_path):
    from monetpipe.training import train_fold

    epochs = 6
    args = [
        "-m",
        "monet",
        "--epochs",
        str(epochs),
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "1",
        "--num-threads",
        "1",
    ]
    fold = roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            _cli(roots, *args), env=_env(roots), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 240
            while not (fold / "checkpoint_latest.pth").is_file() and proc.poll() is None:
                assert time.monotonic() < deadline, "no epoch finished in time"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert _wait_for_gone(proc.pid), "background augmentation workers outlived the killed trainer"
    assert not (fold / "checkpoint_final.pth").exists()
    killed = torch.load(fold / "checkpoint_latest.pth", weights_only=True)
    done = killed["epoch"]
    assert 1 <= done < epochs

    with pytest.raises(MonetError, match="--continue"):
        train_fold("901", "monet", 0, TrainConfig(epochs=epochs), paths=roots)
    config = TrainConfig(epochs=epochs, iters_per_epoch=2, batch_size=4, num_workers=1, num_threads=1)
    result = train_fold("901", "monet", 0, config, paths=roots, continue_training=True)
    assert result.epochs == epochs
    log = read_log_csv(fold / "training_log.csv")
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert final["history"][:done] == killed["history"]  # finished epochs kept, not redone
    assert json.loads((fold / "config.json").read_text())["resumed_from_epoch"] == done


def test_two_process_gloo_ddp_run(roots, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monetpipe.training",
        "-t",
        "901",
        "-m",
        "monet",
        "--epochs",
        "2",
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=_env(roots) | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = roots.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    record = json.loads((fold / "config.json").read_text())
    assert record["resolved"]["world_size"] == 2 and record["resolved"]["batch_size_per_rank"] == 2
    assert [r["epoch"] for r in read_log_csv(fold / "training_log.csv")] == [1, 2]
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    assert not list(fold.rglob(".tmp-*"))
    assert proc.stdout.count("validation foreground Dice") == 1  # only rank 0 reports


@pytest.mark.slow
def test_model_all_with_every_registered_network(roots):
    from monetpipe.networks import list_networks
    from monetpipe.training import train_models

    results = train_models(
        "901", ["all"], [0], TINY.with_changes(epochs=1, iters_per_epoch=1, batch_size=2), paths=roots
    )
    assert [r.fold_dir.parent.name.split("__")[0] for r in results] == list_networks()
    assert all(r.validation is not None for r in results)


def test_ema_run_validates_saves_and_continues_the_average_of_the_weights(roots):
    """``--ema``: the checkpoints hold the weights' average as ``model_state`` (what validation and
    monet_predict use) and the trained weights beside it; a run stopped after one epoch and continued ends
    with the same average and weights as one that ran through, and the ramped average differs from both the
    trained weights and the first epoch's."""
    from monetpipe.training import train_fold
    from monetpipe.training.ema import ema_decay

    config = TINY.with_changes(ema=0.99, schedule="plateau")  # a constant LR: the same with --epochs 1 or 2
    through = MonetPaths(roots.raw, roots.preprocessed, roots.results / "through")
    train_fold("901", "monet", 0, config, paths=through)
    fold = through.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    steps = config.epochs * config.iters_per_epoch
    assert final["ema"] == {"decay": 0.99, "updates": steps}
    averaged, trained = final["model_state"], final["training_model_state"]
    assert averaged.keys() == trained.keys()
    floats = [k for k, v in trained.items() if v.is_floating_point()]
    assert any(not torch.equal(averaged[k], trained[k]) for k in floats)
    assert json.loads((fold / "config.json").read_text())["config"]["ema"] == 0.99

    stopped = MonetPaths(roots.raw, roots.preprocessed, roots.results / "stopped")
    stopped_fold = stopped.results / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0"
    train_fold("901", "monet", 0, config.with_changes(epochs=1), paths=stopped)
    (stopped_fold / "checkpoint_final.pth").unlink()  # as if stopped after epoch 1 of 2
    first = torch.load(stopped_fold / "checkpoint_latest.pth", weights_only=True)
    assert first["ema"]["updates"] == config.iters_per_epoch
    train_fold("901", "monet", 0, config, paths=stopped, continue_training=True)
    resumed = torch.load(stopped_fold / "checkpoint_final.pth", weights_only=True)
    assert resumed["ema"] == final["ema"]
    for k in floats:
        assert torch.allclose(resumed["model_state"][k], averaged[k], atol=1e-6), k
        assert torch.allclose(resumed["training_model_state"][k], trained[k], atol=1e-6), k
    assert any(not torch.equal(first["model_state"][k], averaged[k]) for k in floats)
    assert ema_decay(0.99, 0) == 0.1 and ema_decay(0.99, 10_000) == 0.99  # the ramp, capped


def test_ema_flag_is_checked_and_off_by_default():
    from monetpipe.training.cli import config_from_args, parse_args

    assert config_from_args(parse_args(["-t", "4", "-m", "monet", "--ema", "0.999"])).ema == 0.999
    assert TrainConfig().ema is None and TrainConfig.from_recipe("paper").ema is None
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(MonetError, match="--ema"):
            TrainConfig(ema=bad)
