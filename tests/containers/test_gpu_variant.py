"""The GPU variant, the default for hosts with an NVIDIA GPU (``deploy/compose.gpu.yml``, node image
``cxr-ai-node:0.1.0``, VARIANT=cuda). This machine has no GPU: only the build is tested. Proves that the
image builds with ``scripts/build_images.sh --variant cuda node``, that its torch has CUDA compiled in, that
where no PyTorch CPU index is reachable (CI) the CPU image shares its layers (the cuda build then costs
seconds), and that docker-compose resolves the GPU override to an NVIDIA device reservation.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from compose_helpers import REPO, StackNetworks, write_env_file

CUDA_IMAGE = "cxr-ai-node:0.1.0"
CPU_IMAGE = "cxr-ai-node:0.1.0-cpu"


@pytest.fixture(scope="module")
def cuda_image(images: dict[str, str]) -> str:
    subprocess.run(["bash", "scripts/build_images.sh", "--variant", "cuda", "node"], cwd=REPO, env=images,
                   check=True, timeout=1800)  # fmt: skip
    return CUDA_IMAGE


def _podman(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout


def test_cuda_image_has_cuda_compiled_in(images: dict[str, str], cuda_image: str) -> None:
    """The GPU image's torch is a CUDA build (runs on the CPU here) and the image says it is the cuda variant."""
    probe = "import json, torch; print(json.dumps({'cuda': torch.version.cuda, 'torch': torch.__version__}))"
    out = _podman(
        images,
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--entrypoint",
        "python",
        cuda_image,
        "-c",
        probe,
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert info["cuda"] is not None, info
    assert info["torch"].split("+")[0] == "2.14.1", info
    label = _podman(
        images, "image", "inspect", "--format", '{{index .Labels "cxr-ai-node.variant"}}', cuda_image
    )
    assert label.strip() == "cuda"


def test_cpu_image_shares_the_cuda_images_layers(images: dict[str, str], cuda_image: str) -> None:
    """Built from one wheelhouse, the two node images differ in their label only (disk and build time of one)."""
    if images.get("TORCH_CPU_INDEX_URL"):
        pytest.skip("the CPU image comes from the PyTorch CPU index (other wheels, other layers)")

    def layers(image: str) -> list[str]:
        return json.loads(_podman(images, "image", "inspect", "--format", "{{json .RootFS.Layers}}", image))

    cuda, cpu = layers(cuda_image), layers(CPU_IMAGE)
    shared = next(
        (i for i, (a, b) in enumerate(zip(cuda, cpu, strict=False)) if a != b), min(len(cuda), len(cpu))
    )
    assert shared >= len(cuda) - 1, f"only {shared} of {len(cuda)} layers shared"


def test_gpu_override_reserves_an_nvidia_gpu(images: dict[str, str], tmp_path: Path) -> None:
    """``-f deploy/compose.gpu.yml`` resolves to the GPU image and one NVIDIA GPU reserved for the node."""
    env_file = tmp_path / "env"
    write_env_file(
        env_file, StackNetworks("172.29.218"), {"http": 18042, "dicom": 14242, "viewer": 13000}, "s3cret"
    )
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", "docker-compose.yml", "-f", "deploy/compose.gpu.yml",
         "config"],
        cwd=REPO, env=images, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    node = yaml.safe_load(result.stdout)["services"]["cxr-node"]
    assert node["image"] == CUDA_IMAGE
    assert node["build"]["args"]["VARIANT"] == "cuda"
    devices = node["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
