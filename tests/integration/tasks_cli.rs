//! The `berth` task commands (run, exec, kill, stop, ps, pause, resume, attach, tasks) against a
//! berthd that runs containers: busybox root filesystems, real processes, real exit statuses.
//! Every test checks that nothing is left behind: no task, no container, no FIFO.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Longest a berth command may take here before the test calls it hung.
const HANG: Duration = Duration::from_secs(60);

/// A busybox root filesystem beside the daemon's directories, with a user and a group to resolve.
fn busybox_rootfs(daemon: &Daemon) -> PathBuf {
    let root = daemon.dir.path().join("busybox-cli");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "/bin/busybox missing: install Debian's busybox-static");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\nbob:x:1000:1001::/tmp:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nbob:x:1001:\nstaff:x:50:\n").unwrap();
    root
}

struct Env {
    daemon: Daemon,
    rootfs: PathBuf,
    fifos: PathBuf,
}

impl Env {
    fn new() -> Env {
        let daemon = Daemon::start();
        let rootfs = busybox_rootfs(&daemon);
        let fifos = daemon.dir.path().join("fifo");
        Env { daemon, rootfs, fifos }
    }

    fn rootfs(&self) -> &str {
        self.rootfs.to_str().unwrap()
    }

    fn fifo_dir(&self) -> &str {
        self.fifos.to_str().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BERTH);
        cmd.arg("--address").arg(&self.daemon.socket).args(args).env_remove("BERTH_NAMESPACE");
        cmd
    }

    /// Runs berth with `stdin` as its input, failing the test if it hangs.
    fn berth_in(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running berth");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = wait_output(child, &format!("berth {}", args.join(" ")));
        writer.join().unwrap();
        out
    }

    fn berth(&self, args: &[&str]) -> Output {
        self.berth_in(args, b"")
    }

    fn berth_ok(&self, args: &[&str]) -> String {
        ok(self.berth(args), &format!("berth {}", args.join(" ")))
    }

    /// `berth run --rm --fifo-dir ... ROOTFS ID CMD...` with `flags` before the rootfs.
    fn run(&self, flags: &[&str], id: &str, cmd: &[&str], stdin: &[u8]) -> Output {
        let mut args = vec!["run", "--fifo-dir", self.fifo_dir()];
        args.extend_from_slice(flags);
        args.push(self.rootfs());
        args.push(id);
        args.extend_from_slice(cmd);
        self.berth_in(&args, stdin)
    }

    /// A detached task running `script`.
    fn detached(&self, id: &str, script: &str) {
        let out = self.run(&["-d"], id, &["sh", "-c", script], b"");
        let stdout = ok(out, &format!("berth run -d {id}"));
        assert_eq!(stdout, "", "run -d prints nothing");
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let json: serde_json::Value =
            serde_json::from_str(&self.berth_ok(&["--format", "json", "tasks", "ls"])).unwrap();
        json.as_array().unwrap().iter().find(|t| t["id"] == id).map(|t| t["status"].as_str().unwrap().to_string())
    }

    /// No task, no container, no FIFO (in any namespace the test used).
    fn assert_clean(&self, namespaces: &[&str]) {
        for ns in namespaces {
            let tasks = self.berth_ok(&["-n", ns, "tasks", "ls", "-q"]);
            assert_eq!(tasks, "", "tasks left in {ns}");
            let containers = self.berth_ok(&["-n", ns, "containers", "ls", "-q"]);
            assert_eq!(containers, "", "containers left in {ns}");
        }
        let left: Vec<_> = match std::fs::read_dir(&self.fifos) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        assert!(left.is_empty(), "FIFOs left: {left:?}");
    }
}

