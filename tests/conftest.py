"""Shared fixtures. Real data lives beside the repo at ../shared/data and may be absent (users don't have it)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
