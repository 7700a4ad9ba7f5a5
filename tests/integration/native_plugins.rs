//! Plugins from native libraries: the examples (examples/native-snapshot, examples/native-runtime) loaded
//! through config and used through the containerd API and the real ctr, each conformance suite through the
//! native loader, and broken libraries (tests/plugins/faulty copied under the name of each fault) refused or
//! contained while berthd and the built-in plugins carry on.
//!
//! The libraries are dev-dependencies of this package, so cargo builds them before the tests, into the
//! directory this test binary runs from (`target/<profile>/deps/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use berth_core::runtime::{CreateOptions, ExecOptions, SharedRuntime};
use berth_core::snapshot::SharedSnapshotter;

use crate::harness::*;
use crate::images_fixture::{self, BUSYBOX};
use crate::plugin_fixtures::{
    assert_busybox_runs_on, assert_image_removal_empties, assert_loaded_from, plugin, plugin_status, plugins_json,
    sha256_of,
};

/// The path of the cdylib of crate `name` (with underscores), as cargo built it for this test binary.
pub(crate) fn library(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let file = format!("lib{name}.so");
    for dir in [deps.clone(), deps.parent().unwrap().to_path_buf()] {
        if dir.join(&file).exists() {
            return dir.join(&file);
        }
    }
    panic!("{file} not found next to {}: build the workspace (cargo test builds it)", deps.display());
}

fn snapshot_library() -> PathBuf {
    library("berth_example_native_snapshot")
}

fn runtime_library() -> PathBuf {
    library("berth_example_native_runtime")
}

pub(crate) fn faulty_library() -> PathBuf {
    library("berth_test_plugin_faulty")
}

/// [`load_alone`] with this file's source.
async fn load_alone(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_core::external::native::source(), dir, tables, false).await
}

#[tokio::test]
async fn native_snapshot_example_passes_the_snapshot_suite() {
    let dir = tempfile::Builder::new().prefix("berth-native-suite").tempdir_in("/tmp").unwrap();
    let tables = format!(
        "[plugins.\"snapshot.example\"]\nsource = \"native\"\npath = \"{}\"\n[plugins.\"snapshot.example\".config]\nroot = \"{}\"\n",
        snapshot_library().display(),
        dir.path().join("snapshots").display()
    );
    let started = load_alone(dir.path(), &tables).await;
    assert_eq!(plugin_status(&started, "snapshot.example").state, berth_core::registry::PluginState::Loaded);
    let id = "snapshot.example".parse().unwrap();
    let snapshotter: SharedSnapshotter =
        (*started.get::<SharedSnapshotter>(&id).expect("a native snapshot plugin is a SharedSnapshotter")).clone();
    assert_eq!(snapshotter.name(), "example");
    berth_core::testsuite::snapshot::run_all(snapshotter.as_ref(), dir.path()).await;
    // Its own config reached it: the snapshots live where the config said.
    assert!(dir.path().join("snapshots/metadata.json").exists());
    drop(snapshotter);
    started.shutdown();
}

