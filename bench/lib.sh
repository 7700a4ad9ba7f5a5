# Shell functions the benchmark scripts share (sourced by bench/run.sh, bench/runtime.sh and
# bench/images.sh). They read the calling script's settings and its die and log: $repo,
# $build_dir, $base_dir, $out (results), $sections, $idle_wait; and what the functions below set:
# $bin (the copied binaries), $shim_bin and $containerd_sock (containerd's shims), $berthd_sock,
# $work (scratch), $state (runtime state), $ids_file, $pids and $daemon_pids. init_steps sets $hz
# and $ncpu, step keeps $worst_other and $worst_step.
# shellcheck shell=bash disable=SC2154

# --- Setting up ------------------------------------------------------------------------------
# Dies unless run as root with the commands "$@" (the message says to apt-get install $1, shifted
# off first); finds containerd's runc shim ($shim_bin) and busybox ($busybox_bin).
check_host() {
    local install=$1 tool
    shift
    [[ $EUID -eq 0 ]] || die "run as root: sudo $0"
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is needed (apt-get install -y --no-install-recommends $install)"
    done
    shim_bin=$(command -v containerd-shim-runc-v2) || die "containerd-shim-runc-v2 is needed (package containerd)"
    busybox_bin=$(command -v busybox)
    file -L "$busybox_bin" 2>/dev/null | grep -q 'statically linked' || log "warning: $busybox_bin may not be static (install busybox-static)"
}

# Builds the release binaries (unless BENCH_SKIP_BUILD is set) and checks that "$@" are in $build_dir.
build_release() {
    local b
    if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
        log "building release binaries"
        (cd "$repo" && cargo build --release -p berth -p berth-bench) >&2
    fi
    for b in "$@"; do
        [[ -x $build_dir/$b ]] || die "no $b in $build_dir"
    done
}

# What there was under /run/containerd before the run, so that cleanup removes only what the run
# added: /run/containerd itself, and the runc state directories of the namespaces "$@" (which
# containerd's shim makes under /run/containerd/runc/<namespace>).
note_containerd_run_dirs() {
    local ns
    run_containerd_existed=$([[ -d /run/containerd ]] && echo yes || echo no)
    declare -gA runc_ns_existed=()
    for ns in "$@"; do
        [[ -e /run/containerd/runc/$ns ]] && runc_ns_existed[$ns]=yes
    done
    return 0
}

# The run's directories: $work on disk under $base_dir; $state, for runtime state, on a tmpfs of the
# run's own, as /run/berth and /run/containerd are on a usual host (/run may be a plain directory on
# disk, as on some VMs, where the runtimes' state writes would cost disk flushes); and $ids_file,
# the namespace/id of every container containerd may make a shim socket for.
make_run_dirs() {
    local name=$1
    work=$(mktemp -d "$base_dir/$name.XXXXXX")
    state=$(mktemp -d "/run/$name.XXXXXX")
    mount -t tmpfs -o size=256m,mode=0711 "$name" "$state"
    ids_file=$(mktemp "/run/$name-ids.XXXXXX")
}

# Private copies of the binaries "$@" in $bin: a build running in parallel in the shared target dir
# must not swap them under the run. berthd finds berth-reaper next to itself.
copy_binaries() {
    local b
    mkdir -p "$work/bin"
    for b in "$@"; do
        cp "$build_dir/$b" "$work/bin/"
    done
    bin=$work/bin
}

# A root filesystem in directory $1: busybox and its applets, /etc/passwd and /etc/group.
busybox_rootfs() {
    local dir=$1 applet
    mkdir -p "$dir/bin" "$dir/etc" "$dir/proc" "$dir/dev" "$dir/sys" "$dir/tmp"
    cp "$busybox_bin" "$dir/bin/busybox"
    for applet in $("$dir/bin/busybox" --list); do
        [[ -e $dir/bin/$applet ]] || ln -s busybox "$dir/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/etc/passwd"
    echo 'root:x:0:' >"$dir/etc/group"
}

# The config files of berthd and containerd: roots (metadata, content, snapshots) under
# $work/berthd and $work/containerd, state directories $1 (berthd) and $2 (containerd), sockets
# $berthd_sock and $containerd_sock. CRI is off: it is not measured, and it would start CNI and
# image services for nothing.
write_configs() {
    local berthd_state=$1 containerd_state=$2
    mkdir -p "$work/berthd" "$work/containerd"
    cat >"$work/berthd/config.toml" <<EOF
version = 1
root = "$work/berthd/root"
state = "$berthd_state"
log_level = "warn"
[grpc]
address = "$berthd_sock"
EOF
    cat >"$work/containerd/config.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$containerd_state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$containerd_sock"
[ttrpc]
  address = "$containerd_sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/containerd/opt"
EOF
}

