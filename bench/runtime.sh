#!/usr/bin/env bash
# Benchmarks the built-in Linux OCI runtime and the Tasks service in one run, side by side:
#   1. create+start+wait+delete, and `run`, of /bin/true in a busybox bundle: `berth oci` vs runc vs
#      crun (crun 1.8 refuses hybrid cgroups: on a hybrid host it runs in a mount namespace
#      with /sys/fs/cgroup/unified unmounted, i.e. a v1-only view);
#   2. `ctr run --rm --rootfs` through berthd vs containerd 1.6 + runc, `ctr version` as the floor;
#   3. memory per running container: N `sleep` containers through each daemon (ctr run -d), PSS
#      and RSS of berth-reaper vs containerd-shim-runc-v2 processes, and of the daemons;
#   4. 200 `sleep` containers started at once through each daemon: wall time until all are
#      RUNNING (the bench's gRPC client, then 200 parallel `ctr run -d`), the daemons' RSS.
#
# Run as root from anywhere: `sudo bench/runtime.sh`. The markdown report goes to stdout and, with
# the raw JSON lines, to $BENCH_OUT. Settings (environment):
#   RT_RUNS=100          iterations per runtime and mode (section 1), split over the rounds
#   RT_CTR_RUNS=100      ctr runs per daemon and command (section 2), split over the rounds
#   RT_ROUNDS=5          rounds; each round runs every tool, interleaved
#   RT_MEM_COUNTS="10 50"   containers per memory step (section 3)
#   RT_BURST=200         containers started at once (section 4)
#   RT_BURST_CTR=1       also start them with RT_BURST parallel `ctr run -d` (0: skip)
#   RT_SECTIONS="1 2 3 4"   which of the sections above to run
#   BENCH_DIR=/var/tmp   where daemons' roots, the bundle and copies of the binaries go (a disk)
#   BENCH_OUT=target/berth-bench/runtime   where the JSON lines and report.md are written
#   BENCH_SKIP_BUILD=1   use the release binaries already built
#   BENCH_IDLE_WAIT=600  seconds to wait, before each step, for other load (builds) to go away
#   BENCH_COMMIT=...     what to call the build in the report (default: git rev-parse HEAD)
set -euo pipefail

runs=${RT_RUNS:-100}
ctr_runs=${RT_CTR_RUNS:-100}
rounds=${RT_ROUNDS:-5}
mem_counts=${RT_MEM_COUNTS:-10 50}
burst=${RT_BURST:-200}
burst_ctr=${RT_BURST_CTR:-1}
sections=${RT_SECTIONS:-1 2 3 4}
base_dir=${BENCH_DIR:-/var/tmp}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$repo/target/berth-bench/runtime}
build_dir=${CARGO_TARGET_DIR:-$repo/target}/release
idle_wait=${BENCH_IDLE_WAIT:-600}
per_round=$(( (runs + rounds - 1) / rounds ))
ctr_per_round=$(( (ctr_runs + rounds - 1) / rounds ))

die() { echo "runtime.sh: $*" >&2; exit 1; }
log() { echo "runtime.sh: $(date +%H:%M:%S) $*" >&2; }
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

check_host "runc crun containerd busybox-static jq" containerd ctr runc crun busybox unshare jq
build_release berthd berth berth-reaper berth-bench

# What this run makes, so cleanup removes exactly that: its directories, the containerd shim
# sockets of its containers, the runc state directories of its namespaces, and the cgroups of its
# containers.
namespaces=(rtb rtb-seq rtb-mem rtb-burst rtb-ctrburst)
oci_prefix=rtb-oci
note_containerd_run_dirs "${namespaces[@]}"
pids=()
work=
state=