/// The adapter keeps a plugin's stat answers while the plugin's revision stays (ABI 1.2), and its update
/// answers under the revision read right after them; a plugin built
/// for ABI 1.1 (no revision method) or keeping no revisions (the SDK's default) has every stat fetched. The faulty plugin with `count_stats` shows which:
/// its answers count its stats without moving the revision, so an answer from berthd's copy repeats a count.
#[tokio::test(flavor = "multi_thread")]
async fn stats_are_kept_while_the_revision_stays_and_abi_1_1_plugins_are_asked_every_time() {
    let dir = tempfile::Builder::new().prefix("berth-revisions").tempdir_in("/tmp").unwrap();
    let copies = faulty_copies(dir.path(), &["counted", "abi-1.1", "no-revisions"]);
    let tables = native_table("snapshot.counted", &copies[0], "count_stats = true")
        + &native_table("snapshot.abi-1.1", &copies[1], "count_stats = true")
        + &native_table("snapshot.no-revisions", &copies[2], "count_stats = true\nno_revisions = true");
    let started = load_alone(dir.path(), &tables).await;
    let snapshotter = |name: &str| -> SharedSnapshotter {
        let id = format!("snapshot.{name}").parse().unwrap();
        (*started.get::<SharedSnapshotter>(&id).unwrap_or_else(|| panic!("snapshot.{name} did not load"))).clone()
    };
    let calls = |info: &berth_core::snapshot::Info| -> u64 { info.labels["faulty.stat-calls"].parse().unwrap() };
    let big: berth_core::snapshot::Labels = (0..512).map(|i| (format!("label-{i:03}"), "x".repeat(120))).collect();

    let counted = snapshotter("counted");
    counted.prepare("k", None, big.clone()).await.unwrap();
    let first = counted.stat("k").await.unwrap();
    for _ in 0..3 {
        let again = counted.stat("k").await.unwrap();
        assert_eq!(again, first, "an unchanged snapshot's stat is berthd's copy of the first answer");
        assert!(Arc::ptr_eq(&again.labels, &first.labels), "a kept answer's labels are shared, not copied");
    }
    assert_eq!(calls(&first), 1);
    // The faulty plugin's update stores the labels it is given: without the count, its answer has none, where
    // any stat it answers carries one.
    let mut info = first.clone();
    let labels = Arc::make_mut(&mut info.labels);
    labels.insert("label-000".into(), "changed".into());
    labels.remove("faulty.stat-calls");
    let returned = counted.update(info, &["labels.label-000".into()]).await.unwrap();
    for _ in 0..2 {
        let updated = counted.stat("k").await.unwrap();
        assert_eq!(updated, returned, "the stat after an update is the update's answer, kept");
        assert!(Arc::ptr_eq(&updated.labels, &returned.labels), "and shares its labels");
        assert!(!updated.labels.contains_key("faulty.stat-calls"), "the plugin was not asked for the stat");
    }
    counted.remove("k").await.unwrap();
    assert!(counted.stat("k").await.is_err(), "a removed snapshot is not answered from the copy");
    counted.prepare("k", None, [("other".to_string(), "labels".to_string())].into()).await.unwrap();
    let remade = counted.stat("k").await.unwrap();
    assert_eq!((remade.labels.get("other").map(String::as_str), calls(&remade)), (Some("labels"), 2));
    counted.commit("c", "k", Default::default()).await.unwrap();
    let committed = counted.stat("c").await.unwrap();
    assert_eq!((committed.kind, calls(&committed)), (berth_core::snapshot::Kind::Committed, 3));
    // A refused update keeps nothing: the stat is fetched (and still the committed one).
    let mut bad = committed.clone();
    bad.name = "missing".into();
    assert!(counted.update(bad, &[]).await.is_err());
    assert_eq!(calls(&counted.stat("c").await.unwrap()), 3, "the kept stat of c stays");

    let old = snapshotter("abi-1.1");
    assert_eq!(
        plugin_status(&started, "snapshot.abi-1.1").state,
        berth_core::registry::PluginState::Loaded,
        "a plugin of ABI 1.1 loads"
    );
    let none = snapshotter("no-revisions");
    for (sn, what) in [(&old, "without a revision method"), (&none, "without revisions")] {
        sn.prepare("k", None, big.clone()).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(calls(&sn.stat("k").await.unwrap()));
        }
        assert_eq!(seen, [1, 2, 3], "{what} every stat is fetched");
        let mut info = sn.stat("k").await.unwrap();
        Arc::make_mut(&mut info.labels).insert("label-000".into(), "changed".into());
        sn.update(info, &["labels.label-000".into()]).await.unwrap();
        assert_eq!(sn.stat("k").await.unwrap().labels["label-000"], "changed", "{what}: the update shows");
    }
    drop((counted, old, none));
    started.shutdown();
}

/// ctr 1.6's spec for `ctr run --rootfs`, on a busybox rootfs, as the built-in runtime's suite uses it.
struct Busybox {
    rootfs: PathBuf,
}

impl Busybox {
    fn create(&self, id: &str, args: &[&str]) -> CreateOptions {
        let mut spec: serde_json::Value = serde_json::from_str(include_str!("../../bench/src/spec.json")).unwrap();
        spec["root"] = serde_json::json!({ "path": self.rootfs });
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        spec["linux"]["cgroupsPath"] = format!("/native-{}/{id}", berth_core::testsuite::runtime::NAMESPACE).into();
        CreateOptions { spec: Some(spec_any(&spec.to_string())), ..Default::default() }
    }
}

impl berth_core::testsuite::runtime::Fixture for Busybox {
    fn exits(&self, id: &str, code: u32) -> CreateOptions {
        self.create(id, &["sh", "-c", &format!("exit {code}")])
    }
    fn runs_until_killed(&self, id: &str) -> CreateOptions {
        self.create(id, &["sleep", "1000"])
    }
    fn exec_exits(&self, code: u32) -> Option<ExecOptions> {
        let process = serde_json::json!({ "args": ["sh", "-c", format!("exit {code}")], "cwd": "/", "env": ["PATH=/bin"],
            "user": { "uid": 0, "gid": 0 } });
        Some(ExecOptions {
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.to_string().into_bytes(),
            }),
            ..Default::default()
        })
    }
    fn can_pause(&self) -> bool {
        true
    }
}

/// Removes what an OCI runtime still has under `root` when a test stops half-way, and what is still mounted
/// beside it (the example's bundles).
struct OciLeftovers(PathBuf);

impl Drop for OciLeftovers {
    fn drop(&mut self) {
        let Ok(out) = Command::new("runc").arg("--root").arg(&self.0).args(["list", "-q"]).output() else { return };
        for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("runc").arg("--root").arg(&self.0).args(["delete", "--force", id]).output();
        }
        let Some(state) = self.0.parent() else { return };
        let prefix = format!("{}/", state.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)) {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

fn runc_present() -> bool {
    let found = Command::new("runc").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipping: runc is not installed (the test setup in .ci/run installs it)");
    }
    found
}

