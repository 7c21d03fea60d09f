"""constraints.txt: exact pins that satisfy pyproject.toml's ranges, and the environment that uses them."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file; raises ValueError on any other line."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"constraints.txt line {number} is not 'name==version': {line!r}")
        name = canonicalize_name(match[1])
        if name in out:
            raise ValueError(f"constraints.txt pins {match[1]!r} twice (line {number})")
        out[name] = match[2]
    return out


def project_requirements() -> list[Requirement]:
    """What ``pip install .[dev]`` asks for: the dependencies, the dev extra and the extras it names
    of this project itself (``cxr-ai-node[train]``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    out: list[Requirement] = []
    for raw in [*project["dependencies"], *extras["dev"]]:
        req = Requirement(raw)
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            out.extend(Requirement(r) for extra in sorted(req.extras) for r in extras[extra])
        else:
            out.append(req)
    return out


def test_pins_parser_refuses_what_pip_would_read_differently() -> None:
    assert pins("# c\n\nA_b==1.2\n") == {"a-b": "1.2"}
    for bad in ("numpy>=1", "numpy", "x @ file:///tmp/x.whl", "numpy==1.0\nNumPy==2.0"):
        try:
            pins(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_every_project_requirement_is_pinned_inside_its_range() -> None:
    pinned = pins((ROOT / "constraints.txt").read_text())
    assert len(pinned) > 20
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} (pyproject.toml) has no pin in constraints.txt"
        version = Version(pinned[name])
        assert req.specifier.contains(version, prereleases=True), (
            f"constraints.txt pins {req.name}=={version}, outside pyproject.toml's {req}"
        )


def test_torch_pins_of_setup_script_are_the_constrained_ones() -> None:
    pinned = pins((ROOT / "constraints.txt").read_text())
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    match = re.search(r"^TORCH_PINS=\((.*)\)$", setup, re.MULTILINE)
    assert match is not None, "TORCH_PINS not found in scripts/setup.sh"
    for pin in match[1].split():
        name, version = pin.split("==")
        assert pinned.get(canonicalize_name(name)) == version, (
            f"setup.sh pins {pin}, constraints.txt {pinned.get(name)}"
        )
    assert "-c constraints.txt" in setup


def test_installed_packages_are_the_pinned_versions() -> None:
    """The environment running the tests (set up by scripts/setup.sh) is the pinned one."""
    pinned = pins((ROOT / "constraints.txt").read_text())
    wrong = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pinned and Version(dist.version) != Version(pinned[name]):
            wrong[name] = (dist.version, pinned[name])
    assert not wrong, f"installed (version, pinned) differ: {wrong}"
