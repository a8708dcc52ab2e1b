"""Flower's deployment runtime, driven from one command: the app bundle, a local federation, ``flwr run``.

``monet_federated`` runs every federation through Flower's deployment runtime, the same processes a
real multi-hospital run uses: a SuperLink (which starts the ServerApp) and one SuperNode per site (each
starts the ClientApp). Without ``--superlink`` it starts them itself on 127.0.0.1 (:class:`LocalFederation`)
and stops them afterwards; with ``--superlink HOST:PORT`` it only submits the run to a federation that
is already running. Flower's simulation runtime needs Ray and is not used.

The Flower App submitted is a generated folder holding only ``pyproject.toml`` (the components point at
:mod:`monetpipe.federated.server_app` and :mod:`monetpipe.federated.client_app`, which every machine has
installed) and the run specification file, named in the run config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from monetpipe.errors import MonetError

log = logging.getLogger(__name__)
CONNECTION = "monet"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "monetfederated"
version = "1.0.0"
description = "monetpipe's federated MoNet training (monet_federated)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "monetpipe"

[tool.flwr.app.components]
serverapp = "monetpipe.federated.server_app:app"
clientapp = "monetpipe.federated.client_app:app"

[tool.flwr.app.config]
spec = "{spec}"
"""


def flower_bin(name: str) -> str:
    """A Flower executable of this Python environment (``flower-superlink``, ``flwr``, ...)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise MonetError(
            f"{path}: not found. Install the federated extra into this environment: pip install 'monetpipe[federated]'."
        )
    return str(path)


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process: this environment's executables first on PATH, a private
    Flower home, no telemetry or update check."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.update(extra or {})
    return env


def write_app(app_dir: Path, spec_file: Path) -> Path:
    """The Flower App folder submitted by ``flwr run`` (only a ``pyproject.toml``)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(PYPROJECT.format(spec=spec_file.resolve().as_posix()), encoding="utf-8")
    return app_dir


def write_connection(flwr_home: Path, address: str, root_certificates: str | None = None) -> None:
    """Flower's ``config.toml`` naming the SuperLink ``flwr run`` submits to."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MonetError(f"the Flower SuperLink exited at start (code {process.returncode}); see {log_file}.")
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise MonetError(f"the Flower SuperLink did not listen on 127.0.0.1:{port} within {timeout:g} s; see {log_file}.")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LocalFederation:
    """A SuperLink and one SuperNode per site on 127.0.0.1, started and stopped by this process.

    Each SuperNode is given its site's name, its case list (a JSON file) and the slice cache, exactly
    the ``--node-config`` a site's own machine would pass.
    """

    def __init__(self, work_dir: Path, site_files: dict[str, Path], preprocessed: Path, threads: int) -> None:
        self.work_dir, self.site_files, self.preprocessed, self.threads = work_dir, site_files, preprocessed, threads
        self.flwr_home = work_dir / "flwr_home"
        self.logs = work_dir / "logs"
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}
        self._log_files: list = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self._log_files.append(out)
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=flower_env(self.flwr_home), cwd=self.work_dir
        )

    def supernode_command(self, site: str, port: int) -> list[str]:
        config = (
            f'site="{site}" cases="{self.site_files[site].as_posix()}" preprocessed="{self.preprocessed.as_posix()}"'
        )
        if self.threads:
            config += f" threads={self.threads}"
        return [
            flower_bin("flower-supernode"),
            "--insecure",
            "--superlink",
            self.address,
            "--port",
            str(port),
            "--node-config",
            config,
        ]

    def start(self, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.superlink = self._spawn(
            "superlink",
            [
                flower_bin("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        wait_for_port(self.port, timeout, self.superlink, self.logs / "superlink.log")
        for site in self.site_files:
            self.supernodes[site] = self._spawn(f"supernode_{site}", self.supernode_command(site, free_port()))
        log.info(
            "local federation: SuperLink on %s, %d SuperNode(s) (%s); logs in %s",
            self.address,
            len(self.supernodes),
            ", ".join(self.supernodes),
            self.logs,
        )

    def stop(self, grace: float = 10.0) -> None:
        procs = list(self.supernodes.values()) + ([self.superlink] if self.superlink else [])
        family = {p.pid: descendants(p.pid) for p in procs}
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()
        for pids in family.values():  # SuperExec, ServerApp and ClientApp processes they started
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for f in self._log_files:
            f.close()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def submit(app_dir: Path, flwr_home: Path, timeout: float | None = None) -> int:
    """``flwr run APP monet --stream``: start the run and relay the ServerApp's log until it ends.

    Returns:
        ``flwr run``'s exit code.
    """
    command = [flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=flower_env(flwr_home),
        cwd=app_dir,
    ) as proc:
        assert proc.stdout is not None
        for line in _lines(proc.stdout):
            log.info("[flower] %s", line)
        return proc.wait(timeout=timeout)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _lines(stream) -> Iterator[str]:
    for line in stream:
        line = _ANSI.sub("", line).rstrip()
        if line:
            yield line
