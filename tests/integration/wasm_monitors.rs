//! Task monitors as wasm components: the monitor conformance suite on examples/wasm/monitor (`monitor.watch`)
//! as berthd's registry loads it; components of the wrong kind and bad configs refused; the example fed by
//! the Tasks service of a real berthd, raising alerts (JSON lines in its granted directory and `/berth/alert`
//! events) for real containers run by ctr that exit non-zero, are OOM-killed and loop through restarts; a
//! monitor that traps, loops or allocates past its cap (examples/wasm/faulty-monitor) contained while tasks
//! and the other monitors carry on. Container ids start with `wmon-`: cgroups are host-wide.
//!
//! The components are built apart from this workspace, for wasm32-wasip2 (see [`BUILD`]); .ci/test builds
//! them before the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::events::Exchange;
use berth_core::filters::FilterSet;
use berth_core::monitor::{SharedMonitor, TaskEvent, TaskInfo};
use berth_core::registry::PluginState;
use berth_core::testsuite::monitor as suite;
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::types::Envelope;
use prost::Message;

use crate::harness::*;
use crate::native_plugins::{plugin, plugins_json};

/// The command that builds the components the tests load.
const BUILD: &str = "cargo build --manifest-path examples/wasm/Cargo.toml --target wasm32-wasip2 --release --locked";

/// The component of crate `name` (with underscores), as [`BUILD`] made it.
fn component(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the wasm components first, from the repository root: {BUILD}",
        path.display()
    );
    path.canonicalize().unwrap()
}

fn watch_component() -> PathBuf {
    component("berth_example_wasm_monitor")
}

fn faulty_component() -> PathBuf {
    component("berth_test_wasm_faulty_monitor")
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

fn wasm_table(id: &str, path: &Path, options: &str, config: &str) -> String {
    format!(
        "[plugins.\"{id}\"]\nsource = \"wasm\"\npath = \"{}\"\n{options}\n[plugins.\"{id}\".config]\n{config}\n",
        path.display()
    )
}

/// The table of the watch example writing into `dir` (created, granted as `/alerts`).
fn watch_table(dir: &Path, config: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let grant = format!("preopens = [{{ host = \"{}\", guest = \"/alerts\" }}]", dir.display());
    wasm_table("monitor.watch", &watch_component(), &grant, config)
}

/// [`load_alone`] with this file's source and an event exchange.
async fn load_with_exchange(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_plugin_wasm::source(), dir, tables, true).await
}

fn row(started: &berth_core::registry::Started, id: &str) -> berth_core::registry::PluginStatus {
    let table = started.table.read().unwrap();
    table.plugins.iter().find(|p| p.id.to_string() == id).expect(id).clone()
}

fn monitor(started: &berth_core::registry::Started, id: &str) -> SharedMonitor {
    (*started.get::<SharedMonitor>(&id.parse().unwrap()).expect("a wasm monitor plugin is a SharedMonitor")).clone()
}