fn wait_output(mut child: Child, what: &str) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = wait_deadline(&mut child, what);
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn wait_deadline(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `cond` until it holds; for states that follow an asynchronous exit.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_prints_output_and_exits_with_the_status() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--rm", "--rootfs"], "t1", &["/bin/echo", "hello"], b"");
    assert_eq!(text(&ok(out, "run echo").into_bytes()), "hello\n");

    let out = env.run(&["--rm"], "t1", &["sh", "-c", "exit 3"], b"");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));

    let out = env.run(&["--rm"], "t1", &["sh", "-c", "echo out; echo err >&2; exit 0"], b"");
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    // Without --rm the task is deleted and the container stays.
    let out = env.run(&[], "kept", &["/bin/true"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.berth_ok(&["tasks", "ls", "-q"]), "");
    assert_eq!(env.berth_ok(&["containers", "ls", "-q"]), "kept\n");
    env.berth_ok(&["containers", "rm", "kept"]);
    env.assert_clean(&["default"]);
}

#[test]
fn run_copies_stdin_and_closes_it_at_eof() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--rm"], "cat", &["cat"], b"abc\n");
    assert_eq!(ok(out, "run cat"), "abc\n");

    // More than a pipe's buffer each way; all of it arrives before the EOF that CloseIO gives.
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let out = env.run(&["--rm"], "cat", &["cat"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "output differs from input");

    let out = env.run(&["--rm"], "wc", &["wc", "-l"], &input);
    assert_eq!(ok(out, "run wc").trim(), "200000");
    env.assert_clean(&["default"]);
}

