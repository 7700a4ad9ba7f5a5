//! Task monitors end to end: `monitor.restart` keeping labelled containers running (with the real
//! `ctr`: counter file in a bind mount, log file, back-off between restarts seen in the events'
//! timestamps, the label set to stopped, the container deleted, restarts racing deletions, a
//! container whose task is missing at start-up), `monitor.cgroups` (one /tasks/oom per OOM kill,
//! metrics), berthd without monitors, and a monitor that fails while tasks are created.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use containerd_client::events::{TaskExit, TaskStart};
use containerd_client::services::v1::*;
use containerd_client::types::Envelope;
use prost::Message;

use crate::harness::*;
use crate::images_fixture::{self, BUSYBOX};

const STATUS: &str = "containerd.io/restart.status";
const COUNT: &str = "containerd.io/restart.count";

/// Restart settings that keep the tests short: checks every 300 ms, restarts after 100 ms doubling
/// up to 2 s.
const FAST: &str = "[plugins.\"monitor.restart\"]\ninterval = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"2s\"\nbackoff_reset = \"1m\"\n";

/// Runs `ctr args` and returns (exit code, stdout, stderr).
fn ctr(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = daemon.ctr(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status column of `ctr tasks ls` for `id`, None without a task.
fn task_status(daemon: &Daemon, id: &str) -> Option<String> {
    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    ls.lines()
        .skip(1)
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

/// The pid column of `ctr tasks ls` for `id`.
fn task_pid(daemon: &Daemon, id: &str) -> Option<u32> {
    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    ls.lines()
        .skip(1)
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// The labels of container `id`, as `ctr containers info` shows them.
fn labels(daemon: &Daemon, id: &str) -> serde_json::Value {
    let info: serde_json::Value = serde_json::from_str(&daemon.ctr_ok(&["containers", "info", id])).unwrap();
    info["Labels"].clone()
}

fn restart_count(daemon: &Daemon, id: &str) -> u32 {
    labels(daemon, id)[COUNT].as_str().map_or(0, |c| c.parse().unwrap())
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Writes `/ID.sh` into `rootfs` running `script` (ctr moves arguments that look like flags).
fn script(rootfs: &Path, id: &str, script: &str) -> String {
    std::fs::write(rootfs.join(format!("{id}.sh")), format!("{script}\n")).unwrap();
    format!("/{id}.sh")
}

/// The cgroup directories a task of `default`/`id` would have (ctr puts tasks in `/<ns>/<id>`).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("default").join(id))
        .collect();
    dirs.push(PathBuf::from("/sys/fs/cgroup/default").join(id));
    dirs
}

/// Asserts nothing of task `id` is left: task directory, runtime state, cgroups, mounts under the
/// daemon's directory, processes.
fn assert_nothing_left(daemon: &Daemon, id: &str) {
    let state = daemon.dir.path().join("state/runtime.linux");
    let task_dir = state.join("tasks/default").join(id);
    // The reaper exits right after answering Delete.
    eventually(&format!("task directory {} removed", task_dir.display()), 5, || !task_dir.exists());
    assert!(!state.join("oci/default").join(id).exists(), "runtime state of {id} left behind");
    for cg in cgroup_dirs(id) {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = daemon.dir.path().display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(left.is_empty(), "mounts left under {prefix}:\n{}", left.join("\n"));
    assert!(daemon.task_dirs().is_empty(), "task directories left: {:?}", daemon.task_dirs());
}

#[test]
fn a_labelled_container_is_restarted_until_labelled_stopped() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start_with(FAST);
    let rootfs = daemon.busybox_rootfs();
    let data = daemon.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = daemon.dir.path().join("logs/mon-r1.log");
    // Each run adds a line to the counter file, prints one, and fails after a moment.
    let cmd = script(&rootfs, "mon-r1", "echo run >> /data/count; echo out $$; sleep 0.2; exit 3");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", data.display());
    let logpath = format!("containerd.io/restart.logpath={}", log.display());
    let label = format!("{STATUS}=running");
    daemon.ctr_ok(&[
        "containers",
        "create",
        "--label",
        &logpath,
        "--mount",
        &mount,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "mon-r1",
        "sh",
        &cmd,
    ]);
    // Started by ctr, then labelled (a check between the two would start it first).
    daemon.ctr_ok(&["tasks", "start", "--null-io", "-d", "mon-r1"]);
    daemon.ctr_ok(&["containers", "label", "mon-r1", &label]);

    let count = data.join("count");
    eventually("four runs", 20, || lines(&count) >= 4);
    // Restarted tasks write to the log file; the first one had no stdio.
    eventually("restarted runs logged", 5, || lines(&log) >= 2);
    assert!(std::fs::read_to_string(&log).unwrap().lines().all(|l| l.starts_with("out ")));
    assert!(restart_count(&daemon, "mon-r1") >= 3, "{}", labels(&daemon, "mon-r1"));

    // Labelled stopped: the next check stops the task if it runs, and nothing restarts it.
    daemon.ctr_ok(&["containers", "label", "mon-r1", &format!("{STATUS}=stopped")]);
    eventually("task stopped", 10, || task_status(&daemon, "mon-r1").is_none_or(|s| s == "STOPPED"));
    // Longer than the longest back-off and a few checks.
    std::thread::sleep(Duration::from_millis(2600));
    let runs = lines(&count);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lines(&count), runs, "restarted after being labelled stopped");
    assert!(task_status(&daemon, "mon-r1").is_none_or(|s| s == "STOPPED"));

    let _ = daemon.ctr(&["tasks", "rm", "mon-r1"]);
    daemon.ctr_ok(&["containers", "rm", "mon-r1"]);
    assert_nothing_left(&daemon, "mon-r1");
}

/// The next event on `stream` whose topic is `topic`.
async fn next_on(stream: &mut containerd_client::tonic::Streaming<Envelope>, topic: &str) -> Envelope {
    loop {
        let envelope = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no {topic} event within 30 s"))
            .unwrap()
            .expect("event stream ended");
        if envelope.topic == topic {
            return envelope;
        }
    }
}

fn time_of(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[tokio::test]
async fn killing_repeatedly_backs_off_and_deleting_the_container_stops_restarts() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start_with(
        "[plugins.\"monitor.restart\"]\ninterval = \"1m\"\nbackoff_base = \"400ms\"\nbackoff_max = \"10s\"\nbackoff_reset = \"1m\"\n",
    );
    let mut events = daemon.subscribe(&["topic~=^/tasks/"]).await;
    let rootfs = daemon.busybox_rootfs();
    let label = format!("{STATUS}=running");
    // Labelled once its task runs: a check at start-up racing the create cannot restart it early.
    daemon.ctr_ok(&["containers", "create", "--rootfs", rootfs.to_str().unwrap(), "mon-b1", "sleep", "1000"]);
    daemon.ctr_ok(&["tasks", "start", "--null-io", "-d", "mon-b1"]);
    let first = TaskStart::decode(next_on(&mut events, "/tasks/start").await.event.unwrap().value.as_slice()).unwrap();
    daemon.ctr_ok(&["containers", "label", "mon-b1", &label]);

    let mut pids = vec![first.pid];
    for n in 0..4u32 {
        daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "mon-b1"]);
        let exit = TaskExit::decode(next_on(&mut events, "/tasks/exit").await.event.unwrap().value.as_slice()).unwrap();
        assert_eq!((exit.container_id.as_str(), exit.exit_status), ("mon-b1", 137));
        let started = next_on(&mut events, "/tasks/start").await;
        let start = TaskStart::decode(started.event.as_ref().unwrap().value.as_slice()).unwrap();
        // The n-th restart in a row waits 400 ms × 2ⁿ after the exit, at least.
        let waited = time_of(started.timestamp.as_ref().unwrap())
            .duration_since(time_of(exit.exited_at.as_ref().unwrap()))
            .unwrap();
        let back_off = Duration::from_millis(400 << n);
        assert!(
            waited >= back_off,
            "restart {n} came {waited:?} after the exit, before its back-off {back_off:?}: exit {exit:?}, start {started:?}\n{}",
            daemon.log_text()
        );
        assert!(!pids.contains(&start.pid), "restart {n} kept pid {}", start.pid);
        pids.push(start.pid);
        assert_eq!(task_pid(&daemon, "mon-b1"), Some(start.pid));
    }
    assert_eq!(restart_count(&daemon, "mon-b1"), 4);
    let log = daemon.log_text();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restart scheduled") && l.contains("container=mon-b1"))
        .filter_map(|l| l.split("delay_ms=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(delays, ["400", "800", "1600", "3200"], "{log}");

    // Killed again, the restart waits 6.4 s: the container is deleted meanwhile, as ctr does it.
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "mon-b1"]);
    next_on(&mut events, "/tasks/exit").await;
    daemon.ctr_ok(&["tasks", "rm", "mon-b1"]);
    daemon.ctr_ok(&["containers", "rm", "mon-b1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log_text().contains("container deleted: not restarted") {
        assert!(Instant::now() < deadline, "the waiting restart did not notice the deletion:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(task_status(&daemon, "mon-b1"), None);
    assert_nothing_left(&daemon, "mon-b1");
}

#[tokio::test]
async fn restarts_racing_deletions_leave_nothing_behind() {
    if !requires_root() {
        return;
    }
    // Restarts as fast as they go.
    let daemon = Daemon::start_with(
        "[plugins.\"monitor.restart\"]\ninterval = \"200ms\"\nbackoff_base = \"0s\"\nbackoff_max = \"10ms\"\n",
    );
    daemon.ctr_ok(&["images", "import", images_fixture::busybox_archive().to_str().unwrap()]);
    let label = format!("{STATUS}=running");
    // From the image: each restart mounts the container's snapshot again. Nobody starts them: the
    // monitor's checks find them without a task.
    for id in ["mon-race1", "mon-race2"] {
        daemon.ctr_ok(&["containers", "create", "--label", &label, BUSYBOX, id, "true"]);
    }
    for id in ["mon-race1", "mon-race2"] {
        eventually(&format!("{id} restarted 5 times"), 20, || restart_count(&daemon, id) >= 5);
    }

    // As ctr deletes: the task if stopped, then the container, failing when a restart got in between.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, err) = ctr(&daemon, &["containers", "rm", "mon-race1"]);
        if code == 0 {
            break;
        }
        // What losing the race looks like to ctr: its task check and a restart crossing (a non stopped
        // container, a running task), or the task it saw stopped replaced by a new, running one (ctr's
        // own check, or berthd's).
        let lost_race = ["cannot delete", "not found", "must be stopped before deletion", "is running: kill it first"];
        assert!(lost_race.iter().any(|m| err.contains(m)), "{err}");
        refused += 1;
        assert!(Instant::now() < deadline, "ctr containers rm never got through ({refused} tries): {err}");
    }
    // Straight through the Containers API, with the task still there or being made.
    let client = daemon.client().await;
    client.containers().delete(ns_request("default", DeleteContainerRequest { id: "mon-race2".into() })).await.unwrap();

    // Several checks and restarts' worth of time: nothing comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in ["mon-race1", "mon-race2"] {
        assert_eq!(task_status(&daemon, id), None, "a task of deleted container {id} is left");
        assert_nothing_left(&daemon, id);
    }
    let containers = daemon.ctr_ok(&["containers", "ls", "-q"]);
    assert!(containers.trim().is_empty(), "{containers}");
    // ctr removed mon-race1's snapshot with it.
    let snapshots = daemon.ctr_ok(&["snapshots", "ls"]);
    assert!(!snapshots.contains("mon-race1"), "{snapshots}");
}

#[test]
fn a_labelled_container_whose_task_is_missing_is_started() {
    if !requires_root() {
        return;
    }
    let mut daemon = Daemon::start_with(FAST);
    let rootfs = daemon.busybox_rootfs();
    let label = format!("{STATUS}=running");
    // Never started by anyone: the periodic check finds no task.
    daemon.ctr_ok(&[
        "containers",
        "create",
        "--label",
        &label,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "mon-m1",
        "sleep",
        "1000",
    ]);
    eventually("mon-m1 started by the monitor", 10, || task_status(&daemon, "mon-m1").as_deref() == Some("RUNNING"));
    let pid = task_pid(&daemon, "mon-m1").unwrap();

    // berthd and the task die together, as in a reboot: at start-up the task is missing.
    daemon.kill9();
    for dir in daemon.task_dirs() {
        let reaper: i32 = std::fs::read_to_string(dir.join("reaper.pid")).unwrap().trim().parse().unwrap();
        unsafe { kill(reaper, SIGKILL) };
        unsafe { kill(pid as i32, SIGKILL) };
        ok(std::process::Command::new(BERTH_REAPER).arg("cleanup").arg(&dir).output().unwrap(), "berth-reaper cleanup");
    }
    assert!(daemon.task_dirs().is_empty());
    daemon.spawn();
    eventually("mon-m1 started again after the restart", 10, || {
        task_status(&daemon, "mon-m1").as_deref() == Some("RUNNING")
    });
    assert_ne!(task_pid(&daemon, "mon-m1"), Some(pid));

    daemon.ctr_ok(&["containers", "label", "mon-m1", &format!("{STATUS}=stopped")]);
    // A running task labelled stopped is killed and removed by the next check.
    eventually("mon-m1 stopped by the monitor", 10, || task_status(&daemon, "mon-m1").is_none());
    daemon.ctr_ok(&["containers", "rm", "mon-m1"]);
    assert_nothing_left(&daemon, "mon-m1");
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Runs `tail /dev/zero` under a 32 MiB limit with `ctr run --rm` and returns the topics of the
/// task events that follow, until its task is deleted and half a second more.
async fn oom_run(daemon: &Daemon, id: &str) -> Vec<String> {
    let mut events = daemon.subscribe(&["topic~=^/tasks/"]).await;
    let rootfs = daemon.busybox_rootfs();
    let fifo = daemon.fifo_dir();
    let (code, _, err) = ctr(
        daemon,
        &[
            "run",
            "--rm",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--memory-limit",
            "33554432",
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
            "sh",
            "-c",
            "tail /dev/zero",
        ],
    );
    assert_eq!(code, 137, "{err}");
    let mut topics = Vec::new();
    while !topics.iter().any(|t| t == "/tasks/delete") {
        let envelope = tokio::time::timeout(Duration::from_secs(30), events.message()).await;
        topics.push(envelope.expect("no task event within 30 s").unwrap().expect("event stream ended").topic);
    }
    // An OOM notice that came late would show here.
    while let Ok(Ok(Some(envelope))) = tokio::time::timeout(Duration::from_millis(500), events.message()).await {
        topics.push(envelope.topic);
    }
    topics
}

/// `ctr run -d` of a sleeping task, its `ctr tasks metrics`, then kill and removal.
fn metrics_of_a_running_task(daemon: &Daemon, id: &str) -> String {
    let rootfs = daemon.busybox_rootfs();
    daemon.ctr_ok(&[
        "run",
        "--null-io",
        "-d",
        "--memory-limit",
        "67108864",
        "--rootfs",
        rootfs.to_str().unwrap(),
        id,
        "sleep",
        "1000",
    ]);
    let metrics = daemon.ctr_ok(&["tasks", "metrics", id]);
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]);
    eventually("task stopped", 10, || task_status(daemon, id).as_deref() == Some("STOPPED"));
    daemon.ctr_ok(&["tasks", "rm", id]);
    daemon.ctr_ok(&["containers", "rm", id]);
    assert_nothing_left(daemon, id);
    metrics
}

#[tokio::test]
async fn an_oom_kill_is_one_event_and_metrics_come_from_the_cgroup() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let topics = oom_run(&daemon, "mon-oom1").await;
    let ooms = topics.iter().filter(|t| *t == "/tasks/oom").count();
    assert_eq!(ooms, 1, "{topics:?}\n{}", daemon.log_text());
    assert!(topics.contains(&"/tasks/exit".to_string()), "{topics:?}");
    assert_nothing_left(&daemon, "mon-oom1");

    let metrics = metrics_of_a_running_task(&daemon, "mon-met1");
    assert!(metrics.contains("memory.usage_in_bytes") && metrics.contains("pids.current"), "{metrics}");
    if Path::new("/sys/fs/cgroup/memory").exists() {
        let limit = metrics.lines().find(|l| l.starts_with("memory.limit_in_bytes")).unwrap_or_default();
        assert!(limit.contains("67108864"), "{metrics}");
    }
    let log = daemon.log_text();
    assert!(log.contains("monitors=[\"cgroups\", \"restart\"]"), "{log}");
    // The figures came from monitor.cgroups, not from the runtime after it failed.
    assert!(!log.contains("monitor has no stats"), "{log}");
}