/// The alerts file's lines as JSON.
fn alerts(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

/// An alert event's fields, from its `google.protobuf.Struct`.
fn alert_fields(envelope: &Envelope) -> BTreeMap<String, String> {
    let any = envelope.event.as_ref().expect("an event");
    assert_eq!(any.type_url, "google.protobuf.Struct");
    let object = prost_types::Struct::decode(any.value.as_slice()).unwrap();
    object
        .fields
        .into_iter()
        .filter_map(|(k, v)| match v.kind? {
            prost_types::value::Kind::StringValue(s) => Some((k, s)),
            prost_types::value::Kind::NumberValue(n) => Some((k, n.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn wasm_monitor_example_passes_the_monitor_suite() {
    let scratch = tempfile::Builder::new().prefix("berth-wmon-suite").tempdir_in("/tmp").unwrap();
    let dir = scratch.path();
    let out = dir.join("out");
    let config = "restart_loop_exits = 2\nrestart_loop_window_secs = 600";
    let started = load_with_exchange(dir, &watch_table(&out, config)).await;
    let status = row(&started, "monitor.watch");
    assert_eq!(status.state, PluginState::Loaded, "{status:?}");
    let berth_core::external::Origin::External(origin) = status.origin else {
        panic!("a wasm plugin has an external origin")
    };
    assert_eq!(origin.details.get("world").map(String::as_str), Some("berth:monitor/monitor-plugin@1.0.0"));
    assert_eq!(origin.version.as_deref(), Some("1.0.0"));
    let exchange = started.get::<Exchange>(&"event.exchange".parse().unwrap()).unwrap();
    let mut events = exchange.subscribe(FilterSet::parse_all(&["topic==/berth/alert"]).unwrap());
    let watch = monitor(&started, "monitor.watch");
    suite::run_all(watch.as_ref(), "conformance").await;

    // What the suite's exits were worth: the exec'd process's status 3, the unknown task's 137, and the
    // eight tasks' status 1, each a line in the granted directory and an event; none for status 0.
    let lines = alerts(&out.join("alerts.jsonl"));
    let exits: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["alert"] == "exit")
        .map(|l| (l["id"].as_str().unwrap(), l["status"].as_u64().unwrap()))
        .collect();
    assert!(exits.contains(&("suite-life", 3)) && exits.contains(&("suite-never-seen", 137)), "{lines:?}");
    assert_eq!(exits.iter().filter(|(id, s)| id.starts_with("suite-many-") && *s == 1).count(), 8, "{lines:?}");
    assert_eq!(exits.len(), 10, "{lines:?}");
    let life = lines.iter().find(|l| l["id"] == "suite-life").unwrap();
    assert_eq!(
        (life["exec_id"].as_str(), life["labels"]["berth.test/suite"].as_str()),
        (Some("exec-1"), Some("monitor"))
    );
    assert!(lines.iter().any(|l| l["alert"] == "oom" && l["id"] == "suite-never-seen"), "{lines:?}");
    for _ in 0..lines.len() {
        let envelope =
            tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("an alert event").unwrap();
        assert_eq!((envelope.namespace.as_str(), envelope.topic.as_str()), (suite::NAMESPACE, "/berth/alert"));
    }
    // The init exits' windows are kept in the granted directory, not in an instance.
    let loops: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("loops.json")).unwrap()).unwrap();
    assert!(loops["exits"]["conformance/suite-life"].is_array(), "{loops}");

    // A second init exit of the same container within the window is a restart loop, counted from that file.
    let task = TaskInfo { namespace: "conformance".into(), id: "suite-life".into(), ..Default::default() };
    let exit = berth_core::runtime::Exit { pid: 9, status: 0, timestamp: std::time::SystemTime::now() };
    watch.event(&task, &TaskEvent::Exited { exec_id: None, exit }).await.unwrap();
    let lines = alerts(&out.join("alerts.jsonl"));
    let looped = lines.iter().find(|l| l["alert"] == "restart-loop").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((looped["id"].as_str(), looped["exits"].as_u64()), (Some("suite-life"), Some(2)));
    drop(watch);
    started.shutdown();
}

#[tokio::test]
async fn wasm_monitor_tables_are_checked() {
    let scratch = tempfile::Builder::new().prefix("berth-wmon-refused").tempdir_in("/tmp").unwrap();
    let dir = scratch.path();
    let snapshot = component("berth_example_wasm_snapshot");
    let mut tables = String::new();
    // Components of the wrong kind for their tables, both ways.
    tables += &wasm_table("monitor.layers", &snapshot, "", "");
    tables += &wasm_table("snapshot.watch", &watch_component(), "", "");
    tables += &wasm_table("monitor.misnamed", &watch_component(), "", "");
    let started = load_with_exchange(dir, &tables).await;
    let failed = |id: &str| match row(&started, id).state {
        PluginState::Failed(e) => e,
        other => panic!("{id}: {other:?}"),
    };
    let e = failed("monitor.layers");
    assert!(
        e.contains("the component is a snapshot plugin (it exports berth:snapshot/snapshotter@1.1.0), but its table [plugins.\"monitor.layers\"] makes it a monitor plugin"),
        "{e}"
    );
    let e = failed("snapshot.watch");
    assert!(
        e.contains("the component is a monitor plugin (it exports berth:monitor/monitor@1.0.0), but its table [plugins.\"snapshot.watch\"] makes it a snapshot plugin"),
        "{e}"
    );
    let e = failed("monitor.misnamed");
    assert!(
        e.contains("plugin is named \"watch\", but its table is [plugins.\"monitor.misnamed\"]: name the table [plugins.\"monitor.watch\"]"),
        "{e}"
    );
    started.shutdown();

    // Named right: its config's errors, located in the config file. Its directory not granted:
    let started = load_with_exchange(dir, &wasm_table("monitor.watch", &watch_component(), "", "")).await;
    let e = failed_state(&started);
    assert!(
        e.contains("key plugins.\"monitor.watch\".config.dir: cannot open /alerts/alerts.jsonl")
            && e.contains("preopens"),
        "{e}"
    );
    started.shutdown();
    let out = dir.join("out");
    for (config, want) in [
        ("dir = \"alerts\"", "config.dir: alerts is not an absolute path"),
        ("topic = \"no-slash\"", "config.topic: topic \"no-slash\" does not start with /"),
        ("restart_loop = 2", "config.restart_loop: unknown field `restart_loop`"),
    ] {
        let started = load_with_exchange(dir, &watch_table(&out, config)).await;
        let e = failed_state(&started);
        assert!(e.contains("test.toml:") && e.contains(want), "{config}: expected {want:?}, got {e:?}");
        started.shutdown();
    }
}

fn failed_state(started: &berth_core::registry::Started) -> String {
    match row(started, "monitor.watch").state {
        PluginState::Failed(e) => e,
        other => panic!("monitor.watch: {other:?}"),
    }
}

/// Runs `ctr run --rm` of a busybox rootfs; returns its exit code.
fn run(daemon: &Daemon, id: &str, extra: &[&str], script: &str) -> i32 {
    let rootfs = daemon.busybox_rootfs();
    let fifo = daemon.fifo_dir();
    let mut args = vec!["run", "--rm", "--fifo-dir", fifo.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap(), id, "sh", "-c", script]);
    let out = daemon.ctr(&args);
    out.status.code().unwrap_or_else(|| panic!("ctr run {id}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The next event of `stream` within 30 s.
async fn next(stream: &mut containerd_client::tonic::Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("no event within 30 s")
        .unwrap()
        .expect("event stream ended")
}

/// Events of `stream` until one satisfies `want`, which is returned.
async fn until(
    stream: &mut containerd_client::tonic::Streaming<Envelope>,
    mut want: impl FnMut(&Envelope) -> bool,
) -> Envelope {
    loop {
        let envelope = next(stream).await;
        if want(&envelope) {
            return envelope;
        }
    }
}

fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn wasm_monitor_raises_alerts_for_real_containers() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-wmon").tempdir_in("/tmp").unwrap();
    let out = scratch.path().join("alerts");
    let restart = "[plugins.\"monitor.restart\"]\ninterval = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"400ms\"\nbackoff_reset = \"1m\"\n";
    let tables = format!(
        "{}\n[plugins.\"service.tasks\"]\nmonitors = [\"cgroups\", \"restart\", \"watch\"]\n{restart}",
        watch_table(&out, "")
    );
    let daemon = Daemon::start_with(&tables);
    let client = daemon.client().await;
    let mut events = client
        .events()
        .subscribe(SubscribeRequest { filters: vec!["topic==/berth/alert".into(), "topic==/tasks/oom".into()] })
        .await
        .unwrap()
        .into_inner();

    // Introspection: a wasm monitor plugin, loaded, fed.
    let plugins = plugins_json(&daemon);
    let watch_row = plugin(&plugins, "monitor", "watch");
    assert_eq!(watch_row["type"], "io.containerd.monitor.task.v1", "{watch_row:#}");
    assert!(watch_row["init_err"].is_null(), "{watch_row:#}");
    assert_eq!(watch_row["exports"]["berth.source"], "wasm");
    assert_eq!(watch_row["exports"]["berth.sha256"], sha256_of(&watch_component()));
    assert_eq!(watch_row["exports"]["berth.world"], "berth:monitor/monitor-plugin@1.0.0");
    let table = daemon.berth_ok(&["plugins", "ls"]);
    let line = table.lines().find(|l| l.contains("watch")).expect(&table);
    assert!(line.contains("monitor") && line.contains("wasm") && line.trim_end().ends_with("ok"), "{line}");
    assert!(daemon.log_text().contains("monitors=[\"cgroups\", \"restart\", \"watch\"]"), "{}", daemon.log_text());
    // Its init's log line came through the host's log import, tagged with the plugin.
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("alerts go to /alerts/alerts.jsonl")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("monitor.watch"), "{line}");

    // A clean exit raises nothing; a non-zero one an exit alert.
    assert_eq!(run(&daemon, "wmon-ok", &[], "exit 0"), 0);
    assert_eq!(run(&daemon, "wmon-exit", &[], "exit 3"), 3);
    let alert = alert_fields(&next(&mut events).await);
    assert_eq!((alert["alert"].as_str(), alert["id"].as_str(), alert["status"].as_str()), ("exit", "wmon-exit", "3"));

    // Reloaded live (the same file again): a new generation serves the next calls.
    let reloaded = daemon.berth_ok(&["plugins", "reload", "monitor.watch"]);
    assert_eq!(reloaded, format!("monitor.watch reloaded: version 1.0.0, sha256:{}\n", sha256_of(&watch_component())));
    let plugins = plugins_json(&daemon);
    assert_eq!(plugin(&plugins, "monitor", "watch")["exports"]["berth.generation"], "2", "{plugins:#?}");

    // An OOM kill: monitor.cgroups' /tasks/oom, then the example's oom alert and the exit by SIGKILL.
    assert_eq!(run(&daemon, "wmon-oom", &["--memory-limit", "33554432"], "tail /dev/zero"), 137);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let envelope = next(&mut events).await;
        if envelope.topic == "/tasks/oom" {
            seen.push("/tasks/oom".to_string());
        } else {
            let alert = alert_fields(&envelope);
            assert_eq!(alert["id"], "wmon-oom", "{alert:?}");
            seen.push(format!("{} {}", alert["alert"], alert.get("status").map(String::as_str).unwrap_or("-")));
        }
    }
    seen.sort();
    assert_eq!(seen, ["/tasks/oom", "exit 137", "oom -"], "{}", daemon.log_text());

    // A restart loop: monitor.restart brings the container back, the example counts its exits.
    let rootfs = daemon.busybox_rootfs();
    // ctr's create would take `-c` for a flag of its own, so the command is a script in the rootfs.
    std::fs::write(rootfs.join("wmon-loop.sh"), "sleep 0.1; exit 1\n").unwrap();
    daemon.ctr_ok(&["containers", "create", "--rootfs", rootfs.to_str().unwrap(), "wmon-loop", "sh", "/wmon-loop.sh"]);
    daemon.ctr_ok(&["tasks", "start", "--null-io", "-d", "wmon-loop"]);
    daemon.ctr_ok(&["containers", "label", "wmon-loop", "containerd.io/restart.status=running"]);
    let looped = until(&mut events, |e| e.topic == "/berth/alert" && alert_fields(e)["alert"] == "restart-loop").await;
    let looped = alert_fields(&looped);
    assert_eq!(
        (looped["id"].as_str(), looped["exits"].as_str(), looped["window_secs"].as_str()),
        ("wmon-loop", "3", "60")
    );
    daemon.ctr_ok(&["containers", "label", "wmon-loop", "containerd.io/restart.status=stopped"]);
    // The next check kills a running task; ctr removes a stopped one with the container.
    eventually("wmon-loop removed", 20, || daemon.ctr(&["containers", "rm", "wmon-loop"]).status.success());

    // The same alerts, as JSON lines in the granted directory.
    let lines = alerts(&out.join("alerts.jsonl"));
    let kinds: Vec<String> =
        lines.iter().map(|l| format!("{} {}", l["alert"].as_str().unwrap(), l["id"].as_str().unwrap())).collect();
    for want in ["exit wmon-exit", "oom wmon-oom", "exit wmon-oom", "restart-loop wmon-loop"] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing from {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.ends_with("wmon-ok")), "{kinds:?}");
    let exit = lines.iter().find(|l| l["id"] == "wmon-exit").unwrap();
    assert_eq!(
        (exit["namespace"].as_str(), exit["exec_id"].as_str(), exit["status"].as_u64()),
        (Some("default"), Some(""), Some(3))
    );
    assert!(exit["pid"].as_u64().unwrap() > 0, "{exit}");
    let plugins = plugins_json(&daemon);
    assert!(plugin(&plugins, "monitor", "watch")["exports"]["berth.last_error"].is_null(), "{plugins:#?}");
}

#[tokio::test]
async fn wasm_monitor_faults_are_contained() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-wmon-faults").tempdir_in("/tmp").unwrap();
    let out = scratch.path().join("alerts");
    let limits = "call_timeout = \"300ms\"\nmemory_limit = \"16MiB\"";
    let tables = format!(
        "{}{}\n[plugins.\"service.tasks\"]\nmonitors = [\"faulty\", \"cgroups\", \"watch\"]\n",
        wasm_table("monitor.faulty", &faulty_component(), limits, ""),
        watch_table(&out, "")
    );
    let daemon = Daemon::start_with(&tables);
    let client = daemon.client().await;
    let mut events = client
        .events()
        .subscribe(SubscribeRequest { filters: vec!["topic==/berth/alert".into(), "topic==/faulty/seen".into()] })
        .await
        .unwrap()
        .into_inner();
    let plugins = plugins_json(&daemon);
    for name in ["faulty", "watch"] {
        assert!(plugin(&plugins, "monitor", name)["init_err"].is_null(), "monitor.{name}: {plugins:#?}");
    }

    // A healthy event first: the faulty monitor publishes what it saw, counting in its instance.
    assert_eq!(run(&daemon, "wmon-before", &[], "exit 0"), 0);
    let seen = until(&mut events, |e| e.topic == "/faulty/seen").await;
    assert_eq!(String::from_utf8_lossy(&seen.event.unwrap().value), "wmon-before created 1");

    // Tasks run and end as usual while the monitor traps, loops past its time limit or allocates past its
    // memory cap in every call about them; the watch monitor, fed after it, still raises its alerts.
    let last_error = || {
        plugin(&plugins_json(&daemon), "monitor", "faulty")["exports"]["berth.last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (id, want) in [
        ("wmon-trap", "plugin monitor.faulty: call event trapped: wasm trap: wasm `unreachable` instruction executed"),
        ("wmon-loop", "plugin monitor.faulty: call event exceeded its time limit of 300ms"),
        ("wmon-alloc", "plugin monitor.faulty: call event exceeded its memory limit of 16 MiB"),
    ] {
        assert_eq!(run(&daemon, id, &[], "exit 4"), 4, "{id}");
        let alert = until(&mut events, |e| e.topic == "/berth/alert").await;
        assert_eq!((alert_fields(&alert)["id"].as_str(), alert_fields(&alert)["status"].as_str()), (id, "4"));
        eventually(&format!("{id}: the fault as the last error"), 20, || last_error().contains(want));
        // Shown by berth plugins ls too.
        let table = daemon.berth_ok(&["plugins", "ls"]);
        let line = table.lines().find(|l| l.contains("faulty")).expect(&table);
        assert!(line.contains(want), "{line}");
    }
    assert!(daemon.log_text().contains("monitor call failed"), "{}", daemon.log_text());
    // What the component wrote to stderr (its panic message) is in berthd's log, tagged with the plugin.
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("asked to trap on an event of task wmon-trap") && l.contains("berth_plugin"))
        .unwrap_or_else(|| panic!("no panic message in:\n{log}"));
    assert!(line.contains("monitor.faulty"), "{line}");
    daemon.berth_ok(&["version"]);

    // Afterwards a fresh instance serves the next task's events: its count starts over.
    assert_eq!(run(&daemon, "wmon-after", &[], "exit 0"), 0);
    let seen = until(&mut events, |e| {
        e.topic == "/faulty/seen" && String::from_utf8_lossy(&e.event.as_ref().unwrap().value).starts_with("wmon-after")
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&seen.event.unwrap().value), "wmon-after created 1");
}