#[test]
fn run_builds_ctrs_spec_with_the_options() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    // The same container made by ctr and by berth: the specs differ only where ctr's `run`
    // differs from its `containers create` (cpu shares) and in what berth adds (PATH).
    env.daemon.ctr_ok(&["-n", "specs", "containers", "create", "--rootfs", env.rootfs(), "byctr", "/bin/true"]);
    let out = env.run(&["-n", "specs"], "byberth", &["/bin/true"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec = |id: &str| -> serde_json::Value {
        serde_json::from_str(&env.berth_ok(&["-n", "specs", "containers", "info", "--spec", id])).unwrap()
    };
    let (mut ctr, mut berth) = (spec("byctr"), spec("byberth"));
    assert_eq!(berth["linux"]["cgroupsPath"], "/specs/byberth");
    assert_eq!(berth["linux"]["resources"]["cpu"]["shares"], 1024);
    assert_eq!(
        berth["process"]["env"],
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    for spec in [&mut ctr, &mut berth] {
        spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        spec["linux"]["resources"].as_object_mut().unwrap().remove("cpu");
        spec["process"].as_object_mut().unwrap().remove("env");
    }
    assert_eq!(berth, ctr);
    env.berth_ok(&["-n", "specs", "containers", "rm", "byctr", "byberth"]);

    let out = env.run(
        &[
            "--rm",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--user",
            "bob",
            "--label",
            "app=web",
            "--memory-limit",
            "67108864",
            "--pids-limit",
            "32",
        ],
        "opts",
        &["sh", "-c", "echo $FOO; pwd; id -u; id -g; echo $PATH"],
        b"",
    );
    assert_eq!(
        ok(out, "run with options"),
        "bar\n/tmp\n1000\n1001\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let out = env.run(&["--rm", "--user", "7:50"], "opts", &["sh", "-c", "id -u; id -g"], b"");
    assert_eq!(ok(out, "run --user 7:50"), "7\n50\n");

    // The labels, limits and runtime land in the record of a kept container.
    let out = env.run(
        &["--label", "app=web", "--memory-limit", "67108864", "--pids-limit", "32"],
        "rec",
        &["/bin/true"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_str(&env.berth_ok(&["containers", "info", "rec"])).unwrap();
    assert_eq!(info["labels"]["app"], "web");
    assert_eq!(info["runtime"]["name"], "io.containerd.runc.v2");
    assert_eq!(info["spec"]["annotations"]["app"], "web");
    assert_eq!(info["spec"]["linux"]["resources"]["memory"]["limit"], 67108864);
    assert_eq!(info["spec"]["linux"]["resources"]["pids"]["limit"], 32);
    assert_eq!(info["spec"]["root"]["path"], env.rootfs());
    env.berth_ok(&["containers", "rm", "rec"]);
    env.assert_clean(&["default", "specs"]);
}

#[test]
fn run_errors_say_what_was_wrong() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let file = env.rootfs.join("etc/passwd");
    let err = fails(env.berth(&["run", "--rm", file.to_str().unwrap(), "x", "/bin/true"]), "run on a file");
    assert!(err.contains("not a directory") && err.contains("images are not supported"), "{err}");
    let err = fails(env.berth(&["run", "--rm", "/nonexistent/rootfs", "x", "/bin/true"]), "run on nothing");
    assert!(err.contains("/nonexistent/rootfs"), "{err}");
    let err = fails(env.berth(&["run", "--rm", env.rootfs(), "x"]), "run without a command");
    assert!(err.contains("no command"), "{err}");
    let err = fails(env.berth(&["run", "--rm", "-d", env.rootfs(), "x", "/bin/true"]), "--rm with -d");
    assert!(err.contains("--rm") && err.contains("--detach"), "{err}");
    let err = fails(env.berth(&["run", "--rm", "--user", "alice", env.rootfs(), "x", "/bin/true"]), "unknown user");
    assert!(err.contains("alice"), "{err}");

    // A process that cannot start: the server's reason, and --rm still cleans up.
    let out = env.run(&["--rm"], "bad", &["/nonexistent"], b"");
    let err = fails(out, "run of a missing binary");
    assert!(err.contains("bad") && err.contains("/nonexistent"), "{err}");

    // The id is taken.
    env.berth_ok(&["run", "--fifo-dir", env.fifo_dir(), env.rootfs(), "dup", "/bin/true"]);
    let err = fails(env.run(&[], "dup", &["/bin/true"], b""), "run of an existing id");
    assert!(err.contains("dup") && err.contains("already exists"), "{err}");
    env.berth_ok(&["containers", "rm", "dup"]);

    for args in [
        &["ps", "nosuch"][..],
        &["pause", "nosuch"],
        &["resume", "nosuch"],
        &["attach", "nosuch"],
        &["stop", "nosuch"],
        &["kill", "nosuch"],
        &["exec", "nosuch", "/bin/true"],
    ] {
        let err = fails(env.berth(args), &args.join(" "));
        assert!(err.contains("nosuch") && err.contains("not found"), "{args:?}: {err}");
    }
    env.assert_clean(&["default"]);
}

#[test]
fn kill_rejects_a_bad_signal_before_any_call() {
    // No daemon at all: a call would fail with a connection error instead.
    for args in [&["kill", "-s", "FOO", "x"][..], &["stop", "--signal", "SIGNOPE", "x"]] {
        let out = Command::new(BERTH).args(["--address", "/nonexistent/berth.sock"]).args(args).output().unwrap();
        let err = fails(out, &args.join(" "));
        assert!(err.contains("unknown signal") && !err.contains("connect"), "{err}");
    }
}

#[test]
fn detached_task_ps_exec_pause_resume_kill() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    env.detached("d1", "while true; do sleep 0.1; done");
    let ls = env.berth_ok(&["tasks", "ls"]);
    let mut lines = ls.lines();
    assert_eq!(lines.next().unwrap().split_whitespace().collect::<Vec<_>>(), ["TASK", "PID", "STATUS"]);
    let row: Vec<_> = lines.next().unwrap_or_else(|| panic!("{ls}")).split_whitespace().collect();
    assert_eq!((row[0], row[2]), ("d1", "RUNNING"), "{ls}");
    let pid: u32 = row[1].parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "task pid {pid} is not a process");
    assert_eq!(env.berth_ok(&["t", "ls", "-q"]), "d1\n");

    let ps = env.berth_ok(&["ps", "d1"]);
    assert!(ps.starts_with("PID"), "{ps}");
    assert!(ps.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [pid.to_string().as_str(), "-"]), "{ps}");

    // exec: output, exit status, and the process is gone afterwards.
    let out = env.berth(&["exec", "--fifo-dir", env.fifo_dir(), "d1", "sh", "-c", "echo in exec; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in exec\n");
    let out = env.berth_in(&["exec", "--fifo-dir", env.fifo_dir(), "--exec-id", "e2", "d1", "cat"], b"via exec\n");
    assert_eq!(ok(out, "exec cat"), "via exec\n");

    // A detached exec shows in ps under its id; killing it by exec id leaves the task running.
    env.berth_ok(&["exec", "-d", "--fifo-dir", env.fifo_dir(), "--exec-id", "ex1", "d1", "sleep", "1000"]);
    let ps: serde_json::Value = serde_json::from_str(&env.berth_ok(&["--format", "json", "ps", "d1"])).unwrap();
    assert!(ps.as_array().unwrap().iter().any(|p| p["exec_id"] == "ex1"), "{ps}");
    assert!(env.berth_ok(&["ps", "d1"]).lines().any(|l| l.ends_with(" ex1")));
    env.berth_ok(&["kill", "--exec-id", "ex1", "-s", "KILL", "d1"]);
    eventually("ex1 exits", || !env.berth_ok(&["ps", "d1"]).contains("ex1"));
    env.berth_ok(&["tasks", "rm", "--exec-id", "ex1", "d1"]);
    assert_eq!(env.task_status("d1").as_deref(), Some("RUNNING"));

    env.berth_ok(&["pause", "d1"]);
    assert_eq!(env.task_status("d1").as_deref(), Some("PAUSED"));
    env.berth_ok(&["resume", "d1"]);
    assert_eq!(env.task_status("d1").as_deref(), Some("RUNNING"));

    // A running task cannot be deleted, says the server.
    let err = fails(env.berth(&["tasks", "rm", "d1"]), "rm of a running task");
    assert!(err.contains("d1"), "{err}");

    env.berth_ok(&["kill", "-s", "SIGKILL", "d1"]);
    eventually("d1 stops", || env.task_status("d1").as_deref() == Some("STOPPED"));
    let json: serde_json::Value = serde_json::from_str(&env.berth_ok(&["--format", "json", "tasks", "ls"])).unwrap();
    assert_eq!(json[0]["exit_status"], 137);
    env.berth_ok(&["tasks", "rm", "d1"]);
    env.berth_ok(&["containers", "rm", "d1"]);

    // kill --all reaches every process, and rm -f kills first.
    env.detached("d2", "sleep 1000 & sleep 1000");
    env.berth_ok(&["kill", "--all", "-s", "9", "d2"]);
    eventually("d2 stops", || env.task_status("d2").as_deref() == Some("STOPPED"));
    env.berth_ok(&["tasks", "rm", "d2"]);
    env.berth_ok(&["containers", "rm", "d2"]);
    env.detached("d2", "sleep 1000");
    env.berth_ok(&["tasks", "rm", "-f", "d2"]);
    env.berth_ok(&["containers", "rm", "d2"]);
    env.assert_clean(&["default"]);
}

#[test]
fn stop_signals_then_kills_and_deletes_the_task() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    // A shell as PID 1 with a TERM handler exits on the signal.
    env.detached("polite", "trap 'exit 0' TERM; while true; do sleep 0.1; done");
    assert_eq!(env.berth_ok(&["stop", "polite"]), "0\n");
    assert_eq!(env.task_status("polite"), None, "stop deletes the task");

    // PID 1 without a handler ignores TERM: SIGKILL after the timeout.
    env.detached("stubborn", "while true; do sleep 0.1; done");
    let json: serde_json::Value =
        serde_json::from_str(&env.berth_ok(&["--format", "json", "stop", "-t", "1", "stubborn"])).unwrap();
    assert_eq!(json["id"], "stubborn");
    assert_eq!(json["exit_status"], 137);

    // The signal can be chosen, and a paused task is stopped too.
    env.detached("usr", "trap 'exit 12' USR1; while true; do sleep 0.1; done");
    env.berth_ok(&["pause", "usr"]);
    assert_eq!(env.berth_ok(&["stop", "-s", "USR1", "usr"]), "12\n");

    env.berth_ok(&["containers", "rm", "polite", "stubborn", "usr"]);
    env.assert_clean(&["default"]);
}

#[test]
fn attach_reopens_a_detached_tasks_fifos() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    env.detached("a1", "echo before; read line; echo got $line; echo to stderr >&2; exit 4");
    let out = env.berth_in(&["attach", "a1"], b"hello\n");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\ngot hello\n");
    assert_eq!(text(&out.stderr), "to stderr\n");
    env.berth_ok(&["tasks", "rm", "a1"]);
    env.berth_ok(&["containers", "rm", "a1"]);
    env.assert_clean(&["default"]);
}

