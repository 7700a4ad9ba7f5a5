//! End-to-end tests of the runtime on a busybox bundle. They need root (and skip otherwise).
//!
//! Each verb runs in a subprocess (this test binary re-run with only `container::tests::helper`): the runtime
//! forks, and libtest's other test threads would make forking from this process unsound (see the module docs).
//! This process is a child subreaper, so inits orphaned when a helper exits are re-parented here and reaped by
//! [`Bundle`]'s drop. Every test checks that nothing is left: state directory, cgroup, mounts, processes.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::console;
use super::*;

fn requires_root() -> bool {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root");
        return false;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    true
}

/// A busybox root filesystem, built once and kept as a cache in the temp dir (each bundle copies it); built
/// under a temporary name and renamed, so concurrent test runs never see half of it.
fn template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let busybox =
            ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).map(PathBuf::from);
        let busybox = busybox.unwrap_or_else(|| {
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-qq", "busybox-static"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "busybox is missing and apt-get install busybox-static failed");
            PathBuf::from("/bin/busybox")
        });
        let done = std::env::temp_dir().join("berth-oci-busybox-rootfs-v1");
        if done.join("bin/sh").exists() {
            return done;
        }
        let dir = std::env::temp_dir().join(format!("berth-oci-busybox-rootfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", dir.join("bin").join(applet));
            }
        }
        fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
            .unwrap();
        fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        if fs::rename(&dir, &done).is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        done
    })
}

/// runc spec's default config, with `args`.
fn default_spec(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A bundle with its own state root; removes everything on drop and checks that nothing is left.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
    pids: Vec<i32>,
}

impl Bundle {
    fn new(name: &str, spec: Value) -> Bundle {
        let dir = tempfile::Builder::new().prefix("berth-oci-test-").tempdir().unwrap();
        let status = Command::new("cp").arg("-a").arg(template()).arg(dir.path().join("rootfs")).status().unwrap();
        assert!(status.success());
        fs::write(dir.path().join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        let id = format!("{name}-{}", std::process::id());
        Bundle { dir, id, pids: Vec::new() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs a verb in a helper subprocess. Its stdout and stderr are files, not pipes: a created container's
    /// init inherits them and keeps them open, so a pipe would never reach EOF.
    fn oci(&self, args: &[&str]) -> Out {
        let suffix = rand_suffix();
        let out_file = self.dir.path().join(format!("out-{suffix}"));
        let err_file = self.dir.path().join(format!("err-{suffix}"));
        let mut cmd = self.helper_cmd(args, &out_file);
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_file).unwrap())
            .status()
            .unwrap();
        let stdout = fs::read_to_string(&out_file).unwrap_or_default();
        let stderr = fs::read_to_string(&err_file).unwrap_or_default();
        let _ = fs::remove_file(&out_file);
        let _ = fs::remove_file(&err_file);
        Out { code: status.code().unwrap_or(-1), stdout, stderr }
    }

    fn helper_cmd(&self, args: &[&str], out_file: &Path) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "container::tests::helper", "--nocapture", "--test-threads=1", "-q"])
            .env("BERTH_OCI_HELPER", serde_json::to_string(&json!({"root": self.root(), "args": args})).unwrap())
            .env("BERTH_OCI_HELPER_OUT", out_file);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.oci(args);
        assert_eq!(out.code, 0, "{args:?} failed: {}", out.stderr);
        out.stdout
    }

    fn status(&self) -> String {
        let st: Value = serde_json::from_str(&self.ok(&["state", &self.id])).unwrap();
        st["status"].as_str().unwrap().to_string()
    }

    fn create(&mut self) {
        self.ok(&["create", &self.id.clone(), &self.path().display().to_string()]);
        let st: Value = serde_json::from_str(&self.ok(&["state", &self.id])).unwrap();
        self.pids.push(st["pid"].as_i64().unwrap() as i32);
    }

    fn run(&self) -> Out {
        self.oci(&["run", &self.id, &self.path().display().to_string()])
    }

    fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.oci(&["state", &self.id]);
            let st: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            let status = st["status"].as_str().unwrap_or("(none)").to_string();
            if status == want {
                return;
            }
            if Instant::now() >= deadline {
                panic!("status {status}, want {want}; {}", self.diagnose(&st));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Bundle {
    /// What init and the container's cgroup look like, for a failed wait: init's state, wait channel, kernel
    /// stack and cgroups, and the pids each hierarchy holds.
    fn diagnose(&self, st: &Value) -> String {
        let pid = st["pid"].as_i64().unwrap_or(0);
        let read = |p: String| fs::read_to_string(&p).unwrap_or_else(|e| format!("({p}: {e})"));
        let status = read(format!("/proc/{pid}/status"));
        let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or("State: ?");
        let mut out = format!(
            "init {pid}: {state}, wchan {}, stack:\n{}cgroups:\n{}",
            read(format!("/proc/{pid}/wchan")),
            read(format!("/proc/{pid}/stack")),
            read(format!("/proc/{pid}/cgroup"))
        );
        // Every process of init's pid namespace (zap_pid_ns_processes waits for all of them to be reaped).
        if let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/pid")) {
            for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let p = entry.path();
                if fs::read_link(p.join("ns/pid")).is_ok_and(|n| n == ns) {
                    let status = read(p.join("status").display().to_string());
                    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
                    out += &format!(
                        "in the pid namespace: {} {} {} {} cmdline {:?}\n",
                        p.display(),
                        field("State:"),
                        field("PPid:"),
                        field("NSpid:"),
                        read(p.join("cmdline").display().to_string())
                    );
                }
            }
        }
        for h in ["freezer", "pids", "memory", "unified"] {
            let dir = Path::new("/sys/fs/cgroup").join(h).join("berth").join(&self.id);
            out += &format!("{h}: procs [{}]", read(dir.join("cgroup.procs").display().to_string()).trim());
            if h == "freezer" {
                out += &format!(" state {}", read(dir.join("freezer.state").display().to_string()).trim());
            }
            out += "\n";
        }
        out
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let state_dir = self.root().join(&self.id);
        if state_dir.exists() {
            let _ = self.oci(&["delete", "--force", &self.id]);
        }
        // Inits orphaned by a helper were re-parented to us (subreaper): reap them.
        for &pid in &self.pids {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                // SAFETY: waitpid on a specific pid.
                let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                if r != 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if std::thread::panicking() {
            return;
        }
        assert!(!state_dir.exists(), "state directory left behind");
        for h in ["freezer", "pids", "memory", "unified"] {
            let cg = Path::new("/sys/fs/cgroup").join(h).join("berth").join(&self.id);
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&self.path().display().to_string()), "mounts left behind");
        for &pid in &self.pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} left behind");
        }
    }
}

