#!/usr/bin/env bash
# Starts berthd on its embedded default config and shows it at work with berth and ctr.
# Run as root from the repository: examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p berth
command -v ctr >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends containerd >/dev/null; }

sock=/run/berth/berth.sock
./target/release/berthd &            # no --config: the embedded default (berthd config default)
berthd_pid=$!
trap 'kill $berthd_pid 2>/dev/null; wait $berthd_pid 2>/dev/null || true; rm -rf /tmp/berth-demo-rootfs' EXIT
for _ in $(seq 100); do [ -S $sock ] && break; sleep 0.05; done

# A previous run that stopped half way may have left the demo objects behind.
./target/release/berth -n demo containers rm hello >/dev/null 2>&1 || true
./target/release/berth namespaces rm demo >/dev/null 2>&1 || true

set -x
./target/release/berth version
./target/release/berth plugins ls
./target/release/berth namespaces create demo owner=quickstart
mkdir -p /tmp/berth-demo-rootfs
ctr -a $sock -n demo containers create --rootfs --label app=hello /tmp/berth-demo-rootfs hello /bin/sh
./target/release/berth -n demo containers ls
ctr -a $sock -n demo containers label hello tier=front
./target/release/berth -n demo containers info hello | head -20
ctr -a $sock namespaces ls
ctr -a $sock -n demo containers rm hello
./target/release/berth namespaces rm demo
