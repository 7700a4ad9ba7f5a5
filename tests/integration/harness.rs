//! Starting, stopping and talking to a real berthd.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use containerd_client::tonic::{Code, Request};

pub const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");
pub const BERTH_REAPER: &str = env!("CARGO_BIN_EXE_berth-reaper");

/// True when running as root. Tests that need root return early with a note otherwise; CI runs
/// as root, so there they always run.
pub fn requires_root() -> bool {
    let root = unsafe { libc_geteuid() } == 0;
    if !root {
        eprintln!("skipping: this test needs root");
    }
    root
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The `ctr` binary, which the test setup (.ci/run) installs from Debian's `containerd` package.
pub fn ctr_path() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join("ctr");
        if p.exists() {
            return p;
        }
    }
    panic!("ctr not found: install Debian's containerd package (the test setup in .ci/run does)");
}

/// A berthd on its own temporary root, state and socket.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts berthd with the default settings on temporary directories.
    pub fn start() -> Daemon {
        Self::start_with("")
    }

    /// Starts berthd with `extra` appended to its config file.
    pub fn start_with(extra: &str) -> Daemon {
        let mut daemon = Self::configure(extra);
        daemon.spawn();
        daemon
    }

    /// Writes the config without starting berthd.
    pub fn configure(extra: &str) -> Daemon {
        let dir = tempfile::Builder::new().prefix("berth-test").tempdir_in("/tmp").expect("tempdir");
        let socket = dir.path().join("run/berth.sock");
        let config = dir.path().join("config.toml");
        let text = format!(
            "version = 1\nroot = \"{root}\"\nstate = \"{state}\"\nlog_level = \"debug\"\nshutdown_timeout_secs = 5\nrequired_plugins = [\"store.lmdb\"]\n{extra}\n[grpc]\naddress = \"{socket}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
        );
        std::fs::write(&config, text).expect("writing config");
        let log = dir.path().join("berthd.log");
        Daemon { dir, socket, config, child: None, log }
    }

    /// Starts berthd and waits until its socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "berthd already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut child = Command::new(BERTHD)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning berthd");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("berthd exited during start-up with {status}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "berthd did not listen within 20 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd running").id()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends `signal` and waits for berthd to exit; returns its exit status.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("berthd running");
        unsafe { kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "berthd did not exit after signal {signal}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops berthd with SIGTERM and checks it exited cleanly.
    pub fn stop(&mut self) {
        let status = self.signal_and_wait(SIGTERM);
        assert!(status.success(), "berthd exited with {status} on SIGTERM:\n{}", self.log_text());
    }

    /// Kills berthd with SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let status = self.signal_and_wait(SIGKILL);
        assert_eq!(status.signal(), Some(SIGKILL));
    }

    pub async fn client(&self) -> containerd_client::Client {
        containerd_client::Client::from_path(&self.socket).await.expect("connecting to berthd")
    }

    /// Runs `ctr -a SOCKET args...`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(ctr_path()).arg("-a").arg(&self.socket).args(args).output().expect("running ctr")
    }

    /// Runs `ctr` and asserts success, returning stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        ok(self.ctr(args), &format!("ctr {}", args.join(" ")))
    }

    /// Runs `berth --address SOCKET args...`.
    pub fn berth(&self, args: &[&str]) -> Output {
        Command::new(BERTH)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .env_remove("BERTH_NAMESPACE")
            .output()
            .expect("running berth")
    }

    pub fn berth_ok(&self, args: &[&str]) -> String {
        ok(self.berth(args), &format!("berth {}", args.join(" ")))
    }

    /// The root directory of this daemon.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A stream of the events that pass `filters`, from now on.
    pub async fn subscribe(
        &self,
        filters: &[&str],
    ) -> containerd_client::tonic::Streaming<containerd_client::types::Envelope> {
        let request = containerd_client::services::v1::SubscribeRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        self.client().await.events().subscribe(request).await.unwrap().into_inner()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Tasks outlive berthd by design: a test that failed half-way must not leave its containers, reapers,
        // cgroups or mounts behind. Kill each reaper, then let a one-shot reaper remove what it left.
        for dir in self.task_dirs() {
            if let Some(pid) = std::fs::read_to_string(dir.join("reaper.pid")).ok().and_then(|p| p.trim().parse().ok())
            {
                unsafe { kill(pid, SIGKILL) };
            }
            let _ = Command::new(BERTH_REAPER).arg("cleanup").arg(&dir).output();
        }
    }
}

impl Daemon {
    /// `<state>/runtime.linux/tasks/<ns>/<id>` of every task the runtime still has on disk.
    pub fn task_dirs(&self) -> Vec<PathBuf> {
        let tasks = self.dir.path().join("state/runtime.linux/tasks");
        let mut dirs = Vec::new();
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for task in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                dirs.push(task.path());
            }
        }
        dirs
    }

    /// A busybox root filesystem of this daemon's own (Debian's busybox-static, one symlink per applet).
    pub fn busybox_rootfs(&self) -> PathBuf {
        let dir = self.dir.path().join("busybox");
        if dir.join("bin/sh").exists() {
            return dir;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox missing: install Debian's busybox-static (the test setup in .ci/run does)");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
        let list = Command::new(busybox).arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
            }
        }
        std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
        dir
    }

    /// A directory for ctr's `--fifo-dir`.
    pub fn fifo_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("fifo");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGINT: i32 = 2;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Polls `check` every 20 ms for up to `secs` seconds.
pub fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a command succeeded and returns its stdout.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Asserts a command failed and returns its stderr.
pub fn fails(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded but should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

/// A namespaced request, as containerd clients send it.
pub fn ns_request<T>(ns: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
    request
}

/// An OCI spec as containerd clients send it: JSON inside an Any with containerd's type URL.
pub fn spec_any(json: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: json.as_bytes().to_vec(),
    }
}

/// A directory usable as `ctr containers create --rootfs DIR`.
pub fn rootfs(daemon: &Daemon) -> PathBuf {
    let dir = daemon.dir.path().join("rootfs");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    dir
}

/// A registry holding only the plugin source `source` (and, with `with_exchange`, an event exchange for
/// monitors to publish to), started on the plugin tables `tables` with root, state and socket in `dir`:
/// how the plugin tests load a plugin through config without a whole berthd.
pub async fn load_alone(
    source: berth_core::external::PluginSource,
    dir: &Path,
    tables: &str,
    with_exchange: bool,
) -> berth_core::registry::Started {
    use berth_core::plugin::{Instance, NoConfig, PluginKind, Registration};
    let mut registry = berth_core::registry::Registry::new();
    registry.add_source(source).unwrap();
    if with_exchange {
        registry
            .register(Registration::new::<NoConfig, _, _>(PluginKind::Event, "exchange", |_| async {
                Ok(Instance::new(berth_core::events::Exchange::new()))
            }))
            .unwrap();
    }
    let text = format!(
        "version = 1\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\naddress = \"{dir}/s.sock\"\n{tables}\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        dir = dir.display(),
    );
    let config = berth_core::config::Config::parse("test.toml", &text, &registry).expect("config");
    registry.start(std::sync::Arc::new(config)).await.expect("start")
}