/// The subprocess side: runs one verb like `berth oci` would and exits with its status.
#[test]
fn helper() {
    let Ok(req) = std::env::var("BERTH_OCI_HELPER") else { return };
    let req: Value = serde_json::from_str(&req).unwrap();
    if let Ok(out) = std::env::var("BERTH_OCI_HELPER_OUT") {
        let f = fs::File::create(out).unwrap();
        // SAFETY: replacing our stdout with the file; the container inherits it.
        unsafe { libc::dup2(f.as_raw_fd(), 1) };
    }
    let rt = Runtime::new(req["root"].as_str().unwrap());
    let args: Vec<String> = req["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result: Result<i32> = (|| {
        let create = |id: &str, bundle: &str, console: Option<&str>| CreateOptions {
            id: id.into(),
            bundle: bundle.into(),
            pid_file: None,
            console_socket: console.map(PathBuf::from),
            ..Default::default()
        };
        match a.as_slice() {
            ["create", id, bundle] => rt.create(&create(id, bundle, None)).map(|_| 0),
            ["create", id, bundle, console] => rt.create(&create(id, bundle, Some(console))).map(|_| 0),
            ["run", id, bundle] => rt.run(&create(id, bundle, None), false),
            ["start", id] => rt.start(id).map(|_| 0),
            ["state", id] => rt.state(id).map(|s| {
                println!("{}", serde_json::to_string_pretty(&s).unwrap());
                0
            }),
            ["kill", id, sig] => rt.kill(id, parse_signal(sig)?, false).map(|_| 0),
            ["kill", "--all", id, sig] => rt.kill(id, parse_signal(sig)?, true).map(|_| 0),
            ["delete", id] => rt.delete(id, false).map(|_| 0),
            ["delete", "--force", id] => rt.delete(id, true).map(|_| 0),
            ["ps", id] => rt.ps(id).map(|p| {
                println!("{}", serde_json::to_string(&p).unwrap());
                0
            }),
            ["pause", id] => rt.pause(id).map(|_| 0),
            ["resume", id] => rt.resume(id).map(|_| 0),
            ["exec", id, rest @ ..] => {
                rt.exec(id, &ExecOptions { args: rest.iter().map(|s| s.to_string()).collect(), ..Default::default() })
            }
            other => panic!("helper: unknown command {other:?}"),
        }
    })();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth: {e}");
            std::process::exit(1)
        }
    }
}

fn with(mut spec: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut spec);
    spec
}

#[test]
fn run_exit_codes() {
    if !requires_root() {
        return;
    }
    let b = Bundle::new("true", default_spec(&["/bin/true"]));
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    drop(b);
    let b = Bundle::new("exit3", default_spec(&["sh", "-c", "exit 3"]));
    assert_eq!(b.run().code, 3);
    drop(b);
    // Killed from outside (pid 1 of a pid namespace ignores SIGKILL sent from inside): 128 + 9.
    let b = Bundle::new("sigkill", default_spec(&["sleep", "100"]));
    let out_file = b.path().join("run-out");
    let mut run = b
        .helper_cmd(&["run", &b.id, &b.path().display().to_string()], &out_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    b.wait_status("running");
    b.ok(&["kill", &b.id, "KILL"]);
    assert_eq!(run.wait().unwrap().code(), Some(137));
}

#[test]
fn lifecycle() {
    if !requires_root() {
        return;
    }
    let mut b = Bundle::new("life", default_spec(&["sleep", "100"]));
    b.create();
    let st: Value = serde_json::from_str(&b.ok(&["state", &b.id])).unwrap();
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], b.id.as_str());
    assert_eq!(st["bundle"], b.path().display().to_string());
    assert!(st["rootfs"].as_str().unwrap().ends_with("/rootfs"));
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    assert!(st["ociVersion"].as_str().unwrap().starts_with("1."));
    b.ok(&["start", &b.id]);
    assert_eq!(b.status(), "running");
    let out = b.oci(&["start", &b.id]);
    assert!(out.stderr.contains("cannot start an already running container"), "{}", out.stderr);
    let out = b.oci(&["delete", &b.id]);
    assert!(out.stderr.contains("is not stopped"), "{}", out.stderr);
    let ps: Vec<i32> = serde_json::from_str(&b.ok(&["ps", &b.id])).unwrap();
    assert!(ps.contains(&b.pids[0]), "{ps:?}");
    b.ok(&["kill", &b.id, "KILL"]);
    b.wait_status("stopped");
    let out = b.oci(&["kill", &b.id, "TERM"]);
    assert!(out.stderr.contains("container not running"), "{}", out.stderr);
    let out = b.oci(&["exec", &b.id, "true"]);
    assert!(out.stderr.contains("cannot exec in a stopped container"), "{}", out.stderr);
    b.ok(&["delete", &b.id]);
    let out = b.oci(&["state", &b.id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("container does not exist"), "{}", out.stderr);
    let out = b.oci(&["delete", &b.id]);
    assert!(out.stderr.contains("container does not exist"), "{}", out.stderr);
}