#[tokio::test]
async fn native_runtime_example_passes_the_runtime_suite() {
    if !requires_root() || !runc_present() {
        return;
    }
    let daemon = Daemon::configure("");
    let dir = daemon.dir.path();
    let _leftovers = OciLeftovers(dir.join("state/runtime.oci/runc"));
    let tables = format!(
        "[plugins.\"runtime.oci\"]\nsource = \"native\"\npath = \"{}\"\nrequired = true\n[plugins.\"runtime.oci\".config]\nbinary = \"runc\"\n",
        runtime_library().display()
    );
    let started = load_alone(dir, &tables).await;
    let runtime: SharedRuntime =
        (*started.get::<SharedRuntime>(&"runtime.oci".parse().unwrap()).expect("a SharedRuntime")).clone();
    assert_eq!(runtime.id(), "oci");
    let fixture = Busybox { rootfs: daemon.busybox_rootfs() };
    berth_core::testsuite::runtime::run_all(runtime.as_ref(), &fixture, "oci").await;
    assert!(runtime.tasks(None).await.unwrap().is_empty(), "tasks left");
    let bundles = dir.join("state/runtime.oci/bundles/conformance");
    let left: Vec<_> = std::fs::read_dir(&bundles).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
    drop(runtime);
    started.shutdown();
    for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(ctl.path().join(format!("native-{}", berth_core::testsuite::runtime::NAMESPACE)));
    }
    let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/native-{}", berth_core::testsuite::runtime::NAMESPACE));
}

pub(crate) fn init_error(plugins: &[serde_json::Value], kind: &str, name: &str) -> String {
    plugin(plugins, kind, name)["init_err"]["message"].as_str().unwrap_or_default().to_string()
}

pub(crate) fn native_table(id: &str, path: &Path, config: &str) -> String {
    format!(
        "[plugins.\"{id}\"]\nsource = \"native\"\npath = \"{}\"\n[plugins.\"{id}\".config]\n{config}\n",
        path.display()
    )
}

