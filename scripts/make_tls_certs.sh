#!/usr/bin/env bash
# Make the certificates of deploy/compose.tls.yml (DICOM TLS with client certificates between Orthanc and the
# node) with a new CA, in the layout the compose file mounts:
#
#   bash scripts/make_tls_certs.sh [--node-ip IP] [--days N] [DIR]     # DIR: ./certs (CXR_TLS_DIR)
#
#   DIR/ca.crt, DIR/ca.key          the CA (keep ca.key off the containers: it is not mounted)
#   DIR/orthanc/orthanc.{crt,key}   Orthanc (DNS:orthanc, the name the node delivers to, + localhost,
#                                   127.0.0.1); key owned by uid 10002 (the Orthanc image's user), mode 0600
#   DIR/node/node.{crt,key}         the node (DNS:cxr-node + IP:--node-ip, default 172.29.113.10 = CXR_NODE_IP,
#                                   the address Orthanc calls); key owned by uid 10001 (the node's user), 0600
#   DIR/modality/modality.{crt,key} a client certificate for a modality that calls Orthanc over TLS (storescu
#                                   +tls modality.key modality.crt +cf ca.crt ...), key 0600 for the caller
#   ca.crt is copied into orthanc/, node/ and modality/ (each container trusts only this CA).
#
# Orthanc and node certificates carry serverAuth and clientAuth (each side calls the other). With a
# hospital PKI, put its files into the same layout (same names, owners and modes) instead.
# Run as root (or with sudo) so that the keys can be given to the containers' users; otherwise the
# script prints the chown commands left to run. Needs openssl. Existing files in DIR are replaced.
set -euo pipefail

NODE_IP="${CXR_NODE_IP:-172.29.113.10}"
DAYS=825
DIR=./certs
NODE_UID=10001
ORTHANC_UID=10002

die() { printf 'make_tls_certs: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --node-ip) NODE_IP="${2:?--node-ip needs an IP address}"; shift 2 ;;
    --days) DAYS="${2:?--days needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) DIR="$1"; shift ;;
  esac
done
command -v openssl >/dev/null || die "openssl is not installed"
[[ "$NODE_IP" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--node-ip must be an IPv4 address, got '$NODE_IP'"
[[ "$DAYS" =~ ^[0-9]+$ ]] || die "--days must be a number, got '$DAYS'"

umask 077
mkdir -p "$DIR"
cd "$DIR"

key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# leaf NAME CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]: NAME/NAME.{crt,key} issued by the CA
leaf() {
  local name="$1" cn="$2" eku="$3" san="${4:-}"
  mkdir -p "$name"
  key "$name/$name.key"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } > "$name/$name.ext"
  openssl req -new -key "$name/$name.key" -subj "/CN=$cn" -out "$name/$name.csr"
  openssl x509 -req -in "$name/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" \
    -extfile "$name/$name.ext" -out "$name/$name.crt" 2>/dev/null
  rm -f "$name/$name.csr" "$name/$name.ext"
  cp ca.crt "$name/ca.crt"
  chmod 644 "$name/$name.crt" "$name/ca.crt"
  chmod 755 "$name"
}

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/CN=cxr-ai-node DICOM TLS CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
chmod 644 ca.crt
leaf orthanc ORTHANC "serverAuth,clientAuth" "DNS:orthanc,DNS:localhost,IP:127.0.0.1"
leaf node AINODE "serverAuth,clientAuth" "DNS:cxr-node,IP:$NODE_IP"
leaf modality MODALITY "clientAuth"
rm -f ca.srl

if [[ "$(id -u)" == 0 ]]; then
  chown "$ORTHANC_UID:$ORTHANC_UID" orthanc/orthanc.key
  chown "$NODE_UID:$NODE_UID" node/node.key
else
  printf 'make_tls_certs: not root: run\n  sudo chown %s:%s %s/orthanc/orthanc.key\n  sudo chown %s:%s %s/node/node.key\n' \
    "$ORTHANC_UID" "$ORTHANC_UID" "$PWD" "$NODE_UID" "$NODE_UID" "$PWD" >&2
fi
printf 'make_tls_certs: wrote %s (CA, orthanc/, node/ for %s, modality/)\n' "$PWD" "$NODE_IP" >&2
