"""bench/device_kit.sh fetches every dependency of pyproject.toml that a lent GPU machine lacks, and the
device command it prints fits the device tool's 2,000 characters."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "bench" / "device_kit.sh"


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    return canonicalize_name(Requirement(requirement).name)


def _kit_text() -> str:
    return KIT.read_text(encoding="utf-8")


def test_every_dependency_is_fetched_or_on_the_device() -> None:
    text = _kit_text()
    on_device = re.search(r"^# on the device already: (.+)$", text, re.MULTILINE)
    assert on_device is not None, "the kit must say what the device has"
    present = {_name(n) for n in on_device[1].split()}
    after = text[text.index("-d .whl") + len("-d .whl") :]
    lines = []
    for line in after.splitlines():  # the rest of the pip download command: its continued lines
        lines.append(line.rstrip("\\ "))
        if not line.rstrip().endswith("\\"):
            break
    fetched = {_name(token.strip('"')) for token in " ".join(lines).split()}
    deps = {_name(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert deps - present - fetched == set()
    assert present & fetched == set()  # the device's own copies are used, never a second version


def test_device_command_fits_the_tool() -> None:
    text = _kit_text()
    command = text.split('carry [".whl"], timeout_s 600:\n', 1)[1].split("\nCMD", 1)[0]
    assert command.startswith("python3 -m pip install") and "--no-index" in command
    assert "bench/gpu_suite.py" in command and "--skip" not in command  # e2e with bench/python_peers.py there
    assert len(command) <= 2000