#[test]
fn snapshot_example_runs_containers_through_ctr() {
    if !requires_root() {
        return;
    }
    let library = snapshot_library();
    let daemon = Daemon::start_with(&native_table("snapshot.example", &library, ""));
    // Introspection: kind, name, source with path and content hash, version from the header, status.
    let example = assert_loaded_from(&daemon, "snapshot", "example", "native", &library);
    assert_eq!(example["type"], "io.containerd.snapshotter.v1");
    let exports = &example["exports"];
    assert_eq!(exports["berth.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(exports["berth.abi"], "1.2");
    assert_eq!(plugin(&plugins_json(&daemon), "snapshot", "native")["exports"]["berth.source"], "builtin");
    let ctr_plugins = daemon.ctr_ok(&["plugins", "ls"]);
    assert!(
        ctr_plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("example") && l.contains("ok")),
        "{ctr_plugins}"
    );

    // The image unpacked into the example snapshotter, and a container run on it.
    let script = "echo written > /tmp/f && cat /tmp/f && exit 3";
    assert_busybox_runs_on(&daemon, "example", "on-example", script, (3, "written\n"));
    // The backend's own directory holds the snapshots.
    assert!(daemon.root().join("snapshot.example/metadata.json").exists());
    assert_image_removal_empties(&daemon, "example");
}

#[test]
fn runtime_example_runs_containers_through_ctr() {
    if !requires_root() || !runc_present() {
        return;
    }
    let tables = format!(
        "{}\n[plugins.\"service.tasks\".runtime_names]\n\"io.containerd.runc.v2\" = \"linux\"\n\"io.containerd.oci.v1\" = \"oci\"\n",
        native_table("runtime.oci", &runtime_library(), "binary = \"runc\"")
    );
    let daemon = Daemon::start_with(&tables);
    let _leftovers = OciLeftovers(daemon.dir.path().join("state/runtime.oci/runc"));
    let plugins = plugins_json(&daemon);
    let oci = plugin(&plugins, "runtime", "oci");
    assert!(oci["init_err"].is_null(), "{oci:#}");
    assert_eq!(oci["exports"]["berth.source"], "native");
    daemon.ctr_ok(&["images", "import", images_fixture::busybox_archive().to_str().unwrap()]);
    let fifo = daemon.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let run = |id: &str, script: &str| {
        daemon.ctr(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.oci.v1",
            "--fifo-dir",
            fifo,
            BUSYBOX,
            id,
            "sh",
            "-c",
            script,
        ])
    };

    // Output through the FIFOs, and the exit status.
    let out = run("oci-echo", "echo out; echo err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // stdin reaches the container, and its end reaches it too (CloseIO).
    let mut child = Command::new(ctr_path())
        .arg("-a")
        .arg(&daemon.socket)
        .args(["run", "--rm", "--runtime", "io.containerd.oci.v1", "--fifo-dir", fifo, BUSYBOX, "oci-cat", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");

    // A long-running task: listed, exec'd into, killed, deleted.
    daemon.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.oci.v1",
        "--fifo-dir",
        fifo,
        BUSYBOX,
        "oci-sleep",
        "sleep",
        "1000",
    ]);
    let tasks = daemon.ctr_ok(&["tasks", "ls"]);
    let row = tasks.lines().find(|l| l.starts_with("oci-sleep")).expect(&tasks);
    assert!(row.contains("RUNNING"), "{row}");
    let out = daemon.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "--fifo-dir",
        fifo,
        "oci-sleep",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    // An exec'd process on a terminal (script(1) gives ctr one).
    let command = format!(
        "{} -a {} tasks exec -t --exec-id e-tty --fifo-dir {fifo} oci-sleep sh -c 'test -t 1 && echo on-a-tty; exit 6'",
        ctr_path().display(),
        daemon.socket.display()
    );
    let out = Command::new("script").args(["-eqc", &command, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.code() == Some(6) && text.contains("on-a-tty"), "{:?} {text}", out.status);
    let ps = daemon.ctr_ok(&["tasks", "ps", "oci-sleep"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    daemon.ctr_ok(&["tasks", "pause", "oci-sleep"]);
    assert!(daemon.ctr_ok(&["tasks", "ls"]).lines().any(|l| l.starts_with("oci-sleep") && l.contains("PAUSED")));
    daemon.ctr_ok(&["tasks", "resume", "oci-sleep"]);
    let refused = fails(daemon.ctr(&["tasks", "rm", "oci-sleep"]), "removing a running task");
    assert!(refused.contains("running"), "{refused}");
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "oci-sleep"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = daemon.ctr_ok(&["tasks", "ls"]);
        if tasks.lines().any(|l| l.starts_with("oci-sleep") && l.contains("STOPPED")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "oci-sleep did not stop:\n{tasks}");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.ctr_ok(&["tasks", "rm", "oci-sleep"]);
    daemon.ctr_ok(&["containers", "rm", "oci-sleep"]);
    let bundles = daemon.dir.path().join("state/runtime.oci/bundles/default");
    let left: Vec<_> = std::fs::read_dir(&bundles).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");

    // The built-in runtime keeps working beside it.
    let out = daemon.ctr(&["run", "--rm", "--fifo-dir", fifo, BUSYBOX, "linux-echo", "echo", "built-in"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "built-in\n", "{}", String::from_utf8_lossy(&out.stderr));
    // A terminal (script(1) gives ctr one, sized 45x123): the client's FIFOs are copied to and from it, and
    // the window size ctr sends reaches the process.
    let command = format!(
        "stty rows 45 cols 123; {} -a {} run --rm -t --runtime io.containerd.oci.v1 --fifo-dir {fifo} {BUSYBOX} oci-tty sh -c 'tty; test -t 0 && echo stdin-is-a-tty; sleep 0.5; stty size; exit 5'",
        ctr_path().display(),
        daemon.socket.display()
    );
    let out = Command::new("script").args(["-eqc", &command, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains("/dev/pts/0") && text.contains("stdin-is-a-tty"), "{text}");
    assert!(text.contains("45 123"), "the size ctr sent: {text}");
    assert_oci_nothing_left(&daemon, "default", "oci-tty");
}

/// The tables of a berthd with the example as `runtime.oci`, named `io.containerd.oci.v1` for ctr.
fn oci_tables() -> String {
    format!(
        "{}\n[plugins.\"service.tasks\".runtime_names]\n\"io.containerd.runc.v2\" = \"linux\"\n\"io.containerd.oci.v1\" = \"oci\"\n",
        native_table("runtime.oci", &runtime_library(), "binary = \"runc\"")
    )
}

/// `ctr run -d` of `args` on the example runtime.
fn oci_run_detached(daemon: &Daemon, id: &str, args: &[&str]) {
    let fifo = daemon.fifo_dir();
    let mut all =
        vec!["run", "-d", "--runtime", "io.containerd.oci.v1", "--fifo-dir", fifo.to_str().unwrap(), BUSYBOX, id];
    all.extend(args);
    daemon.ctr_ok(&all);
}

/// The `ctr tasks ls` row of task `id`.
fn task_row(daemon: &Daemon, id: &str) -> String {
    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no task {id}:\n{ls}"))
        .to_string()
}

fn wait_for_task_status(daemon: &Daemon, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !task_row(daemon, id).contains(want) {
        assert!(std::time::Instant::now() < deadline, "task {id} did not reach {want}: {}", task_row(daemon, id));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of the processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(text) {
            found.push(pid);
        }
    }
    found
}

/// Nothing of task `id` of the example runtime is left: bundle and record, runc state, waiter and runtime
/// processes, cgroups, mounts.
fn assert_oci_nothing_left(daemon: &Daemon, ns: &str, id: &str) {
    let state = daemon.dir.path().join("state/runtime.oci");
    let bundle = state.join("bundles").join(ns).join(id);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&bundle.display().to_string()).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let procs = processes_mentioning(&bundle.display().to_string());
    assert!(procs.is_empty(), "processes of {id} left: {procs:?}");
    assert!(!bundle.exists(), "bundle {} left behind", bundle.display());
    let out = Command::new("runc").arg("--root").arg(state.join("runc")).args(["list", "-q"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "runc containers left");
    for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = ctl.path().join(ns).join(id);
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", bundle.display());
    assert!(!mounts.lines().any(|l| l.contains(&prefix)), "mounts left under {prefix}:\n{mounts}");
}

/// Waits for process `exec_id` (empty: init) of task `id` through the containerd API; its exit status.
fn wait_exit(daemon: &Daemon, id: &str, exec_id: &str) -> u32 {
    use containerd_client::services::v1::WaitRequest;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = daemon.client().await;
        let wait = WaitRequest { container_id: id.into(), exec_id: exec_id.into() };
        let mut tasks = client.tasks();
        let wait = tasks.wait(ns_request("default", wait));
        let reply = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no exit of {id:?} {exec_id:?} in 10 s:\n{}", daemon.ctr_ok(&["tasks", "ls"])));
        reply.unwrap().into_inner().exit_status
    })
}

#[test]
fn runtime_example_tasks_survive_a_berthd_restart() {
    if !requires_root() || !runc_present() {
        return;
    }
    let mut daemon = Daemon::start_with(&oci_tables());
    let _leftovers = OciLeftovers(daemon.dir.path().join("state/runtime.oci/runc"));
    daemon.ctr_ok(&["images", "import", images_fixture::busybox_archive().to_str().unwrap()]);
    let fifo = daemon.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let bundles = daemon.dir.path().join("state/runtime.oci/bundles/default");
    // Ids of this run only: their cgroups (/default/ID) are the host's.
    let n = std::process::id();
    let (live, ends, frozen) = (format!("oci-live-{n}"), format!("oci-ends-{n}"), format!("oci-frozen-{n}"));
    let (live, ends, frozen) = (live.as_str(), ends.as_str(), frozen.as_str());
    let orphan = format!("oci-orphan-{n}");
    let orphan = orphan.as_str();
    oci_run_detached(&daemon, live, &["sh", "-c", "while true; do echo tick; sleep 0.1; done"]);
    oci_run_detached(&daemon, ends, &["sh", "-c", "while [ ! -e /go ]; do sleep 0.05; done; exit 9"]);
    oci_run_detached(&daemon, frozen, &["sleep", "1000"]);
    daemon.ctr_ok(&["tasks", "pause", frozen]);
    oci_run_detached(&daemon, orphan, &["sleep", "1000"]);
    daemon.ctr_ok(&["tasks", "exec", "-d", "--exec-id", "long", "--fifo-dir", fifo, live, "sleep", "1000"]);
    let live_row = task_row(&daemon, live);
    assert!(live_row.contains("RUNNING"), "{live_row}");

    daemon.kill9();
    // oci-ends exits while berthd is down; its waiter records the status.
    std::fs::write(bundles.join(ends).join("rootfs/go"), "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !bundles.join(ends).join("init.exit").exists() {
        assert!(std::time::Instant::now() < deadline, "oci-ends did not end while berthd was down");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The waiter of oci-orphan is killed as well: its exit status cannot be known any more.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundles.join(orphan).join("task.json")).unwrap()).unwrap();
    let waiter = record["init"]["waiter"]["pid"].as_i64().expect("a waiter pid in the record") as i32;
    assert_eq!(unsafe { libc::kill(waiter, libc::SIGKILL) }, 0);
    daemon.spawn();

    // Found again: the same pid, still running; the one that ended meanwhile with its status; the paused one.
    assert_eq!(task_row(&daemon, live), live_row);
    assert!(task_row(&daemon, ends).contains("STOPPED"));
    assert!(task_row(&daemon, frozen).contains("PAUSED"));
    assert_eq!(wait_exit(&daemon, ends, ""), 9, "the status of a task that ended while berthd was down");
    // Its output still reaches the FIFO, which the container holds itself.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stdout = rt.block_on(async {
        use containerd_client::services::v1::GetRequest;
        let client = daemon.client().await;
        let mut tasks = client.tasks();
        let got = tasks.get(ns_request("default", GetRequest { container_id: live.into(), exec_id: String::new() }));
        got.await.unwrap().into_inner().process.unwrap().stdout
    });
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let n = std::fs::File::open(stdout).unwrap().read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert!(reader.join().unwrap().contains("tick"));
    // exec works in the recovered task, and the exec'd process from before is still there to be killed.
    let out = daemon.ctr(&["tasks", "exec", "--exec-id", "after", "--fifo-dir", fifo, live, "echo", "still-here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still-here", "{}", String::from_utf8_lossy(&out.stderr));
    daemon.ctr_ok(&["tasks", "kill", "--exec-id", "long", "-s", "SIGKILL", live]);
    assert_eq!(wait_exit(&daemon, live, "long"), 137);

    // A clean stop and start: the same again.
    daemon.stop();
    daemon.spawn();
    assert_eq!(task_row(&daemon, live), live_row);
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", live]);
    assert_eq!(wait_exit(&daemon, live, ""), 137);
    daemon.ctr_ok(&["tasks", "resume", frozen]);
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", frozen]);
    assert_eq!(wait_exit(&daemon, frozen, ""), 137);
    // The orphan still runs, watched through its own pid; it ends with 255, "unknown".
    assert!(task_row(&daemon, orphan).contains("RUNNING"));
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", orphan]);
    assert_eq!(wait_exit(&daemon, orphan, ""), 255);
    for id in [live, ends, frozen, orphan] {
        wait_for_task_status(&daemon, id, "STOPPED");
        daemon.ctr_ok(&["tasks", "rm", id]);
        daemon.ctr_ok(&["containers", "rm", id]);
        assert_oci_nothing_left(&daemon, "default", id);
    }
}

#[test]
fn runtime_example_reports_metrics_and_updates_resources() {
    if !requires_root() || !runc_present() {
        return;
    }
    let daemon = Daemon::start_with(&oci_tables());
    let _leftovers = OciLeftovers(daemon.dir.path().join("state/runtime.oci/runc"));
    daemon.ctr_ok(&["images", "import", images_fixture::busybox_archive().to_str().unwrap()]);
    let fifo = daemon.fifo_dir();
    let m = format!("oci-m-{}", std::process::id());
    let m = m.as_str();
    let mut args = vec!["run", "-d", "--runtime", "io.containerd.oci.v1", "--fifo-dir", fifo.to_str().unwrap()];
    args.extend(["--memory-limit", "67108864", BUSYBOX, m, "sleep", "1000"]);
    daemon.ctr_ok(&args);
    let metrics = daemon.ctr_ok(&["tasks", "metrics", m]);
    assert!(metrics.contains("pids.current"), "{metrics}");
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").exists();
    if v1 {
        let limit = metrics.lines().find(|l| l.starts_with("memory.limit_in_bytes")).unwrap_or_default();
        assert!(limit.contains("67108864"), "{metrics}");
        let usage = metrics.lines().find(|l| l.starts_with("memory.usage_in_bytes")).unwrap_or_default();
        assert!(
            usage.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0),
            "{metrics}"
        );
    }

    // Update changes the running task's limits, as the host's cgroup shows, and the metrics too.
    let resources = serde_json::json!({ "memory": { "limit": 134217728 }, "pids": { "limit": 50 } });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(daemon.client());
    let mut tasks = client.tasks();
    let mut update = |value: Vec<u8>| {
        use containerd_client::services::v1::UpdateTaskRequest;
        let request = UpdateTaskRequest {
            container_id: m.into(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value,
            }),
            ..Default::default()
        };
        rt.block_on(tasks.update(ns_request("default", request)))
    };
    update(resources.to_string().into_bytes()).unwrap();
    let (memory, pids) = if v1 {
        (
            format!("/sys/fs/cgroup/memory/default/{m}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/pids/default/{m}/pids.max"),
        )
    } else {
        (format!("/sys/fs/cgroup/default/{m}/memory.max"), format!("/sys/fs/cgroup/default/{m}/pids.max"))
    };
    assert_eq!(std::fs::read_to_string(&memory).unwrap().trim(), "134217728");
    assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), "50");
    if v1 {
        let metrics = daemon.ctr_ok(&["tasks", "metrics", m]);
        assert!(
            metrics.lines().any(|l| l.starts_with("memory.limit_in_bytes") && l.contains("134217728")),
            "{metrics}"
        );
    }
    // Bad resources are refused with what was wrong, and the limits stay.
    let e = update(br#"{"memory": {"limit": "lots"}}"#.to_vec()).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("resources") && e.message().contains("\"lots\""), "{e:?}");
    let e = update(b"[1]".to_vec()).unwrap_err();
    assert!(e.message().contains("not a JSON object of LinuxResources"), "{e:?}");
    assert_eq!(std::fs::read_to_string(&memory).unwrap().trim(), "134217728");
    // A task without a terminal has none to resize.
    let resize = containerd_client::services::v1::ResizePtyRequest {
        container_id: m.into(),
        exec_id: String::new(),
        width: 80,
        height: 24,
    };
    let e = rt.block_on(client.tasks().resize_pty(ns_request("default", resize))).unwrap_err();
    assert!(e.message().contains(&format!("task {m:?} has no terminal to resize")), "{e:?}");

    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", m]);
    wait_for_task_status(&daemon, m, "STOPPED");
    // A stopped task has no metrics (the Metrics call leaves it out) and takes no update.
    let e = fails(daemon.ctr(&["tasks", "metrics", m]), "metrics of a stopped task");
    assert!(e.contains("no metrics"), "{e}");
    let e = update(resources.to_string().into_bytes()).unwrap_err();
    assert!(e.message().contains(m), "{e:?}");
    daemon.ctr_ok(&["tasks", "rm", m]);
    daemon.ctr_ok(&["containers", "rm", m]);
    assert_oci_nothing_left(&daemon, "default", m);
}