#[test]
fn identity_inside() {
    if !requires_root() {
        return;
    }
    let spec = with(default_spec(&["sh", "-c", "echo $(hostname) $FOO $(pwd) $(id -u) $(id -g)"]), |s| {
        s["process"]["env"].as_array_mut().unwrap().push(json!("FOO=bar"));
        s["process"]["cwd"] = json!("/etc");
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    });
    let b = Bundle::new("ident", spec);
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "berth-test bar /etc 1000 1000");
}

#[test]
fn isolation() {
    if !requires_root() {
        return;
    }
    // A masked /proc file that this kernel has (kcore needs CONFIG_PROC_KCORE).
    let masked = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("no maskable /proc file");
    let script = "echo pid=$$; ls -d /proc/[0-9]* | wc -l; touch /x 2>/dev/null && echo writable || echo readonly; \
                  echo masked=$(wc -c < MASKED); ls /proc/self/fd | tr '\\n' ' '; echo; ulimit -n; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; grep ' /tmp ' /proc/mounts";
    let script = script.replace("MASKED", masked);
    let spec = with(default_spec(&["sh", "-c", &script]), |s| {
        s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}));
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512}]);
        let only_chown = json!(["CAP_CHOWN"]);
        s["process"]["capabilities"] =
            json!({"bounding": only_chown, "effective": only_chown, "permitted": only_chown});
    });
    let b = Bundle::new("iso", spec);
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "pid=1", "{}", out.stdout);
    // sh, and the ls and wc of the pipeline.
    assert!(lines[1].trim().parse::<u32>().unwrap() <= 3, "{}", out.stdout);
    assert_eq!(lines[2], "readonly");
    assert_eq!(lines[3], "masked=0", "{masked} is masked");
    assert_eq!(lines[4].trim(), "0 1 2 3", "only stdio (and ls's own directory fd) may be open");
    assert_eq!(lines[5], "512");
    assert_eq!(lines[6], "CapEff:\t0000000000000001");
    assert_eq!(lines[7], "NoNewPrivs:\t1");
    assert!(lines[8].starts_with("tmpfs /tmp tmpfs rw,nosuid,nodev"), "{}", lines[8]);
}

#[test]
fn exec_and_pause() {
    if !requires_root() {
        return;
    }
    let mut b = Bundle::new("exec", default_spec(&["sleep", "100"]));
    b.create();
    b.ok(&["start", &b.id]);
    assert_eq!(b.ok(&["exec", &b.id, "hostname"]).trim(), "berth-test");
    assert_eq!(b.oci(&["exec", &b.id, "sh", "-c", "exit 5"]).code, 5);
    assert_eq!(
        b.ok(&["exec", &b.id, "sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '"]).lines().nth(1),
        Some("sleep 100 ")
    );
    let out = b.oci(&["exec", &b.id, "no-such-binary"]);
    assert!(out.stderr.contains("executable file not found"), "{}", out.stderr);
    b.ok(&["pause", &b.id]);
    assert_eq!(b.status(), "paused");
    let out = b.oci(&["exec", &b.id, "true"]);
    assert!(out.stderr.contains("paused"), "{}", out.stderr);
    b.ok(&["resume", &b.id]);
    assert_eq!(b.status(), "running");
    b.ok(&["kill", "--all", &b.id, "9"]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
}

#[test]
fn seccomp_blocks_mkdir() {
    if !requires_root() {
        return;
    }
    let spec = with(default_spec(&["sh", "-c", "mkdir /tmp/x"]), |s| {
        s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let b = Bundle::new("seccomp", spec);
    let out = b.run();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("Operation not permitted"), "{}", out.stderr);
}

#[test]
fn console_socket() {
    if !requires_root() {
        return;
    }
    let spec = with(default_spec(&["sh", "-c", "tty; echo hello"]), |s| {
        s["process"]["terminal"] = json!(true);
    });
    let mut b = Bundle::new("console", spec);
    let sock = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out_file = b.path().join("create-out");
    let mut child = b
        .helper_cmd(&["create", &b.id, &b.path().display().to_string(), &sock.display().to_string()], &out_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let master = console::recv_fd(conn.as_raw_fd()).unwrap();
    assert!(child.wait().unwrap().success());
    let mut ptn: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int; it only works on a pty master.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut ptn) }, 0, "not a pty master");
    let st: Value = serde_json::from_str(&b.ok(&["state", &b.id])).unwrap();
    b.pids.push(st["pid"].as_i64().unwrap() as i32);
    b.ok(&["start", &b.id]);
    let mut file = fs::File::from(master);
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains("hello") {
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(text.contains(&format!("/dev/pts/{ptn}")) || text.contains("/dev/console"), "{text}");
    assert!(text.contains("hello"), "{text}");
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
}

#[test]
fn bad_input() {
    if !requires_root() {
        return;
    }
    let expect_err = |b: &Bundle, needle: &str| {
        let out = b.oci(&["create", &b.id, &b.path().display().to_string()]);
        assert_eq!(out.code, 1, "{needle}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "want {needle:?} in {:?}", out.stderr);
        assert!(!b.root().join(&b.id).exists(), "state left behind");
    };
    let b = Bundle::new("badjson", default_spec(&["true"]));
    fs::write(b.path().join("config.json"), "{ not json").unwrap();
    expect_err(&b, "invalid config.json");
    drop(b);
    let b = Bundle::new("norootfs", default_spec(&["true"]));
    fs::remove_dir_all(b.path().join("rootfs")).unwrap();
    expect_err(&b, "root.path");
    drop(b);
    let b =
        Bundle::new("badns", with(default_spec(&["true"]), |s| s["linux"]["namespaces"][1]["type"] = json!("bogus")));
    expect_err(&b, "linux.namespaces[1].type");
    drop(b);
    let b = Bundle::new(
        "badmount",
        with(default_spec(&["true"]), |s| {
            s["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/mnt", "type": "bind", "source": "/tmp", "options": ["rbind", "nosuidd"]}))
        }),
    );
    expect_err(&b, "mounts[7].options");
    drop(b);
    // Fails inside init (the executable does not exist): the child is killed, everything undone.
    let b = Bundle::new("noexe", default_spec(&["/no/such/binary"]));
    expect_err(&b, "no such executable");
    drop(b);

    let mut b = Bundle::new("dup", default_spec(&["sleep", "100"]));
    b.create();
    let out = b.oci(&["create", &b.id, &b.path().display().to_string()]);
    assert!(out.stderr.contains("container with id exists"), "{}", out.stderr);
    let out = b.oci(&["kill", &b.id, "NOSUCHSIG"]);
    assert!(out.stderr.contains("unknown signal"), "{}", out.stderr);
    // Deleting a created container kills its init (runc does the same).
    b.ok(&["delete", &b.id]);
}

