# Shell functions the benchmark scripts share (sourced by bench/runtime.sh and bench/images.sh).
# They read the calling script's settings: $bin (the copied binaries), $shim_bin and
# $containerd_sock (containerd's shims), $work (scratch), $out (results), $sections, $idle_wait,
# $hz and $ncpu, and its die and log; step keeps $worst_other and $worst_step.
# shellcheck shell=bash disable=SC2154

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

wait_ready() {
    local name=$1 sock=$2
    for _ in $(seq 100); do
        if [[ -S $sock ]] && ctr -a "$sock" version >/dev/null 2>&1; then return 0; fi
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
