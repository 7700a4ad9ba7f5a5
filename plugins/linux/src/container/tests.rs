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
            assert!(Instant::now() < deadline, "status {status}, want {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
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