impl Bundle {
    /// Replaces config.json (for specs that need the bundle's own paths).
    fn set_spec(&self, spec: &Value) {
        fs::write(self.path().join("config.json"), serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    }

    /// Creates and starts the container; returns init's host pid.
    fn start(&mut self) -> i32 {
        self.create();
        self.ok(&["start", &self.id.clone()]);
        *self.pids.last().unwrap()
    }

    /// Runs `script` with sh in the container; returns its stdout (fails the test on a non-zero exit).
    fn sh(&self, script: &str) -> String {
        self.ok(&["exec", &self.id, "sh", "-c", script])
    }

    /// Kills a started container and deletes it.
    fn stop(&self) {
        self.ok(&["kill", "--all", &self.id, "KILL"]);
        self.wait_status("stopped");
        self.ok(&["delete", &self.id]);
    }
}

/// A field of /proc/<pid>/status, e.g. `Uid`.
fn proc_status(pid: i32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field}"));
    line[field.len() + 1..].trim().to_string()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn user_namespace() {
    if !requires_root() {
        return;
    }
    let spec = with(default_spec(&["sleep", "100"]), |s| {
        s["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["root"]["readonly"] = json!(false);
    });
    let mut b = Bundle::new("userns", spec);
    // The container's root is host uid 100000: it owns its rootfs and may enter the bundle.
    chmod(b.path(), 0o755);
    let status = Command::new("chown").args(["-R", "100000:100000"]).arg(b.path().join("rootfs")).status().unwrap();
    assert!(status.success());
    let pid = b.start();
    let out = b.sh("id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; touch /created");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines, [vec!["0"], vec!["0"], vec!["0", "100000", "65536"], vec!["0", "100000", "65536"]], "{out}");
    // Seen from the host, the container's root is the mapped user.
    let uid = proc_status(pid, "Uid");
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["100000"; 4], "Uid: {uid}");
    let gid = proc_status(pid, "Gid");
    assert_eq!(gid.split_whitespace().collect::<Vec<_>>(), ["100000"; 4], "Gid: {gid}");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(b.path().join("rootfs/created")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100000, 100000));
    // Init is in a user namespace of its own.
    let link = |p: String| fs::read_link(p).unwrap();
    assert_ne!(link(format!("/proc/{pid}/ns/user")), link("/proc/self/ns/user".into()));
    b.stop();
}

#[test]
fn join_namespaces_by_path() {
    if !requires_root() {
        return;
    }
    let mut a = Bundle::new("join-a", with(default_spec(&["sleep", "100"]), |s| s["hostname"] = json!("berth-a")));
    let pid = a.start();
    let ns = |t: &str| format!("/proc/{pid}/ns/{t}");
    let spec =
        with(default_spec(&["sh", "-c", "hostname; for n in net uts ipc; do readlink /proc/self/ns/$n; done"]), |s| {
            s["linux"]["namespaces"] = json!([
                {"type": "pid"}, {"type": "ipc"}, {"type": "mount"}, {"type": "cgroup"},
                {"type": "network", "path": ns("net")}, {"type": "uts", "path": ns("uts")}
            ]);
            // Joined, not owned: B must not rename A.
            s.as_object_mut().unwrap().remove("hostname");
        });
    let b = Bundle::new("join-b", spec);
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let link = |p: &str| fs::read_link(p).unwrap().display().to_string();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "berth-a", "{}", out.stdout);
    assert_eq!(lines[1], link(&ns("net")), "B is in A's network namespace");
    assert_eq!(lines[2], link(&ns("uts")), "B is in A's uts namespace");
    assert_ne!(lines[3], link(&ns("ipc")), "B has an ipc namespace of its own");
    assert_ne!(lines[1], link("/proc/self/ns/net"));
    drop(b);
    // A is untouched by B's run and delete.
    assert_eq!(a.sh("hostname").trim(), "berth-a");
    a.stop();
}