/// Copies the faulty library under the name of each fault into `dir`.
pub(crate) fn faulty_copies(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.so"));
            std::fs::copy(faulty_library(), &path).unwrap();
            path
        })
        .collect()
}

/// A shared library that is not a berth plugin, made with the C compiler the Rust toolchain links with.
fn foreign_library(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("foreign.c");
    std::fs::write(&source, "int not_a_berth_plugin(void) { return 42; }\n").unwrap();
    let library = dir.join("missing-entry.so");
    let made = Command::new("cc").arg("-shared").arg("-fPIC").arg("-o").arg(&library).arg(&source).status();
    made.is_ok_and(|s| s.success()).then_some(library)
}

#[test]
fn broken_plugins_are_refused_or_contained_and_berthd_carries_on() {
    let plugins_dir = tempfile::Builder::new().prefix("berth-broken").tempdir_in("/tmp").unwrap();
    let dir = plugins_dir.path();
    let faults = [
        "bad-magic",
        "wrong-major",
        "wrong-kind",
        "wrong-name",
        "wrong-target",
        "newer-minor",
        "short-table",
        "panics",
        "panic-init",
        "typo",
    ];
    faulty_copies(dir, &faults);
    let truncated = dir.join("truncated.so");
    let whole = std::fs::read(snapshot_library()).unwrap();
    // The ELF header and part of the program headers: what a download cut short looks like to dlopen.
    std::fs::write(&truncated, &whole[..2000]).unwrap();
    let not_elf = dir.join("not-elf.so");
    std::fs::write(&not_elf, "#!/bin/sh\necho I am a script\n").unwrap();
    let foreign = foreign_library(dir);

    let mut tables = String::new();
    for fault in faults {
        let config = match fault {
            "panic-init" => "panic_on_init = true",
            "typo" => "panic_on_ini = true",
            _ => "",
        };
        tables += &native_table(&format!("snapshot.{fault}"), &dir.join(format!("{fault}.so")), config);
    }
    tables += &native_table("snapshot.truncated", &truncated, "");
    tables += &native_table("snapshot.not-elf", &not_elf, "");
    tables += &native_table("snapshot.missing-file", &dir.join("nowhere.so"), "");
    if let Some(foreign) = &foreign {
        tables += &native_table("snapshot.missing-entry", foreign, "");
    }
    let daemon = Daemon::start_with(&tables);
    let plugins = plugins_json(&daemon);
    let error = |name: &str| init_error(&plugins, "snapshot", name);
    let expect = |name: &str, want: &str| {
        let e = error(name);
        assert!(e.contains(want), "snapshot.{name}: expected an error with {want:?}, got {e:?}");
    };
    expect("bad-magic", "does not return a berth plugin header");
    expect("wrong-major", "plugin ABI version 99.0 is not supported: this berthd speaks ABI 1.x");
    expect(
        "wrong-kind",
        "plugin is a runtime plugin, but its table [plugins.\"snapshot.wrong-kind\"] makes it a snapshot plugin",
    );
    expect("wrong-name", "plugin is named \"someone-else\"");
    expect("wrong-target", "plugin is built for target riscv64gc-unknown-none-elf");
    expect("truncated", "is not a shared library berthd can load: it is truncated: its ");
    expect("not-elf", "is not a shared library berthd can load: it is not an ELF file");
    expect("missing-file", "cannot read");
    expect("panic-init", "plugin panicked: told to panic on init");
    // A config error the plugin reports is located in berthd's config file.
    let typo = error("typo");
    let config_path = daemon.config.display().to_string();
    assert!(typo.starts_with(&format!("{config_path}:")), "{typo}");
    assert!(typo.contains("key plugins.\"snapshot.typo\".config.panic_on_ini: unknown field `panic_on_ini`"), "{typo}");
    if foreign.is_some() {
        expect("missing-entry", "is not a berth plugin: it has no symbol berth_plugin_entry");
    } else {
        eprintln!("no C compiler: the library without an entry symbol is not tried");
    }
    // Refused plugins still show where they came from.
    let wrong = plugin(&plugins, "snapshot", "wrong-major");
    assert_eq!(wrong["exports"]["berth.sha256"], sha256_of(&dir.join("wrong-major.so")));
    assert_eq!(wrong["exports"]["berth.abi"], "99.0");

    // A newer ABI minor loads, and so does an older one's shorter table; what it lacks is unimplemented.
    for name in ["newer-minor", "short-table", "panics"] {
        assert!(
            plugin(&plugins, "snapshot", name)["init_err"].is_null(),
            "snapshot.{name}: {:#}",
            plugin(&plugins, "snapshot", name)
        );
    }
    daemon.ctr_ok(&["snapshots", "--snapshotter", "newer-minor", "prepare", "a"]);
    let e =
        fails(daemon.ctr(&["snapshots", "--snapshotter", "short-table", "prepare", "a"]), "prepare on a short table");
    assert!(e.contains("plugin snapshot.short-table does not implement prepare"), "{e}");

    // A panic inside a call fails that call with a clear error; the plugin, berthd and the others go on.
    let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "panics", "prepare", "boom"]), "a panicking prepare");
    assert!(e.contains("plugin snapshot.panics: plugin panicked: asked to prepare"), "{e}");
    daemon.ctr_ok(&["snapshots", "--snapshotter", "panics", "prepare", "fine"]);
    let listed = daemon.ctr_ok(&["snapshots", "--snapshotter", "panics", "ls"]);
    assert!(listed.contains("fine") && !listed.contains("boom"), "{listed}");
    let plugins = plugins_json(&daemon);
    let last =
        plugin(&plugins, "snapshot", "panics")["exports"]["berth.last_error"].as_str().unwrap_or_default().to_string();
    assert!(last.starts_with("prepare: plugin panicked: asked to prepare"), "{last}");
    let table = daemon.berth_ok(&["plugins", "ls"]);
    let row = table.lines().find(|l| l.contains(" panics ")).expect(&table);
    assert!(row.contains("ok") && row.contains("plugin panicked"), "{row}");

    // The built-in plugins keep working.
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "prepare", "still-fine"]);
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "rm", "still-fine"]);
    daemon.ctr_ok(&["namespaces", "create", "after-faults"]);
    assert!(plugin(&plugins, "store", "lmdb")["init_err"].is_null());
}

