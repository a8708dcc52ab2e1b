"""Shared fixtures. Real data lives beside the repo at ../shared/data and may be absent (users don't have it)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def plain_cpu():
    """Every test runs as on a CPU without bf16 / VNNI / AMX (``MONETPIPE_CPU_FLAGS=""``), whatever the
    machine has: the defaults that follow the CPU (``monet_train --precision auto``, its
    ``--prepare-precision auto`` checks, ``monet_predict --precision auto``) then do the same everywhere, so
    the suite's results and its time do not depend on the machine. Tests of those features set the flags
    they need themselves (tests/test_precision.py, tests/test_time_budget.py). Session-wide, so that the
    module-scoped fixtures that train models see it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONETPIPE_CPU_FLAGS", "")
        yield


@pytest.fixture()
def monet_roots(tmp_path, monkeypatch):
    """Point MONET_raw / MONET_preprocessed / MONET_results at fresh temp folders."""
    from monetpipe.paths import MonetPaths

    roots = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in roots.items():
        path.mkdir()
        monkeypatch.setenv(f"MONET_{name}", str(path))
    return MonetPaths(roots["raw"], roots["preprocessed"], roots["results"])


def _disks(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of one bright disk each, ``(n, 1, size, size)``, and the disk masks (same shape, 0 / 1)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=gen) * size * 0.6 + size * 0.2
    radius = torch.rand(n, generator=gen) * size * 0.2 + size * 0.1
    distance2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    mask = (distance2 < radius[:, None, None] ** 2).float()[:, None]
    return mask * 2 + torch.randn(n, 1, size, size, generator=gen) * 0.7, mask


@pytest.fixture(scope="session")
def disks() -> Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """``disks(n, size, generator)``: an easy segmentation task that any of the networks learns in a few dozen
    steps, for tests that need a trained model or check that training learns at all."""
    return _disks


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("label_layout")``: the module ``scripts/label_layout.py`` (scripts are not a package)."""
    return _load_script


def _cpu_parts(net: torch.nn.Module, loss: str = "dice_ce", patience: int | None = None, **extra):
    from monetpipe.training.losses import build_loss
    from monetpipe.training.trainer import EarlyStopping, TrainingParts

    opt = torch.optim.NAdam(net.parameters(), lr=5e-4)
    return TrainingParts(
        net,
        build_loss(loss),
        opt,
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
        torch.amp.GradScaler("cpu", enabled=False),
        EarlyStopping(patience),
        torch.device("cpu"),
        **extra,
    )


@pytest.fixture(scope="session")
def cpu_parts() -> Callable[..., object]:
    """``cpu_parts(net, loss="dice_ce", patience=None, **TrainingParts fields)``: what ``train_epoch`` drives,
    on the CPU, with NAdam at 5e-4 and an idle plateau scheduler."""
    return _cpu_parts