#[test]
fn readonly_root_and_mounts() {
    if !requires_root() {
        return;
    }
    let b = Bundle::new("mounts", json!(null));
    let shared = b.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::write(shared.join("hello"), "from the host\n").unwrap();
    let script = "cat /data/hello; touch /data/new 2>&1; touch /x 2>&1; echo w > /rel/w && echo rel-rw; \
                  echo t > /tmp/t && cat /tmp/t; dd if=/dev/zero of=/tmp/big bs=1k count=2048 2>&1 | grep -o 'No space left'; \
                  for m in /data /rel /tmp /dev/mqueue; do grep \" $m \" /proc/mounts; done";
    b.set_spec(&with(default_spec(&["sh", "-c", script]), |s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "ro"]}));
        // A source relative to the bundle, and a mount point that does not exist in the rootfs.
        mounts.push(json!({"destination": "/rel", "type": "none", "source": "shared", "options": ["bind"]}));
        mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m", "mode=1770"]}));
        assert_eq!(s["root"]["readonly"], true);
    }));
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "from the host", "{}", out.stdout);
    assert_eq!(lines[1], "touch: /data/new: Read-only file system", "ro bind");
    assert_eq!(lines[2], "touch: /x: Read-only file system", "readonly root");
    assert_eq!(lines[3], "rel-rw");
    assert_eq!(lines[4], "t", "a tmpfs on a read-only root is writable");
    assert_eq!(lines[5], "No space left", "size=1m");
    let mount = |dest: &str| {
        let l =
            lines.iter().find(|l| l.split(' ').nth(1) == Some(dest)).unwrap_or_else(|| panic!("{dest} not mounted"));
        let f: Vec<&str> = l.split(' ').collect();
        (f[2].to_string(), f[3].split(',').map(str::to_string).collect::<Vec<_>>())
    };
    let (_, data) = mount("/data");
    assert!(data.contains(&"ro".to_string()), "{data:?}");
    let (_, rel) = mount("/rel");
    assert!(rel.contains(&"rw".to_string()), "{rel:?}");
    let (fstype, tmp) = mount("/tmp");
    assert_eq!(fstype, "tmpfs");
    assert!(
        ["rw", "nosuid", "nodev", "size=1024k", "mode=1770"].iter().all(|o| tmp.contains(&o.to_string())),
        "{tmp:?}"
    );
    let (fstype, mq) = mount("/dev/mqueue");
    assert_eq!(fstype, "mqueue");
    assert!(["nosuid", "nodev", "noexec"].iter().all(|o| mq.contains(&o.to_string())), "{mq:?}");
    // Written through the rw bind, not the ro one; the read-only root stayed untouched.
    assert_eq!(fs::read_to_string(shared.join("w")).unwrap(), "w\n");
    assert!(!shared.join("new").exists());
    assert!(!b.path().join("rootfs/x").exists());
    assert!(b.path().join("rootfs/rel").is_dir(), "mount point created in the rootfs");
}

#[test]
fn devices() {
    if !requires_root() {
        return;
    }
    let script = "for d in mynull net/tun hostfuse; do stat -c '%n %F %t:%T %a %u:%g' /dev/$d; done; \
                  echo x > /dev/mynull && echo null-ok; exec 3<>/dev/net/tun && echo tun-ok; exec 4<>/dev/hostfuse";
    let spec = with(default_spec(&["sh", "-c", script]), |s| {
        s["linux"]["devices"] = json!([
            {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 1000, "gid": 1000},
            {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o600}
        ]);
        s["linux"]["resources"]["devices"] = json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
        ]);
        // A node the devices cgroup does not allow: the host's /dev/fuse, bind-mounted.
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/dev/hostfuse", "type": "bind", "source": "/dev/fuse", "options": ["bind"]}));
    });
    let b = Bundle::new("devices", spec);
    let out = b.run();
    assert_ne!(out.code, 0, "opening a denied device must fail");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "/dev/mynull character special file 1:3 666 1000:1000", "{}", out.stdout);
    assert_eq!(lines[1], "/dev/net/tun character special file a:c8 600 0:0");
    assert_eq!(lines[2], "/dev/hostfuse character special file a:e5 600 0:0");
    assert_eq!(lines[3], "null-ok");
    assert_eq!(lines[4], "tun-ok");
    assert!(out.stderr.contains("/dev/hostfuse: Operation not permitted"), "{}", out.stderr);
}

