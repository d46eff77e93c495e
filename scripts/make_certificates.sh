#!/usr/bin/env bash
# Certificates and keys for a Flower deployment of fedpatchcore (SuperLink + N SuperNodes).
#
#   scripts/make_certificates.sh [OUT_DIR] [N_SUPERNODES] [SERVER_NAMES]
#
# OUT_DIR       where to write (default: certificates/, git-ignored)
# N_SUPERNODES  how many SuperNode key pairs to make (default: 3)
# SERVER_NAMES  comma-separated DNS names / IPs the SuperLink is reached at
#               (default: localhost,127.0.0.1; add your server's name for real sites)
#
# Writes
#   ca.crt, ca.key                 a private certificate authority (keep ca.key off the network)
#   server.pem, server.key         the SuperLink's TLS certificate (SANs = SERVER_NAMES) and key
#   supernode_<i>, supernode_<i>.pub
#                                  SuperNode authentication key pairs (ECDSA P-384, OpenSSH
#                                  format, as Flower expects); register each .pub with
#                                  `flwr supernode register`, give each site its private key.
# Needs openssl and ssh-keygen; never asks for input; existing files are replaced.
set -euo pipefail

OUT_DIR="${1:-certificates}"
N_SUPERNODES="${2:-3}"
SERVER_NAMES="${3:-localhost,127.0.0.1}"
DAYS=365

mkdir -p "$OUT_DIR"
cd "$OUT_DIR"

# subjectAltName: every name the SuperLink is reached at (IP:... for addresses, DNS:... otherwise).
san=""
IFS=',' read -ra names <<< "$SERVER_NAMES"
for name in "${names[@]}"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then entry="IP:$name"; else entry="DNS:$name"; fi
  san="${san:+$san,}$entry"
done

openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/O=fedpatchcore/CN=fedpatchcore federation CA" \
  -out ca.crt

openssl genrsa -out server.key 2048 2>/dev/null
openssl req -new -key server.key -subj "/O=fedpatchcore/CN=${names[0]}" -out server.csr
cat > server.ext <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl

for i in $(seq 1 "$N_SUPERNODES"); do
  rm -f "supernode_$i" "supernode_$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedpatchcore-supernode-$i" -f "supernode_$i"
done
chmod 600 ./*.key supernode_* 2>/dev/null || true
chmod 644 ./*.pub ca.crt server.pem

echo "Wrote CA, SuperLink certificate (SAN $san) and $N_SUPERNODES SuperNode key pairs to $(pwd)"