#[test]
fn a_required_native_plugin_that_is_refused_stops_startup() {
    let dir = tempfile::Builder::new().prefix("berth-required").tempdir_in("/tmp").unwrap();
    let copies = faulty_copies(dir.path(), &["wrong-major"]);
    let table = format!(
        "[plugins.\"snapshot.wrong-major\"]\nsource = \"native\"\npath = \"{}\"\nrequired = true\n",
        copies[0].display()
    );
    let daemon = Daemon::configure(&table);
    let out = Command::new(BERTHD).arg("--config").arg(&daemon.config).output().unwrap();
    let stderr = fails(out, "berthd with a required plugin of the wrong ABI");
    assert!(
        stderr.contains("required plugin snapshot.wrong-major did not load: plugin ABI version 99.0 is not supported"),
        "{stderr}"
    );
    assert!(!daemon.socket.exists());
}

#[test]
fn external_plugin_tables_are_checked_with_file_line_and_column() {
    let check = |table: &str| {
        let daemon = Daemon::configure(table);
        let out = Command::new(BERTHD).arg("config").arg("check").arg(&daemon.config).output().unwrap();
        (fails(out, "config check of a bad plugin table"), daemon)
    };
    let (e, daemon) = check("[plugins.\"snapshot.x\"]\nsource = \"wasi\"\npath = \"/x.wasm\"\n");
    let file = daemon.config.display().to_string();
    assert!(e.contains(&format!("{file}:")), "{e}");
    assert!(
        e.contains("key plugins.\"snapshot.x\".source: unknown plugin source \"wasi\" (known: builtin, native, wasm)"),
        "{e}"
    );
    let (e, _) = check("[plugins.\"snapshot.x\"]\nsource = \"native\"\npath = \"lib/x.so\"\n");
    assert!(e.contains("key plugins.\"snapshot.x\".path: must be an absolute path"), "{e}");
    let (e, _) = check("[plugins.\"snapshot.x\"]\nsource = \"native\"\npath = \"/x.so\"\npaht = 1\n");
    assert!(e.contains("key plugins.\"snapshot.x\".paht: unknown field `paht`"), "{e}");
    let (e, _) = check("[plugins.\"snapshot.native\"]\nsource = \"native\"\npath = \"/x.so\"\n");
    assert!(e.contains("plugin snapshot.native is built into berthd; a native plugin needs a name of its own"), "{e}");
    // Built-in plugins take `source = "builtin"` and nothing changes for them.
    let daemon = Daemon::configure("[plugins.\"snapshot.native\"]\nsource = \"builtin\"\nroot_path = \"\"\n");
    let out = Command::new(BERTHD).arg("config").arg("check").arg(&daemon.config).output().unwrap();
    ok(out, "config check with source = builtin");
}