#[test]
fn sysctl_and_domainname() {
    if !requires_root() {
        return;
    }
    let host = |k: &str| fs::read_to_string(format!("/proc/sys/{k}")).unwrap();
    let before = ["net/ipv4/ip_forward", "kernel/domainname", "kernel/msgmax"].map(host);
    let spec = with(
        default_spec(&[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/domainname /proc/sys/kernel/msgmax; hostname",
        ]),
        |s| {
            s["linux"]["sysctl"] =
                json!({"net.ipv4.ip_forward": "1", "kernel.domainname": "berth.example", "kernel.msgmax": "4096"});
            s["hostname"] = json!("sysctl-host");
        },
    );
    let b = Bundle::new("sysctl", spec);
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "1\nberth.example\n4096\nsysctl-host\n");
    // Namespaced sysctls: the host keeps its own.
    assert_eq!(["net/ipv4/ip_forward", "kernel/domainname", "kernel/msgmax"].map(host), before);
    drop(b);
    // A sysctl that is not in one of the container's namespaces would be the host's: refused (runc's rule). The
    // values are the host's own, so that a runtime that wrongly writes them changes nothing.
    let cases = [
        ("vm.swappiness", "vm/swappiness", None),
        ("kernel.panic", "kernel/panic", None),
        ("net.ipv4.ip_forward", "net/ipv4/ip_forward", Some("network")),
        ("kernel.domainname", "kernel/domainname", Some("uts")),
    ];
    for (key, file, remove) in cases {
        let spec = with(default_spec(&["true"]), |s| {
            s["linux"]["sysctl"] = json!({key: host(file).trim()});
            if let Some(t) = remove {
                s["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != t);
                s.as_object_mut().unwrap().remove("hostname");
            }
        });
        let b = Bundle::new("sysctl-host", spec);
        let out = b.oci(&["create", &b.id, &b.path().display().to_string()]);
        assert_eq!(out.code, 1, "{key}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("linux.sysctl: {key}")), "{key}: {}", out.stderr);
    }
}

#[test]
fn process_attributes() {
    if !requires_root() {
        return;
    }
    let script = "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status; \
                  cat /proc/self/oom_score_adj; umask; touch /tmp/f; mkdir /tmp/d; stat -c '%a %u:%g' /tmp/f /tmp/d; \
                  grep -E '^Max (open files|processes|core file size)' /proc/self/limits; pwd; \
                  tr '\\0' '\\n' < /proc/1/environ; true";
    let spec = with(default_spec(&["sh", "-c", script]), |s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
        let p = &mut s["process"];
        p["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o077});
        // A non-root user keeps capabilities across execve only as ambient ones (which must be inheritable).
        let bind = json!(["CAP_NET_BIND_SERVICE"]);
        p["capabilities"] =
            json!({"bounding": bind, "effective": bind, "permitted": bind, "inheritable": bind, "ambient": bind});
        p["noNewPrivileges"] = json!(true);
        p["oomScoreAdj"] = json!(500);
        p["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
            {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
        ]);
        p["env"] = json!(["PATH=/bin", "FOO=bar baz", "EMPTY="]);
        p["cwd"] = json!("/home/user");
    });
    let b = Bundle::new("attrs", spec);
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got: Vec<String> = out.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let want = [
        "Uid: 1000 1000 1000 1000",
        "Gid: 1000 1000 1000 1000",
        "Groups: 10 20",
        "CapInh: 0000000000000400",
        "CapPrm: 0000000000000400",
        "CapEff: 0000000000000400",
        "CapBnd: 0000000000000400",
        "CapAmb: 0000000000000400",
        "NoNewPrivs: 1",
        "500",
        "0077",
        "600 1000:1000",
        "700 1000:1000",
        "Max core file size 0 0 bytes",
        "Max processes 100 200 processes",
        "Max open files 256 512 files",
        "/home/user",
        // Exactly the spec's environment: nothing of the runtime's leaks in.
        "PATH=/bin",
        "FOO=bar baz",
        "EMPTY=",
    ];
    assert_eq!(got, want, "{}{}", out.stdout, out.stderr);
    // The host's view of a running init agrees. (A negative oomScoreAdj needs CAP_SYS_RESOURCE, which test
    // environments may lack.)
    let spec = with(default_spec(&["sleep", "100"]), |s| s["process"]["oomScoreAdj"] = json!(300));
    let mut b = Bundle::new("attrs-host", spec);
    let pid = b.start();
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "300");
    assert_eq!(proc_status(pid, "CapEff"), "0000000020000420", "CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE");
    b.stop();
}

/// One line a hook logged: `name hostname netns state-json`.
struct HookRun {
    name: String,
    hostname: String,
    netns: String,
    state: Value,
}

fn hook_log(log: &Path) -> Vec<HookRun> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let mut next = || f.next().unwrap_or_default().to_string();
            let (name, hostname, netns, state) = (next(), next(), next(), next());
            HookRun { name, hostname, netns, state: serde_json::from_str(&state).unwrap_or_default() }
        })
        .collect()
}

fn names(runs: &[HookRun]) -> Vec<&str> {
    runs.iter().map(|r| r.name.as_str()).collect()
}

