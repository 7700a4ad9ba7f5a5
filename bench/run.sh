#!/usr/bin/env bash
# Benchmarks berthd against containerd 1.6 in one run, on the same machine and filesystem:
# Containers.Create / Get / Delete over gRPC with 1 and N concurrent clients, and the latency of
# `ctr containers create --rootfs` (with `ctr version` as the floor the ctr process itself costs).
#
# Run as root from anywhere: `sudo bench/run.sh`. The markdown report goes to stdout and, with the
# raw JSON lines, to $BENCH_OUT. Settings (environment):
#   BENCH_OPS_1=2000      operations per phase with 1 client
#   BENCH_CLIENTS_N=16    the concurrent client count
#   BENCH_OPS_N=5000      operations per phase with BENCH_CLIENTS_N clients
#   BENCH_CTR_RUNS=50     sequential ctr runs per command and daemon
#   BENCH_ROUNDS=5        rounds of everything; the report shows the median round and the range
#   BENCH_DIR=/var/tmp    where both daemons keep their data; must be a real disk, not tmpfs
#   BENCH_OUT=target/berth-bench   where results.jsonl, others.txt and report.md are written
#   BENCH_SKIP_BUILD=1    use the release binaries already built (e.g. when root has no cargo)
#   BENCH_IDLE_WAIT=600   seconds to wait, before each step, for other load (builds) to go away
set -euo pipefail

ops_1=${BENCH_OPS_1:-2000}
clients_n=${BENCH_CLIENTS_N:-16}
ops_n=${BENCH_OPS_N:-5000}
ctr_runs=${BENCH_CTR_RUNS:-50}
rounds=${BENCH_ROUNDS:-5}
base_dir=${BENCH_DIR:-/var/tmp}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$repo/target/berth-bench}
build_dir=${CARGO_TARGET_DIR:-$repo/target}/release
idle_wait=${BENCH_IDLE_WAIT:-600}

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "run.sh: $*" >&2; }
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

[[ $EUID -eq 0 ]] || die "run as root (containerd needs it): sudo $0"
command -v containerd >/dev/null && command -v ctr >/dev/null || die "containerd and ctr are needed (apt-get install containerd)"

build_release berthd berth-bench

# containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says; remember what
# was there so cleanup removes only what this run added.
shim_dir=/run/containerd/s
shims_before=$(ls -A "$shim_dir" 2>/dev/null || true)
run_containerd_existed=$([[ -d /run/containerd ]] && echo yes || echo no)
pids=()

cleanup() {
    local pid entry
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    if [[ -d $shim_dir ]]; then
        for entry in $(ls -A "$shim_dir"); do
            grep -qxF "$entry" <<<"$shims_before" || rm -rf "${shim_dir:?}/$entry"
        done
    fi
    if [[ $run_containerd_existed == no && -d /run/containerd ]]; then
        rmdir "$shim_dir" /run/containerd 2>/dev/null || true
    fi
}

work=$(mktemp -d "$base_dir/berth-bench.XXXXXX")
trap cleanup EXIT

copy_binaries berthd berth-bench

# Durable commits are the point: on tmpfs an fsync costs nothing and the figures would lie.
fstype=$(df --output=fstype "$work" | tail -n 1 | tr -d ' ')
device=$(df --output=source "$work" | tail -n 1 | tr -d ' ')
[[ $fstype != tmpfs && $fstype != ramfs ]] || die "$base_dir is $fstype; set BENCH_DIR to a directory on a disk"

# What one durable 4 KiB write costs here, the floor under any durable commit.
probe_start=$EPOCHREALTIME
dd if=/dev/zero of="$work/fsync-probe" bs=4k count=200 oflag=dsync status=none
fsync_us=$(( (${EPOCHREALTIME/./} - ${probe_start/./}) / 200 ))
rm -f "$work/fsync-probe"

mkdir -p "$work/berthd/run" "$work/containerd/run" "$work/rootfs/bin" "$out"
berthd_sock=$work/berthd/run/berth.sock
containerd_sock=$work/containerd/run/containerd.sock
write_configs "$work/berthd/state" "$work/containerd/state"

