#!/usr/bin/env bash
# Fetch the OHIF Viewer build used by the browser tests (tests/integration/test_ohif.py) into the
# git-ignored folder .ohif/: `npm pack @ohif/app@$OHIF_VERSION` (the package ships the built dist/),
# SHA-256 check of the tarball, then unpack. Nothing of OHIF is committed.
#
#   bash scripts/fetch_ohif.sh      # idempotent: does nothing when the verified build is there
#
# To move to another OHIF version: change both lines below (the new checksum is what
# `npm pack @ohif/app@NEW && sha256sum ohif-app-NEW.tgz` prints), run this script and the browser test.
set -euo pipefail

OHIF_VERSION="3.13.2"
OHIF_SHA256="b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.ohif/app-$OHIF_VERSION"
TGZ="$REPO/.ohif/ohif-app-$OHIF_VERSION.tgz"

log() { printf '[fetch_ohif] %s\n' "$*" >&2; }

if [[ -f "$DEST/dist/.cxr-verified" ]]; then
  log "OHIF $OHIF_VERSION already in $DEST"
  exit 0
fi
command -v npm >/dev/null || { log "npm is not installed (apt-get install npm)"; exit 1; }
mkdir -p "$REPO/.ohif"
if [[ ! -f "$TGZ" ]] || ! echo "$OHIF_SHA256  $TGZ" | sha256sum --check --status; then
  rm -f "$TGZ"
  log "npm pack @ohif/app@$OHIF_VERSION"
  (cd "$REPO/.ohif" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
fi
if ! echo "$OHIF_SHA256  $TGZ" | sha256sum --check --status; then
  log "checksum mismatch for $TGZ: got $(sha256sum "$TGZ" | cut -d' ' -f1), want $OHIF_SHA256"
  rm -f "$TGZ"
  exit 1
fi
rm -rf "$DEST.tmp" "$DEST"
mkdir -p "$DEST.tmp"
tar -xzf "$TGZ" -C "$DEST.tmp" --strip-components=1 package/dist package/package.json package/LICENSE
[[ -f "$DEST.tmp/dist/index.html" ]] || { log "no dist/index.html in $TGZ"; exit 1; }
echo "$OHIF_SHA256" > "$DEST.tmp/dist/.cxr-verified"
mv "$DEST.tmp" "$DEST"
rm -f "$TGZ"
log "OHIF $OHIF_VERSION unpacked in $DEST"
