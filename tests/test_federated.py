"""monet_federated: site split and site map, Flower's serialized traffic, FedProx, and real federations.

The federations run Flower's deployment runtime for real: a SuperLink and one SuperNode per site as
separate processes on 127.0.0.1, on a few real Task04 cases (skipped when ../shared/data is absent).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from monetpipe.errors import MonetError
from monetpipe.federated.settings import FederatedConfig
from monetpipe.federated.sites import check_site_map, read_site_map, split_sites
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.preprocessing.slice_cache import CacheLayout

TASK = "Task04_Hippocampus"


# ---------------------------------------------------------------- site split and site map (no Flower)


def test_split_is_seeded_by_whole_case_and_balanced():
    cases = [f"case_{i:03d}" for i in range(11)]
    sites = split_sites(list(reversed(cases)), 3, seed=7)
    assert sites == split_sites(cases, 3, seed=7)  # input order does not matter, the seed does
    assert sites != split_sites(cases, 3, seed=8)
    assert sorted(c for v in sites.values() for c in v) == cases  # every case once
    sizes = sorted(len(v) for v in sites.values())
    assert sizes[-1] - sizes[0] <= 1 and list(sites) == ["site_1", "site_2", "site_3"]
    with pytest.raises(MonetError, match="only 2 training case"):
        split_sites(cases[:2], 3)


def _fake_cache(tmp_path: Path, cases: list[str]) -> CacheLayout:
    layout = CacheLayout(tmp_path / TASK, DEFAULT_PLANS)
    for case in cases:
        layout.properties_file(case).parent.mkdir(parents=True, exist_ok=True)
        layout.properties_file(case).write_text("{}")
    return layout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("case_009", "'case_009' of site 'b' is a validation case of fold 0"),
        ("case_008", "'case_008' of site 'b' is held out for the inner validation"),
        ("case_404", "'case_404' of site 'b' is not a training case of fold 0"),
        ("case_001", "'case_001' is listed for both 'a' and 'b'"),
    ],
)
def test_site_map_refuses_a_case_by_name(tmp_path, case, message):
    train, inner, val = [f"case_{i:03d}" for i in range(1, 8)], ["case_008"], ["case_009"]
    layout = _fake_cache(tmp_path, train + inner + val)
    path = tmp_path / "sites.json"
    path.write_text(json.dumps({"a": ["case_001", "case_002"], "b": ["case_003", case]}))
    with pytest.raises(MonetError, match=message):
        check_site_map(read_site_map(path), train, inner, val, layout, 0, source=str(path))


def test_site_map_file_problems_name_the_file(tmp_path):
    path = tmp_path / "sites.json"
    with pytest.raises(MonetError, match="sites.json: site map not found"):
        read_site_map(path)
    path.write_text('{"a": ["x"], ')
    with pytest.raises(MonetError, match="sites.json: not a readable JSON site map"):
        read_site_map(path)
    path.write_text('{"a": []}')
    with pytest.raises(MonetError, match="site 'a' must list at least one case"):
        read_site_map(path)
    path.write_text('{"../etc": ["x"]}')
    with pytest.raises(MonetError, match="is not usable"):
        read_site_map(path)


def test_settings_are_checked_and_tagged():
    assert FederatedConfig(sites=3).tag() == "fedavg3"
    assert FederatedConfig(sites=4, strategy="fedprox", update_dtype="float16").tag() == "fedprox4_fp16"
    with pytest.raises(MonetError, match="--min-sites must lie in 1..2"):
        FederatedConfig(sites=2, min_sites=3)
    with pytest.raises(MonetError, match="--update-dtype"):
        FederatedConfig(update_dtype="int8")


def test_fedprox_term_pulls_towards_the_global_weights():
    from monetpipe.federated.local_training import ProximalLoss

    net = torch.nn.Linear(3, 2)
    base = torch.nn.MSELoss()
    loss = ProximalLoss(lambda out, y: base(out, y), net, mu=2.0)
    x, y = torch.ones(4, 3), torch.zeros(4, 2)
    with torch.no_grad():
        assert float(loss(net(x), y)) == pytest.approx(float(base(net(x), y)))  # at the global weights: no term
        net.weight += 0.5  # moved by 0.5 in 6 weights: mu / 2 * 6 * 0.25 = 1.5
        assert float(loss(net(x), y)) - float(base(net(x), y)) == pytest.approx(1.5)


# ---------------------------------------------------------------- what Flower serializes


def _dense_update(model: str = "monet") -> dict[str, torch.Tensor]:
    """A weight change of ``model`` with no two arrays alike (as a trained update is)."""
    from monetpipe.federated.local_training import floating_state
    from monetpipe.networks import build_network

    torch.manual_seed(0)
    return {k: torch.randn_like(v) for k, v in floating_state(build_network(model, 1, 3)).items()}


def test_serialized_update_size_tracks_the_weights_and_float16_halves_it():
    pytest.importorskip("flwr")
    from monetpipe.federated.local_training import floating_state
    from monetpipe.federated.transport import record_bytes, state_to_arrays
    from monetpipe.networks import build_network

    state = _dense_update()
    raw = sum(v.numel() * 4 for v in state.values())
    fp32, fp16 = record_bytes(state_to_arrays(state)), record_bytes(state_to_arrays(state, "float16"))
    assert raw <= fp32 <= raw * 1.05  # the arrays plus a header per array (MoNet has 200 small ones)
    assert 0.49 <= fp16 / fp32 <= 0.53
    # identical arrays travel once (Flower addresses objects by content): a fresh network's zero biases
    fresh = record_bytes(state_to_arrays(floating_state(build_network("monet", 1, 3))))
    assert fresh < fp32


# ---------------------------------------------------------------- real federations on real Task04 cases


@pytest.fixture(scope="module")
def task04(shared_data, tmp_path_factory) -> MonetPaths:
    """10 real Task04 cases, preprocessed: 7 training (1 carved out for inner validation), 3 validation."""
    import shutil

    from monetpipe.preprocessing import plan_and_preprocess

    src = shared_data / TASK
    if not src.is_dir():
        pytest.skip(f"{src} absent")
    root = tmp_path_factory.mktemp("fed")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"], meta["numTraining"] = meta["training"][:10], 10
    meta.pop("test", None)
    meta["numTest"] = 0
    dst = paths.raw / TASK
    for entry in meta["training"]:
        for key in ("image", "label"):
            (dst / entry[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / entry[key], dst / entry[key])
    (dst / "dataset.json").write_text(json.dumps(meta))
    paths.preprocessed.mkdir(parents=True)
    paths.results.mkdir(parents=True)
    plan_and_preprocess(TASK, paths=paths, num_processes=2)
    return paths


def _env(monkeypatch, paths: MonetPaths) -> None:
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"MONET_{name}", str(getattr(paths, name)))


def _fold(paths: MonetPaths):
    from monetpipe.training.api import plan_fold

    return plan_fold(TASK, "monet", 0, paths=paths)


def _log(fold_dir: Path) -> list[dict]:
    from monetpipe.federated.records import read_federated_log

    return read_federated_log(fold_dir / "federated_log.csv")


@pytest.mark.slow  # the fixture preprocesses 10 real cases: 16-75 s on the shared machine
def test_site_map_naming_a_validation_case_is_refused_before_anything_starts(task04, tmp_path, monkeypatch, capsys):
    pytest.importorskip("flwr")
    from monetpipe.federated.cli import main

    _env(monkeypatch, task04)
    fp = _fold(task04)
    site_map = tmp_path / "sites.json"
    site_map.write_text(json.dumps({"a": fp.train_cases[:2], "b": fp.train_cases[2:4] + [fp.val_cases[0]]}))
    assert main(["-t", "4", "-m", "monet", "--site-map", str(site_map), "--rounds", "1"]) == 1
    err = capsys.readouterr().err
    assert f"case '{fp.val_cases[0]}' of site 'b' is a validation case of fold 0" in err
    assert "Traceback" not in err and not (task04.results / TASK).exists()
    site_map.write_text(json.dumps({"a": fp.train_cases[:2], "b": ["hippocampus_999"]}))
    assert main(["-t", "4", "-m", "monet", "--site-map", str(site_map)]) == 1
    assert "case 'hippocampus_999' of site 'b' is not a training case" in capsys.readouterr().err


@pytest.mark.slow  # 158 s on the shared 2-core machine (load 9): ten Python processes start torch
def test_two_sites_two_rounds_end_to_end_then_predict_and_evaluate(task04, tmp_path, monkeypatch, capsys):
    """One command: a local federation of real processes, monet_train's run folder, used unchanged after."""
    pytest.importorskip("flwr")
    from monetpipe.evaluation.cli import main as evaluate
    from monetpipe.federated.cli import main
    from monetpipe.federated.transport import record_bytes, state_to_arrays
    from monetpipe.inference.cli import main as predict
    from monetpipe.io.image import read_sitk
    from monetpipe.networks import build_network

    _env(monkeypatch, task04)
    args = ["-t", "4", "-m", "monet", "--sites", "2", "--rounds", "2", "--local-iters", "2", "--batch-size", "4"]
    assert main(args) == 0, capsys.readouterr().err
    folder = task04.results / TASK / f"monet__{DEFAULT_PLANS}__fedavg2"
    fold_dir = folder / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "config.json", "federated_log.csv"):
        assert (fold_dir / name).is_file(), name
    assert (fold_dir / "federated_progress.png").stat().st_size > 1000
    fp = _fold(task04)
    assert sorted(p.name for p in (fold_dir / "validation").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in fp.val_cases]

    record = json.loads((fold_dir / "config.json").read_text())
    fed = record["federated"]
    assert (fed["sites"], fed["rounds"], fed["strategy"], fed["update_dtype"]) == (2, 2, "fedavg", "float32")
    given = sorted(c for cases in fed["site_cases"].values() for c in cases)
    assert given == sorted(fp.train_cases)  # every training case at exactly one site, nothing held out
    assert not set(given) & set(fp.val_cases + fp.inner_val_cases)

    ckpt = torch.load(fold_dir / "checkpoint_final.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["network"]["name"] == "monet"
    assert len(ckpt["history"]) == 2 and set(ckpt["model_state"]) == set(build_network("monet", 1, 3).state_dict())

    rows = _log(fold_dir)
    assert [(r["round"], r["site"]) for r in rows] == [
        (1, "site_1"), (1, "site_2"), (1, "global"), (2, "site_1"), (2, "site_2"), (2, "global")
    ]  # fmt: skip
    update = record_bytes(state_to_arrays(_dense_update()))  # what Flower serializes for an update
    for r in rows:
        if r["site"] != "global":
            assert r["status"] == "ok" and r["steps"] == 2 and math.isfinite(r["train_loss"])
            assert update <= r["bytes_up"] <= update * 1.02  # the serialized update plus the message around it
    steady_down = [r["bytes_down"] for r in rows if r["round"] == 2 and r["site"] != "global"]
    assert all(update <= b <= update * 1.02 for b in steady_down)
    glob = [r for r in rows if r["site"] == "global"]
    assert all(0 <= r["val_dice"] <= 1 and math.isfinite(r["val_loss"]) for r in glob)

    # monet_predict --model-folder and monet_evaluate -t read it as any other model
    src = task04.raw / TASK / "imagesTr" / f"{fp.val_cases[0]}.nii.gz"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{fp.val_cases[0]}_0000.nii.gz").write_bytes(src.read_bytes())
    assert predict(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model-folder", str(folder)]) == 0
    assert read_sitk(tmp_path / "out" / f"{fp.val_cases[0]}.nii.gz").GetSize() == read_sitk(src).GetSize()
    assert evaluate(["-t", "4"]) == 0
    import pandas as pd

    board = pd.read_csv(task04.results / TASK / "leaderboard.csv")
    row = board[board["federated_sites"] == 2].iloc[0]
    assert (row["model"], row["plans"], int(row["federated_rounds"])) == ("monet", DEFAULT_PLANS, 2)

    # a finished run is never overwritten
    assert main(args) == 1
    assert "holds a finished federated run" in capsys.readouterr().err


# ---------------------------------------------------------------- the deployment runtime, a site dying


def _site_files(tmp_path: Path, fp, n: int = 2) -> dict[str, Path]:
    files = {}
    for name, cases in split_sites(fp.train_cases, n).items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(cases))
    return files


def _kill_site(federation, site: str, when) -> threading.Thread:
    """SIGKILL a site's SuperNode and everything it started once ``when()`` is true (a site machine dying)."""
    from monetpipe.federated.launcher import descendants

    def run() -> None:
        pid = federation.supernodes[site].pid
        while not when(pid):
            time.sleep(0.2)
        for p in [pid, *descendants(pid)]:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _training(pid: int) -> bool:
    """The site's SuperNode has started a ClientApp process (the round's training is under way)."""
    from monetpipe.federated.launcher import descendants

    for child in descendants(pid):
        try:
            if b"flwr-clientapp" in Path(f"/proc/{child}/cmdline").read_bytes():
                time.sleep(1.0)
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow
def test_site_killed_mid_round_the_round_completes_with_the_others_in_float16(task04, tmp_path):
    """SuperLink + 2 SuperNodes started as a site's IT would (LocalFederation's commands), the run submitted
    to them; site_2's machine dies during round 1: with --min-sites 1 the round counts with site_1 alone."""
    pytest.importorskip("flwr")
    from monetpipe.federated.api import run_federated
    from monetpipe.federated.launcher import LocalFederation
    from monetpipe.federated.transport import record_bytes, state_to_arrays

    fp = _fold(task04)
    files = _site_files(tmp_path, fp)
    settings = FederatedConfig(
        sites=2, rounds=1, local_iters=20, batch_size=4, min_sites=1, update_dtype="float16", round_timeout=240
    )
    with LocalFederation(tmp_path / "work", files, task04.preprocessed, threads=1) as federation:
        killer = _kill_site(federation, "site_2", _training)
        result = run_federated(TASK, "monet", 0, settings, paths=task04, superlink=federation.address)
        killer.join(timeout=5)
    assert result.rounds == 1 and (result.fold_dir / "checkpoint_final.pth").is_file()
    rows = _log(result.fold_dir)
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["site"] != "global" and r["status"] != "ok"]
    assert [r["site"] for r in ok] == ["site_1"] and len(failed) == 1
    assert "Node Unavailable" in failed[0]["status"] or failed[0]["status"] == "no reply"
    assert rows[-1]["site"] == "global" and rows[-1]["status"] == "1/2 sites"
    fp32 = record_bytes(state_to_arrays(_dense_update()))
    assert 0.49 <= ok[0]["bytes_up"] / fp32 <= 0.53  # float16 updates: about half the bytes


