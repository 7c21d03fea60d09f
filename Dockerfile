# syntax=docker/dockerfile:1
#
# cxr-ai-node container image.
#
#   docker build -t cxr-ai-node:0.1.0 .                      # VARIANT=cuda (default)
#   docker build -t cxr-ai-node:0.1.0-cpu --build-arg VARIANT=cpu .
#
# VARIANT=cuda installs the pinned torch/torchvision wheels from PyPI: they are CUDA-enabled
#   (CUDA runtime libraries come as nvidia-* wheels, the host only needs the NVIDIA driver and the
#   NVIDIA Container Toolkit) and fall back to the CPU when no GPU is visible.
# VARIANT=cpu installs the same versions from the PyTorch CPU wheel index (+cpu builds): no CUDA
#   libraries, an image several GB smaller, for hosts without a GPU.
# The torch versions below must equal the pins in pyproject.toml (tests/test_dockerfile.py checks it).
#
# See docs/DEPLOY.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build

ARG VARIANT=cuda
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first (the largest layer; cached as long as VARIANT and the versions do not change)
RUN case "${VARIANT}" in \
      cuda) pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ;; \
      cpu)  pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX_URL}" \
                "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ;; \
      *)    echo "VARIANT must be 'cuda' or 'cpu', got '${VARIANT}'" >&2; exit 1 ;; \
    esac

WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY dicom_node ./dicom_node
COPY models ./models
# the project and its other dependencies at the versions the test suite passed with (constraints.txt);
# the torch pins of pyproject.toml are already satisfied
RUN pip install --no-cache-dir -c constraints.txt . \
 && python -c "import torch, monai, pynetdicom, highdicom, dicom_node, models; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=cuda
LABEL org.opencontainers.image.title="cxr-ai-node" \
      org.opencontainers.image.description="DICOM AI node for chest X-rays (MONAI bundles, TID 1500 SR + SC overlay)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      cxr-ai-node.variant="${VARIANT}"

# unprivileged user; the spool (received instances, results, journal) is its only writable state
RUN groupadd --system --gid 10001 cxr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cxr \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/cxr-node

COPY --from=build /opt/venv /opt/venv
# model bundles baked in (read-only for the node user); mount a volume over /app/monai_bundles to update them
COPY --chown=root:root monai_bundles /app/monai_bundles

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
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