# Both daemons, roots on disk under $work, state and sockets on the tmpfs $state, each under a
# subreaper, so that containerd's shims (which daemonize) and berth's reapers stay in this shell's
# process tree and their CPU time is counted as ours; returns once both answer (and $work/fifo is
# there for ctr's FIFOs). Sets $berthd_sock
# and $containerd_sock, $sock and $dpid (socket and pid by daemon name) and $daemon_pids, and adds
# the subreapers to $pids.
start_daemons() {
    mkdir -p "$state/berthd" "$state/containerd" "$work/fifo"
    berthd_sock=$state/berthd/berth.sock
    containerd_sock=$state/containerd/containerd.sock
    write_configs "$state/berthd" "$state/containerd"
    "$bin/berth-bench" subreaper --pid-file "$work/berthd.pid" -- "$bin/berthd" --config "$work/berthd/config.toml" 2>"$work/berthd/log" &
    pids+=($!)
    "$bin/berth-bench" subreaper --pid-file "$work/containerd.pid" -- containerd --config "$work/containerd/config.toml" 2>"$work/containerd/log" &
    pids+=($!)
    wait_ready berthd "$berthd_sock" "${pids[-2]}"
    wait_ready containerd "$containerd_sock" "${pids[-1]}"
    berthd_pid=$(cat "$work/berthd.pid")
    containerd_pid=$(cat "$work/containerd.pid")
    daemon_pids=("$berthd_pid" "$containerd_pid")
    # shellcheck disable=SC2034 # read by the calling script
    declare -gA sock=([berthd]=$berthd_sock [containerd]=$containerd_sock)
    # shellcheck disable=SC2034 # read by runtime.sh
    declare -gA dpid=([berthd]=$berthd_pid [containerd]=$containerd_pid)
}

# What `step` reads: the clock rate and the CPUs; and the worst other load seen, none yet.
init_steps() {
    hz=$(getconf CLK_TCK)
    ncpu=$(nproc)
    worst_other=0
    worst_step=none
    : >"$out/others.txt"
}

# --- Cleaning up -----------------------------------------------------------------------------
# Containers still running in the namespaces "$@" (a failed step): stopped through their daemon.
tasks_down() {
    local ns
    for ns in "$@"; do
        [[ -n ${containerd_sock:-} && -S $containerd_sock ]] && timeout 120 "$bin/berth-bench" tasks down --socket "$containerd_sock" --label containerd --namespace "$ns" >/dev/null 2>&1
        [[ -n ${berthd_sock:-} && -S $berthd_sock ]] && timeout 120 "$bin/berth-bench" tasks down --socket "$berthd_sock" --label berthd --namespace "$ns" >/dev/null 2>&1
    done
    return 0
}

