#!/usr/bin/env bash
# Two builds of berthd side by side: `ctr run --rm IMAGE ID /bin/true` against each, interleaved
# (A, B, then B, A, ...) so that the machine's drift falls on both alike. For changes too small for
# the images benchmark's rounds to show (a few percent).
#
#   bench/ab.sh DIR_A DIR_B [RUNS]
#
# DIR_A and DIR_B each hold a berthd, berth and berth-reaper (copies of target/release from two
# commits). RUNS (default 60) timed runs per build, after 3 warm-ups each. Prints the median and
# mean of each build, the B/A ratio of the medians, and, with AB_RPC=1, each build's server time
# per RPC method (berthd's `berth_core::rpc` debug log). Needs root, ctr, docker-registry, umoci,
# skopeo and busybox (the packages containerd, docker-registry, umoci, skopeo, busybox-static).
# Removes everything it made: daemons, registry, directories, mounts and cgroups.
set -euo pipefail

die() { echo "ab.sh: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
(( $# >= 2 )) || die "usage: bench/ab.sh DIR_A DIR_B [RUNS]"
[[ $EUID -eq 0 ]] || die "run as root"
for tool in ctr docker-registry umoci skopeo busybox curl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
runs=${3:-60}
declare -A bin=([a]=$(realpath "$1") [b]=$(realpath "$2"))
for k in a b; do
    for f in berthd berth berth-reaper; do [[ -x ${bin[$k]}/$f ]] || die "${bin[$k]}/$f: not found"; done
done

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/berth-ab.XXXXXX")
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    # Reapers and containers left by a failed run, then their cgroups and mounts.
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/cwd" 2>/dev/null) == "$work"/* ]] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -name ab 2>/dev/null | while read -r d; do
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$work"
}
trap cleanup EXIT

# busybox as a one-layer image, in a registry of this run on loopback.
busybox_bin=$(command -v busybox)
busybox_rootfs "$work/rootfs"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci insert --image "$work/layout:latest" "$work/rootfs" / >/dev/null
umoci config --image "$work/layout:latest" --config.cmd /bin/sh
port=$(( 20000 + RANDOM % 40000 ))
cat >"$work/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.1; done
image=127.0.0.1:$port/busybox:latest
mkdir -p "$work/skopeo"
skopeo --insecure-policy copy --quiet --tmpdir "$work/skopeo" --dest-tls-verify=false \
    "oci:$work/layout:latest" "docker://$image"

declare -A sock
for k in a b; do
    d=$work/$k
    mkdir -p "$d/root" "$d/state"
    cat >"$d/config.toml" <<EOF
version = 1
root = "$d/root"
state = "$d/state"
[grpc]
address = "$d/state/berth.sock"
EOF
    RUST_LOG=$([[ ${AB_RPC:-0} == 1 ]] && echo warn,berth_core::rpc=debug || echo warn) \
        "${bin[$k]}/berthd" --config "$d/config.toml" >"$d/log" 2>&1 &
    pids+=($!)
    sock[$k]=$d/state/berth.sock
done
for k in a b; do
    for _ in $(seq 100); do [[ -S ${sock[$k]} ]] && break; sleep 0.1; done
    ctr -a "${sock[$k]}" -n ab images pull --plain-http "$image" >/dev/null
    for i in 1 2 3; do
        ctr -a "${sock[$k]}" -n ab run --rm --fifo-dir "$work/$k/fifo" "$image" "warm-$i" /bin/true
    done
done

: >"$work/times"
for i in $(seq "$runs"); do
    order=(a b)
    (( i % 2 == 0 )) && order=(b a)
    for k in "${order[@]}"; do
        start=$(date +%s%N)
        ctr -a "${sock[$k]}" -n ab run --rm --fifo-dir "$work/$k/fifo" "$image" "run-$i" /bin/true
        echo "$k $(( ($(date +%s%N) - start) / 1000 ))" >>"$work/times"
    done
done

python3 - "$work" "$runs" "${AB_RPC:-0}" <<'EOF'
import re, statistics as st, sys
work, runs, rpc = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
times = {}
for line in open(f"{work}/times"):
    k, us = line.split()
    times.setdefault(k, []).append(int(us) / 1000)
for k in "ab":
    print(f"{k}: median {st.median(times[k]):.1f} ms, mean {st.mean(times[k]):.1f} ms, {len(times[k])} runs")
print(f"b/a (medians): {st.median(times['b']) / st.median(times['a']):.3f}")
if rpc:
    for k in "ab":
        per = {}
        for line in open(f"{work}/{k}/log"):
            m = re.search(r"method=\S+\.(\w+)/(\w+) .*micros=(\d+)", line)
            if m:
                per.setdefault(f"{m.group(1)}.{m.group(2)}", []).append(int(m.group(3)))
        # Per run: the timed runs and the warm-ups (the pull's RPCs are few and counted too).
        total = sum(sum(v) for v in per.values()) / (runs + 3) / 1000
        print(f"{k}: server time {total:.2f} ms per run; medians of the slowest methods:")
        for name, v in sorted(per.items(), key=lambda kv: -sum(kv[1]))[:8]:
            print(f"    {name:24s} {st.median(v) / 1000:6.2f} ms")
EOF
