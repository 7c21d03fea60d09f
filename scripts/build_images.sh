#!/usr/bin/env bash
# Build the images of docker-compose.yml from Debian 12 (bookworm-slim) with podman (or docker):
#
#   bash scripts/build_images.sh [--variant cuda|cpu] [--tag TAG] [base|wheelhouse|node|orthanc|viewer|all]...
#
#   base        seed docker.io/library/debian:bookworm-slim locally when no such image exists
#               (debootstrap --variant=minbase bookworm + import; needs root): nothing is pulled
#   wheelhouse  .wheelhouse/{cuda,cpu}/{torch,deps}: every Python wheel the node image installs,
#               made here with pip (this host's indexes, proxy and CA certificates); the cpu variant
#               uses .wheelhouse/cuda when TORCH_CPU_INDEX_URL is empty (same wheels, shared layers)
#   node        cxr-ai-node:TAG (cuda) or cxr-ai-node:TAG-cpu (cpu), from ./Dockerfile (runs wheelhouse first)
#   orthanc     cxr-ai-orthanc:TAG, from deploy/orthanc/Dockerfile (Debian's Orthanc + our config/plug-in)
#   viewer      cxr-ai-viewer:TAG, from deploy/viewer/Dockerfile (OHIF from npm, served by Debian's nginx)
#   all         base node orthanc viewer (the default)
#
# Environment:
#   CXR_ENGINE             podman (default when installed) or docker
#   CXR_BUILD_CA           CA bundle passed to the builds as the secret "ca" (default: this host's
#                          /etc/ssl/certs/ca-certificates.crt); for networks whose TLS proxy only the host
#                          trusts. Never stored in an image. CXR_BUILD_CA= (empty) passes none.
#   TORCH_CPU_INDEX_URL    where --variant cpu gets torch (default https://download.pytorch.org/whl/cpu);
#                          empty: pip's configured sources (then the CPU image holds what they offer:
#                          the CUDA wheels, and shares the cuda image's layers)
#   CXR_BUILD_NICE         nice level of the builds (default 10)
# Podman runs with CONTAINERS_CONF=deploy/podman/containers.conf (see that file) unless set.
# Image sizes: bash scripts/build_images.sh sizes
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BASE_IMAGE="docker.io/library/debian:bookworm-slim"
VARIANT=cuda
TAG=0.1.0
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
TORCH_CPU_INDEX_URL="${TORCH_CPU_INDEX_URL-https://download.pytorch.org/whl/cpu}"
CXR_BUILD_CA="${CXR_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
NICE=(nice -n "${CXR_BUILD_NICE:-10}")
# pip that makes the wheelhouse: the project's .venv (scripts/setup.sh) when there is one; its Python must be
# the image's (3.11, Linux x86_64) since wheels are platform-specific
PIP_PYTHON="${CXR_PIP_PYTHON:-}"
if [[ -z "$PIP_PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PIP_PYTHON="$REPO/.venv/bin/python"; else PIP_PYTHON=python3; fi
fi

log() { printf '[build_images] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

if [[ -z "${CXR_ENGINE:-}" ]]; then
  if command -v podman >/dev/null; then CXR_ENGINE=podman; else CXR_ENGINE=docker; fi
fi
command -v "$CXR_ENGINE" >/dev/null || die "container engine '$CXR_ENGINE' not found (apt-get install podman)"
if [[ "$CXR_ENGINE" == podman ]]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/deploy/podman/containers.conf}"
fi

targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) VARIANT="${2:?--variant needs cuda or cpu}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    base|wheelhouse|node|orthanc|viewer|sizes) targets+=("$1"); shift ;;
    all) targets+=(base node orthanc viewer); shift ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$VARIANT" == cuda || "$VARIANT" == cpu ]] || die "--variant must be cuda or cpu, got '$VARIANT'"
