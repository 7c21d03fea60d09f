#!/usr/bin/env bash
# One-command demo of cxr-ai-node on this machine (Debian 12, Python 3.11):
#
#   bash scripts/demo.sh          # install (idempotent), start Orthanc + node on loopback,
#                                 # push synthetic CXRs into Orthanc, wait for the SR + SC, print them
#   bash scripts/demo.sh --stop   # stop the demo's Orthanc and node
#
# State (Orthanc database, node spool, logs, generated password): $CXR_DEMO_DIR (default .demo/).
# Ports: CXR_DEMO_HTTP_PORT (18042), CXR_DEMO_DICOM_PORT (14242), CXR_DEMO_NODE_PORT (11112).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [[ "${1:-}" == "--stop" ]]; then
  exec .venv/bin/python scripts/demo.py stop
fi
if [[ $# -gt 0 ]]; then
  echo "usage: bash scripts/demo.sh [--stop]" >&2
  exit 2
fi

bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py start