/// A bundle whose hooks (given by name) each append `name hostname netns state` to `<bundle>/hooklog/log`.
/// startContainer runs in the container (its path resolves there), so it writes through a bind mount of hooklog;
/// `fail` names a hook kind that gets a failing hook (exit 3) appended.
fn hooks_bundle(name: &str, args: &[&str], fail: Option<&str>) -> (Bundle, PathBuf) {
    let b = Bundle::new(name, json!(null));
    let logdir = b.path().join("hooklog");
    fs::create_dir(&logdir).unwrap();
    let log = logdir.join("log");
    let script = b.path().join("hook.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nstate=$(cat)\necho \"$1 $(hostname) $(readlink /proc/self/ns/net) $state\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    chmod(&script, 0o755);
    let host_hook =
        |name: &str| json!({"path": "/bin/sh", "args": ["sh", script, name], "env": ["PATH=/usr/bin:/bin"]});
    // Slow on purpose: everything that must come after it (the process, poststart) would overtake it otherwise.
    let start_hook = json!({"path": "/bin/sh", "env": ["PATH=/bin"], "args": ["sh", "-c",
        "state=$(cat); sleep 0.3; echo \"startContainer $(hostname) $(readlink /proc/self/ns/net) $state\" >> /hooklog/log"]});
    let mut hooks = json!({
        "prestart": [host_hook("prestart")],
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        "startContainer": [start_hook],
        "poststart": [host_hook("poststart")],
        "poststop": [host_hook("poststop")]
    });
    if let Some(kind) = fail {
        hooks[kind].as_array_mut().unwrap().push(json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}));
    }
    b.set_spec(&with(default_spec(args), |s| {
        s["hooks"] = hooks;
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/hooklog", "type": "bind", "source": logdir, "options": ["rbind"]}));
    }));
    (b, log)
}

#[test]
fn hooks_run_in_order() {
    if !requires_root() {
        return;
    }
    let host_net = fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let (mut b, log) =
        hooks_bundle("hooks", &["sh", "-c", "echo process $(hostname) - {} >> /hooklog/log; sleep 100"], None);
    b.create();
    let pid = b.pids[0];
    let container_net = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap().display().to_string();
    assert_eq!(names(&hook_log(&log)), ["prestart", "createRuntime", "createContainer"]);
    b.ok(&["start", &b.id]);
    // poststart runs before start returns; the process may still be on its way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hook_log(&log).len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    b.stop();
    let runs = hook_log(&log);
    let mut order = names(&runs);
    // The process and poststart race (poststart only follows the start of the process): compare them as a set.
    order[4..6].sort();
    assert_eq!(
        order,
        ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "process", "poststop"]
    );
    for r in runs.iter().filter(|r| r.name != "process") {
        let n = &r.name;
        assert_eq!(r.state["id"], b.id.as_str(), "{n}: {}", r.state);
        assert_eq!(r.state["bundle"], b.path().display().to_string(), "{n}");
        assert!(r.state["ociVersion"].as_str().is_some_and(|v| v.starts_with("1.")), "{n}");
        let in_container = matches!(n.as_str(), "createContainer" | "startContainer");
        // createContainer runs before init sets the hostname (as in runc); startContainer just before the exec.
        let want_name = if n == "startContainer" { "berth-test" } else { host_name.as_str() };
        assert_eq!(r.hostname, want_name, "{n}");
        assert_eq!(&r.netns, if in_container { &container_net } else { &host_net }, "{n}: namespace");
        let want_status = match n.as_str() {
            "prestart" | "createRuntime" | "createContainer" => "creating",
            "startContainer" => "created",
            "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(r.state["status"], want_status, "{n}: {}", r.state);
        // The pid as the hook's namespace sees it: init is pid 1 in its own pid namespace.
        if n != "poststop" {
            assert_eq!(r.state["pid"], if in_container { 1 } else { pid }, "{n}: {}", r.state);
        }
    }
}

#[test]
fn failing_hooks() {
    if !requires_root() {
        return;
    }
    // A failing prestart (or createRuntime, createContainer) hook fails create, naming the hook; the container is
    // destroyed and, as the spec's lifecycle says, poststop hooks still run.
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let (b, log) = hooks_bundle(&format!("hookfail-{}", kind.to_lowercase()), &["true"], Some(kind));
        let out = b.oci(&["create", &b.id, &b.path().display().to_string()]);
        assert_eq!(out.code, 1, "{kind}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("{kind} hook #1 (/bin/sh): exit status 3")), "{kind}: {}", out.stderr);
        assert!(!b.root().join(&b.id).exists(), "{kind}: state left behind");
        let want: &[&str] = match kind {
            "prestart" => &["prestart", "poststop"],
            "createRuntime" => &["prestart", "createRuntime", "poststop"],
            _ => &["prestart", "createRuntime", "createContainer", "poststop"],
        };
        assert_eq!(names(&hook_log(&log)), want, "{kind}");
    }
    // A failing startContainer hook fails start; the process never runs; delete runs poststop.
    let (mut b, log) =
        hooks_bundle("hookfail-start", &["sh", "-c", "echo process >> /hooklog/log"], Some("startContainer"));
    b.create();
    let out = b.oci(&["start", &b.id]);
    assert_eq!(out.code, 1, "start must fail: {}", out.stderr);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    assert_eq!(names(&hook_log(&log)), ["prestart", "createRuntime", "createContainer", "startContainer", "poststop"]);
}