cleanup() {
    local d p id
    set +e
    log "cleaning up"
    # Containers still running (a failed step): stop them through their daemon first.
    tasks_down "${namespaces[@]}"
    # OCI containers of section 1 left by a failed iteration.
    if [[ -n $state ]]; then
        for rt in berth runc crun; do
            for d in "$state/oci-$rt"/*/; do
                [[ -d $d ]] || continue
                id=$(basename "$d")
                case $rt in
                berth) "$bin/berth" oci --root "$state/oci-berth" delete --force "$id" ;;
                runc) runc --root "$state/oci-runc" delete --force "$id" ;;
                crun) unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $state/oci-crun delete --force $id" ;;
                esac
            done >/dev/null 2>&1
        done
    fi
    # The daemons, then anything of ours still alive: reapers, shims, and processes in our
    # containers' cgroups.
    stop_daemons
    for d in $(find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d \( -name "$oci_prefix-*" -o -name 'rtb' -o -name 'rtb-*' \) 2>/dev/null); do
        for p in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    sleep 0.5
    find /sys/fs/cgroup -mindepth 2 -depth -type d \( -name "$oci_prefix-*" -o -name 'rtb' -o -name 'rtb-*' -o -path '*/rtb/*' -o -path '*/rtb-*/*' \) \
        -exec rmdir {} \; 2>/dev/null
    # Mounts under our directories (none are expected), the directories, containerd's leftovers.
    remove_run_dirs
    remove_containerd_leftovers "${namespaces[@]}"
}

daemon_pids=()
trap cleanup EXIT
# Runtime state on the run's own tmpfs, as /run/berth, /run/containerd and /run/runc are on a
# usual host (berth syncs its state.json).
make_run_dirs berth-rtb
copy_binaries berthd berth berth-reaper berth-bench
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.tsv

# The bundle: busybox and its applets, /etc/passwd and /etc/group, `runc spec` with /bin/true.
bundle=$work/bundle
rootfs=$bundle/rootfs
busybox_rootfs "$rootfs"
(cd "$bundle" && runc spec)
jq '.process.args = ["/bin/true"] | .process.terminal = false' "$bundle/config.json" >"$bundle/config.json.new"
mv "$bundle/config.json.new" "$bundle/config.json"

# cgroup mode: crun 1.8 refuses hybrid (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified).
if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
    cgroup_mode="unified (cgroup v2 only)"
    crun_wrap=()
elif [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
    cgroup_mode="hybrid (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified)"
    crun_wrap=(unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec "$0" "$@"')
else
    cgroup_mode="legacy (cgroup v1 only)"
    crun_wrap=()
fi

# The daemons: roots (metadata) on disk under $work, state on tmpfs, CRI off.
start_daemons
init_steps

# --- 1. OCI runtimes -------------------------------------------------------------------------
oci_results=$out/oci.jsonl
oci_step() {
    local rt=$1 mode=$2 flag=()
    [[ $mode == run ]] && flag=(--run)
    log "round $round: $rt $mode, $per_round iterations"
    local args=(oci "${flag[@]}" --label "$rt" --bundle "$bundle" --runs "$per_round" --warmup 3
        --pid-dir "$work/pids-$rt" --id-prefix "$oci_prefix-$round")
    case $rt in
    "berth oci") "$bin/berth-bench" "${args[@]}" -- "$bin/berth" oci --root "$state/oci-berth" ;;
    runc) "$bin/berth-bench" "${args[@]}" -- runc --root "$state/oci-runc" ;;
    crun) "${crun_wrap[@]}" "$bin/berth-bench" "${args[@]}" -- crun --root "$state/oci-crun" ;;
    esac | tee -a "$oci_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
}
for round in $(seq "$rounds"); do
    has_section 1 || break
    for mode in lifecycle run; do
        for rt in "berth oci" runc crun; do step oci_step "$rt" "$mode"; done
    done
done

# --- 2. ctr run --rm -------------------------------------------------------------------------
ctr_results=$out/ctr.jsonl
ctr_step() {
    local target=$1 s=${sock[$1]} i
    log "round $round: ctr, $target, $ctr_per_round runs each"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr version" --runs "$ctr_per_round" -- \
        ctr -a "$s" version | tee -a "$ctr_results" >&2
    for i in $(seq 0 $((ctr_per_round - 1))) warm-0 warm-1 warm-2; do echo "rtb/r$round-$i"; done >>"$ids_file"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr run --rm --rootfs /bin/true" --runs "$ctr_per_round" -- \
        ctr -a "$s" -n rtb run --rm --fifo-dir "$work/fifo" --rootfs "$rootfs" "r$round-{i}" /bin/true \
        | tee -a "$ctr_results" >&2
    # The same run's core calls from the bench's own client (no ctr process, no lease, no FIFOs),
    # each timed: where a run's time goes in the daemon.
    for i in $(seq 0 $((ctr_per_round + 2))); do echo "rtb-seq/seq-$i"; done >>"$ids_file"
    "$bin/berth-bench" tasks seq --socket "$s" --label "$target" --namespace rtb-seq --runs "$ctr_per_round" \
        --rootfs "$rootfs" -- /bin/true | tee -a "$ctr_results" | jq -c '{target, phase, p50_us}' >&2
}
for round in $(seq "$rounds"); do
    has_section 2 || break
    for target in berthd containerd; do step ctr_step "$target"; done
done

# --- 3. Memory per running container ---------------------------------------------------------
mem_results=$out/memory.tsv
# Sum of Rss and Pss (kB) over pids.
mem_sum() {
    local p r=0 s=0 n=0 pr ps
    for p in "$@"; do
        read -r pr ps < <(awk '/^Rss:/ {r = $2} /^Pss:/ {s = $2} END {print r + 0, s + 0}' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
        r=$((r + pr)) s=$((s + ps)) n=$((n + 1))
    done
    echo "$n $r $s"
}
# One line per measurement: target count what processes rss_kb pss_kb
record_mem() {
    local target=$1 count=$2 what=$3
    shift 3
    echo -e "$target\t$count\t$what\t$(mem_sum "$@" | tr ' ' '\t')" >>"$mem_results"
}
children_of() {
    local p
    for p in "$@"; do ps -o pid= --ppid "$p"; done
}
helpers_of() { if [[ $1 == berthd ]]; then reaper_pids; else shim_pids; fi; }
mem_step() {
    local target=$1 n=$2 s=${sock[$1]} i helpers
    log "memory: $target, $n sleep containers"
    record_mem "$target" "$n" "daemon before" "${dpid[$target]}"
    for i in $(seq "$n"); do
        echo "rtb-mem/mem$n-$i" >>"$ids_file"
        ctr -a "$s" -n rtb-mem run -d --fifo-dir "$work/fifo" --rootfs "$rootfs" "mem$n-$i" /bin/sleep 1000 >/dev/null
    done
    sleep 3 # let the helpers finish starting up
    mapfile -t helpers < <(helpers_of "$target")
    (( ${#helpers[@]} == n )) || log "warning: $target: ${#helpers[@]} helper processes for $n containers"
    record_mem "$target" "$n" "helpers" "${helpers[@]}"
    # shellcheck disable=SC2046 # one pid each
    record_mem "$target" "$n" "containers" $(children_of "${helpers[@]}")
    record_mem "$target" "$n" "daemon with" "${dpid[$target]}"
    "$bin/berth-bench" tasks down --socket "$s" --label "$target" --namespace rtb-mem >&2
    sleep 1
    mapfile -t helpers < <(helpers_of "$target")
    (( ${#helpers[@]} == 0 )) || die "$target: ${#helpers[@]} helper processes left after tasks down"
    record_mem "$target" "$n" "daemon after" "${dpid[$target]}"
}
: >"$mem_results"
has_section 3 || mem_counts=
for n in $mem_counts; do
    for target in berthd containerd; do step mem_step "$target" "$n"; done
done

# --- 4. Many containers at once --------------------------------------------------------------
burst_results=$out/burst.jsonl
burst_step() {
    local target=$1 s=${sock[$1]} i helpers
    log "burst: $target, $burst containers through the gRPC client"
    for i in $(seq 0 $((burst - 1))); do echo "rtb-burst/burst-$i"; done >>"$ids_file"
    record_mem "$target" "$burst" "daemon before" "${dpid[$target]}"
    timeout 900 "$bin/berth-bench" tasks up --socket "$s" --label "$target" --namespace rtb-burst --count "$burst" \
        --rootfs "$rootfs" --id-prefix burst -- /bin/sleep 1000 | tee -a "$burst_results" | jq -c '{target, phase, seconds, p50_us, p95_us}' >&2
    sleep 3
    mapfile -t helpers < <(helpers_of "$target")
    record_mem "$target" "$burst" "helpers" "${helpers[@]}"
    record_mem "$target" "$burst" "daemon with" "${dpid[$target]}"
    timeout 900 "$bin/berth-bench" tasks down --socket "$s" --label "$target" --namespace rtb-burst | tee -a "$burst_results" >&2
}
burst_ctr_step() {
    local target=$1 s=${sock[$1]} i t0 t1 running failed=0
    log "burst: $target, $burst parallel ctr version (the client floor), then $burst parallel ctr run -d"
    t0=${EPOCHREALTIME/./}
    for i in $(seq 0 $((burst - 1))); do ctr -a "$s" version >/dev/null & echo $! >>"$work/ctrburst.pids"; done
    while read -r i; do wait "$i" || failed=$((failed + 1)); done <"$work/ctrburst.pids"
    t1=${EPOCHREALTIME/./}
    rm -f "$work/ctrburst.pids"
    jq -nc --arg t "$target" --arg p "$burst parallel ctr version (client floor)" --argjson s "$(( t1 - t0 ))" --argjson f "$failed" \
        '{target: $t, phase: $p, seconds: ($s / 1e6), running: 0, failed: $f}' | tee -a "$burst_results" >&2
    failed=0
    for i in $(seq 0 $((burst - 1))); do echo "rtb-ctrburst/ctr-$i"; done >>"$ids_file"
    t0=${EPOCHREALTIME/./}
    for i in $(seq 0 $((burst - 1))); do
        ctr -a "$s" -n rtb-ctrburst run -d --fifo-dir "$work/fifo" --rootfs "$rootfs" "ctr-$i" /bin/sleep 1000 >/dev/null 2>>"$work/ctrburst.err" &
        echo $! >>"$work/ctrburst.pids"
    done
    while read -r i; do wait "$i" || failed=$((failed + 1)); done <"$work/ctrburst.pids"
    t1=${EPOCHREALTIME/./}
    rm -f "$work/ctrburst.pids"
    running=$(ctr -a "$s" -n rtb-ctrburst tasks ls | awk '$3 == "RUNNING"' | wc -l)
    jq -nc --arg t "$target" --arg p "$burst parallel ctr run -d" --argjson s "$(( t1 - t0 ))" --argjson r "$running" --argjson f "$failed" \
        '{target: $t, phase: $p, seconds: ($s / 1e6), running: $r, failed: $f}' | tee -a "$burst_results" >&2
    (( failed == 0 )) || log "warning: $failed ctr run -d failed against $target: $(tail -n 1 "$work/ctrburst.err")"
    timeout 900 "$bin/berth-bench" tasks down --socket "$s" --label "$target" --namespace rtb-ctrburst >&2
}
: >"$burst_results"
if has_section 4; then
    for target in berthd containerd; do step burst_step "$target"; done
fi
if has_section 4 && [[ $burst_ctr == 1 ]]; then
    for target in berthd containerd; do step burst_ctr_step "$target"; done
fi

# --- Report ----------------------------------------------------------------------------------
mem_row() { # target count what -> "RSS_MB PSS_MB N"
    awk -F'\t' -v t="$1" -v n="$2" -v w="$3" '$1 == t && $2 == n && $3 == w {printf "%.1f %.2f %d\n", $5 / 1024, $6 / 1024, $4; f = 1; exit}
        END {if (!f) print "- - 0"}' "$mem_results"
}
per_container() { # target count -> "PSS_MB RSS_MB" per helper process
    awk -F'\t' -v t="$1" -v n="$2" '$1 == t && $2 == n && $3 == "helpers" && $4 > 0 {printf "%.2f MB PSS, %.1f MB RSS", $6 / $4 / 1024, $5 / $4 / 1024; f = 1; exit}
        END {if (!f) printf "not measured"}' "$mem_results"
}
{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r); cgroups $cgroup_mode"
    echo "- berth $("$bin/berthd" --version | awk '{print $2}') (commit ${BENCH_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}), $(runc --version | head -n 1), $(crun --version | head -n 1), containerd $(containerd --version | awk '{print $3}')"
    [[ ${#crun_wrap[@]} -gt 0 ]] && echo "- crun runs in a mount namespace with /sys/fs/cgroup/unified unmounted (a v1-only view); berth oci and runc see the hybrid host"
    echo "- other load: each step started on idle CPUs; other processes then used at most ${worst_other}% of the CPUs during a step (worst: ${worst_step}); per step in others.txt"
    echo "- rounds: $rounds, tools interleaved in each round; medians and p95 over all rounds' samples, the range of the rounds' medians in parentheses"
    if has_section 1; then
        echo
        echo "### OCI runtimes: /bin/true in a busybox bundle ($per_round iterations per round after 3 warm-ups)"
        echo
        "$bin/berth-bench" pool --target "berth oci" --base runc --base crun "$oci_results"
    fi
    if has_section 2; then
        echo
        echo "### ctr against the daemons ($ctr_per_round runs per round after 3 warm-ups)"
        echo
        "$bin/berth-bench" pool --target berthd --base containerd "$ctr_results"
    fi
    if [[ -s $mem_results ]]; then
        echo
        echo "### Memory of running sleep containers (ctr run -d)"
        echo
        echo "| containers | berth-reaper per container | containerd-shim-runc-v2 per container | all reapers PSS / RSS | all shims PSS / RSS | berthd RSS idle → with them | containerd RSS idle → with them |"
        echo "|--:|--:|--:|--:|--:|--:|--:|"
        has_section 4 && mem_counts="$mem_counts $burst"
        for n in $mem_counts; do
            read -r br bp _ < <(mem_row berthd "$n" helpers)
            read -r cr cp _ < <(mem_row containerd "$n" helpers)
            read -r bd0 _ _ < <(mem_row berthd "$n" "daemon before")
            read -r bd1 _ _ < <(mem_row berthd "$n" "daemon with")
            read -r cd0 _ _ < <(mem_row containerd "$n" "daemon before")
            read -r cd1 _ _ < <(mem_row containerd "$n" "daemon with")
            echo "| $n | $(per_container berthd "$n") | $(per_container containerd "$n") | $bp / $br MB | $cp / $cr MB | $bd0 → $bd1 MB | $cd0 → $cd1 MB |"
        done
    fi
    if [[ -s $burst_results ]]; then
        echo
        echo "### $burst sleep containers at once"
        echo
        echo "| how | berthd | containerd |"
        echo "|---|--:|--:|"
        jq -rs '
            . as $all
            | def cell($t; $p):
                ($all | map(select(.target == $t and .phase == $p)) | first) as $x
                | if $x == null then "not measured"
                  elif ($p | test("ctr version")) then "\($x.seconds * 100 | round / 100) s (\($x.failed) failed)"
                  elif $x.running != null then "\($x.seconds * 100 | round / 100) s (\($x.running) running, \($x.failed) failed)"
                  elif ($p | test("under the burst")) then "\($x.p50_us / 100 | round / 10) / \($x.p95_us / 100 | round / 10) ms (p50 / p95)"
                  elif ($p | test("started concurrently")) then "\($x.seconds * 1000 | round / 1000) s (each running after \($x.p50_us / 1000 | round) / \($x.p95_us / 1000 | round) ms, p50 / p95)"
                  else "\($x.seconds * 1000 | round / 1000) s" end;
            reduce ($all[] | .phase) as $p ([]; if index([$p]) then . else . + [$p] end)
            | .[] | "| \(.) | \(cell("berthd"; .)) | \(cell("containerd"; .)) |"' "$burst_results"
    fi
    if has_section 3; then
        n0=${mem_counts%% *}
        read -r _ bsp _ < <(mem_row berthd "$n0" containers)
        read -r _ csp _ < <(mem_row containerd "$n0" containers)
        echo
        echo "The containers' own processes (busybox sleep), not counted above: $bsp MB PSS for $n0 under berthd, $csp MB under containerd."
    fi
} | tee "$out/report.md"
log "raw results in $out, report: $out/report.md"
