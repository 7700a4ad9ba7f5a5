#!/usr/bin/env bash
# Benchmarks images in one run, side by side against berthd and containerd 1.6 (each on its own
# root, state and socket, both on the overlayfs snapshotter), from a Distribution registry of the
# run's own on 127.0.0.1:
#   1. pull + unpack of a busybox image and of a ~100 MB image of 5 layers of random data:
#      `ctr images pull --plain-http` against containerd and against berthd (ctr's client-side
#      pull through berthd's services), and `berth pull` (berthd's own puller); `ctr --debug images
#      pull`, which shows no progress (ctr's progress display ends a fetch on its next 100 ms
#      tick); and the same without the unpack (`ctr --debug content fetch`, `berth pull
#      --skip-unpack`), which splits a pull's time into fetch and unpack. Every pull starts cold: it runs in a namespace of its own, after
#      which everything is removed again (image, content, snapshots, namespace) and the daemon's
#      blob and snapshot directories are checked empty on disk before the next one; the registry's
#      access log shows that each pull fetched every blob. A fresh namespace alone would not do:
#      both daemons keep one blob file per digest for all namespaces and take a blob another
#      namespace has without fetching it (containerd with its default content sharing policy,
#      "shared"); only snapshots are per namespace. Once per tool, the large image is also pulled
#      into a second namespace while the first still holds it, which shows that;
#   2. `ctr snapshots prepare KEY PARENT` on the busybox layer's chain ID, and `ctr snapshots rm`;
#   3. `ctr run --rm --fifo-dir DIR IMAGE ID /bin/true` with the busybox image pulled, and
#      `ctr version` as the floor and `ctr run --rm --rootfs` of the same files (no image, no
#      snapshot) as the reference;
#   4. the same run in three ctr commands, with the image and with --rootfs: `ctr containers
#      create` (with the image: its config read, the snapshot prepared), `ctr tasks start` (task
#      create with the root filesystem mounted, start, exit, delete), `ctr containers rm` (with
#      the image: the snapshot removed): where the image's extra time in 3 goes.
#
# Run as root from anywhere: `sudo bench/images.sh`. The markdown report goes to stdout and, with
# the raw JSON lines, to $BENCH_OUT. Settings (environment):
#   IMG_PULLS=10         timed pulls per image, tool and mode (section 1), split over the rounds
#   IMG_PULL_WARMUP=1    uncounted pulls before them, per image, tool, mode and round
#   IMG_CTR_DEBUG=1      also the `ctr --debug images pull` pulls (0: skip)
#   IMG_FETCH=1          also the fetch-only pulls (0: skip)
#   IMG_PREPARES=50      snapshot prepares (and removes) per daemon (section 2), split over the rounds
#   IMG_RUNS=50          ctr runs per daemon (section 3), split over the rounds
#   IMG_ROUNDS=5         rounds; each round runs every tool, interleaved
#   IMG_BIG_LAYERS=5     layers of the large image ...
#   IMG_BIG_LAYER_MB=20  ... of this many MiB of random data each
#   IMG_SECTIONS="1 2 3 4"   which of the sections above to run (IMG_PULLS=0: section 1 without
#                        its rounds, only the second-namespace pulls and the timelines)
#   BENCH_DIR=/var/tmp   where the daemons' roots, the registry and the images go (a disk)
#   BENCH_OUT=target/berth-bench/images   where the JSON lines, logs and report.md are written
#   BENCH_SKIP_BUILD=1   use the release binaries already built
#   BENCH_IDLE_WAIT=600  seconds to wait, before each step, for other load (builds) to go away
#   BENCH_COMMIT=...     what to call the build in the report (default: git rev-parse HEAD)
set -euo pipefail

pulls=${IMG_PULLS:-10}
pull_warmup=${IMG_PULL_WARMUP:-1}
ctr_debug=${IMG_CTR_DEBUG:-1}
fetch_only=${IMG_FETCH:-1}
prepares=${IMG_PREPARES:-50}
ctr_runs=${IMG_RUNS:-50}
rounds=${IMG_ROUNDS:-5}
big_layers=${IMG_BIG_LAYERS:-5}
big_layer_mb=${IMG_BIG_LAYER_MB:-20}
sections=${IMG_SECTIONS:-1 2 3 4}
base_dir=${BENCH_DIR:-/var/tmp}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${BENCH_OUT:-$repo/target/berth-bench/images}
build_dir=${CARGO_TARGET_DIR:-$repo/target}/release
idle_wait=${BENCH_IDLE_WAIT:-600}
pulls_per_round=$(( (pulls + rounds - 1) / rounds ))
prepares_per_round=$(( (prepares + rounds - 1) / rounds ))
runs_per_round=$(( (ctr_runs + rounds - 1) / rounds ))