/// CVE-2019-5736: until it execs, init is the runtime binary (this test binary, forked), and a process in the
/// container that reached it through /proc/<init>/exe could overwrite it. Init is not dumpable until execve, so
/// /proc/1/exe, /proc/1/fd and the like are closed to the container; the binary is unchanged afterwards.
#[test]
fn runtime_binary_unreachable() {
    if !requires_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let exe = fs::read_link("/proc/self/exe").unwrap();
    let fingerprint = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.ino())
    };
    let before = fingerprint(&exe);
    let mut b =
        Bundle::new("cve-5736", with(default_spec(&["sleep", "100"]), |s| s["root"]["readonly"] = json!(false)));
    b.create();
    let pid = b.pids[0];
    // The window: created, init is still the runtime.
    assert_eq!(fs::read_link(format!("/proc/{pid}/exe")).unwrap(), exe);
    let script = "readlink /proc/1/exe || echo no-readlink; echo x >> /proc/1/exe || echo no-write; \
                  cat /proc/1/exe > /dev/null || echo no-read; cat /proc/1/environ > /dev/null || echo no-environ; \
                  for f in /proc/1/fd/*; do readlink $f && echo leaked $f; ls $f/ > /dev/null 2>&1 && echo open $f; done";
    let out = b.oci(&["exec", &b.id, "sh", "-c", script]);
    // Nor any of init's fds (the state directory among them, CVE-2016-9962).
    assert_eq!(out.stdout, "no-readlink\nno-write\nno-read\nno-environ\n", "{}", out.stderr);
    assert!(out.stderr.contains("can't create /proc/1/exe: Permission denied"), "{}", out.stderr);
    b.ok(&["start", &b.id]);
    // After execve init is the container's own binary, and dumpable again: the denial above was the runtime's.
    assert_eq!(b.sh("readlink /proc/1/exe").trim(), "/bin/busybox");
    b.stop();
    assert_eq!(fingerprint(&exe), before, "the runtime binary changed");

    // With a user namespace the container's root owns init's /proc entries once init is dumpable: while it is
    // the runtime they stay the host root's.
    let spec = with(default_spec(&["sleep", "100"]), |s| {
        s["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let mut b = Bundle::new("cve-5736-userns", spec);
    chmod(b.path(), 0o755);
    b.create();
    let pid = b.pids[0];
    assert_eq!(proc_status(pid, "Uid").split_whitespace().next(), Some("100000"));
    assert_eq!(fs::metadata(format!("/proc/{pid}/environ")).unwrap().uid(), 0, "init is dumpable before execve");
    let out = b.oci(&["exec", &b.id, "sh", "-c", "readlink /proc/1/exe || echo no-readlink"]);
    assert_eq!(out.stdout, "no-readlink\n", "{}", out.stderr);
    b.ok(&["start", &b.id]);
    assert_eq!(fs::metadata(format!("/proc/{pid}/environ")).unwrap().uid(), 100000);
    b.stop();
}

/// A directory of the host that is a shared mount point, for propagation tests; unmounted (with everything that
/// propagated under it) on drop.
struct SharedDir(tempfile::TempDir);

impl SharedDir {
    fn new() -> SharedDir {
        let dir = tempfile::Builder::new().prefix("berth-oci-shared-").tempdir().unwrap();
        let mount =
            |args: &[&str]| assert!(Command::new("mount").args(args).arg(dir.path()).status().unwrap().success());
        mount(&["--bind", dir.path().to_str().unwrap()]);
        mount(&["--make-shared"]);
        SharedDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Mounts a tmpfs with a marker file at `<dir>/<name>` on the host.
    fn mount_tmpfs(&self, name: &str) {
        let target = self.path().join(name);
        fs::create_dir_all(&target).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&target).status().unwrap();
        assert!(ok.success());
        fs::write(target.join("marker"), "host").unwrap();
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["--recursive", "--lazy"]).arg(self.path()).status();
    }
}

fn host_mountpoints() -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(str::to_string).collect()
}

#[test]
fn mount_propagation() {
    if !requires_root() {
        return;
    }
    // rootfsPropagation and the bind's own propagation, and whether a host mount made under the bind's source
    // after start shows inside (host to container), and a container mount under it on the host (container to host).
    for (root_prop, bind_prop, host_to_container, container_to_host) in [
        ("private", "rprivate", false, false),
        ("rprivate", "rprivate", false, false),
        ("rslave", "rslave", true, false),
        ("rshared", "rshared", true, true),
    ] {
        let what = format!("rootfsPropagation {root_prop}, bind {bind_prop}");
        let shared = SharedDir::new();
        fs::create_dir(shared.path().join("fromc")).unwrap();
        let spec = with(default_spec(&["sleep", "100"]), |s| {
            s["linux"]["rootfsPropagation"] = json!(root_prop);
            s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": shared.path(), "options": ["rbind", bind_prop]}));
            // A mount of the container's own, to look for on the host.
            s["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/own", "type": "tmpfs", "source": "tmpfs", "options": ["size=128k"]}));
            let caps = json!(["CAP_SYS_ADMIN"]);
            s["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
        });
        let mut b = Bundle::new(&format!("prop-{root_prop}"), spec);
        b.start();
        // The container's mounts stay in its namespace.
        let host = host_mountpoints();
        assert!(!host.iter().any(|p| p.starts_with(&b.path().display().to_string())), "{what}: leaked: {host:?}");

        shared.mount_tmpfs("fromhost");
        let inside = b.oci(&["exec", &b.id, "cat", "/data/fromhost/marker"]);
        assert_eq!(inside.code == 0, host_to_container, "{what}: host mount inside: {}", inside.stderr);
        b.sh("mount -t tmpfs -o size=32k tmpfs /data/fromc && echo c > /data/fromc/marker");
        let on_host = shared.path().join("fromc/marker").exists();
        assert_eq!(on_host, container_to_host, "{what}: container mount on the host");
        assert!(b.sh("grep ' /own ' /proc/self/mountinfo").contains("tmpfs"), "{what}: /own");
        b.stop();
        drop(b);
        drop(shared);
    }
}
