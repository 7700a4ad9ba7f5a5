//! Task monitors from native libraries: the monitor conformance suite on the built-in monitors and on
//! examples/native-monitor (`monitor.alerts`) as berthd's registry loads it; the example fed by the Tasks
//! service of a real berthd, raising alerts (JSON lines and `/berth/alert` events) for real containers that
//! exit non-zero, are OOM-killed and loop through restarts; broken monitors (tests/plugins/faulty's
//! `monitor-panics` and `monitor-blocks` contained while tasks and the other monitors carry on, libraries
//! of the wrong kind or ABI refused). Container ids start with `nmon-`: cgroups are host-wide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::events::Exchange;
use berth_core::filters::FilterSet;
use berth_core::monitor::{NoopMonitor, SharedMonitor};
use berth_core::registry::PluginState;
use berth_core::testsuite::monitor as suite;
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::types::Envelope;
use prost::Message;

use crate::harness::*;
use crate::native_plugins::{faulty_copies, init_error, library, native_table, plugin, plugins_json, sha256_of};

fn monitor_library() -> PathBuf {
    library("berth_example_native_monitor")
}

/// [`load_alone`] with this file's source and an event exchange.
async fn load_with_exchange(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_core::external::native::source(), dir, tables, true).await
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
async fn native_monitor_example_and_built_in_monitors_pass_the_monitor_suite() {
    // The built-in ones, on tasks of a runtime they have no business reading.
    suite::run_all(&NoopMonitor, "conformance").await;
    let scratch = tempfile::Builder::new().prefix("berth-nmon-suite").tempdir_in("/tmp").unwrap();
    let cgroups = berth_plugin_linux::monitor::CgroupsMonitor::new(scratch.path().join("oci"), Exchange::new());
    suite::run_all(&cgroups, "conformance").await;
    let restart = berth_plugin_monitor_restart::RestartMonitor::new(
        berth_plugin_monitor_restart::RestartConfig::default(),
        scratch.path().join("no-berthd.sock"),
    );
    suite::run_all(&restart, "conformance").await;
    restart.shut_down();

    // The native example, as berthd's registry loads it.
    let dir = scratch.path();
    let file = dir.join("out/alerts.jsonl");
    let config = format!("alerts = \"{}\"\nrestart_loop_exits = 2\nrestart_loop_window_secs = 600", file.display());
    let started = load_with_exchange(dir, &native_table("monitor.alerts", &monitor_library(), &config)).await;
    let state = started
        .table
        .read()
        .unwrap()
        .plugins
        .iter()
        .find(|p| p.id.to_string() == "monitor.alerts")
        .unwrap()
        .state
        .clone();
    assert_eq!(state, PluginState::Loaded);
    let exchange = started.get::<Exchange>(&"event.exchange".parse().unwrap()).unwrap();
    let mut events = exchange.subscribe(FilterSet::parse_all(&["topic==/berth/alert"]).unwrap());
    let monitor: SharedMonitor =
        (*started.get::<SharedMonitor>(&"monitor.alerts".parse().unwrap()).expect("a SharedMonitor")).clone();
    suite::run_all(monitor.as_ref(), "conformance").await;

    // What the suite's exits were worth: the exec'd process's status 3, the unknown task's 137, and the
    // eight tasks' status 1, each a line and an event; no line for the status-0 exits.
    let lines = alerts(&file);
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
    drop(monitor);
    started.shutdown();
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

/// The tables of berthd with the alerts example fed after the built-in monitors.
fn alerts_tables(file: &Path, monitors: &str, extra: &str) -> String {
    format!(
        "{}\n[plugins.\"service.tasks\"]\nmonitors = [{monitors}]\n{extra}",
        native_table("monitor.alerts", &monitor_library(), &format!("alerts = \"{}\"", file.display()))
    )
}

#[tokio::test]
async fn native_monitor_raises_alerts_for_real_containers() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-nmon").tempdir_in("/tmp").unwrap();
    let file = scratch.path().join("alerts.jsonl");
    let restart = "[plugins.\"monitor.restart\"]\ninterval = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"400ms\"\nbackoff_reset = \"1m\"\n";
    let daemon = Daemon::start_with(&alerts_tables(&file, "\"cgroups\", \"restart\", \"alerts\"", restart));
    let client = daemon.client().await;
    let mut events = client
        .events()
        .subscribe(SubscribeRequest { filters: vec!["topic==/berth/alert".into(), "topic==/tasks/oom".into()] })
        .await
        .unwrap()
        .into_inner();

    // Introspection: a native monitor plugin, loaded, fed.
    let plugins = plugins_json(&daemon);
    let alerts_row = plugin(&plugins, "monitor", "alerts");
    assert_eq!(alerts_row["type"], "io.containerd.monitor.task.v1", "{alerts_row:#}");
    assert!(alerts_row["init_err"].is_null(), "{alerts_row:#}");
    assert_eq!(alerts_row["exports"]["berth.source"], "native");
    assert_eq!(alerts_row["exports"]["berth.sha256"], sha256_of(&monitor_library()));
    assert_eq!(alerts_row["exports"]["berth.abi"], "1.2");
    let table = daemon.berth_ok(&["plugins", "ls"]);
    let row = table.lines().find(|l| l.contains("alerts")).expect(&table);
    assert!(row.contains("monitor") && row.contains("native") && row.trim_end().ends_with("ok"), "{row}");
    assert!(daemon.log_text().contains("monitors=[\"cgroups\", \"restart\", \"alerts\"]"), "{}", daemon.log_text());

    // A clean exit raises nothing; a non-zero one an exit alert.
    assert_eq!(run(&daemon, "nmon-ok", &[], "exit 0"), 0);
    assert_eq!(run(&daemon, "nmon-exit", &[], "exit 3"), 3);
    let alert = alert_fields(&next(&mut events).await);
    assert_eq!((alert["alert"].as_str(), alert["id"].as_str(), alert["status"].as_str()), ("exit", "nmon-exit", "3"));

    // An OOM kill: monitor.cgroups' /tasks/oom, then the example's oom alert and the exit by SIGKILL.
    assert_eq!(run(&daemon, "nmon-oom", &["--memory-limit", "33554432"], "tail /dev/zero"), 137);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let envelope = next(&mut events).await;
        if envelope.topic == "/tasks/oom" {
            seen.push("/tasks/oom".to_string());
        } else {
            let alert = alert_fields(&envelope);
            assert_eq!(alert["id"], "nmon-oom", "{alert:?}");
            seen.push(format!("{} {}", alert["alert"], alert.get("status").map(String::as_str).unwrap_or("-")));
        }
    }
    seen.sort();
    assert_eq!(seen, ["/tasks/oom", "exit 137", "oom -"], "{}", daemon.log_text());

    // A restart loop: monitor.restart brings the container back, the example counts its exits.
    let rootfs = daemon.busybox_rootfs();
    // ctr's create would take `-c` for a flag of its own, so the command is a script in the rootfs.
    std::fs::write(rootfs.join("nmon-loop.sh"), "sleep 0.1; exit 1\n").unwrap();
    daemon.ctr_ok(&["containers", "create", "--rootfs", rootfs.to_str().unwrap(), "nmon-loop", "sh", "/nmon-loop.sh"]);
    daemon.ctr_ok(&["tasks", "start", "--null-io", "-d", "nmon-loop"]);
    daemon.ctr_ok(&["containers", "label", "nmon-loop", "containerd.io/restart.status=running"]);
    let looped = until(&mut events, |e| e.topic == "/berth/alert" && alert_fields(e)["alert"] == "restart-loop").await;
    let looped = alert_fields(&looped);
    assert_eq!(
        (looped["id"].as_str(), looped["exits"].as_str(), looped["window_secs"].as_str()),
        ("nmon-loop", "3", "60")
    );
    daemon.ctr_ok(&["containers", "label", "nmon-loop", "containerd.io/restart.status=stopped"]);
    // The next check kills a running task; ctr removes a stopped one with the container.
    eventually("nmon-loop removed", 20, || daemon.ctr(&["containers", "rm", "nmon-loop"]).status.success());

    // The same alerts, as JSON lines in the file from the config.
    let lines = alerts(&file);
    let kinds: Vec<String> =
        lines.iter().map(|l| format!("{} {}", l["alert"].as_str().unwrap(), l["id"].as_str().unwrap())).collect();
    for want in ["exit nmon-exit", "oom nmon-oom", "exit nmon-oom", "restart-loop nmon-loop"] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing from {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.ends_with("nmon-ok")), "{kinds:?}");
    let exit = lines.iter().find(|l| l["id"] == "nmon-exit").unwrap();
    assert_eq!(
        (exit["namespace"].as_str(), exit["exec_id"].as_str(), exit["status"].as_u64()),
        (Some("default"), Some(""), Some(3))
    );
    assert!(exit["pid"].as_u64().unwrap() > 0, "{exit}");
    let plugins = plugins_json(&daemon);
    assert!(plugin(&plugins, "monitor", "alerts")["exports"]["berth.last_error"].is_null(), "{plugins:#?}");
}

