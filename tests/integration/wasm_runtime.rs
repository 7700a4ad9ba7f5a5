//! Runtime plugins as wasm components: the function runtime example (examples/wasm/function) loaded through
//! config, through the runtime conformance suite (all of it but pause, which a function runtime does not do),
//! and under the real `ctr run --runtime`: output, exit codes, stdin, the environment and working directory,
//! a granted directory, the task's root filesystem as `/` (a directory, and an image's snapshot mounted for
//! the task and unmounted after it, also after a killed berthd), exec, kills of a looping and of a sleeping invocation, and a trapping and an
//! over-allocating function (137 and an OOM event), after which berthd and the other tasks carry on.
//!
//! The component is built apart from this workspace, for wasm32-wasip2 (see
//! [`BUILD`](crate::plugin_fixtures::BUILD)); .ci/test builds it before the tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_core::runtime::{CreateOptions, ExecOptions, Io, RuntimeEvent, SharedRuntime, Status};

use crate::harness::*;
use crate::plugin_fixtures::{refusal, wasm_component};

/// The runtime name containers pick it by.
const RUNTIME: &str = "io.containerd.function.v1";

fn function_component() -> PathBuf {
    wasm_component("berth_example_wasm_function")
}

/// The example's table, granting `files` read-only as `/files`, and the runtime name that picks it.
fn function_table(files: &Path, options: &str) -> String {
    std::fs::create_dir_all(files).unwrap();
    format!(
        "[plugins.\"runtime.function\"]\nsource = \"wasm\"\npath = \"{}\"\nrequired = true\npreopens = [{{ host = \"{}\", guest = \"/files\", read_only = true }}]\nenv = {{ GRANTED = \"by-the-table\" }}\n{options}\n[plugins.\"runtime.function\".config]\ndir = \"/files\"\n",
        function_component().display(),
        files.display()
    )
}

/// [`load_alone`] with this file's source.
async fn load_alone(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_plugin_wasm::source(), dir, tables, false).await
}

fn spec_of(args: &[&str]) -> prost_types::Any {
    spec_any(&serde_json::json!({ "process": { "args": args, "env": ["PATH=/bin"], "cwd": "/" } }).to_string())
}

fn process_of(args: &[&str]) -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::json!({ "args": args, "cwd": "/" }).to_string().into_bytes(),
    }
}

/// The suite's processes as the example's commands.
struct Commands;

impl berth_core::testsuite::runtime::Fixture for Commands {
    fn exits(&self, _id: &str, code: u32) -> CreateOptions {
        CreateOptions { spec: Some(spec_of(&["exit", &code.to_string()])), ..Default::default() }
    }
    fn runs_until_killed(&self, _id: &str) -> CreateOptions {
        CreateOptions { spec: Some(spec_of(&["spin"])), ..Default::default() }
    }
    fn exec_exits(&self, code: u32) -> Option<ExecOptions> {
        Some(ExecOptions { spec: Some(process_of(&["exit", &code.to_string()])), ..Default::default() })
    }
    fn can_pause(&self) -> bool {
        false
    }
}

