#!/usr/bin/env bash
# Starts berthd on its embedded default config and shows it at work with berth and ctr.
# Run as root from the repository: examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p berth
command -v ctr >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends containerd >/dev/null; }
[ -x /bin/busybox ] || { apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; }

sock=/run/berth/berth.sock
./target/release/berthd &            # no --config: the embedded default (berthd config default)
berthd_pid=$!
trap 'kill $berthd_pid 2>/dev/null; wait $berthd_pid 2>/dev/null || true; rm -rf /tmp/berth-demo-rootfs /tmp/berth-demo-fifo' EXIT
for _ in $(seq 100); do [ -S $sock ] && break; sleep 0.05; done

# A previous run that stopped half way may have left the demo objects behind.
./target/release/berth -n demo containers rm hello >/dev/null 2>&1 || true
./target/release/berth namespaces rm demo >/dev/null 2>&1 || true

set -x
./target/release/berth version
./target/release/berth plugins ls
./target/release/berth namespaces create demo owner=quickstart
# A busybox root filesystem: the static busybox and one symlink per applet.
mkdir -p /tmp/berth-demo-rootfs/bin /tmp/berth-demo-rootfs/proc /tmp/berth-demo-rootfs/dev /tmp/berth-demo-rootfs/sys /tmp/berth-demo-fifo
cp /bin/busybox /tmp/berth-demo-rootfs/bin/
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox /tmp/berth-demo-rootfs/bin/$a; done
ctr -a $sock -n demo containers create --rootfs --label app=hello /tmp/berth-demo-rootfs hello /bin/sh
./target/release/berth -n demo containers ls
ctr -a $sock -n demo containers label hello tier=front
./target/release/berth -n demo containers info hello | head -20
ctr -a $sock namespaces ls
ctr -a $sock -n demo containers rm hello

# Containers run on berth's built-in Linux runtime, through ctr or berth.
ctr -a $sock run --rm --fifo-dir /tmp/berth-demo-fifo --rootfs /tmp/berth-demo-rootfs demo1 sh -c 'echo hello from a berth container; uname -n'
./target/release/berth run -d /tmp/berth-demo-rootfs web sleep 300
./target/release/berth tasks ls
./target/release/berth exec web ps
ctr -a $sock tasks pause web
ctr -a $sock tasks ls
ctr -a $sock tasks resume web
./target/release/berth stop -t 1 web
./target/release/berth containers rm web
./target/release/berth namespaces rm demo
