//! Tasks on the built-in Linux runtime: real containers (busybox) run through `ctr` and the containerd-client
//! crate, as root. Every test checks that nothing is left behind: task directory, runtime state, cgroup,
//! mounts, reaper process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::*;

use crate::harness::*;

/// Runs `ctr -a SOCK args` and returns (exit code, stdout, stderr).
fn ctr(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = daemon.ctr(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctr` on the daemon's socket, to be given the rest of its arguments and run.
fn ctr_command(daemon: &Daemon) -> Command {
    let mut command = Command::new(ctr_path());
    command.arg("-a").arg(&daemon.socket);
    command
}

/// As root, a berthd started with `extra` in its config, with a busybox root filesystem and a directory for
/// ctr's FIFOs (as the strings ctr's arguments take); None (the test skips) otherwise.
fn busybox_daemon(extra: &str) -> Option<(Daemon, String, String)> {
    if !requires_root() {
        return None;
    }
    let daemon = Daemon::start_with(extra);
    let rootfs = daemon.busybox_rootfs().to_str().unwrap().to_string();
    let fifo = daemon.fifo_dir().to_str().unwrap().to_string();
    Some((daemon, rootfs, fifo))
}

fn run_args<'a>(
    daemon_fifo: &'a str,
    rootfs: &'a str,
    extra: &[&'a str],
    id: &'a str,
    cmd: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["run", "--fifo-dir", daemon_fifo];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--rootfs", rootfs, id]);
    args.extend_from_slice(cmd);
    args
}

/// `ctr tasks exec [extra] --exec-id EXEC_ID --fifo-dir FIFO ID CMD...`.
fn exec_args<'a>(fifo: &'a str, extra: &[&'a str], exec_id: &'a str, id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["tasks", "exec"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--exec-id", exec_id, "--fifo-dir", fifo, id]);
    args.extend_from_slice(cmd);
    args
}

/// The cgroup directories a task of `ns`/`id` would have (ctr puts tasks in `/<ns>/<id>`).
fn cgroup_dirs(ns: &str, id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        dirs.push(entry.path().join(ns).join(id));
    }
    dirs.push(PathBuf::from("/sys/fs/cgroup").join(ns).join(id));
    dirs
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A reaper forked by berthd's spawner shows the spawner's command line, but works in its task's
        // directory. Zombies have an empty command line and no cwd; they hold nothing.
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(needle) || cwd.to_string_lossy().starts_with(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Asserts nothing of task `ns`/`id` remains.
fn assert_nothing_left(daemon: &Daemon, ns: &str, id: &str) {
    let state = daemon.dir.path().join("state/runtime.linux");
    let task_dir = state.join("tasks").join(ns).join(id);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The reaper exits right after answering Delete; give it a moment.
    while !processes_mentioning(&task_dir.display().to_string()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!task_dir.exists(), "task directory {} left behind", task_dir.display());
    assert!(!state.join("oci").join(ns).join(id).exists(), "runtime state of {id} left behind");
    for cg in cgroup_dirs(ns, id) {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = daemon.dir.path().display().to_string();
    assert!(!mounts.lines().any(|l| l.contains(&prefix)), "mounts left under {prefix}:\n{mounts}");
    let procs = processes_mentioning(&task_dir.display().to_string());
    assert!(procs.is_empty(), "processes of {id} left: {procs:?}");
}

/// The `berth-reaper spawner` processes that are children of `parent`.
fn spawners_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command's closing parenthesis: state, then ppid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains("berth-reaper spawner")
        {
            found.push(pid);
        }
    }
    found
}

/// The live children of `pid`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is gone or a zombie.
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"))
        .unwrap_or(true)
}

fn wait_for_status(daemon: &Daemon, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ls = daemon.ctr_ok(&["tasks", "ls"]);
        if ls.lines().any(|l| l.split_whitespace().next() == Some(id) && l.contains(want)) {
            return;
        }
        assert!(Instant::now() < deadline, "task {id} did not reach {want}:\n{ls}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs task `id`, waits until it stopped, removes task and container and checks nothing is left.
fn kill_and_remove(daemon: &Daemon, id: &str) {
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]);
    remove_stopped(daemon, id);
}

/// Waits until task `id` stopped, removes task and container and checks nothing is left.
fn remove_stopped(daemon: &Daemon, id: &str) {
    wait_for_status(daemon, id, "STOPPED");
    remove(daemon, id);
}

/// Removes task `id` and its container and checks nothing is left.
fn remove(daemon: &Daemon, id: &str) {
    daemon.ctr_ok(&["tasks", "rm", id]);
    daemon.ctr_ok(&["containers", "rm", id]);
    assert_nothing_left(daemon, "default", id);
}

#[test]
fn ctr_run_rm_reports_exit_codes_and_output() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());

    let (code, out, err) =
        ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "c1", &["sh", "-c", "echo hello; echo oops >&2; exit 3"]));
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert_eq!(out.trim(), "hello");
    assert!(err.contains("oops"), "{err}");
    assert_nothing_left(&daemon, "default", "c1");

    // The container's init is protected from signals sent inside its pid namespace, as on any Linux.
    let (code, _, err) = ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "c2", &["sh", "-c", "kill -9 $$; exit 4"]));
    assert_eq!(code, 4, "{err}");
    assert_nothing_left(&daemon, "default", "c2");

    // stdin reaches the process. (ctr never sends CloseIO, so, as with containerd, the process would not see
    // EOF: `berth run` does, tested in tasks_cli.)
    let mut child = ctr_command(&daemon)
        .args(run_args(fifo, rootfs, &["--rm"], "c3", &["sh", "-c", "read a; read b; echo got:$a:$b"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"first\nsecond\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:first:second\n");
    assert_nothing_left(&daemon, "default", "c3");

    // Only stdin, stdout and stderr are open inside: no fd of berthd or the reaper leaks in.
    let (code, out, err) =
        ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "c4", &["sh", "-c", "ls /proc/$$/fd; true"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2"], "open fds inside: {out}");
    assert_nothing_left(&daemon, "default", "c4");
}

#[test]
fn ctr_detached_task_ps_exec_pause_resume_kill_rm() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    let counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done";
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "d1", &["sh", "-c", counter]));
    wait_for_status(&daemon, "d1", "RUNNING");

    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    let pid: u32 =
        ls.lines().find(|l| l.starts_with("d1")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let ps = daemon.ctr_ok(&["tasks", "ps", "d1"]);
    assert!(ps.lines().any(|l| l.split_whitespace().next() == Some(&pid.to_string())), "{ps}");

    // exec joins every namespace: it sees the same pid namespace (init is pid 1) and hostname.
    let (code, out, err) =
        ctr(&daemon, &exec_args(fifo, &[], "e1", "d1", &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; exit 7"]));
    assert_eq!(code, 7, "{err}");
    assert!(out.contains(counter), "{out}");
    // The exec'd process was deleted by ctr: its id can be used again.
    let (code, ..) = ctr(&daemon, &exec_args(fifo, &[], "e1", "d1", &["true"]));
    assert_eq!(code, 0);

    // Pause really freezes: the counter stops moving, and moves again after resume.
    let count_file = Path::new(rootfs).join("tmp/count");
    let count = || std::fs::read_to_string(&count_file).unwrap_or_default().trim().parse::<u64>().unwrap_or(0);
    daemon.ctr_ok(&["tasks", "pause", "d1"]);
    wait_for_status(&daemon, "d1", "PAUSED");
    std::thread::sleep(Duration::from_millis(100));
    let frozen = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen, "the counter moved while paused");
    let exec_paused = fails(daemon.ctr(&exec_args(fifo, &[], "e2", "d1", &["true"])), "exec while paused");
    assert!(exec_paused.contains("paused"), "{exec_paused}");
    daemon.ctr_ok(&["tasks", "resume", "d1"]);
    wait_for_status(&daemon, "d1", "RUNNING");
    eventually("the counter moving again after resume", 5, || count() > frozen);

    // A running task cannot be deleted; a killed one can.
    let running = fails(daemon.ctr(&["tasks", "rm", "d1"]), "deleting a running task");
    assert!(running.contains("running") || running.contains("stopped"), "{running}");
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "d1"]);
    wait_for_status(&daemon, "d1", "STOPPED");
    let exec_stopped = fails(daemon.ctr(&exec_args(fifo, &[], "e3", "d1", &["true"])), "exec into a stopped task");
    assert!(exec_stopped.contains("stopped") || exec_stopped.contains("finished"), "{exec_stopped}");
    // A process killed by a signal reports 128 + signal (ctr warns with the status it got from Delete).
    let (code, _, err) = ctr(&daemon, &["tasks", "rm", "d1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exit code 137"), "{err}");
    daemon.ctr_ok(&["containers", "rm", "d1"]);
    assert_nothing_left(&daemon, "default", "d1");
}

#[test]
fn ctr_run_with_a_terminal() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    // ctr -t needs a terminal on its stdin: script(1) gives it one.
    let cmd = format!(
        "{} -a {} run -t --rm --fifo-dir {fifo} --rootfs {rootfs} t1 sh -c 'tty; test -t 0 && echo stdin-is-a-tty; exit 5'",
        ctr_path().display(),
        daemon.socket.display(),
    );
    let out = Command::new("script").args(["-eqc", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains("/dev/pts/0"), "the container's own devpts gives pts/0: {text}");
    assert!(text.contains("stdin-is-a-tty"), "{text}");
    assert_nothing_left(&daemon, "default", "t1");
}

#[test]
fn tasks_survive_a_berthd_crash() {
    let Some((mut daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "live", &["sh", "-c", "while true; do echo tick; sleep 0.1; done"]));
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "ends", &["sh", "-c", "sleep 1; exit 9"]));
    wait_for_status(&daemon, "live", "RUNNING");
    let live_pid = daemon.ctr_ok(&["tasks", "ls"]).lines().find(|l| l.starts_with("live")).unwrap().to_string();
    let spawners = spawners_of(daemon.pid());
    assert_eq!(spawners.len(), 1, "berthd keeps one reaper spawner");

    daemon.kill9();
    // The spawner sees berthd's end of its socket close and exits; the tasks it spawned stay.
    eventually(&format!("the reaper spawner {} ending with berthd", spawners[0]), 5, || gone(spawners[0]));
    // "ends" exits while berthd is down.
    std::thread::sleep(Duration::from_millis(1500));
    daemon.spawn();

    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    assert!(ls.lines().any(|l| l == live_pid), "live task not recovered as it was:\n{ls}\nwas: {live_pid}");
    assert!(ls.lines().any(|l| l.starts_with("ends") && l.contains("STOPPED")), "{ls}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = daemon.client().await;
        let mut tasks = client.tasks();
        let wait =
            tasks.wait(ns_request("default", WaitRequest { container_id: "ends".into(), exec_id: String::new() }));
        let wait =
            tokio::time::timeout(Duration::from_secs(5), wait).await.expect("wait answers").unwrap().into_inner();
        assert_eq!(wait.exit_status, 9, "the exit status of a task that ended while berthd was down");
        let got = tasks.get(ns_request("default", GetRequest { container_id: "live".into(), exec_id: String::new() }));
        let process = got.await.unwrap().into_inner().process.unwrap();
        // Its output still flows: read its stdout FIFO again.
        let stdout = PathBuf::from(process.stdout);
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(stdout).unwrap();
            let mut buf = [0u8; 64];
            let n = f.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let text = reader.join().unwrap();
        assert!(text.contains("tick"), "{text}");
    });
    // exec still works in the recovered task.
    let (code, out, err) = ctr(&daemon, &exec_args(fifo, &[], "after", "live", &["echo", "still-here"]));
    assert_eq!((code, out.trim()), (0, "still-here"), "{err}");

    for id in ["live", "ends"] {
        let _ = daemon.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        remove_stopped(&daemon, id);
    }
}

/// Tasks are created through berthd's reaper spawner; one that was killed is replaced on the next create.
#[test]
fn a_killed_reaper_spawner_is_replaced() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    let first = spawners_of(daemon.pid());
    assert_eq!(first.len(), 1, "one spawner at start-up");
    let (code, out, err) = ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "before", &["echo", "one"]));
    assert_eq!((code, out.trim()), (0, "one"), "{err}");
    assert_eq!(spawners_of(daemon.pid()), first, "the same spawner serves every create");
    // A reaper forked by the spawner works in its task directory (how berthd tells a stale reaper from a
    // reused pid) and keeps none of berthd's files open.
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "named", &["sleep", "100"]));
    let dir = daemon.task_dirs().into_iter().find(|d| d.ends_with("named")).expect("the task's directory");
    let reaper = std::fs::read_to_string(dir.join("reaper.pid")).unwrap().trim().to_string();
    assert_eq!(std::fs::read_link(format!("/proc/{reaper}/cwd")).unwrap(), dir);
    let root = daemon.dir.path().join("root");
    for p in [reaper.clone(), first[0].to_string()] {
        for fd in std::fs::read_dir(format!("/proc/{p}/fd")).unwrap().flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(!target.starts_with(&root), "process {p} keeps berthd's {} open", target.display());
        }
    }
    kill_and_remove(&daemon, "named");

    // The spawner keeps one reaper forked ahead for the next task (with none of berthd's files either). One
    // that died is not waited for: the next create forks its reaper on the spot, and a new one waits after it.
    eventually("the spawner's reapers of ended tasks gone", 5, || children_of(first[0]).len() == 1);
    let waiting = children_of(first[0]);
    for fd in std::fs::read_dir(format!("/proc/{}/fd", waiting[0])).unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert!(!target.starts_with(&root), "the waiting reaper keeps berthd's {} open", target.display());
    }
    // SAFETY: plain syscall on the waiting reaper's pid, found above.
    unsafe { kill(waiting[0] as i32, 9) };
    eventually(&format!("waiting reaper {} dying", waiting[0]), 5, || gone(waiting[0]));
    let (code, out, err) = ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "unwarmed", &["echo", "three"]));
    assert_eq!((code, out.trim()), (0, "three"), "{err}");
    eventually("a new reaper waiting", 5, || {
        let now = children_of(first[0]);
        now.len() == 1 && now != waiting
    });
    assert_eq!(spawners_of(daemon.pid()), first, "the same spawner after a waiting reaper died");
    let waiting = children_of(first[0]);

    // SAFETY: plain syscall on the spawner's pid, checked above.
    unsafe { kill(first[0] as i32, 9) };
    eventually(&format!("spawner {} dying", first[0]), 5, || gone(first[0]));
    // Its waiting reaper ends with it.
    eventually(&format!("waiting reaper {} ending with the spawner", waiting[0]), 5, || gone(waiting[0]));
    let (code, out, err) = ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], "after", &["echo", "two"]));
    assert_eq!((code, out.trim()), (0, "two"), "{err}");
    let second = spawners_of(daemon.pid());
    assert!(second.len() == 1 && second != first, "a new spawner replaces the killed one: {second:?} after {first:?}");
    assert!(daemon.log_text().contains("reaper spawner is gone"), "{}", daemon.log_text());
    assert_nothing_left(&daemon, "default", "before");
    assert_nothing_left(&daemon, "default", "unwarmed");
    assert_nothing_left(&daemon, "default", "after");
}

/// A reaper binary that cannot be a spawner (an older one at reaper_path) is found out at start-up: tasks are
/// then created by `berth-reaper create`, and work as before.
#[test]
fn without_a_spawner_tasks_are_created_by_berth_reaper_create() {
    let scripts = tempfile::Builder::new().prefix("berth-no-spawner").tempdir_in("/tmp").unwrap();
    let reaper = scripts.path().join("berth-reaper");
    std::fs::write(
        &reaper,
        format!(
            "#!/bin/sh
[ \"$1\" = spawner ] && {{ echo 'no spawner here' >&2; exit 2; }}
exec {BERTH_REAPER} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&reaper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!("[plugins.\"runtime.linux\"]\nreaper_path = \"{}\"\n", reaper.display());
    let Some((daemon, rootfs, fifo)) = busybox_daemon(&config) else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    assert!(spawners_of(daemon.pid()).is_empty());
    assert!(daemon.log_text().contains("tasks are created by berth-reaper create"), "{}", daemon.log_text());
    for id in ["first", "second"] {
        let (code, out, err) = ctr(&daemon, &run_args(fifo, rootfs, &["--rm"], id, &["echo", id]));
        assert_eq!((code, out.trim()), (0, id), "{err}");
        assert_nothing_left(&daemon, "default", id);
    }
}

#[test]
fn memory_limit_oom_is_an_event_and_exit_137() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    let events_out = daemon.dir.path().join("events.txt");
    let mut events =
        ctr_command(&daemon).arg("events").stdout(std::fs::File::create(&events_out).unwrap()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // tail keeps every line of an endless file without newlines: it grows until the limit kills it.
    let (code, _, err) = ctr(
        &daemon,
        &run_args(fifo, rootfs, &["--rm", "--memory-limit", "33554432"], "oom", &["sh", "-c", "tail /dev/zero"]),
    );
    assert_eq!(code, 137, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&events_out).unwrap_or_default();
        if text.contains("/tasks/oom") && text.contains("/tasks/delete") {
            assert!(
                text.contains("/tasks/create") && text.contains("/tasks/start") && text.contains("/tasks/exit"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no oom event:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_nothing_left(&daemon, "default", "oom");
}

/// The spec ctr generates for `ctr containers create --rootfs DIR ID CMD...`, changed by `edit`, stored with
/// Containers.Update; returns the container's spec as stored.
async fn container_with_spec(
    daemon: &Daemon,
    client: &containerd_client::Client,
    id: &str,
    cmd: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let rootfs = daemon.busybox_rootfs();
    // ctr moves anything that looks like a flag (`sh -c`) to the front: the command goes in a script.
    let script = format!("/{id}.sh");
    let quoted: Vec<String> = cmd.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    std::fs::write(rootfs.join(&script[1..]), format!("exec {}\n", quoted.join(" "))).unwrap();
    daemon.ctr_ok(&["containers", "create", "--rootfs", rootfs.to_str().unwrap(), id, "sh", &script]);
    let info: serde_json::Value = serde_json::from_str(&daemon.ctr_ok(&["containers", "info", id])).unwrap();
    let mut spec = info["Spec"].clone();
    edit(&mut spec);
    set_spec(client, id, &spec.to_string()).await;
}

/// Replaces the spec of container `id` with `json` through Containers.Update.
async fn set_spec(client: &containerd_client::Client, id: &str, json: &str) {
    let mut containers = client.containers();
    let got = containers.get(ns_request("default", GetContainerRequest { id: id.into() })).await.unwrap().into_inner();
    let mut container = got.container.unwrap();
    container.spec = Some(spec_any(json));
    let update = UpdateContainerRequest {
        container: Some(container),
        update_mask: Some(prost_types::FieldMask { paths: vec!["spec".into()] }),
    };
    containers.update(ns_request("default", update)).await.unwrap();
}

fn fifo_io(daemon: &Daemon, id: &str) -> (String, PathBuf) {
    let dir = daemon.fifo_dir().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("stdout");
    let _ = std::fs::remove_file(&out);
    let c = std::ffi::CString::new(out.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { mkfifo(c.as_ptr(), 0o600) }, 0);
    (out.to_str().unwrap().to_string(), out)
}

unsafe extern "C" {
    fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

/// Reads a FIFO until every writer closed it, on a thread (opening blocks until the task opens it).
fn read_fifo(path: PathBuf) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || std::fs::read_to_string(path).unwrap_or_default())
}

#[tokio::test]
async fn pids_limit_makes_fork_fail() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; sleep 0.2; echo started $(ls /proc | grep -c '^[0-9]')";
    container_with_spec(&daemon, &client, "pids", &["sh", "-c", script], |spec| {
        spec["linux"]["resources"]["pids"] = serde_json::json!({ "limit": 4 });
    })
    .await;
    let (stdout, path) = fifo_io(&daemon, "pids");
    let reader = read_fifo(path);
    let mut tasks = client.tasks();
    tasks
        .create(ns_request(
            "default",
            CreateTaskRequest {
                container_id: "pids".into(),
                stdout: stdout.clone(),
                stderr: stdout,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    tasks
        .start(ns_request("default", StartRequest { container_id: "pids".into(), exec_id: String::new() }))
        .await
        .unwrap();
    let wait = tasks.wait(ns_request("default", WaitRequest { container_id: "pids".into(), exec_id: String::new() }));
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("task ends").unwrap();
    let out = reader.join().unwrap();
    assert!(out.contains("can't fork") || out.contains("Resource temporarily unavailable"), "fork did not fail: {out}");
    tasks.delete(ns_request("default", DeleteTaskRequest { container_id: "pids".into() })).await.unwrap();
    daemon.ctr_ok(&["containers", "rm", "pids"]);
    assert_nothing_left(&daemon, "default", "pids");
}

/// Once init's exit has been announced, its state is answered by berthd alone: a reaper that cannot answer
/// (stopped here) does not hold up Tasks.Get or Wait, which clients call right after the exit.
#[tokio::test]
async fn a_stopped_task_is_answered_without_its_reaper() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let client = daemon.client().await;
    container_with_spec(&daemon, &client, "stopped", &["sh", "-c", "exit 7"], |_| {}).await;
    let mut exits = client
        .events()
        .subscribe(SubscribeRequest { filters: vec!["topic==/tasks/exit".into()] })
        .await
        .unwrap()
        .into_inner();
    let mut tasks = client.tasks();
    let create = CreateTaskRequest { container_id: "stopped".into(), ..Default::default() };
    let pid = tasks.create(ns_request("default", create)).await.unwrap().into_inner().pid;
    tasks
        .start(ns_request("default", StartRequest { container_id: "stopped".into(), exec_id: String::new() }))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), exits.message()).await.expect("an exit event");
    assert_eq!(exit.unwrap().unwrap().topic, "/tasks/exit");

    let dir = daemon.task_dirs().into_iter().find(|d| d.ends_with("stopped")).expect("the task's directory");
    let reaper: i32 = std::fs::read_to_string(dir.join("reaper.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: plain syscalls on the task's reaper, found above; it is continued below whatever happens.
    unsafe { libc::kill(reaper, libc::SIGSTOP) };
    let get = GetRequest { container_id: "stopped".into(), exec_id: String::new() };
    let get = tokio::time::timeout(Duration::from_secs(5), tasks.get(ns_request("default", get))).await;
    let wait = WaitRequest { container_id: "stopped".into(), exec_id: String::new() };
    let waited = tokio::time::timeout(Duration::from_secs(5), tasks.wait(ns_request("default", wait))).await;
    unsafe { libc::kill(reaper, libc::SIGCONT) };
    let process = get.expect("Tasks.Get answers without the reaper").unwrap().into_inner().process.unwrap();
    assert_eq!(
        (process.status, process.exit_status, process.pid),
        (containerd_client::types::v1::Status::Stopped as i32, 7, pid)
    );
    assert!(process.exited_at.is_some(), "{process:?}");
    assert_eq!(waited.expect("Wait answers without the reaper").unwrap().into_inner().exit_status, 7);

    tasks.delete(ns_request("default", DeleteTaskRequest { container_id: "stopped".into() })).await.unwrap();
    daemon.ctr_ok(&["containers", "rm", "stopped"]);
    assert_nothing_left(&daemon, "default", "stopped");
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    let client = daemon.client().await;
    let mut tasks = client.tasks();
    let create = |id: &str| ns_request("default", CreateTaskRequest { container_id: id.into(), ..Default::default() });

    // No such container.
    let e = tasks.create(create("nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // A spec that is not JSON.
    container_with_spec(&daemon, &client, "badjson", &["true"], |_| {}).await;
    set_spec(&client, "badjson", "{not json").await;
    let e = tasks.create(create("badjson")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("spec"), "{e:?}");
    assert_nothing_left(&daemon, "default", "badjson");

    // A root filesystem that does not exist.
    container_with_spec(&daemon, &client, "noroot", &["true"], |spec| {
        spec["root"]["path"] = "/nonexistent/rootfs".into()
    })
    .await;
    let e = tasks.create(create("noroot")).await.unwrap_err();
    assert!(e.message().contains("/nonexistent/rootfs"), "{e:?}");
    assert_nothing_left(&daemon, "default", "noroot");

    // An unknown namespace type.
    container_with_spec(&daemon, &client, "badns", &["true"], |spec| {
        spec["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({ "type": "bogus" }));
    })
    .await;
    let e = tasks.create(create("badns")).await.unwrap_err();
    assert!(e.message().contains("bogus"), "{e:?}");
    assert_nothing_left(&daemon, "default", "badns");

    // A duplicate task, and a signal that is not one.
    container_with_spec(&daemon, &client, "dup", &["sleep", "100"], |_| {}).await;
    tasks.create(create("dup")).await.unwrap();
    let e = tasks.create(create("dup")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let kill = KillRequest { container_id: "dup".into(), signal: 4096, ..Default::default() };
    let e = tasks.kill(ns_request("default", kill)).await.unwrap_err();
    assert!(e.message().contains("4096") || e.message().contains("signal"), "{e:?}");
    let bad_sig = fails(daemon.ctr(&["tasks", "kill", "-s", "SIGNOPE", "dup"]), "a bad signal name");
    assert!(bad_sig.contains("SIGNOPE") || bad_sig.contains("signal"), "{bad_sig}");
    // Checkpoint needs CRIU, which berth does not have yet: the error says so.
    let no_criu = fails(daemon.ctr(&["tasks", "checkpoint", "dup"]), "checkpoint");
    assert!(no_criu.contains("CRIU"), "{no_criu}");
    // Deleting a created (never started) task kills its waiting init, as containerd does.
    tasks.delete(ns_request("default", DeleteTaskRequest { container_id: "dup".into() })).await.unwrap();
    assert_nothing_left(&daemon, "default", "dup");
    for id in ["badjson", "noroot", "badns", "dup"] {
        daemon.ctr_ok(&["containers", "rm", id]);
    }

    // A runtime name that config.toml does not map and no plugin has.
    let args = run_args(fifo, rootfs, &["--rm", "--runtime", "io.containerd.nope.v1"], "noruntime", &["true"]);
    let no_runtime = fails(daemon.ctr(&args), "an unknown runtime");
    assert!(no_runtime.contains("io.containerd.nope.v1") && no_runtime.contains("not found"), "{no_runtime}");
    assert_nothing_left(&daemon, "default", "noruntime");
}

#[test]
fn a_wedged_reaper_does_not_stall_recovery() {
    let config = "[plugins.\"runtime.linux\"]\nrecovery_timeout_ms = 300\n";
    let Some((mut daemon, rootfs, fifo)) = busybox_daemon(config) else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "wedged", &["sleep", "1000"]));
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d"], "fine", &["sleep", "1000"]));
    let task_dir = daemon.dir.path().join("state/runtime.linux/tasks/default/wedged");
    let reaper: i32 = std::fs::read_to_string(task_dir.join("reaper.pid")).unwrap().trim().parse().unwrap();
    // The reaper stops answering, then berthd crashes and comes back.
    assert_eq!(unsafe { kill(reaper, SIGSTOP) }, 0);
    daemon.kill9();
    daemon.spawn();
    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("fine") && l.contains("RUNNING")), "{ls}");
    assert!(ls.lines().any(|l| l.starts_with("wedged") && l.contains("UNKNOWN")), "{ls}");
    assert!(daemon.log_text().contains("reported stopped"), "the log says why:\n{}", daemon.log_text());
    // Deleting the unknown task removes it all, the wedged reaper and its container included.
    remove(&daemon, "wedged");
    assert!(gone(reaper as u32), "the wedged reaper {reaper} was left behind");
    kill_and_remove(&daemon, "fine");
}

const SIGSTOP: i32 = 19;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test]
async fn metrics_and_update_of_a_running_task() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());
    daemon.ctr_ok(&run_args(fifo, rootfs, &["-d", "--memory-limit", "67108864"], "m1", &["sleep", "1000"]));
    let metrics = daemon.ctr_ok(&["tasks", "metrics", "m1"]);
    assert!(metrics.contains("memory.usage_in_bytes") && metrics.contains("pids.current"), "{metrics}");
    let limit_line = metrics.lines().find(|l| l.starts_with("memory.limit_in_bytes")).unwrap_or_default().to_string();
    let hybrid_or_v1 = Path::new("/sys/fs/cgroup/memory").exists();
    if hybrid_or_v1 {
        assert!(limit_line.contains("67108864"), "{metrics}");
    }

    // Update changes the limit of the running task, as the host's cgroup shows.
    let client = daemon.client().await;
    let update = |type_url: &str, resources: &str| {
        let resources = Some(prost_types::Any { type_url: type_url.into(), value: resources.as_bytes().to_vec() });
        ns_request("default", UpdateTaskRequest { container_id: "m1".into(), resources, ..Default::default() })
    };
    let resources = serde_json::json!({ "memory": { "limit": 134217728 }, "pids": { "limit": 50 } });
    let linux_resources = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
    client.tasks().update(update(linux_resources, &resources.to_string())).await.unwrap();
    let (memory, pids) = if hybrid_or_v1 {
        ("/sys/fs/cgroup/memory/default/m1/memory.limit_in_bytes", "/sys/fs/cgroup/pids/default/m1/pids.max")
    } else {
        ("/sys/fs/cgroup/default/m1/memory.max", "/sys/fs/cgroup/default/m1/pids.max")
    };
    assert_eq!(std::fs::read_to_string(memory).unwrap().trim(), "134217728");
    assert_eq!(std::fs::read_to_string(pids).unwrap().trim(), "50");
    // A bad update is refused with what was wrong, and the limits stay.
    let e = client.tasks().update(update("x", r#"{"memory": {"limit": "lots"}}"#)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("resources"), "{e:?}");
    assert_eq!(std::fs::read_to_string(memory).unwrap().trim(), "134217728");

    // An exec'd process gets only stdin, stdout and stderr too.
    let (code, out, err) = ctr(&daemon, &exec_args(fifo, &[], "fds", "m1", &["sh", "-c", "ls /proc/$$/fd; true"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2"], "open fds in exec: {out}");

    kill_and_remove(&daemon, "m1");
}

#[test]
fn kill_all_exec_in_the_cgroup_and_no_sigpipe_when_the_client_leaves() {
    let Some((daemon, rootfs, fifo)) = busybox_daemon("") else { return };
    let (rootfs, fifo) = (rootfs.as_str(), fifo.as_str());

    // ctr -d leaves at once: nobody reads the output any more, and the writer must not die of SIGPIPE.
    daemon.ctr_ok(&run_args(
        fifo,
        rootfs,
        &["-d"],
        "chatty",
        &["sh", "-c", "while true; do echo lots of output; done"],
    ));
    std::thread::sleep(Duration::from_millis(500));
    wait_for_status(&daemon, "chatty", "RUNNING");

    // An exec'd process runs in the task's cgroup: ListPids sees it, with its exec id.
    daemon.ctr_ok(&exec_args(fifo, &["-d"], "bg", "chatty", &["sleep", "1000"]));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ps = daemon.ctr_ok(&["tasks", "ps", "chatty"]);
        if ps.contains("bg") {
            break;
        }
        assert!(Instant::now() < deadline, "exec'd process not listed with its exec id:\n{ps}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // SIGTERM: init (pid 1 of its namespace, no handler) ignores it; with --all the exec'd sleep gets it too.
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGTERM", "chatty"]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(daemon.ctr_ok(&["tasks", "ps", "chatty"]).contains("bg"), "without --all only init is signalled");
    daemon.ctr_ok(&["tasks", "kill", "--all", "-s", "SIGTERM", "chatty"]);
    eventually("--all reaching the exec'd process", 5, || !daemon.ctr_ok(&["tasks", "ps", "chatty"]).contains("bg"));
    wait_for_status(&daemon, "chatty", "RUNNING");
    daemon.ctr_ok(&["tasks", "kill", "--all", "-s", "SIGKILL", "chatty"]);
    remove_stopped(&daemon, "chatty");
}