fn runtime_of(started: &berth_core::registry::Started) -> SharedRuntime {
    (*started
        .get::<SharedRuntime>(&"runtime.function".parse().unwrap())
        .expect("a wasm runtime plugin is a SharedRuntime"))
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_function_runtime_passes_the_runtime_suite() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-runtime").tempdir_in("/tmp").unwrap();
    let started = load_alone(dir.path(), &function_table(&dir.path().join("files"), "")).await;
    let runtime = runtime_of(&started);
    assert_eq!(runtime.id(), "function");
    berth_core::testsuite::runtime::run_all(runtime.as_ref(), &Commands, "fn").await;
    assert!(runtime.tasks(None).await.unwrap().is_empty(), "tasks left");

    // What a function runtime refuses, with the reason.
    let ns = berth_core::testsuite::runtime::NAMESPACE;
    let e = runtime.create(ns, "no-args", CreateOptions { spec: Some(spec_of(&[])), ..Default::default() }).await;
    let e = e.err().expect("empty args are refused").to_string();
    assert!(e.contains("task \"no-args\": process.args is empty"), "{e}");
    let tty = CreateOptions {
        spec: Some(spec_of(&["echo"])),
        io: Io { terminal: true, ..Default::default() },
        ..Default::default()
    };
    let e = runtime.create(ns, "tty", tty).await.err().expect("a terminal is refused").to_string();
    assert!(e.contains("plugin runtime.function has no terminal support"), "{e}");
    let task = runtime
        .create(ns, "paused", CreateOptions { spec: Some(spec_of(&["spin"])), ..Default::default() })
        .await
        .unwrap();
    task.start().await.unwrap();
    let e = task.pause().await.expect_err("pause").to_string();
    assert!(e.contains("plugin runtime.function: a function task cannot be paused"), "{e}");
    assert_eq!(task.pids().await.unwrap().len(), 1, "the running invocation is listed");
    // Signals a process ignores by default change nothing.
    task.kill(28, false).await.unwrap();
    assert_eq!(task.state().await.unwrap().status, Status::Running);
    task.kill(15, false).await.unwrap();
    assert_eq!(task.wait().await.unwrap().status, 128 + 15);
    assert!(task.pids().await.unwrap().is_empty());
    runtime.delete(ns, "paused").await.unwrap();
    // Exec'd processes end with the task's init, as in a container.
    let task = runtime
        .create(ns, "init-ends", CreateOptions { spec: Some(spec_of(&["spin"])), ..Default::default() })
        .await
        .unwrap();
    task.start().await.unwrap();
    let exec = task.exec("e", ExecOptions { spec: Some(process_of(&["spin"])), ..Default::default() }).await.unwrap();
    exec.start().await.unwrap();
    assert_eq!(task.pids().await.unwrap().len(), 2, "the init and the exec are listed");
    task.kill(9, false).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), exec.wait()).await.expect("the exec ended").unwrap();
    assert_eq!(exit.status, 128 + 9);
    task.delete_process("e").await.unwrap();
    runtime.delete(ns, "init-ends").await.unwrap();
    drop(runtime);
    started.shutdown();

    // A component of another kind under a runtime table, and the function under a snapshot table, are refused
    // with what they are.
    let snapshot = function_component().with_file_name("berth_example_wasm_snapshot.wasm");
    let tables = format!(
        "[plugins.\"runtime.layers\"]\nsource = \"wasm\"\npath = \"{}\"\n[plugins.\"snapshot.function\"]\nsource = \"wasm\"\npath = \"{}\"\n",
        snapshot.display(),
        function_component().display()
    );
    let bad_config = function_table(&dir.path().join("files"), "")
        .replace("required = true\n", "")
        .replace("dir = \"/files\"", "dir = \"files\"");
    let tables = tables + &bad_config;
    let started = load_alone(dir.path(), &tables).await;
    let error = |id: &str| refusal(&started, id);
    let e = error("runtime.layers");
    assert!(
        e.contains("the component is a snapshot plugin (it exports berth:snapshot/snapshotter@1.1.0), but its table [plugins.\"runtime.layers\"] makes it a runtime plugin"),
        "{e}"
    );
    let e = error("snapshot.function");
    assert!(
        e.contains("the component is a runtime plugin (it exports berth:runtime/function@1.0.0), but its table [plugins.\"snapshot.function\"] makes it a snapshot plugin"),
        "{e}"
    );
    // A config error the component reports is located in the config file.
    let e = error("runtime.function");
    assert!(
        e.starts_with("test.toml:")
            && e.contains("key plugins.\"runtime.function\".config.dir: \"files\" must be an absolute path"),
        "{e}"
    );
    started.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_function_past_its_memory_limit_is_oom_killed() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-oom").tempdir_in("/tmp").unwrap();
    let started = load_alone(dir.path(), &function_table(&dir.path().join("files"), "memory_limit = \"32MiB\"")).await;
    let runtime = runtime_of(&started);
    let mut events = runtime.take_events().unwrap();
    let ns = "oom";
    let task = runtime
        .create(ns, "grows", CreateOptions { spec: Some(spec_of(&["grow"])), ..Default::default() })
        .await
        .unwrap();
    task.start().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), task.wait()).await.expect("it ended").unwrap();
    assert_eq!(exit.status, 137);
    let oom = RuntimeEvent::Oom { namespace: ns.into(), container_id: "grows".into() };
    assert_eq!(events.recv().await, Some(oom), "the OOM event comes before the exit");
    match events.recv().await {
        Some(RuntimeEvent::Exit { container_id, exec_id: None, exit, .. }) => {
            assert_eq!((container_id.as_str(), exit.status), ("grows", 137));
        }
        other => panic!("expected the exit, got {other:?}"),
    }
    // The next process gets a fresh instance and works.
    let task = runtime
        .create(ns, "after", CreateOptions { spec: Some(spec_of(&["exit", "3"])), ..Default::default() })
        .await
        .unwrap();
    task.start().await.unwrap();
    assert_eq!(task.wait().await.unwrap().status, 3);
    runtime.delete(ns, "grows").await.unwrap();
    runtime.delete(ns, "after").await.unwrap();
    drop(runtime);
    started.shutdown();
}

