"""The set-up installs what CI tested: requirements/lock*.txt pin every package of both environments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNPINNED = {"torch", "clara-pipeline"}  # torch comes from TORCH_SPEC (CPU or CUDA build); the project itself


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path) -> tuple[str, dict[str, str]]:
    lines = path.read_text().splitlines()
    python = re.match(r"# python (\d+\.\d+)", lines[0]).group(1)
    pins = dict(line.split("==", 1) for line in lines[1:] if line and not line.startswith("#"))
    return python, {_name(k): v for k, v in pins.items()}


def _check(installed: dict[str, str], lock: Path) -> None:
    python, pins = _lock(lock)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python != here:
        pytest.skip(f"{lock.name} is for Python {python}, this is {here} (setup.sh installs without it)")
    drift = {name: (version, pins.get(name)) for name, version in installed.items()
             if name not in UNPINNED and pins.get(name) != version}
    assert not drift, (f"installed (version, pinned) differ from {lock.name}: {drift}; after changing "
                       "dependencies run `make lock` and commit requirements/")
    assert not UNPINNED & set(pins), f"{lock.name} must not pin {UNPINNED & set(pins)}"


def _installed(python) -> dict[str, str]:
    """What pip sees in that environment (not packages vendored inside others, which sys.path may show)."""
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {_name(k): v for k, v in (line.split("==", 1) for line in out.splitlines()
                                           if "==" in line and not line.startswith("#"))}


def test_lock_pins_every_package_of_the_project_environment():
    _check(_installed(sys.executable), ROOT / "requirements" / "lock.txt")


def test_lock_pins_every_package_of_the_dvc_environment():
    python = ROOT / ".venv-dvc" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-dvc (scripts/setup.sh makes it)")
    _check(_installed(python), ROOT / "requirements" / "lock-dvc.txt")


def test_setup_installs_with_the_lock_as_constraints():
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert "constraints requirements/lock.txt" in script and "constraints requirements/lock-dvc.txt" in script
    # every pip install of a package into a venv passes $lock, but torch (TORCH_SPEC) and the --no-deps wheel
    installs = [line for line in script.splitlines() if ("pip install" in line or "$PIP_INSTALL" in line)
                and not line.lstrip().startswith(("#", "PIP_INSTALL="))]
    assert len(installs) >= 5, installs
    for line in installs:
        if "TORCH_SPEC" not in line and "--no-deps" not in line:
            assert "$lock" in line, line
