"""monet_benchmark: the table's numbers are the ones a user can check, and the CSV has every column."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from monetpipe.benchmark import cli
from monetpipe.benchmark.compact import fp16_agreement, load_compact, save_compact
from monetpipe.benchmark.measure import Variant, serialized_size_mib, time_interleaved, train_step_seconds
from monetpipe.benchmark.profile import OTHER, profile_layer_kinds
from monetpipe.benchmark.tables import COLUMNS, PAPER, format_table
from monetpipe.networks import build_network, flops_per_slice, list_networks

TINY = [
    "-m",
    "monet",
    "--slices",
    "2",
    "--size",
    "64",
    "--repeats",
    "1",
    "--batch-size",
    "2",
    "--matmul-size",
    "256",
    "--device",
    "cpu",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.csv"
    assert cli.main([*TINY, "-o", str(out)]) == 0
    return pd.read_csv(out)


def test_csv_has_every_column_with_checkable_values(tiny_run):
    table = tiny_run
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["model"], row["params_trainable"], row["params_keras"]) == ("monet", 401_666, 403_556)
    # a state_dict file is the weights and BN statistics in 4 (2) bytes each, plus a little pickle overhead
    assert row["params_keras"] * 4 / 2**20 < row["size_mib_fp32"] < row["params_keras"] * 4 / 2**20 + 0.1
    assert 0.45 < row["size_mib_fp16"] / row["size_mib_fp32"] < 0.55
    assert row["gflop_per_slice"] == pytest.approx(flops_per_slice("monet", 64, 64) / 1e9)
    for col in ("cpu_s_mean", "achieved_gflops", "matmul_gflops", "floor_ratio"):
        assert math.isfinite(row[col]) and row[col] > 0, col
    assert row["cpu_s_std"] == 0.0  # one repeat
    # the definitions in docs/performance.md, re-derived from the row's own numbers
    flop_150 = row["gflop_per_slice"] * 150
    assert row["achieved_gflops"] == pytest.approx(flop_150 / row["cpu_s_median"])
    assert row["floor_ratio"] == pytest.approx(row["cpu_s_median"] / (flop_150 / row["matmul_gflops"]))
    assert math.isnan(row["gpu_s_per_batch32"])  # no GPU asked for
    assert (row["backend"], row["batch_size"], row["threads"], row["device"]) == ("torch", 2, 1, "cpu")
    assert row["workers"] == 1


def test_workers_are_compared_in_one_run_at_their_own_thread_counts(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    original = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), original(n))[1])
    out = tmp_path / "w.csv"
    args = [*TINY[:-1], "2"]  # --threads 2
    try:
        assert cli.main([*args, "--workers", "1", "2", "-o", str(out)]) == 0
    finally:
        original(before)
    table = pd.read_csv(out)
    assert list(table["workers"]) == [1, 2] and set(table["threads"]) == {2}
    assert (table["cpu_s_mean"] > 0).all()
    assert 2 in seen and 1 in seen  # the 1-worker pass ran at 2 threads, the 2-worker one at 1 each


def test_update_leaderboard_feeds_cpu_s_150(monet_roots, tmp_path):
    from monetpipe.evaluation.leaderboard import _cpu_times

    task_dir = monet_roots.results / "Task901_Demo"
    task_dir.mkdir()
    pd.DataFrame({"model": ["unet16"], "cpu_s_mean": [7.0], "device": ["cpu"]}).to_csv(
        task_dir / "benchmark.csv", index=False
    )
    assert cli.main([*TINY, "--backend", "eager", "torch", "--update-leaderboard", "901"]) == 0
    written = pd.read_csv(task_dir / "benchmark.csv")
    assert sorted(written["model"]) == ["monet", "unet16"]  # the earlier unet16 row is kept
    times = _cpu_times(task_dir)
    monet_rows = written[written["model"] == "monet"]
    assert len(monet_rows) == 1 and times["unet16"] == 7.0
    assert times["monet"] == pytest.approx(float(monet_rows["cpu_s_mean"].iloc[0])) and times["monet"] > 0


def test_unknown_model_is_one_clear_error(capsys):
    assert cli.main(["-m", "monet", "vnet"]) == 1
    assert "vnet" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = (
        "import sys; from monetpipe.benchmark import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--update-leaderboard" in result.stdout


def test_cli_models_are_the_registry():
    assert list(cli.MODELS) == list_networks() and set(PAPER) == set(list_networks())


def test_variants_are_timed_in_alternation():
    calls = []
    a = Variant("a", lambda x: calls.append("a"), batch_size=2)
    b = Variant("b", lambda x: calls.append("b"), batch_size=2)
    rates = time_interleaved([a, b], torch.zeros(4, 1, 2, 2), repeats=2, warmup=1, matmul_size=64)
    assert calls == ["a", "a", "b", "b"] * 3  # warm-up round, then two timed rounds, each pass 2 batches
    assert len(a.times) == len(b.times) == 2 and len(rates) == 3 and min(rates) > 0


def test_serialized_size_counts_bytes_per_weight():
    model = build_network("unet16", 1, 1)
    fp32, fp16 = serialized_size_mib(model), serialized_size_mib(model, torch.float16)
    assert 1_946_705 * 4 / 2**20 < fp32 < 1_946_705 * 4 / 2**20 + 0.2  # paper Table 3: 7.6 MB
    assert fp16 == pytest.approx(fp32 / 2, rel=0.03)


@pytest.fixture(scope="module")
def trained_monet(disks):
    """MoNet trained for 60 steps on disks: its logits are decisive, as a real model's are.

    (An untrained network's logits sit near 0 everywhere, so any rounding flips near-ties; that
    says nothing about a trained model.)
    """
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_network("monet", 1, 1)
    optimizer = torch.optim.NAdam(model.parameters(), lr=5e-3)
    for _ in range(60):
        x, y = disks(4, 32, gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for m in model.modules():  # running statistics = those of a fresh batch (momentum 0.01 is too slow here)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model(disks(16, 32, gen)[0])
    return model.eval()


def test_fp16_export_predicts_the_same_masks(tmp_path, trained_monet, disks):
    model = trained_monet
    path = save_compact(model, tmp_path / "monet_fp16.pth")
    assert path.stat().st_size < 0.55 * serialized_size_mib(model) * 2**20
    restored = load_compact(build_network("monet", 1, 1).eval(), path)
    assert all(v.dtype == torch.float32 for v in restored.state_dict().values() if v.is_floating_point())
    x, truth = disks(16, 64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32, fp16 = model(x), restored(x)
    assert ((fp32 > 0).float() == truth).float().mean() > 0.95  # it did learn the task
    same = ((fp32 > 0) == (fp16 > 0)).float().mean().item()
    assert same >= 0.9999
    assert fp16_agreement(model, x) == pytest.approx(same)


def test_train_step_runs_and_learns_something():
    model = build_network("monet", 1, 1)
    before = model.encoders[0].stem.conv.weight.clone()
    seconds = train_step_seconds(model, batch_size=2, size=32, steps=1, warmup=1, device="cpu")
    assert seconds > 0 and not torch.equal(before, model.encoders[0].stem.conv.weight)


def test_profile_accounts_for_every_flop_and_second():
    model = build_network("monet", 1, 1).eval()
    x = torch.randn(2, 1, 32, 32)
    kinds, total = profile_layer_kinds(model, x, batch_size=1, passes=2)
    names = {k.kind for k in kinds}
    expected = {"conv 3x3 dilated", "conv 3x3", "conv 4x4 stride 2", "transposed conv 4x4 s2", "elu", OTHER}
    assert expected <= names
    assert sum(k.flops for k in kinds) == 2 * 2 * flops_per_slice(model, 32, 32)  # 2 passes x 2 slices
    assert sum(k.seconds for k in kinds) == pytest.approx(total, rel=1e-6)
    assert next(k for k in kinds if k.kind == "conv 3x3 dilated").calls == 2 * 2 * 5 * 3  # 5 RDDCs x d=4,3,2


def test_table_puts_the_papers_numbers_beside_ours(tiny_run):
    text = format_table(tiny_run.replace({np.nan: None}).to_dict("records"))
    assert "14.88+-0.32" in text and "1.8" in text and "monet" in text


def test_profile_flag_prints_time_per_layer_kind(capsys):
    assert cli.main([*TINY, "--profile", "--backend", "eager", "torch", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert out.count("conv 3x3 dilated") == 2 and "elu" in out and "% matmul" in out
    assert "no per-layer profile for onnxruntime" in out


def test_gpu_columns_are_measured_on_the_device_given():
    """The CUDA code path (paper Table 2's right column), exercised on the CPU where no GPU exists."""
    from monetpipe.benchmark.runner import BenchmarkConfig, _gpu_row, model_facts

    config = BenchmarkConfig(models=["monet"], slices=2, size=32, repeats=1, warmup=0, train_steps=1)
    row = _gpu_row("monet", model_facts("monet", 1, 1, 32), config, device="cpu")
    assert row["gpu_s_per_batch32"] > 0 and row["gpu_s_150"] > 0 and row["gpu_model"] == "cpu"


def test_precisions_are_timed_together_against_their_own_floors(tmp_path, capsys):
    out = tmp_path / "prec.csv"
    args = [*TINY, "--size", "32", "--backend", "torch", "--precision", "all", "-o", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("CPU: ")  # the feature summary comes first
    table = pd.read_csv(out)
    got = sorted(zip(table["backend"], table["precision"], strict=True))
    # int8 runs only in onnxruntime / torch_compile: not asked for here, so skipped, not faked
    assert got == [("torch", "bf16"), ("torch", "fp32")]
    fp32 = table[table["precision"] == "fp32"].iloc[0]
    bf16 = table[(table["precision"] == "bf16") & (table["backend"] == fp32["backend"])].iloc[0]
    assert fp32["vs_fp32"] == 1.0 and fp32["floor_ratio"] == pytest.approx(fp32["fp32_floor_ratio"])
    assert bf16["vs_fp32"] == pytest.approx(bf16["cpu_s_median"] / fp32["cpu_s_median"])
    # bf16's floor is its own matmul rate: the ratio to it differs from the ratio to the fp32 floor
    flop_150 = bf16["gflop_per_slice"] * 150
    assert bf16["floor_ratio"] == pytest.approx(bf16["cpu_s_median"] / (flop_150 / bf16["precision_matmul_gflops"]))
    assert 0.45 < bf16["precision_mib"] / fp32["precision_mib"] < 0.55
    assert math.isnan(bf16["dice_diff"])  # random weights: no Dice to compare


@pytest.mark.slow
def test_int8_rows_of_both_int8_paths(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "int8.csv"
    assert cli.main([*TINY, "--backend", "onnxruntime", "--precision", "fp32", "int8", "-o", str(out)]) == 0
    table = pd.read_csv(out).set_index("precision")
    assert table.loc["int8", "precision_mib"] < 0.4 * table.loc["fp32", "precision_mib"]
    assert math.isfinite(table.loc["int8", "precision_matmul_gflops"]) and table.loc["int8", "floor_ratio"] > 0


def test_default_batch_and_workers_are_what_monet_predict_runs():
    assert cli.predict_defaults(None, None, 256, 2) == ([2], [2])  # one 256 x 256 slice per worker
    assert cli.predict_defaults(None, None, 64, 2) == ([32], [2])  # 16 slices of 64 x 64 per worker
    assert cli.predict_defaults(None, None, 256, 1) == ([1], [1])  # one thread: one worker
    assert cli.predict_defaults(None, [1, 2], 512, 2) == ([2], [1, 2])
    assert cli.predict_defaults([4], None, 256, 2) == ([4], [2])  # what is given is kept
