#!/usr/bin/env bash
# Starts berthd on its embedded default config and shows it at work with berth and ctr.
# Run as root from the repository: examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p berth
command -v ctr >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends containerd >/dev/null; }
[ -x /bin/busybox ] || { apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; }
for tool in umoci skopeo docker-registry curl; do
    command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends umoci skopeo docker-registry curl >/dev/null; break; }
done

sock=/run/berth/berth.sock
./target/release/berthd &            # no --config: the embedded default (berthd config default)
berthd_pid=$!
registry_pid=
demo=/tmp/berth-demo
trap 'kill $berthd_pid $registry_pid 2>/dev/null; wait $berthd_pid 2>/dev/null || true; rm -rf /tmp/berth-demo-rootfs /tmp/berth-demo-fifo $demo' EXIT
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

# Images: a busybox OCI image built here (umoci), pushed to a registry on loopback, pulled by
# berthd itself with progress, run by ctr from the image, then removed with its content and
# snapshots.
set +x
rm -rf "$demo" && mkdir -p "$demo/root/etc"
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:5000}\n' \
    "$demo/registry" >"$demo/registry.yml"
docker-registry serve "$demo/registry.yml" >"$demo/registry.log" 2>&1 &
registry_pid=$!
cp -a /tmp/berth-demo-rootfs/. "$demo/root/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$demo/root/etc/passwd" && echo 'root:x:0:' >"$demo/root/etc/group"
umoci init --layout "$demo/oci" && umoci new --image "$demo/oci:latest"
umoci insert --image "$demo/oci:latest" "$demo/root" / >/dev/null
umoci config --image "$demo/oci:latest" --config.cmd /bin/sh
for _ in $(seq 100); do curl -fs http://127.0.0.1:5000/v2/ >/dev/null && break; sleep 0.1; done
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$demo/oci:latest" docker://127.0.0.1:5000/busybox:latest
set -x
./target/release/berth pull 127.0.0.1:5000/busybox:latest
./target/release/berth images ls
./target/release/berth images inspect 127.0.0.1:5000/busybox:latest | head -12
ctr -a $sock run --rm --fifo-dir /tmp/berth-demo-fifo 127.0.0.1:5000/busybox:latest demo2 sh -c 'echo hello from an image; cat /etc/passwd'
ctr -a $sock snapshots ls
./target/release/berth images rm --sync 127.0.0.1:5000/busybox:latest
ctr -a $sock content ls