@pytest.mark.slow
def test_too_few_sites_stops_with_a_message_and_continue_resumes_from_the_last_round(task04, tmp_path):
    pytest.importorskip("flwr")
    from monetpipe.federated.api import run_federated
    from monetpipe.federated.launcher import LocalFederation

    fp = _fold(task04)
    files = _site_files(tmp_path, fp)
    settings = FederatedConfig(sites=2, rounds=2, local_iters=2, batch_size=4, connect_timeout=20, round_timeout=240)
    fold_dir = task04.results / TASK / f"monet__{DEFAULT_PLANS}__fedavg2" / "fold_0"
    if fold_dir.exists():  # the end-to-end test's run
        import shutil

        shutil.rmtree(fold_dir)
    with LocalFederation(tmp_path / "work1", files, task04.preprocessed, threads=1) as federation:
        _kill_site(federation, "site_2", lambda pid: (fold_dir / "federated_log.csv").is_file())  # after round 1
        with pytest.raises(MonetError, match=r"round 2: .*--min-sites is 2.*--continue"):
            run_federated(TASK, "monet", 0, settings, paths=task04, superlink=federation.address)
    latest = torch.load(fold_dir / "checkpoint_latest.pth", weights_only=True)
    assert latest["epoch"] == 1 and not (fold_dir / "checkpoint_final.pth").exists()
    with pytest.raises(MonetError, match="Pass --continue"):
        run_federated(TASK, "monet", 0, settings, paths=task04, superlink="127.0.0.1:9")
    with LocalFederation(tmp_path / "work2", files, task04.preprocessed, threads=1) as federation:
        result = run_federated(
            TASK, "monet", 0, settings, paths=task04, superlink=federation.address, continue_run=True
        )
    assert result.rounds == 2
    rows = _log(fold_dir)
    assert [r["round"] for r in rows if r["site"] == "global"] == [1, 2]  # round 1 kept, not redone
    assert sum(1 for r in rows if r["round"] == 1) == 3
    # --continue on a finished run only re-runs a missing final validation (no federation needed)
    (fold_dir / "validation" / "summary.json").unlink()
    again = run_federated(TASK, "monet", 0, settings, paths=task04, superlink="127.0.0.1:9", continue_run=True)
    assert again.rounds == 2 and (fold_dir / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_a_time_budget_fits_the_rounds_and_the_last_is_at_the_lr_floor(task04, monkeypatch, capsys):
    pytest.importorskip("flwr")
    from monetpipe.federated.cli import main

    _env(monkeypatch, task04)
    folder = task04.results / TASK / f"monet__{DEFAULT_PLANS}__fedavg2"
    if folder.exists():  # another test's run
        import shutil

        shutil.rmtree(folder)
    # a round of this federation takes 20-50 s on a loaded core (each site starts a ClientApp that imports torch)
    args = ["-t", "4", "-m", "monet", "--sites", "2", "--time-budget", "150s", "--local-iters", "2"]
    args += ["--batch-size", "4"]
    assert main(args) == 0, capsys.readouterr().err
    fold_dir = folder / "fold_0"
    ckpt = torch.load(fold_dir / "checkpoint_final.pth", weights_only=True)
    lrs = [r["lr"] for r in ckpt["history"]]
    assert len(lrs) >= 2 and lrs[0] == 5e-4 and lrs[-1] == pytest.approx(5e-6)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert ckpt["federated"]["budget"]["elapsed_seconds"] <= 150.0  # the rounds and checkpoints
    record = json.loads((fold_dir / "config.json").read_text())
    assert record["federated"]["time_budget"] == 150.0 and record["federated"]["rounds_done"] == len(lrs)