#[test]
fn run_forwards_signals_to_the_task() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    for (signal, name, code) in [(SIGTERM, "TERM", 9), (SIGINT, "INT", 8)] {
        let script = format!("trap 'echo got {name}; exit {code}' {name}; echo ready; while true; do sleep 0.1; done");
        let mut child = env
            .command(&["run", "--rm", "--fifo-dir", env.fifo_dir(), env.rootfs(), "sig", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !text(&seen).contains("ready") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "berth ended before the task was ready: {}", text(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        stdout.read_to_end(&mut seen).unwrap();
        let status = wait_deadline(&mut child, "run with a signal");
        assert_eq!(status.code(), Some(code), "{name}");
        assert_eq!(text(&seen), format!("ready\ngot {name}\n"));
    }
    env.assert_clean(&["default"]);
}

/// A pty pair: berth gets the slave as its stdin/stdout/stderr, the test reads and writes the master.
struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Pty {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every slave descriptor is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty { master, slave, seen }
    }

    fn spawn(self, mut cmd: Command) -> (Child, std::fs::File, Arc<Mutex<Vec<u8>>>) {
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child =
            cmd.stdin(stdio(&self.slave)).stdout(stdio(&self.slave)).stderr(stdio(&self.slave)).spawn().unwrap();
        drop(self.slave);
        (child, self.master, self.seen)
    }

    fn resize(master: &std::fs::File, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
    }
}

fn wait_for_text(seen: &Arc<Mutex<Vec<u8>>>, needle: &str) {
    eventually(&format!("{needle:?} on the terminal"), || text(&seen.lock().unwrap()).contains(needle));
}

#[test]
fn run_tty_uses_raw_mode_and_follows_the_window_size() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let pty = Pty::open(40, 100);
    let cmd = env.command(&["run", "--rm", "-t", "--fifo-dir", env.fifo_dir(), env.rootfs(), "tty1", "sh"]);
    let (mut child, mut master, seen) = pty.spawn(cmd);
    master.write_all(b"stty size; echo TERM=$TERM\r").unwrap();
    wait_for_text(&seen, "40 100");
    wait_for_text(&seen, "TERM=xterm");
    Pty::resize(&master, 30, 90);
    unsafe { libc::kill(child.id() as i32, libc::SIGWINCH) };
    eventually("the new size reaches the task", || {
        master.write_all(b"stty size\r").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        text(&seen.lock().unwrap()).contains("30 90")
    });
    // Raw mode: ^C is a byte for the container's terminal, not a signal that ends berth.
    master.write_all(b"\x03").unwrap();
    master.write_all(b"echo still here\r").unwrap();
    wait_for_text(&seen, "still here\r\n");
    master.write_all(b"exit 7\r").unwrap();
    let status = wait_deadline(&mut child, "run -t");
    assert_eq!(status.code(), Some(7), "{}", text(&seen.lock().unwrap()));

    // A detached tty task, attached from a terminal.
    env.berth_ok(&["run", "-d", "-t", "--fifo-dir", env.fifo_dir(), env.rootfs(), "tty2", "sh"]);
    let pty = Pty::open(25, 80);
    let (mut child, mut master, seen) = pty.spawn(env.command(&["attach", "tty2"]));
    master.write_all(b"stty size; tty\r").unwrap();
    wait_for_text(&seen, "25 80");
    wait_for_text(&seen, "/dev/pts/");
    master.write_all(b"exit 6\r").unwrap();
    assert_eq!(wait_deadline(&mut child, "attach -t").code(), Some(6));
    env.berth_ok(&["tasks", "rm", "tty2"]);
    env.berth_ok(&["containers", "rm", "tty2"]);
    env.assert_clean(&["default"]);
}

