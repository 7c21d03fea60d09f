# syntax=docker/dockerfile:1
#
# cxr-ai-node container image, built from Debian 12 (bookworm-slim, Debian's python3 3.11) and a
# wheelhouse: every Python package is installed from .wheelhouse/{cuda,cpu}/ (made on the build host by
# scripts/build_images.sh with pip, which uses the host's indexes, proxy and CA certificates), mounted
# into the build and never copied into a layer. The build itself needs no access to PyPI: an
# air-gapped build host only needs the wheelhouse. Build with scripts/build_images.sh (podman or docker):
#
#   bash scripts/build_images.sh node                 # VARIANT=cuda (default; for hosts with an NVIDIA GPU)
#   bash scripts/build_images.sh --variant cpu node   # VARIANT=cpu
#
# VARIANT=cuda: torch/torchvision from PyPI (CUDA-enabled wheels; CUDA runtime libraries come as nvidia-*
#   wheels, the host only needs the NVIDIA driver + Container Toolkit; falls back to the CPU without GPU).
# VARIANT=cpu: the same versions from the PyTorch CPU wheel index (+cpu builds, no CUDA libraries).
# The variant only decides which wheels scripts/build_images.sh puts into the wheelhouse (WHEELHOUSE) and the
# image's label: VARIANT is declared after the install steps, so two variants built from the same wheelhouse
# (the CPU variant where no PyTorch CPU index is reachable, see docs/DEPLOY.md) share every layer but the last.
# The torch versions must equal the pins in pyproject.toml (tests/test_dockerfile.py checks it).
#
# See docs/DEPLOY.md.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE}

# folder of the build context holding torch/ and deps/ (scripts/build_images.sh sets it)
ARG WHEELHOUSE=.wheelhouse/cuda
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# digests of the wheelhouse's two parts (file names; wheels are immutable per name): a changed wheel
# set invalidates the layer cache of the step that installs it
ARG TORCH_WHEELS=unset
ARG DEPS_WHEELS=unset

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian's Python 3.11; nothing else at run time (no compiler: every package comes as a wheel)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cxr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cxr \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/cxr-node

ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    PYTHONDONTWRITEBYTECODE=1

# torch first: the largest layer, cached as long as the torch wheels do not change
RUN --mount=type=bind,source=${WHEELHOUSE}/torch,target=/wheels \
    echo "torch wheels ${TORCH_WHEELS}" \
 && python3 -m venv /opt/venv \
 && pip install --no-deps /wheels/*.whl \
 && python -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; assert torchvision.__version__.split('+')[0] == '${TORCHVISION_VERSION}', torchvision.__version__"

# the project's other dependencies, at the versions of constraints.txt (resolved into the wheelhouse)
RUN --mount=type=bind,source=${WHEELHOUSE}/deps,target=/wheels \
    echo "dependency wheels ${DEPS_WHEELS}" \
 && pip install --no-deps /wheels/*.whl

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY dicom_node ./dicom_node
COPY models ./models
# the project itself, without extras (no training/plotting packages); pip check proves the set complete
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && python -c "import torch, monai, pynetdicom, highdicom, dicom_node, models" \
 && rm -rf /src /root/.cache

ARG VARIANT=cuda
LABEL org.opencontainers.image.title="cxr-ai-node" \
      org.opencontainers.image.description="DICOM AI node for chest X-rays (MONAI bundles, TID 1500 SR + SC overlay)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      cxr-ai-node.variant="${VARIANT}"

# model bundles baked in (read-only for the node user); mount a volume over /app/monai_bundles to update them
COPY --chown=root:root monai_bundles /app/monai_bundles

ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CXR_NODE_BIND=0.0.0.0 \
    CXR_NODE_PORT=11112 \
    CXR_NODE_AE_TITLE=AINODE \
    CXR_NODE_SPOOL_DIR=/var/lib/cxr-node \
    CXR_NODE_BUNDLES_DIR=/app/monai_bundles \
    CXR_NODE_DEVICE=auto \
    CXR_NODE_LOG_FORMAT=json \
    CXR_NODE_HTTP_BIND=127.0.0.1 \
    CXR_NODE_HTTP_PORT=8080

WORKDIR /app
VOLUME ["/var/lib/cxr-node"]
USER 10001:10001
EXPOSE 11112

# liveness of the node's HTTP endpoint (loopback inside the container; python, no curl in the image)
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-m", "dicom_node.health_http", "--probe", "/healthz"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["cxr-node", "serve"]
