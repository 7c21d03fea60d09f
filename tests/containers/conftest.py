"""Fixtures of the container tests: every image of the CPU variant built once per session (cached in podman's
store between runs), and one podman API service (``DOCKER_HOST``) that docker-compose drives.

Needs root, podman, debootstrap, docker-compose and dcmtk (``bash scripts/setup.sh --ci``); skipped on a
machine without them, never in CI (``CI`` set: missing tools fail the tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_helpers import REPO, PodmanService

TOOLS = ("podman", "debootstrap", "docker-compose", "storescu", "openssl")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first container test carries the cold image builds (~7 min on 2 shared cores, docs/DEPLOY.md) in
    its setup: allow 30 min per container test instead of the suite's 10 (every wait inside is bounded)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.timeout(1800))


def require_tools() -> None:
    """Skip (fail in CI) unless everything the container tests run is installed and we are root."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (podman import of the seeded base image, rootful networks)")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must run the container tests, missing: {missing} (bash scripts/setup.sh --ci)")
    if missing:
        pytest.skip(f"container tests need {missing} (bash scripts/setup.sh --ci)")


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Build (cached) every image of the CPU compose variant with scripts/build_images.sh; the environment
    for podman (CONTAINERS_CONF) and the build script."""
    require_tools()
    env = dict(os.environ, CONTAINERS_CONF=str(REPO / "deploy/podman/containers.conf"))
    # CI machines reach no PyTorch CPU index: the wheelhouse takes torch from pip's configured sources
    env.setdefault("TORCH_CPU_INDEX_URL", "")
    subprocess.run(
        ["bash", "scripts/build_images.sh", "--variant", "cpu", "all"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=1800,
    )
    return env


@pytest.fixture(scope="session")
def podman_service(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodmanService]:
    """``podman system service`` on a socket of the session: docker-compose's ``DOCKER_HOST``."""
    with PodmanService(tmp_path_factory.mktemp("podman") / "podman.sock", images, REPO) as service:
        yield service