die() { echo "images.sh: $*" >&2; exit 1; }
log() { echo "images.sh: $(date +%H:%M:%S) $*" >&2; }
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

check_host "containerd runc busybox-static umoci skopeo docker-registry curl jq" \
    containerd ctr runc busybox umoci skopeo docker-registry curl jq unshare sha256sum
build_release berthd berth berth-reaper berth-bench

# What this run makes, so cleanup removes exactly that: its directories, the registry, the
# containerd shim sockets of its containers, the runc state directory of its namespace, and the
# cgroups of its containers. Pulls use namespaces imb-p*, which hold no containers.
run_ns=imb
note_containerd_run_dirs "$run_ns"
# skopeo run as root keeps a blob-info cache in /var/lib/containers/cache whatever its flags: it
# runs in a mount namespace with a directory of this run bind mounted there instead.
containers_lib_existed=$([[ -d /var/lib/containers ]] && echo yes || echo no)
pids=()
work=
state=
registry_pid=

cleanup() {
    local d p
    set +e
    trap '' INT TERM
    log "cleaning up"
    # Containers still running (a failed step): stop them through their daemon first.
    tasks_down "$run_ns"
    # The logs, for a look at what went wrong.
    if [[ -n $work && -d $out ]]; then
        for d in berthd containerd registry; do
            [[ -f $work/$d/log ]] && cp "$work/$d/log" "$out/$d.log"
        done
    fi
    # The registry and the daemons, then anything of ours still alive: reapers, shims, and
    # processes in our containers' cgroups.
    [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null
    stop_daemons
    find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -name "$run_ns" 2>/dev/null | while read -r d; do
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do kill -9 "$p" 2>/dev/null; done
    done
    sleep 0.5
    find /sys/fs/cgroup -mindepth 2 -depth -type d \( -name "$run_ns" -o -path "*/$run_ns/*" \) -exec rmdir {} \; 2>/dev/null
    # Mounts under our directories, the directories, containerd's leftovers.
    remove_run_dirs
    remove_containerd_leftovers "$run_ns"
    # The mount point made for skopeo's cache, if nothing else has used it since.
    [[ $containers_lib_existed == no ]] && rmdir /var/lib/containers 2>/dev/null
    return 0
}

daemon_pids=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
make_run_dirs berth-imb
fstype=$(df --output=fstype "$work" | tail -n 1 | tr -d ' ')
[[ $fstype != tmpfs && $fstype != ramfs && $fstype != overlay ]] || die "$base_dir is $fstype; set BENCH_DIR to a directory on a disk (overlayfs snapshots cannot live on overlayfs)"

copy_binaries berthd berth berth-reaper berth-bench
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.txt "$out"/*.log

# --- The images ------------------------------------------------------------------------------
# busybox: one layer of busybox and its applets, /etc/passwd and /etc/group. big: layers of random
# data (incompressible, so the registry serves about what is unpacked).
log "building the images with umoci"
rootfs=$work/rootfs
busybox_rootfs "$rootfs"
layouts=$work/layouts
mkdir -p "$layouts"
umoci init --layout "$layouts/busybox"
umoci new --image "$layouts/busybox:latest"
umoci insert --image "$layouts/busybox:latest" "$rootfs" / >/dev/null
umoci config --image "$layouts/busybox:latest" --config.cmd /bin/sh
umoci gc --layout "$layouts/busybox"
umoci init --layout "$layouts/big"
umoci new --image "$layouts/big:latest"
for i in $(seq "$big_layers"); do
    head -c "$((big_layer_mb * 1024 * 1024))" /dev/urandom >"$work/layer$i.bin"
    umoci insert --image "$layouts/big:latest" "$work/layer$i.bin" "/data/layer$i.bin" >/dev/null
    rm "$work/layer$i.bin"
done
umoci config --image "$layouts/big:latest" --config.cmd /bin/sh
umoci gc --layout "$layouts/big"
images=(busybox big)

# --- The registry ----------------------------------------------------------------------------
mkdir -p "$work/registry/storage" "$work/skopeo/tmp" "$work/skopeo/cache"
registry_log=$work/registry/log
for attempt in $(seq 10); do
    port=$(( 20000 + RANDOM % 40000 ))
    cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: berth-bench-$port
EOF
    docker-registry serve "$work/registry/config.yml" >"$registry_log" 2>&1 &
    registry_pid=$!
    pids+=("$registry_pid")
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break
        kill -0 "$registry_pid" 2>/dev/null || break
        sleep 0.1
    done
    curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break
    log "registry on port $port did not come up (attempt $attempt): $(tail -n 2 "$registry_log")"
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    registry_pid=
done
[[ -n $registry_pid ]] || die "docker-registry did not start"
registry=127.0.0.1:$port

# skopeo without a trust policy, with its temporary files, registry configuration and blob-info
# cache in this run's directories.
echo 'unqualified-search-registries = []' >"$work/skopeo/registries.conf"
[[ -d /var/lib/containers ]] || mkdir -m 0700 /var/lib/containers
skopeo_run() {
    # shellcheck disable=SC2016 # expanded by sh
    unshare -m sh -c 'mount --bind "$0" /var/lib/containers && exec "$@"' "$work/skopeo/cache" \
        env TMPDIR="$work/skopeo/tmp" CONTAINERS_REGISTRIES_CONF="$work/skopeo/registries.conf" \
        REGISTRY_AUTH_FILE="$work/skopeo/auth.json" \
        skopeo --insecure-policy --tmpdir "$work/skopeo/tmp" --registries.d "$work/skopeo" "$@"
}
declare -A ref=() image_blobs=() image_bytes=() image_layers=() image_digests=()
for image in "${images[@]}"; do
    ref[$image]=$registry/imb/$image:latest
    skopeo_run copy -q --dest-tls-verify=false "oci:$layouts/$image:latest" "docker://${ref[$image]}" >&2
    skopeo_run inspect --raw --tls-verify=false "docker://${ref[$image]}" >"$work/$image.manifest.json"
    # What a pull must fetch: the config and the layers (as blobs; the manifest is fetched by tag
    # or digest from /manifests), and every digest it stores.
    image_layers[$image]=$(jq '.layers | length' "$work/$image.manifest.json")
    image_blobs[$image]=$(( image_layers[$image] + 1 ))
    image_bytes[$image]=$(jq '[.config.size] + [.layers[].size] | add' "$work/$image.manifest.json")
    image_digests[$image]="sha256:$(sha256sum "$work/$image.manifest.json" | cut -d' ' -f1) $(jq -r '[.config.digest] + [.layers[].digest] | join(" ")' "$work/$image.manifest.json")"
    log "pushed ${ref[$image]}: ${image_layers[$image]} layers, ${image_bytes[$image]} bytes of blobs"
done
# The chain ID of busybox's top layer: the parent of the snapshots prepared in section 2.
busybox_config=$layouts/busybox/blobs/sha256/$(jq -r '.config.digest | sub("sha256:"; "")' "$work/busybox.manifest.json")
chain=
for diff in $(jq -r '.rootfs.diff_ids[]' "$busybox_config"); do
    if [[ -z $chain ]]; then chain=$diff; else chain="sha256:$(printf '%s %s' "$chain" "$diff" | sha256sum | cut -d' ' -f1)"; fi
done

# --- The daemons -----------------------------------------------------------------------------
# Roots (metadata, content, snapshots) on disk under $work, state on tmpfs, CRI off.
start_daemons
# Where each daemon keeps blob files and snapshot directories on disk (shared by its namespaces).
declare -A blob_dir=([berthd]=$work/berthd/root/content/blobs/sha256
    [containerd]=$work/containerd/root/io.containerd.content.v1.content/blobs/sha256)
declare -A snap_dir=([berthd]=$work/berthd/root/snapshot.overlayfs/snapshots
    [containerd]=$work/containerd/root/io.containerd.snapshotter.v1.overlayfs/snapshots)

init_steps

# One phase line as berth-bench prints them (`pool` reads these): target, phase, samples in µs.
phase_line() {
    local target=$1 phase=$2 seconds=$3
    shift 3
    jq -nc --arg t "$target" --arg p "$phase" --argjson s "$seconds" '
        ($ARGS.positional | map(tonumber) | sort) as $v | ($v | length) as $n
        | def pct($q): if $n == 0 then 0 else $v[([((($n * $q) + 99) / 100 | floor), 1] | max) - 1] end;
        {target: $t, phase: $p, clients: 1, ops: $n, seconds: $s, ops_per_sec: (if $s > 0 then $n / $s else 0 end),
         p50_us: pct(50), p95_us: pct(95), p99_us: pct(99), samples_us: $v}' --args "$@"
}

# --- 1. Pulls --------------------------------------------------------------------------------
pull_results=$out/pulls.jsonl
pull_detail=$out/pull-detail.jsonl
berthd_blobs_removed=0

# What one pull runs: tool (ctr or berth) and mode (pull: fetch and unpack; debug: the same with
# ctr --debug, which shows no progress; fetch: fetch only, with ctr --debug).
pull_cmd() {
    local s=${sock[$1]} tool=$2 mode=$3 ns=$4 r=$5
    case $tool/$mode in
    ctr/pull) ctr -a "$s" -n "$ns" images pull --plain-http "$r" ;;
    ctr/debug) ctr --debug -a "$s" -n "$ns" images pull --plain-http "$r" ;;
    ctr/fetch) ctr --debug -a "$s" -n "$ns" content fetch --plain-http "$r" ;;
    berth/pull) "$bin/berth" --address "$s" -n "$ns" pull "$r" ;;
    berth/fetch) "$bin/berth" --address "$s" -n "$ns" pull --skip-unpack "$r" ;;
    esac
}
pull_phase() {
    local image=$1 tool=$2 mode=$3
    case $tool/$mode in
    ctr/pull) echo "$image: pull + unpack, ctr images pull" ;;
    ctr/debug) echo "$image: pull + unpack, ctr --debug images pull (no progress display)" ;;
    ctr/fetch) echo "$image: fetch only, ctr --debug content fetch" ;;
    berth/pull) echo "$image: pull + unpack, berth pull" ;;
    berth/fetch) echo "$image: fetch only, berth pull --skip-unpack" ;;
    esac
}
# Files directly in a directory (blobs, snapshots): how many.
count_entries() { find "$1" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# Removes everything in namespace ns of a daemon, then the namespace: images (--sync: containerd
# collects their content and snapshots before replying), any content left, any snapshots left
# (children first), and checks that the daemon's blob and snapshot directories are empty on disk.
# berthd leaves the blob files of content no namespace has any more to its garbage collector; any
# it still leaves here (of this run's images, recorded in no namespace) are removed by hand and
# counted, so that the next pull cannot import them. With check=keep (other namespaces still hold
# the image) the on-disk check is skipped.
clear_ns() {
    local target=$1 ns=$2 check=${3:-check} s=${sock[$1]} refs digests leaves d other n
    local -a lines
    mapfile -t refs < <(ctr -a "$s" -n "$ns" images ls -q)
    (( ${#refs[@]} == 0 )) || ctr -a "$s" -n "$ns" images rm --sync "${refs[@]}" >/dev/null
    mapfile -t digests < <(ctr -a "$s" -n "$ns" content ls -q)
    (( ${#digests[@]} == 0 )) || ctr -a "$s" -n "$ns" content rm "${digests[@]}" >/dev/null
    while mapfile -t lines < <(ctr -a "$s" -n "$ns" snapshots ls | awk 'NR > 1 {print $1, (NF == 3 ? $2 : "")}'); (( ${#lines[@]} > 0 )); do
        mapfile -t leaves < <(printf '%s\n' "${lines[@]}" | awk '{k[$1] = 1; if ($2 != "") p[$2] = 1} END {for (x in k) if (!(x in p)) print x}')
        ctr -a "$s" -n "$ns" snapshots rm "${leaves[@]}" >/dev/null
    done
    ctr -a "$s" namespaces rm "$ns" >/dev/null
    if [[ $target == berthd ]]; then
        for d in ${image_digests[busybox]} ${image_digests[big]}; do
            [[ -e ${blob_dir[berthd]}/${d#sha256:} ]] || continue
            for other in $(ctr -a "$s" namespaces ls -q); do
                ctr -a "$s" -n "$other" content ls -q | grep -qxF "$d" && continue 2
            done
            rm -f "${blob_dir[berthd]}/${d#sha256:}"
            berthd_blobs_removed=$((berthd_blobs_removed + 1))
        done
    fi
    sync
    [[ $check == check ]] || return 0
    # containerd removes blob files and snapshot directories in the collection images rm --sync
    # waits for; give a collector that works in the background a few seconds.
    for _ in $(seq 50); do
        n=$(( $(count_entries "${blob_dir[$target]}") + $(count_entries "${snap_dir[$target]}") ))
        (( n == 0 )) && return 0
        sleep 0.1
    done
    die "$target: $(count_entries "${blob_dir[$target]}") blob files and $(count_entries "${snap_dir[$target]}") snapshot directories left after removing namespace $ns"
}
# Blobs of image fetched from the registry since line `mark` of its access log: "count bytes".
fetched_since() {
    tail -n +"$(( $1 + 1 ))" "$registry_log" | awk -v p="/v2/imb/$2/blobs/" '
        $6 == "\"GET" && index($7, p) == 1 && ($9 == 200 || $9 == 206) {n++; b += $10}
        END {print n + 0, b + 0}'
}
# Pulls of one image with one tool and mode against one daemon: warm-ups, then the timed ones,
# each in a fresh namespace and cold.
pull_step() {
    local target=$1 tool=$2 image=$3 mode=$4 i ns t0 us mark blobs bytes phase
    local -a samples=()
    phase=$(pull_phase "$image" "$tool" "$mode")
    log "round $round: $target, $phase: $pull_warmup warm-up + $pulls_per_round pulls"
    local started=${EPOCHREALTIME/./}
    for i in $(seq $(( pull_warmup + pulls_per_round ))); do
        ns=imb-p$round-$image-$tool-$mode-$i
        (( $(count_entries "${blob_dir[$target]}") + $(count_entries "${snap_dir[$target]}") == 0 )) ||
            die "$target: not cold before a pull: blobs or snapshots on disk"
        mark=$(wc -l <"$registry_log")
        t0=${EPOCHREALTIME/./}
        pull_cmd "$target" "$tool" "$mode" "$ns" "${ref[$image]}" >"$work/pull.out" 2>&1 ||
            die "$target: $phase failed: $(tail -n 5 "$work/pull.out")"
        us=$(( ${EPOCHREALTIME/./} - t0 ))
        clear_ns "$target" "$ns"
        read -r blobs bytes < <(fetched_since "$mark" "$image")
        (( blobs >= image_blobs[$image] && bytes >= image_bytes[$image] )) ||
            log "warning: $target, $phase fetched $blobs blobs, $bytes bytes (the image has ${image_blobs[$image]}, ${image_bytes[$image]} bytes)"
        jq -nc --arg t "$target" --arg p "$phase" --argjson r "$round" --argjson i "$i" --argjson w "$(( i <= pull_warmup ))" \
            --argjson us "$us" --argjson n "$blobs" --argjson b "$bytes" \
            '{target: $t, phase: $p, round: $r, i: $i, warmup: ($w == 1), us: $us, blobs_fetched: $n, bytes_fetched: $b}' >>"$pull_detail"
        (( i <= pull_warmup )) || samples+=("$us")
    done
    phase_line "$target" "$phase" "$(( ${EPOCHREALTIME/./} - started ))e-6" "${samples[@]}" | tee -a "$pull_results" |
        jq -c '{target, phase, p50_us, p95_us}' >&2
}
pull_modes=(pull)
[[ $ctr_debug == 1 ]] && pull_modes+=(debug)
[[ $fetch_only == 1 ]] && pull_modes+=(fetch)
: >"$pull_results"
: >"$pull_detail"
for round in $(seq "$rounds"); do
    if ! has_section 1 || (( pulls == 0 )); then break; fi
    for image in "${images[@]}"; do
        for mode in "${pull_modes[@]}"; do
            step pull_step containerd ctr "$image" "$mode"
            step pull_step berthd ctr "$image" "$mode"
            [[ $mode == debug ]] || step pull_step berthd berth "$image" "$mode"
        done
    done
done
# The blob GETs the registry served since line `mark` of its log, from its "response completed"
# lines (logged at the end, with the duration): "start_ms end_ms digest" since t0 (µs), by start.
registry_requests() {
    local mark=$1 image=$2 t0=$3 line end_us digest
    tail -n +"$(( mark + 1 ))" "$registry_log" | grep -F 'msg="response completed"' | grep -F 'http.request.method=GET' |
        grep -F "http.request.uri=\"/v2/imb/$image/blobs/" | while IFS= read -r line; do
        [[ $line =~ ^time=\"([^\"]+)\" ]] || continue
        end_us=$(date -d "${BASH_REMATCH[1]}" +%s%6N)
        [[ $line =~ /blobs/(sha256:[0-9a-f]+) ]] || continue
        digest=${BASH_REMATCH[1]}
        [[ $line =~ http.response.duration=([0-9.]+)(ns|µs|us|ms|s) ]] || continue
        awk -v end="$end_us" -v t0="$t0" -v d="${BASH_REMATCH[1]}" -v u="${BASH_REMATCH[2]}" -v dg="$digest" 'BEGIN {
            f = (u == "ns") ? 0.001 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : 1
            printf "%d %d %s\n", (end - d * f - t0) / 1000, (end - t0) / 1000, dg}'
    done | sort -n
}
# One more berth pull of each image, its progress lines stamped with the time since the start
# (berthd sends progress every 100 ms), and when the registry served each blob: when the layers
# were in and when they were unpacked.
timeline() {
    local image=$1 t0 line mark
    mark=$(wc -l <"$registry_log")
    t0=${EPOCHREALTIME/./}
    "$bin/berth" --address "$berthd_sock" -n imb-timeline pull "${ref[$image]}" 2>&1 >/dev/null | while IFS= read -r line; do
        printf '%6d ms  %s\n' "$(( (${EPOCHREALTIME/./} - t0) / 1000 ))" "$line"
    done >"$out/timeline-$image.txt"
    printf '%6d ms  (berth pull exited)\n' "$(( (${EPOCHREALTIME/./} - t0) / 1000 ))" >>"$out/timeline-$image.txt"
    sleep 0.5 # the registry logs a request once it is done
    {
        echo
        echo "blobs as the registry served them (ms since the start; layer N of the manifest):"
        registry_requests "$mark" "$image" "$t0" | while read -r from to digest; do
            printf '%6d–%d ms  %s %s\n' "$from" "$to" \
                "$(jq -r --arg d "$digest" 'if .config.digest == $d then "config" else (.layers | map(.digest) | index($d) | "layer \(. + 1)") end' "$work/$image.manifest.json")" "$digest"
        done
    } >>"$out/timeline-$image.txt"
    clear_ns berthd imb-timeline
}
if has_section 1; then
    for image in "${images[@]}"; do step timeline "$image"; done
fi
# The large image into namespace a, then into b while a still holds it; then both removed.
share_results=$out/share.jsonl
share_step() {
    local target=$1 tool=$2 ns mark t0 us blobs bytes
    log "$target, $(pull_phase big "$tool" pull): into a second namespace"
    for ns in imb-share-a imb-share-b; do
        mark=$(wc -l <"$registry_log")
        t0=${EPOCHREALTIME/./}
        pull_cmd "$target" "$tool" pull "$ns" "${ref[big]}" >"$work/pull.out" 2>&1 ||
            die "$target: pull into $ns failed: $(tail -n 5 "$work/pull.out")"
        us=$(( ${EPOCHREALTIME/./} - t0 ))
        sleep 0.5 # the registry logs a request once it is done
        read -r blobs bytes < <(fetched_since "$mark" big)
        jq -nc --arg t "$target" --arg p "$(pull_phase big "$tool" pull)" --arg ns "$ns" --argjson us "$us" --argjson n "$blobs" --argjson b "$bytes" \
            '{target: $t, phase: $p, namespace: $ns, us: $us, blobs_fetched: $n, bytes_fetched: $b}' | tee -a "$share_results" >&2
    done
    clear_ns "$target" imb-share-b keep
    clear_ns "$target" imb-share-a
}
: >"$share_results"
if has_section 1; then
    step share_step containerd ctr
    step share_step berthd ctr
    step share_step berthd berth
fi

# --- 2. and 3.: snapshots and ctr run, with busybox pulled ------------------------------------
snap_results=$out/snapshots.jsonl
run_results=$out/run.jsonl
: >"$snap_results"
: >"$run_results"
if has_section 2 || has_section 3 || has_section 4; then
    for target in berthd containerd; do
        ctr -a "${sock[$target]}" -n "$run_ns" images pull --plain-http "${ref[busybox]}" >/dev/null
        ctr -a "${sock[$target]}" -n "$run_ns" snapshots ls | awk 'NR > 1 {print $1}' | grep -qxF "$chain" ||
            die "$target: no committed snapshot $chain after pulling busybox"
    done
fi
snap_step() {
    local target=$1 s=${sock[$1]}
    log "round $round: $target, $prepares_per_round snapshot prepares and removes"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr snapshots prepare (parent: busybox layer)" --runs "$prepares_per_round" -- \
        ctr -a "$s" -n "$run_ns" snapshots prepare "prep-r$round-{i}" "$chain" | tee -a "$snap_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr snapshots rm" --runs "$prepares_per_round" -- \
        ctr -a "$s" -n "$run_ns" snapshots rm "prep-r$round-{i}" | tee -a "$snap_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
}
run_step() {
    local target=$1 s=${sock[$1]} i
    log "round $round: $target, $runs_per_round ctr runs"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr version" --runs "$runs_per_round" -- \
        ctr -a "$s" version | tee -a "$run_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
    for i in $(seq 0 $((runs_per_round - 1))) warm-0 warm-1 warm-2; do echo "$run_ns/run-r$round-$i"; done >>"$ids_file"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr run --rm IMAGE /bin/true" --runs "$runs_per_round" -- \
        ctr -a "$s" -n "$run_ns" run --rm --fifo-dir "$work/fifo" "${ref[busybox]}" "run-r$round-{i}" /bin/true \
        | tee -a "$run_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
    for i in $(seq 0 $((runs_per_round - 1))) warm-0 warm-1 warm-2; do echo "$run_ns/rootfs-r$round-$i"; done >>"$ids_file"
    "$bin/berth-bench" exec --samples --label "$target" --phase "ctr run --rm --rootfs DIR /bin/true (the same files, no image)" --runs "$runs_per_round" -- \
        ctr -a "$s" -n "$run_ns" run --rm --fifo-dir "$work/fifo" --rootfs "$rootfs" "rootfs-r$round-{i}" /bin/true \
        | tee -a "$run_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
}
# 4. ctr run in three commands: create the container, run its task (create, start, exit, delete),
# remove the container; with the image and with --rootfs.
parts_results=$out/run-parts.jsonl
: >"$parts_results"
parts_step() {
    local target=$1 s=${sock[$1]} i what
    local -a src cmd=(ctr -a "$s" -n "$run_ns")
    for what in image rootfs; do
        if [[ $what == image ]]; then src=("${ref[busybox]}"); else src=(--rootfs "$rootfs"); fi
        log "round $round: $target, ctr run in three commands, $what, $runs_per_round each"
        for i in $(seq 0 $((runs_per_round - 1))) warm-0 warm-1 warm-2; do echo "$run_ns/$what-r$round-$i"; done >>"$ids_file"
        "$bin/berth-bench" exec --samples --label "$target" --phase "$what: ctr containers create" --runs "$runs_per_round" -- \
            "${cmd[@]}" containers create "${src[@]}" "$what-r$round-{i}" /bin/true | tee -a "$parts_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
        "$bin/berth-bench" exec --samples --label "$target" --phase "$what: ctr tasks start" --runs "$runs_per_round" -- \
            "${cmd[@]}" tasks start --fifo-dir "$work/fifo" "$what-r$round-{i}" | tee -a "$parts_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
        "$bin/berth-bench" exec --samples --label "$target" --phase "$what: ctr containers rm" --runs "$runs_per_round" -- \
            "${cmd[@]}" containers rm "$what-r$round-{i}" | tee -a "$parts_results" | jq -c '{target, phase, p50_us, p95_us}' >&2
    done
}
for round in $(seq "$rounds"); do
    for target in berthd containerd; do
        has_section 2 && step snap_step "$target"
        has_section 3 && step run_step "$target"
        has_section 4 && step parts_step "$target"
    done
done

# --- Report ----------------------------------------------------------------------------------
# Pooled median (or p-th percentile) in µs of every sample of target and phase in a file.
pooled() {
    jq -s --arg t "$1" --arg p "$2" --argjson q "${4:-50}" '
        [.[] | select(.target == $t and .phase == $p) | .samples_us[]] | sort | length as $n
        | if $n == 0 then 0 else .[([((($n * $q) + 99) / 100 | floor), 1] | max) - 1] end' "$3"
}
ms() { awk -v us="$1" 'BEGIN {printf "%.1f ms", us / 1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else printf "-"}'; }
# For the pull tables: containerd's ctr lines once more under the berth phases, so that each berth
# row has containerd's ctr figure beside it and the ratio to it.
jq -c 'select(.target == "containerd" and (.phase | test(", ctr images pull$|, ctr --debug content fetch$")))
       | .phase |= sub(", ctr images pull$"; ", berth pull") | .phase |= sub(", ctr --debug content fetch$"; ", berth pull --skip-unpack")' \
    "$pull_results" >"$work/pulls-vs.jsonl"
{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r); daemons' roots on $fstype under $base_dir"
    echo "- berth $("$bin/berthd" --version | awk '{print $2}') (commit ${BENCH_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}), containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -n 1), docker-registry $(docker-registry --version | awk '{print $3}'), $(skopeo --version), umoci $(umoci --version | awk '{print $3}')"
    echo "- images: busybox, ${image_layers[busybox]} layer, ${image_bytes[busybox]} bytes of blobs; big, ${image_layers[big]} layers of $big_layer_mb MiB of random data, ${image_bytes[big]} bytes of blobs (gzip, as umoci writes them), from docker-registry on $registry"
    echo "- other load: each step started on idle CPUs; other processes then used at most ${worst_other}% of the CPUs during a step (worst: ${worst_step}); per step in others.txt"
    echo "- rounds: $rounds, tools interleaved in each round; medians and p95 over all rounds' samples, the range of the rounds' medians in parentheses"
    if has_section 1 && (( pulls > 0 )); then
        short=0
        for image in "${images[@]}"; do
            short=$(( short + $(jq -s --arg i "$image: " --argjson n "${image_blobs[$image]}" --argjson b "${image_bytes[$image]}" \
                '[.[] | select((.phase | startswith($i)) and (.blobs_fetched < $n or .bytes_fetched < $b))] | length' "$pull_detail") ))
        done
        echo "- pulls: each in a fresh namespace, then its image, content, snapshots and namespace removed (\`ctr images rm --sync\`, \`ctr content rm\`, \`ctr snapshots rm\` children first, \`ctr namespaces rm\`) and \`sync\`; before each pull the daemon's blob and snapshot directories were empty on disk. Pulls that fetched fewer blobs or bytes from the registry than the image has (its access log): $short of $(wc -l <"$pull_detail"). berthd left $berthd_blobs_removed blob files of removed content on disk, which the script deleted (berthd would import them into the next namespace instead of fetching)"
        echo
        echo "### Pull + unpack, and fetch only ($pull_warmup uncounted + $pulls_per_round pulls per round, tool and image)"
        echo
        "$bin/berth-bench" pool --target berthd --base containerd "$pull_results" "$work/pulls-vs.jsonl"
        echo
        echo "Rows \"berth pull\" compare berthd's own puller with containerd's \`ctr images pull\` (\`ctr --debug content fetch\` for fetch only)."
        if [[ $fetch_only == 1 ]]; then
            echo
            echo "| image | unpack: pull + unpack − fetch only (medians) | containerd, ctr --debug | berthd, ctr --debug | berthd, berth pull |"
            echo "|---|---|--:|--:|--:|"
            for image in "${images[@]}"; do
                row="| $image | |"
                for tt in "containerd ctr debug" "berthd ctr debug" "berthd berth pull"; do
                    read -r t tool mode <<<"$tt"
                    p=$(pooled "$t" "$(pull_phase "$image" "$tool" "$mode")" "$pull_results")
                    f=$(pooled "$t" "$(pull_phase "$image" "$tool" fetch)" "$pull_results")
                    row="$row $(ms $(( p - f ))) |"
                done
                echo "$row"
            done
        fi
    fi
    if has_section 2 || has_section 3; then
        echo
        echo "### Snapshots and ctr run ($prepares_per_round prepares, $runs_per_round runs per round after 3 warm-ups)"
        echo
        "$bin/berth-bench" pool --target berthd --base containerd "$snap_results" "$run_results"
    fi
    if has_section 4; then
        echo
        echo "### ctr run in three commands: containers create, tasks start, containers rm ($runs_per_round runs per round after 3 warm-ups)"
        echo
        "$bin/berth-bench" pool --target berthd --base containerd "$parts_results"
    fi
    if { has_section 1 && (( pulls > 0 )); } || has_section 3; then
        echo
        echo "### Goals"
        echo
        echo "| goal | figure | verdict |"
        echo "|---|---|---|"
    fi
    if has_section 1 && (( pulls > 0 )); then
        for image in "${images[@]}"; do
            for tt in "berth pull ctr pull berth pull vs containerd's ctr images pull" \
                "berth pull ctr debug berth pull vs containerd's ctr --debug images pull" \
                "ctr pull ctr pull ctr images pull, berthd vs containerd"; do
                read -r tool mode ctool cmode what <<<"$tt"
                [[ $cmode == debug && $ctr_debug != 1 ]] && continue
                b=$(pooled berthd "$(pull_phase "$image" "$tool" "$mode")" "$pull_results")
                c=$(pooled containerd "$(pull_phase "$image" "$ctool" "$cmode")" "$pull_results")
                r=$(ratio "$b" "$c")
                v=$(awk -v r="$r" 'BEGIN {print (r != "-" && r <= 0.5) ? "**met**" : "**not met**"}')
                echo "| $image pull + unpack ≤ 0.5x containerd's: $what | $(ms "$b") vs $(ms "$c"): ${r}x | $v |"
            done
        done
    fi
    if has_section 3; then
        b=$(pooled berthd "ctr run --rm IMAGE /bin/true" "$run_results")
        c=$(pooled containerd "ctr run --rm IMAGE /bin/true" "$run_results")
        v=$(( b <= 25000 ))
        echo "| \`ctr run --rm IMAGE\` ≤ 25 ms median on berthd | $(ms "$b") (p95 $(ms "$(pooled berthd "ctr run --rm IMAGE /bin/true" "$run_results" 95)")); containerd $(ms "$c"): $(ratio "$b" "$c")x | $( ((v)) && echo "**met**" || echo "**not met**") |"
    fi
    if [[ -s $share_results ]]; then
        echo
        echo "### The large image pulled into a second namespace while the first holds it"
        echo
        echo "| daemon, command | first namespace: time, blobs / MB fetched | second namespace: time, blobs / MB fetched |"
        echo "|---|--:|--:|"
        jq -rs 'group_by(.target + .phase)[] | sort_by(.namespace)
            | "| \(.[0].target), \(.[0].phase | sub("^big: pull \\+ unpack, "; "")) | "
              + (map("\(.us / 100 | round / 10) ms, \(.blobs_fetched) / \(.bytes_fetched / 1e5 | round / 10)") | join(" | ")) + " |"' "$share_results"
    fi
    for image in "${images[@]}"; do
        [[ -s $out/timeline-$image.txt ]] || continue
        echo
        echo "berth pull of $image, progress lines by the time since the start (timeline-$image.txt):"
        echo
        echo '```'
        cat "$out/timeline-$image.txt"
        echo '```'
    done
} | tee "$out/report.md"
log "raw results in $out, report: $out/report.md"