#[tokio::test]
async fn without_monitors_no_oom_event_and_metrics_from_the_runtime() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start_with("[plugins.\"service.tasks\"]\nmonitors = []\n");
    let topics = oom_run(&daemon, "mon-oom2").await;
    assert!(!topics.contains(&"/tasks/oom".to_string()), "published without monitor.cgroups: {topics:?}");
    assert!(topics.contains(&"/tasks/exit".to_string()), "{topics:?}");
    let metrics = metrics_of_a_running_task(&daemon, "mon-met2");
    assert!(metrics.contains("memory.usage_in_bytes") && metrics.contains("pids.current"), "{metrics}");
    assert!(daemon.log_text().contains("monitors=[]"), "{}", daemon.log_text());
}

#[test]
fn a_failing_monitor_does_not_break_task_creation() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start_with(FAST);
    let rootfs = daemon.busybox_rootfs();
    let fifo = daemon.fifo_dir();
    let label = format!("{STATUS}=running");
    // The restart monitor refuses a policy it does not know: its call fails, the task runs.
    let (code, out, err) = ctr(
        &daemon,
        &[
            "run",
            "--rm",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--label",
            &label,
            "--label",
            "containerd.io/restart.policy=bogus",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "mon-f1",
            "echo",
            "still-runs",
        ],
    );
    assert_eq!((code, out.trim()), (0, "still-runs"), "{err}");
    let log = daemon.log_text();
    let failure = log.lines().find(|l| l.contains("monitor call failed")).unwrap_or_else(|| panic!("{log}"));
    assert!(failure.contains("monitor=restart") && failure.contains("restart.policy"), "{failure}");
    assert_nothing_left(&daemon, "mon-f1");
}