/// Waits until `ctr tasks ls` shows `id` with `status`.
fn wait_for_status(daemon: &Daemon, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = daemon.ctr_ok(&["tasks", "ls"]);
        if tasks.lines().any(|l| l.starts_with(id) && l.contains(status)) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is not {status}:\n{tasks}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a child, failing the test rather than hanging it.
fn finish(mut child: Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not return");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn wasm_function_tasks_run_through_ctr() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-wasm-fn").tempdir_in("/tmp").unwrap();
    let files = scratch.path().join("files");
    let tables = format!(
        "{}\n[plugins.\"service.tasks\".runtime_names]\n\"io.containerd.runc.v2\" = \"linux\"\n\"{RUNTIME}\" = \"function\"\n",
        function_table(&files, "memory_limit = \"32MiB\"")
    );
    std::fs::write(files.join("hello.txt"), "a granted file\n").unwrap();
    let mut daemon = Daemon::start_with(&tables);
    let plugins: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.berth_ok(&["--format", "json", "plugins", "ls"])).unwrap();
    let row = plugins.iter().find(|p| p["id"] == "function" && p["exports"]["berth.kind"] == "runtime").expect("row");
    assert!(row["init_err"].is_null(), "{row:#}");
    assert_eq!(row["exports"]["berth.source"], "wasm");
    assert_eq!(row["exports"]["berth.world"], "berth:runtime/function-runtime@1.0.0");
    let rootfs = rootfs(&daemon);
    let rootfs = rootfs.to_str().unwrap();
    let fifo = daemon.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let ctr = |extra: &[&str], id: &str, args: &[&str]| {
        let mut command = Command::new(ctr_path());
        command.arg("-a").arg(&daemon.socket).args(["run", "--rm", "--runtime", RUNTIME, "--fifo-dir", fifo]);
        command.args(extra).args(["--rootfs", rootfs, id]).args(args);
        command
    };
    let run = |extra: &[&str], id: &str, args: &[&str]| ctr(extra, id, args).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();

    // Output through the FIFOs, and the function's answer as the exit status.
    let out = run(&[], "fn-echo", &["echo", "hello", "from", "wasm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from wasm\n");
    let out = run(&[], "fn-exit", &["exit", "7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = run(&[], "fn-bad-arg", &["exit", "many"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("exit: \"many\" is not an exit status (0-255)"), "{}", text(&out.stderr));
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("runtime.function")
            && l.contains("task \"fn-bad-arg\": exit: \"many\" is not an exit status")),
        "the function's log line reaches berthd's log, tagged with the plugin"
    );
    let out = run(&[], "fn-unknown", &["frobnicate"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("frobnicate: unknown command"), "{}", text(&out.stderr));

    // stdin reaches the function, and its end too.
    let input = b"through stdin\nsecond line\n";
    for (id, command, want) in [
        ("fn-sha", "sha256", {
            use sha2::Digest;
            sha2::Sha256::digest(input).iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n"
        }),
        ("fn-wc", "wc", "2 4 26\n".to_string()),
    ] {
        let mut child = ctr(&[], id, &[command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = finish(child, command);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "{command}");
    }

    // A granted directory, and nothing outside it.
    let out = run(&[], "fn-cat", &["cat", "hello.txt"]);
    assert_eq!(text(&out.stdout), "a granted file\n", "{}", text(&out.stderr));
    let out = run(&[], "fn-cat-etc", &["cat", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && text(&out.stderr).contains("cat: /etc/passwd:"), "{}", text(&out.stderr));

    // The spec's environment and working directory, after what the table grants.
    let out = run(&["--env", "FROM_SPEC=yes", "--env", "GRANTED=overridden", "--cwd", "/files"], "fn-env", &["env"]);
    let env = text(&out.stdout);
    assert!(env.lines().any(|l| l == "FROM_SPEC=yes"), "{env}");
    assert!(env.lines().any(|l| l == "GRANTED=by-the-table") && !env.contains("overridden"), "{env}");
    assert!(env.lines().any(|l| l == "PWD=/files"), "{env}");

    // A long-running task: listed, exec'd into, killed, deleted.
    daemon.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--fifo-dir", fifo, "--rootfs", rootfs, "fn-spin", "spin"]);
    wait_for_status(&daemon, "fn-spin", "RUNNING");
    let out = daemon.ctr(&["tasks", "exec", "--exec-id", "e1", "--fifo-dir", fifo, "fn-spin", "echo", "in-exec"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-exec\n");
    // The running invocation is listed, with pid 0: a function task has no host process.
    let ps = daemon.ctr_ok(&["tasks", "ps", "fn-spin"]);
    let rows: Vec<&str> = ps.lines().skip(1).collect();
    assert!(rows.len() == 1 && rows[0].split_whitespace().next() == Some("0"), "{ps}");
    let refused = fails(daemon.ctr(&["tasks", "rm", "fn-spin"]), "removing a running task");
    assert!(refused.contains("running"), "{refused}");
    let refused = fails(daemon.ctr(&["tasks", "pause", "fn-spin"]), "pausing a function task");
    assert!(refused.contains("cannot be paused"), "{refused}");
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "fn-spin"]);
    wait_for_status(&daemon, "fn-spin", "STOPPED");
    daemon.ctr_ok(&["tasks", "rm", "fn-spin"]);
    daemon.ctr_ok(&["containers", "rm", "fn-spin"]);

    // A foreground run killed from outside ends with 128 + the signal, looping or inside a host call (a sleep).
    for (id, args, signal, code) in
        [("fn-loop", &["spin"][..], "SIGTERM", 143), ("fn-sleep", &["sleep", "600"][..], "SIGKILL", 137)]
    {
        let child =
            ctr(&[], id, args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for_status(&daemon, id, "RUNNING");
        daemon.ctr_ok(&["tasks", "kill", "-s", signal, id]);
        let out = finish(child, id);
        assert_eq!(out.status.code(), Some(code), "{id}: {}", text(&out.stderr));
    }

    // A trapping function and one that grows past its memory limit end with a clear status and reason; berthd,
    // the plugin and the other tasks carry on.
    daemon.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--fifo-dir", fifo, "--rootfs", rootfs, "fn-bystander", "spin"]);
    wait_for_status(&daemon, "fn-bystander", "RUNNING");
    let out = run(&[], "fn-abort", &["abort"]);
    assert_eq!(out.status.code(), Some(134), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("asked to abort"), "the guest's panic message: {stderr}");
    assert!(stderr.contains("task \"fn-abort\": plugin runtime.function: call invoke trapped: wasm trap"), "{stderr}");
    let out = run(&[], "fn-grow", &["grow"]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("exceeded its memory limit of 32 MiB"), "{}", text(&out.stderr));
    let plugins: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.berth_ok(&["--format", "json", "plugins", "ls"])).unwrap();
    let row = plugins.iter().find(|p| p["id"] == "function" && p["exports"]["berth.kind"] == "runtime").expect("row");
    let last = row["exports"]["berth.last_error"].as_str().unwrap_or_default();
    assert!(last.contains("call invoke exceeded its memory limit"), "{last}");
    wait_for_status(&daemon, "fn-bystander", "RUNNING");
    let out = run(&[], "fn-after", &["echo", "still", "working"]);
    assert_eq!(text(&out.stdout), "still working\n", "{}", text(&out.stderr));
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "fn-bystander"]);
    wait_for_status(&daemon, "fn-bystander", "STOPPED");
    daemon.ctr_ok(&["tasks", "rm", "fn-bystander"]);
    daemon.ctr_ok(&["containers", "rm", "fn-bystander"]);

    // The task's root filesystem is the function's `/`: `--rootfs DIR` as it is, beside the granted /files.
    std::fs::write(Path::new(rootfs).join("marker.txt"), "in the rootfs\n").unwrap();
    let out = run(&[], "fn-root", &["cat", "/marker.txt", "hello.txt"]);
    assert_eq!(text(&out.stdout), "in the rootfs\na granted file\n", "{}", text(&out.stderr));

    // An image's snapshot, mounted by berthd for the task and unmounted when it is deleted.
    daemon.ctr_ok(&["images", "import", crate::images_fixture::busybox_archive().to_str().unwrap()]);
    let image_run = |id: &str, args: &[&str]| {
        let mut command = Command::new(ctr_path());
        command.arg("-a").arg(&daemon.socket).args(["run", "--rm", "--runtime", RUNTIME, "--fifo-dir", fifo]);
        command.args([crate::images_fixture::BUSYBOX, id]).args(args).output().unwrap()
    };
    let out = image_run("fn-image", &["cat", "/etc/passwd"]);
    assert_eq!(text(&out.stdout), "root:x:0:0:root:/root:/bin/sh\n", "{}", text(&out.stderr));
    let mount_dir = daemon.dir.path().join("state/runtime.function/rootfs");
    assert_eq!(function_mounts(&mount_dir), Vec::<String>::new(), "the image's rootfs is unmounted at delete");
    assert_eq!(std::fs::read_dir(&mount_dir).unwrap().count(), 0, "and its mount point removed");
    let out = image_run("fn-image-missing", &["cat", "/no/such/file"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cat: /no/such/file"), "{}", text(&out.stderr));

    // The built-in runtime keeps working beside it.
    let busybox = daemon.busybox_rootfs();
    let out = daemon.ctr(&[
        "run",
        "--rm",
        "--fifo-dir",
        fifo,
        "--rootfs",
        busybox.to_str().unwrap(),
        "linux-echo",
        "echo",
        "built-in",
    ]);
    assert_eq!(text(&out.stdout), "built-in\n", "{}", text(&out.stderr));

    // Function tasks end with berthd: a killed berthd's rootfs mounts are unmounted when it starts again.
    let image = crate::images_fixture::BUSYBOX;
    daemon.ctr_ok(&["run", "-d", "--runtime", RUNTIME, "--fifo-dir", fifo, image, "fn-left", "spin"]);
    assert_eq!(function_mounts(&mount_dir).len(), 1, "a running image task has its rootfs mounted");
    daemon.kill9();
    daemon.spawn();
    assert_eq!(function_mounts(&mount_dir), Vec::<String>::new(), "the leftover mount is gone after a restart");
    assert_eq!(std::fs::read_dir(&mount_dir).unwrap().count(), 0, "and its mount point");
}

/// The mount points under `mount_dir`, from the mount table.
fn function_mounts(mount_dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", mount_dir.display());
    table.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).map(str::to_owned).collect()
}