[[ ${#targets[@]} -gt 0 ]] || targets=(base node orthanc viewer)

node_image() { if [[ "$VARIANT" == cpu ]]; then echo "cxr-ai-node:$TAG-cpu"; else echo "cxr-ai-node:$TAG"; fi; }

secret_args() {
  if [[ -n "$CXR_BUILD_CA" ]]; then
    [[ -r "$CXR_BUILD_CA" ]] || die "CXR_BUILD_CA=$CXR_BUILD_CA is not readable"
    echo "--secret=id=ca,src=$CXR_BUILD_CA"
  fi
}

engine_build() {  # engine_build IMAGE DOCKERFILE [args...]
  local image="$1" file="$2"; shift 2
  local start=$SECONDS
  local fmt=()
  [[ "$CXR_ENGINE" == podman ]] && fmt=(--format docker)  # keeps HEALTHCHECK in the image
  log "building $image ($file)"
  # shellcheck disable=SC2046
  "${NICE[@]}" "$CXR_ENGINE" build "${fmt[@]}" --network host $(secret_args) -f "$file" -t "$image" "$@" .
  log "built $image in $((SECONDS - start)) s"
}

seed_base() {
  if "$CXR_ENGINE" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE present"
    return
  fi
  command -v debootstrap >/dev/null || die "$BASE_IMAGE is missing and debootstrap is not installed (apt-get install debootstrap)"
  [[ "$(id -u)" == 0 ]] || die "seeding $BASE_IMAGE with debootstrap needs root"
  local start=$SECONDS dir
  dir="$(mktemp -d /var/tmp/cxr-debian-base.XXXXXX)"
  log "seeding $BASE_IMAGE: debootstrap --variant=minbase bookworm"
  "${NICE[@]}" debootstrap --variant=minbase bookworm "$dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  # what the official slim image has: the three suites, no documentation, no apt caches
  rm -f "$dir/etc/apt/sources.list"
  cat > "$dir/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat > "$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  printf 'APT::Install-Recommends "false";\n' > "$dir/etc/apt/apt.conf.d/docker-no-recommends"
  find "$dir/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
         "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log
  tar -C "$dir" -c . | "$CXR_ENGINE" import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$dir"
  log "seeded $BASE_IMAGE in $((SECONDS - start)) s"
}

wheel_names_digest() { (cd "$1" && ls -1 -- *.whl | sort | sha256sum | cut -c1-16); }

# The wheelhouse of the variant: .wheelhouse/cpu holds the PyTorch CPU index's torch; without such an index
# (TORCH_CPU_INDEX_URL empty) the CPU variant takes pip's configured sources, i.e. the same wheels as the
# CUDA variant, and shares .wheelhouse/cuda, so both images share every layer but their label.
wheelhouse_dir() {
  if [[ "$VARIANT" == cpu && -n "$TORCH_CPU_INDEX_URL" ]]; then echo .wheelhouse/cpu; else echo .wheelhouse/cuda; fi
}

make_wheelhouse() {
  local wh start=$SECONDS want
  wh="$(wheelhouse_dir)"
  local stamp="$wh/.inputs" torch_src=()
  if [[ "$wh" == .wheelhouse/cpu ]]; then
    torch_src=(--index-url "$TORCH_CPU_INDEX_URL" --extra-index-url https://pypi.org/simple)
  fi
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) ${TORCH_PINS[*]} ${torch_src[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "wheelhouse $wh up to date"
    return
  fi
  rm -rf "$wh" && mkdir -p "$wh/torch" "$wh/deps"
  log "wheelhouse $wh: ${TORCH_PINS[*]} ${torch_src[*]}"
  "${NICE[@]}" "$PIP_PYTHON" -m pip download -q -d "$wh/torch" -c constraints.txt "${torch_src[@]}" "${TORCH_PINS[@]}"
  log "wheelhouse $wh: the project's other dependencies (pip wheel -c constraints.txt ., no extras)"
  local tmp="$wh/.all"
  "${NICE[@]}" "$PIP_PYTHON" -m pip wheel -q -w "$tmp" --find-links "$wh/torch" -c constraints.txt . "setuptools>=68" wheel
  local f
  for f in "$tmp"/*.whl; do
    case "$(basename "$f")" in
      cxr_ai_node-*) rm -f "$f" ;;                    # the project is installed from its sources
      *) [[ -e "$wh/torch/$(basename "$f")" ]] && rm -f "$f" || mv "$f" "$wh/deps/" ;;
    esac
  done
  rm -rf "$tmp"
  printf '%s' "$want" > "$stamp"
  log "wheelhouse $wh made in $((SECONDS - start)) s ($(du -sh "$wh" | cut -f1))"
}

build_node() {
  make_wheelhouse
  local wh
  wh="$(wheelhouse_dir)"
  # the variant's label also on the command line: podman's layer cache reuses a LABEL instruction whose
  # build argument changed, so a cuda build after a cpu one from the same wheelhouse was labelled "cpu"
  engine_build "$(node_image)" Dockerfile --build-arg "VARIANT=$VARIANT" --build-arg "WHEELHOUSE=$wh" \
    --label "cxr-ai-node.variant=$VARIANT" \
    --build-arg "TORCH_WHEELS=$(wheel_names_digest "$wh/torch")" \
    --build-arg "DEPS_WHEELS=$(wheel_names_digest "$wh/deps")"
}

sizes() {
  local image
  for image in "$BASE_IMAGE" "cxr-ai-node:$TAG" "cxr-ai-node:$TAG-cpu" "cxr-ai-orthanc:$TAG" "cxr-ai-viewer:$TAG"; do
    "$CXR_ENGINE" image inspect --format '{{.Size}}' "$image" 2>/dev/null \
      | awk -v i="$image" '{printf "%-45s %8.0f MB\n", i, $1 / 1e6}' || true
  done
}

for t in "${targets[@]}"; do
  case "$t" in
    base) seed_base ;;
    wheelhouse) make_wheelhouse ;;
    node) build_node ;;
    orthanc) engine_build "cxr-ai-orthanc:$TAG" deploy/orthanc/Dockerfile ;;
    viewer) engine_build "cxr-ai-viewer:$TAG" deploy/viewer/Dockerfile ;;
    sizes) sizes ;;
  esac
done