"$bin/berthd" --config "$work/berthd/config.toml" 2>"$work/berthd/log" &
pids+=($!)
containerd --config "$work/containerd/config.toml" 2>"$work/containerd/log" &
pids+=($!)
wait_ready berthd "$berthd_sock" "${pids[0]}"
wait_ready containerd "$containerd_sock" "${pids[1]}"

# On a 2-core machine any other process skews the figures. Before each step, wait until the
# CPUs are idle (at most 15% busy over a second); during it, count the CPU time that neither the
# daemons nor this script's children (the bench, ctr) used, and report the worst step (`step` in
# bench/lib.sh; each step's figure goes to others.txt).
init_steps

results=$out/results.jsonl
: >"$results"
declare -A sock=([berthd]=$berthd_sock [containerd]=$containerd_sock)

# The gRPC phases of one target: 1 client, then N.
grpc_step() {
    local target=$1 clients=$2 ops=$3
    log "round $round: containers, $target, $clients client(s), $ops ops per phase"
    "$bin/berth-bench" containers --socket "${sock[$target]}" --label "$target" --clients "$clients" --ops "$ops" \
        | tee -a "$results" >&2
}

# ctr against one target: the `ctr version` floor, then `containers create --rootfs`. A create
# failure is reported, not hidden: the row then reads "not measured" and a note says why.
declare -A ctr_failed=()
ctr_ns=berth-bench-ctr
ctr_step() {
    local target=$1 s=${sock[$1]} ids
    log "round $round: ctr, $target, $ctr_runs runs each"
    "$bin/berth-bench" exec --label "$target" --phase "ctr version" --runs "$ctr_runs" -- ctr -a "$s" version \
        | tee -a "$results" >&2
    if ! "$bin/berth-bench" exec --label "$target" --phase "ctr containers create --rootfs" --runs "$ctr_runs" -- \
        ctr -a "$s" -n "$ctr_ns" containers create --rootfs "$work/rootfs" "ctr-{i}" /bin/true \
        >"$work/ctr-create.jsonl" 2>"$work/ctr-create.err"; then
        ctr_failed[$target]=$(tail -n 1 "$work/ctr-create.err")
    fi
    tee -a "$results" <"$work/ctr-create.jsonl" >&2
    # Remove what ctr created so the next round can reuse the ids.
    ids=$(ctr -a "$s" -n "$ctr_ns" containers ls -q 2>/dev/null || true)
    if [[ -n $ids ]]; then
        # shellcheck disable=SC2086 # one argument per id
        ctr -a "$s" -n "$ctr_ns" containers rm $ids >/dev/null
    fi
    ctr -a "$s" namespaces rm "$ctr_ns" >/dev/null 2>&1 || true
}

# Rounds interleave the daemons, so a slow spell of the machine hits both rather than one.
for round in $(seq "$rounds"); do
    for target in berthd containerd; do step grpc_step "$target" 1 "$ops_1"; done
    for target in berthd containerd; do step grpc_step "$target" "$clients_n" "$ops_n"; done
    for target in berthd containerd; do step ctr_step "$target"; done
done

{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
    echo "- data of both daemons: $fstype on $device ($base_dir); a durable 4 KiB write (dd oflag=dsync) takes ${fsync_us} µs"
    echo "- berthd $("$bin/berthd" --version | awk '{print $2}') (LMDB, durable group commit); containerd $(containerd --version | awk '{print $3}') (bbolt, fsync per transaction)"
    echo "- other load: each step started on idle CPUs; other processes then used at most ${worst_other}% of the CPUs during a step (worst: ${worst_step})"
    echo "- ops per phase: $ops_1 at 1 client, $ops_n at $clients_n clients, after 50 uncounted warm-up ops; ctr: $ctr_runs sequential runs after 3 warm-up runs"
    echo "- rounds: $rounds, daemons interleaved; each figure is from the median round, with the range over rounds in parentheses"
    echo
    "$bin/berth-bench" report --target berthd --base containerd "$results"
    for target in "${!ctr_failed[@]}"; do
        echo
        echo "Note: ctr containers create against $target failed: ${ctr_failed[$target]}"
    done
} | tee "$out/report.md"
log "raw results: $results, report: $out/report.md"
