"""Every command's ``--help`` is instant: it must not import the heavy libraries (torch alone takes seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
HEAVY = ("torch", "scipy", "pandas", "matplotlib", "SimpleITK")


def console_scripts() -> dict[str, str]:
    """command -> module, read from setup.py so a new command is covered without editing this test."""
    text = SETUP.read_text()
    template = re.search(r'CLI = "([^"]+)"', text).group(1)
    scripts = {}
    for name, target in re.findall(r'"(monet_\w+)=([^"]*)"', text):
        scripts[name] = target
    for name, stage in re.findall(r'"(monet_\w+)=" \+ CLI\.format\("(\w+)"\)', text):
        scripts[name] = template.format(stage)
    return {name: target.split(":")[0] for name, target in scripts.items()}


def test_every_command_is_found():
    assert {"monet_plan_and_preprocess", "monet_train", "monet_predict", "monet_evaluate"} <= set(console_scripts())


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_help_imports_no_heavy_library(command):
    module = console_scripts()[command]
    code = (
        f"import sys; from {module} import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout, f"{command} --help printed no usage"
    assert result.stdout.strip().splitlines()[-1] == "[]", f"{command} --help imported {result.stdout.splitlines()[-1]}"