#[tokio::test]
async fn native_monitor_faults_are_contained() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-nmon-faults").tempdir_in("/tmp").unwrap();
    let dir = scratch.path();
    let copies = faulty_copies(dir, &["monitor-panics", "monitor-blocks", "a-snapshotter", "monitor-old"]);
    let gate = dir.join("gate");
    let file = dir.join("alerts.jsonl");
    let mut tables = alerts_tables(&file, "\"monitor-panics\", \"monitor-blocks\", \"cgroups\", \"alerts\"", "");
    tables += &native_table("monitor.monitor-panics", &copies[0], "");
    tables += &native_table("monitor.monitor-blocks", &copies[1], &format!("gate = \"{}\"", gate.display()));
    // Libraries of the wrong kind for their tables, both ways.
    tables += &native_table("monitor.a-snapshotter", &copies[2], "");
    tables += &native_table("snapshot.alerts", &monitor_library(), "");
    // A monitor header from before monitors were part of the ABI.
    tables += &native_table("monitor.monitor-old", &copies[3], "");
    let daemon = Daemon::start_with(&tables);
    let client = daemon.client().await;
    let mut events = client
        .events()
        .subscribe(SubscribeRequest {
            filters: vec!["topic==/berth/alert".into(), "topic==/faulty/released".into(), "topic==/tasks/exit".into()],
        })
        .await
        .unwrap()
        .into_inner();

    let plugins = plugins_json(&daemon);
    let e = init_error(&plugins, "monitor", "a-snapshotter");
    assert!(
        e.contains(
            "plugin is a snapshot plugin, but its table [plugins.\"monitor.a-snapshotter\"] makes it a monitor plugin"
        ),
        "{e}"
    );
    let e = init_error(&plugins, "snapshot", "alerts");
    assert!(
        e.contains(
            "plugin is a monitor plugin, but its table [plugins.\"snapshot.alerts\"] makes it a snapshot plugin"
        ),
        "{e}"
    );
    let e = init_error(&plugins, "monitor", "monitor-old");
    assert!(e.contains("plugin is built for ABI 1.0, which has no monitor kind (monitors came with ABI 1.1)"), "{e}");
    for name in ["monitor-panics", "monitor-blocks", "alerts"] {
        assert!(plugin(&plugins, "monitor", name)["init_err"].is_null(), "monitor.{name}: {plugins:#?}");
    }

    // Tasks run and end as usual while one monitor panics in every event and another is stuck in its first.
    assert_eq!(run(&daemon, "nmon-fault1", &[], "exit 5"), 5);
    assert_eq!(run(&daemon, "nmon-fault2", &[], "echo fine"), 0);
    // The alerts monitor, fed after both, saw the exit while the blocked one still waits at its gate.
    let mut topics = Vec::new();
    let alert = until(&mut events, |e| {
        topics.push(e.topic.clone());
        e.topic == "/berth/alert"
    })
    .await;
    assert_eq!(alert_fields(&alert)["id"], "nmon-fault1");
    assert!(!topics.iter().any(|t| t == "/faulty/released"), "{topics:?}");
    assert!(!gate.exists());

    // The panics are the plugin's last error; berthd and the plugins stay up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let plugins = plugins_json(&daemon);
        let last = plugin(&plugins, "monitor", "monitor-panics")["exports"]["berth.last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !last.is_empty() || Instant::now() > deadline {
            break last;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(last.starts_with("event: plugin panicked: asked to watch an event of task nmon-fault"), "{last}");
    assert!(daemon.log_text().contains("monitor call failed"), "{}", daemon.log_text());
    daemon.berth_ok(&["version"]);

    // Released, the blocked monitor works through its queue and publishes.
    std::fs::write(&gate, "").unwrap();
    let released = until(&mut events, |e| e.topic == "/faulty/released").await;
    assert!(String::from_utf8_lossy(&released.event.unwrap().value).starts_with("nmon-fault"));
    // And tasks still run afterwards, with their alerts.
    assert_eq!(run(&daemon, "nmon-fault3", &[], "exit 6"), 6);
    let alert = until(&mut events, |e| e.topic == "/berth/alert" && alert_fields(e)["id"] == "nmon-fault3").await;
    assert_eq!(alert_fields(&alert)["status"], "6");
}