#[test]
fn tty_without_a_local_terminal_still_gets_a_pty() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--rm", "-t"], "t", &["sh", "-c", "test -t 0 && test -t 1 && echo tty"], b"");
    assert_eq!(ok(out, "run -t"), "tty\r\n");
    // End of input is ^D on the pty, so a shell reading it ends.
    let out = env.run(&["--rm", "-t"], "t", &["sh"], b"echo from-script\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-script\r\n"), "{}", text(&out.stdout));

    env.detached("host", "while true; do sleep 0.1; done");
    let out =
        env.berth(&["exec", "-t", "--fifo-dir", env.fifo_dir(), "host", "sh", "-c", "test -t 1 && echo exec-tty"]);
    assert_eq!(ok(out, "exec -t"), "exec-tty\r\n");
    env.berth_ok(&["tasks", "rm", "-f", "host"]);
    env.berth_ok(&["containers", "rm", "host"]);
    env.assert_clean(&["default"]);
}

#[test]
fn tasks_start_runs_a_container_made_by_ctr() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let script = env.rootfs.join("start.sh");
    std::fs::write(&script, "#!/bin/sh\necho started; exit 2\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.daemon.ctr_ok(&["containers", "create", "--rootfs", env.rootfs(), "c1", "/start.sh"]);
    let out = env.berth(&["tasks", "start", "--fifo-dir", env.fifo_dir(), "c1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started\n");
    env.berth_ok(&["containers", "rm", "c1"]);

    // And the other way: ctr sees and signals what berth runs.
    env.detached("c2", "while true; do sleep 0.1; done");
    let ls = env.daemon.ctr_ok(&["tasks", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("c2") && l.contains("RUNNING")), "{ls}");
    env.daemon.ctr_ok(&["tasks", "kill", "-s", "KILL", "c2"]);
    eventually("c2 stops", || env.task_status("c2").as_deref() == Some("STOPPED"));
    env.berth_ok(&["tasks", "rm", "c2"]);
    env.berth_ok(&["containers", "rm", "c2"]);
    env.assert_clean(&["default"]);
}

#[test]
fn namespaces_keep_tasks_apart() {
    if !requires_root() {
        return;
    }
    let env = Env::new();
    let out =
        env.run(&["-n", "other", "--rm"], "n1", &["sh", "-c", "grep -q /other/n1 /proc/self/cgroup && echo ok"], b"");
    assert_eq!(ok(out, "run in namespace other"), "ok\n");
    let mut cmd = env.command(&["run", "-d", "--fifo-dir", env.fifo_dir(), env.rootfs(), "n2", "sleep", "1000"]);
    let out = cmd.env("BERTH_NAMESPACE", "other").output().unwrap();
    ok(out, "run -d with BERTH_NAMESPACE");
    assert_eq!(env.berth_ok(&["-n", "other", "tasks", "ls", "-q"]), "n2\n");
    assert_eq!(env.berth_ok(&["tasks", "ls", "-q"]), "");
    let err = fails(env.berth(&["kill", "n2"]), "kill in the wrong namespace");
    assert!(err.contains("not found"), "{err}");
    assert_eq!(env.berth_ok(&["-n", "other", "stop", "-t", "1", "n2"]), "137\n");
    env.berth_ok(&["-n", "other", "containers", "rm", "n2"]);
    env.assert_clean(&["default", "other"]);
}
