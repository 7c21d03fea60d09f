#!/usr/bin/env bash
# Install what cxr-ai-node needs on a fresh Debian 12 machine: system packages and the Python
# virtualenv (.venv). Shared by scripts/demo.sh and .ci/run so that the two cannot drift.
#
#   bash scripts/setup.sh          # orthanc, orthanc-python, dcmtk, dicom3tools + .venv
#   bash scripts/setup.sh --ci     # the same plus what the tests use: docker-compose, openssl, haproxy, and for the
#                                  # OHIF browser test orthanc-dicomweb, chromium, npm (when no npm is on
#                                  # PATH) and the pinned OHIF build (scripts/fetch_ohif.sh, into .ohif/)
#
# Idempotent: packages already installed are not reinstalled, an existing .venv is reused, and
# pip is skipped when pyproject.toml and constraints.txt have not changed since the last successful
# install. Every Python package is installed at the exact version pinned in constraints.txt.
# Environment: PYTHON (default python3), CXR_SKIP_APT=1 to skip apt-get.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# torch/torchvision are pinned and installed before the project (pyproject.toml admits exactly these).
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
APT_PACKAGES=(orthanc orthanc-python dcmtk dicom3tools python3-venv)
CI_MODE=0
if [[ "${1:-}" == "--ci" ]]; then
  CI_MODE=1
  APT_PACKAGES+=(docker-compose openssl orthanc-dicomweb chromium)
  # the scale-out test balances node replicas with Debian's HAProxy 2.6 (docs/SCALE.md)
  APT_PACKAGES+=(haproxy)
  # container images and the compose chain (scripts/build_images.sh, docs/DEPLOY.md): podman with runc
  # (crun refuses hybrid cgroup hosts), its network stack, and debootstrap to seed debian:bookworm-slim
  APT_PACKAGES+=(podman runc netavark aardvark-dns iptables debootstrap)
  # npm fetches OHIF (`npm pack`); a Node.js from elsewhere (e.g. NodeSource) brings its own npm
  command -v npm >/dev/null || APT_PACKAGES+=(npm)
fi

log() { printf '[setup] %s\n' "$*" >&2; }

install_apt_packages() {
  if [[ "${CXR_SKIP_APT:-0}" == "1" ]]; then
    log "CXR_SKIP_APT=1: not installing system packages"
    return
  fi
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "system packages already installed"
    return
  fi
  local sudo=()
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo=(sudo)
  fi
  log "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian starts its own Orthanc service on 8042/4242; the demo and the tests run their own instances
  # on other ports, so the system service is left alone.
}

install_venv() {
  cd "$REPO"
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
  else
    log "reusing .venv"
  fi
  local stamp=.venv/.cxr-ai-node-installed
  local want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) ${TORCH_PINS[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && .venv/bin/python -c "import dicom_node, torch" 2>/dev/null; then
    log "Python packages up to date"
    return
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  log "installing ${TORCH_PINS[*]}"
  .venv/bin/python -m pip install -q -c constraints.txt "${TORCH_PINS[@]}"
  log "installing the project (pip install -c constraints.txt -e .[dev])"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  printf '%s' "$want" > "$stamp"
}

install_apt_packages
install_venv
if [[ "$CI_MODE" == "1" ]]; then
  bash "$REPO/scripts/fetch_ohif.sh"
fi
log "done"