# The daemons (SIGTERM, then their subreapers exit with them), and every process in $pids waited
# for; then anything of ours still alive: reapers and shims.
stop_daemons() {
    local pid
    if [[ ${#daemon_pids[@]} -eq 0 && -n $work ]]; then
        # shellcheck disable=SC2207 # one pid a line
        daemon_pids=($(cat "$work"/*.pid 2>/dev/null))
    fi
    for pid in "${daemon_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [[ -n ${bin:-} ]]; then
        for pid in $(reaper_pids) $(shim_pids); do kill -9 "$pid" 2>/dev/null; done
    fi
    return 0
}

# Mounts under $work and $state (containers' root filesystems of a failed step; the state tmpfs),
# then both directories.
remove_run_dirs() {
    local d m
    for d in $work $state; do
        [[ -n $d ]] || continue
        awk -v d="$d" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    done
    [[ -n $work ]] && rm -rf "$work"
    [[ -n $state ]] && rm -rf "$state"
    return 0
}

# containerd's leftovers under /run/containerd: the shim sockets of the containers in $ids_file
# (containerd 1.6 puts them in /run/containerd/s whatever its config says, named by the sha256 of
# address/namespace/id), the runc state of the namespaces "$@" and the directories that
# note_containerd_run_dirs did not find; then $ids_file.
remove_containerd_leftovers() {
    local entry ns
    if [[ -n ${containerd_sock:-} && -s ${ids_file:-/nonexistent} ]]; then
        while read -r entry; do
            rm -f "/run/containerd/s/$(printf %s "$containerd_sock/$entry" | sha256sum | cut -d' ' -f1)"
        done <"$ids_file"
    fi
    for ns in "$@"; do
        [[ -z ${runc_ns_existed[$ns]:-} && -d /run/containerd/runc/$ns ]] && rm -rf "/run/containerd/runc/$ns"
    done
    if [[ $run_containerd_existed == no && -d /run/containerd ]]; then
        rmdir /run/containerd/runc /run/containerd/s /run/containerd 2>/dev/null
    fi
    [[ -n ${ids_file:-} ]] && rm -f "$ids_file"
    return 0
}

# --- Measuring -------------------------------------------------------------------------------
# Every process in the tree under this shell, one "pid ppid jiffies comm" line each, and the same
# for the rest of the machine: see `step`.
proc_table() {
    local f line pid comm rest
    for f in /proc/[0-9]*/stat; do
        read -r line <"$f" 2>/dev/null || continue
        pid=${line%% *}
        comm=${line#*(}
        comm=${comm%)*}
        rest=${line##*) }
        # shellcheck disable=SC2086 # split the fields
        set -- $rest
        echo "$pid $2 $(( ${12} + ${13} + ${14} + ${15} )) ${comm// /_}"
    done
}

# "mine JIFFIES" for this shell's tree (daemons run under a subreaper, so their shims and reapers
# are in it), then "other PID COMM JIFFIES" for every other process.
cpu_split() {
    proc_table | awk -v root=$$ '
        { pp[$1] = $2; j[$1] = $3; c[$1] = $4 }
        END {
            for (p in pp) {
                q = p; m = 0
                for (k = 0; k < 64 && q > 0; k++) { if (q == root) { m = 1; break }; q = pp[q] }
                if (m) mine += j[p]; else print "other", p, c[p], j[p]
            }
            print "mine", mine + 0
        }'
}

# Processes of this run: the reapers of our berthd (by the copied binary) and the shims of our
# containerd (by the socket in their command line).
reaper_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/exe" 2>/dev/null) == "$bin/berth-reaper" ]] || continue
        # A task's reaper works in its task directory; berthd's reaper spawner (one per daemon, not per
        # container, and with the same command line as the reapers it forks) does not.
        [[ $(readlink "$p/cwd" 2>/dev/null) == */runtime.linux/tasks/* ]] && echo "${p#/proc/}"
    done
    return 0
}
shim_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/exe" 2>/dev/null) == "$shim_bin" ]] || continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "-address $containerd_sock " && echo "${p#/proc/}"
    done
    return 0
}

# Ready means answering Version, not just a socket file existing. With a pid $3 (the daemon's, or
# its subreaper's), it dies as soon as that process has exited.
wait_ready() {
    local name=$1 socket=$2 pid=${3:-}
    for _ in $(seq 100); do
        [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || die "$name exited: $(tail -n 5 "$work/$name/log")"
        if [[ -S $socket ]] && ctr -a "$socket" version >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$name not ready after 10s: $(tail -n 5 "$work/$name/log")"
}

# Idle CPUs before each step: at most 15% busy over a second.
cpu_sample() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat; }
busy_pct() {
    local t0 i0 t1 i1
    read -r t0 i0 < <(cpu_sample)
    sleep 1
    read -r t1 i1 < <(cpu_sample)
    echo $(( 100 * ((t1 - t0) - (i1 - i0)) / (t1 - t0) ))
}
wait_idle() {
    local busy waited=0
    while busy=$(busy_pct); (( busy > 15 && waited < idle_wait )); do
        (( waited % 30 == 0 )) && log "waiting for the CPUs to be idle (${busy}% busy)"
        waited=$((waited + 1))
    done
    (( busy > 15 )) && log "warning: starting with the CPUs ${busy}% busy"
    return 0
}
busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }
# Runs a step ("$@") on idle CPUs; afterwards, the share of the CPUs that processes outside this
# run used during it, and the three that used most (written to others.txt).
step() {
    local b0 t0 other elapsed_us mine0 mine1 top
    wait_idle
    cpu_split >"$work/cpu0"
    mine0=$(awk '$1 == "mine" {print $2}' "$work/cpu0")
    b0=$(busy_jiffies) t0=${EPOCHREALTIME/./}
    "$@"
    elapsed_us=$(( ${EPOCHREALTIME/./} - t0 ))
    cpu_split >"$work/cpu1"
    mine1=$(awk '$1 == "mine" {print $2}' "$work/cpu1")
    other=$(( ($(busy_jiffies) - b0 - (mine1 - mine0)) * 100 * 1000000 / (elapsed_us * hz * ncpu) ))
    (( other < 0 )) && other=0
    top=$(awk 'NR == FNR { if ($1 == "other") b[$2] = $4; next }
               $1 == "other" { d = $4 - b[$2]; if (d > 0) u[$3] += d }
               END { for (c in u) print u[c], c }' "$work/cpu0" "$work/cpu1" |
          sort -rn | head -n 3 | awk -v hz="$hz" '{printf "%s%s %.1fs", (NR > 1 ? ", " : ""), $2, $1 / hz}')
    echo "$* | other ${other}% | ${top:-none}" >>"$out/others.txt"
    (( other > 10 )) && log "warning: other processes used ${other}% of the CPUs during: $* (${top})"
    if (( other > worst_other )); then worst_other=$other worst_step="$*"; fi
    return 0
}

has_section() { [[ " $sections " == *" $1 "* ]]; }
