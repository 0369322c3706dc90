#!/usr/bin/env bash
# Makes a cluster CA and a node certificate for Sluice's QUIC relay.
#
#   deploy/cluster-tls.sh DIR [NAME] [DAYS]
#
# DIR/ca.pem + DIR/ca.key: the cluster CA (keep ca.key offline; only ca.pem goes to nodes).
# DIR/node.pem + DIR/node.key: a node certificate signed by it, with NAME (default
# sluice-cluster, = cluster.tls_server_name) as its DNS name, usable as server and client
# (the relay checks both ends). An existing CA in DIR is reused, so run it once per node
# with a different DIR (copying ca.pem/ca.key in first) to give each node its own key.
set -euo pipefail
dir=${1:?usage: $0 DIR [NAME] [DAYS]}
name=${2:-sluice-cluster}
days=${3:-825}
mkdir -p "$dir"
cd "$dir"
if [[ ! -f ca.key ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days "$days" -subj "/CN=Sluice cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout node.key -out node.csr -subj "/CN=$name" 2>/dev/null
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out node.pem -days "$days" \
    -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' "$name") 2>/dev/null
# rustls wants PKCS#8 keys.
openssl pkcs8 -topk8 -nocrypt -in node.key -out node.key.p8 && mv node.key.p8 node.key
rm -f node.csr ca.srl
echo "cluster TLS in $dir: ca.pem, node.pem, node.key (name $name)"
