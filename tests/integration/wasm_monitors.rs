//! Task monitors as wasm components: the monitor conformance suite on examples/wasm/monitor (`monitor.watch`)
//! as berthd's registry loads it; components of the wrong kind and bad configs refused; the example fed by
//! the Tasks service of a real berthd, raising alerts (JSON lines in its granted directory and `/berth/alert`
//! events) for real containers run by ctr that exit non-zero, are OOM-killed and loop through restarts; a
//! monitor that traps, loops or allocates past its cap (examples/wasm/faulty-monitor) contained while tasks
//! and the other monitors carry on. Cgroups are host-wide, so every test has ids of its own: the alerts
//! test's start with `wmon-`, the faults test's with `wfault-` (the two ran `wmon-loop` at once and collided).
//!
//! The components are built apart from this workspace, for wasm32-wasip2 (see
//! [`BUILD`](crate::plugin_fixtures::BUILD)); .ci/test builds them before the tests.

use std::path::{Path, PathBuf};

use berth_core::events::Exchange;
use berth_core::filters::FilterSet;
use berth_core::monitor::{SharedMonitor, TaskEvent, TaskInfo};
use berth_core::registry::PluginState;
use berth_core::testsuite::monitor as suite;

use crate::harness::*;
use crate::monitor_fixtures::*;
use crate::plugin_fixtures::{
    assert_loaded_from, assert_logged_by, plugin, plugin_status, plugins_json, refusal, sha256_of, wasm_component,
    wasm_table,
};

fn watch_component() -> PathBuf {
    wasm_component("berth_example_wasm_monitor")
}

fn faulty_component() -> PathBuf {
    wasm_component("berth_test_wasm_faulty_monitor")
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

fn monitor(started: &berth_core::registry::Started, id: &str) -> SharedMonitor {
    (*started.get::<SharedMonitor>(&id.parse().unwrap()).expect("a wasm monitor plugin is a SharedMonitor")).clone()
}

#[tokio::test]
async fn wasm_monitor_example_passes_the_monitor_suite() {
    let scratch = tempfile::Builder::new().prefix("berth-wmon-suite").tempdir_in("/tmp").unwrap();
    let dir = scratch.path();
    let out = dir.join("out");
    let config = "restart_loop_exits = 2\nrestart_loop_window_secs = 600";
    let started = load_with_exchange(dir, &watch_table(&out, config)).await;
    let status = plugin_status(&started, "monitor.watch");
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

    // The suite's alerts, as lines in the granted directory.
    assert_suite_alerts(&alerts(&out.join("alerts.jsonl")), &mut events).await;
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
    let snapshot = wasm_component("berth_example_wasm_snapshot");
    let mut tables = String::new();
    // Components of the wrong kind for their tables, both ways.
    tables += &wasm_table("monitor.layers", &snapshot, "", "");
    tables += &wasm_table("snapshot.watch", &watch_component(), "", "");
    tables += &wasm_table("monitor.misnamed", &watch_component(), "", "");
    let started = load_with_exchange(dir, &tables).await;
    let e = refusal(&started, "monitor.layers");
    assert!(
        e.contains("the component is a snapshot plugin (it exports berth:snapshot/snapshotter@1.1.0), but its table [plugins.\"monitor.layers\"] makes it a monitor plugin"),
        "{e}"
    );
    let e = refusal(&started, "snapshot.watch");
    assert!(
        e.contains("the component is a monitor plugin (it exports berth:monitor/monitor@1.0.0), but its table [plugins.\"snapshot.watch\"] makes it a snapshot plugin"),
        "{e}"
    );
    let e = refusal(&started, "monitor.misnamed");
    assert!(
        e.contains("plugin is named \"watch\", but its table is [plugins.\"monitor.misnamed\"]: name the table [plugins.\"monitor.watch\"]"),
        "{e}"
    );
    started.shutdown();

    // Named right: its config's errors, located in the config file. Its directory not granted:
    let started = load_with_exchange(dir, &wasm_table("monitor.watch", &watch_component(), "", "")).await;
    let e = refusal(&started, "monitor.watch");
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
        let e = refusal(&started, "monitor.watch");
        assert!(e.contains("test.toml:") && e.contains(want), "{config}: expected {want:?}, got {e:?}");
        started.shutdown();
    }
}

#[tokio::test]
async fn wasm_monitor_raises_alerts_for_real_containers() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-wmon").tempdir_in("/tmp").unwrap();
    let out = scratch.path().join("alerts");
    let tables = fed_in_order(&watch_table(&out, ""), "\"cgroups\", \"restart\", \"watch\"", FAST_RESTARTS);
    let daemon = Daemon::start_with(&tables);
    let mut containers = RealContainers::watch(&daemon, "wmon").await;

    // Introspection: a wasm monitor plugin, loaded, fed.
    let watch_row = assert_loaded_from(&daemon, "monitor", "watch", "wasm", &watch_component());
    assert_eq!(watch_row["type"], "io.containerd.monitor.task.v1", "{watch_row:#}");
    assert_eq!(watch_row["exports"]["berth.world"], "berth:monitor/monitor-plugin@1.0.0");
    assert!(daemon.log_text().contains("monitors=[\"cgroups\", \"restart\", \"watch\"]"), "{}", daemon.log_text());
    // Its init's log line came through the host's log import, tagged with the plugin.
    assert_logged_by(&daemon, "monitor.watch", &["alerts go to /alerts/alerts.jsonl"]);

    containers.assert_exit_alert().await;

    // Reloaded live (the same file again): a new generation serves the next calls.
    let reloaded = daemon.berth_ok(&["plugins", "reload", "monitor.watch"]);
    assert_eq!(reloaded, format!("monitor.watch reloaded: version 1.0.0, sha256:{}\n", sha256_of(&watch_component())));
    let plugins = plugins_json(&daemon);
    assert_eq!(plugin(&plugins, "monitor", "watch")["exports"]["berth.generation"], "2", "{plugins:#?}");

    containers.assert_oom_alerts().await;
    containers.assert_restart_loop_alert().await;
    // The same alerts, as JSON lines in the granted directory.
    containers.assert_alert_lines(&out.join("alerts.jsonl"));
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
    let faulty = wasm_table("monitor.faulty", &faulty_component(), limits, "");
    let tables = fed_in_order(&(faulty + &watch_table(&out, "")), "\"faulty\", \"cgroups\", \"watch\"", "");
    let daemon = Daemon::start_with(&tables);
    let mut events = daemon.subscribe(&["topic==/berth/alert", "topic==/faulty/seen"]).await;
    let plugins = plugins_json(&daemon);
    for name in ["faulty", "watch"] {
        assert!(plugin(&plugins, "monitor", name)["init_err"].is_null(), "monitor.{name}: {plugins:#?}");
    }

    // A healthy event first: the faulty monitor publishes what it saw, counting in its instance.
    assert_eq!(run(&daemon, "wfault-before", &[], "exit 0"), 0);
    let seen = until(&mut events, |e| e.topic == "/faulty/seen").await;
    assert_eq!(String::from_utf8_lossy(&seen.event.unwrap().value), "wfault-before created 1");

    // Tasks run and end as usual while the monitor traps, loops past its time limit or allocates past its
    // memory cap in every call about them; the watch monitor, fed after it, still raises its alerts.
    let last_error = || {
        plugin(&plugins_json(&daemon), "monitor", "faulty")["exports"]["berth.last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (id, want) in [
        (
            "wfault-trap",
            "plugin monitor.faulty: call event trapped: wasm trap: wasm `unreachable` instruction executed",
        ),
        ("wfault-loop", "plugin monitor.faulty: call event exceeded its time limit of 300ms"),
        ("wfault-alloc", "plugin monitor.faulty: call event exceeded its memory limit of 16 MiB"),
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
    assert_logged_by(&daemon, "monitor.faulty", &["asked to trap on an event of task wfault-trap", "berth_plugin"]);
    daemon.berth_ok(&["version"]);

    // Afterwards a fresh instance serves the next task's events: its count starts over.
    assert_eq!(run(&daemon, "wfault-after", &[], "exit 0"), 0);
    let seen = until(&mut events, |e| {
        e.topic == "/faulty/seen"
            && String::from_utf8_lossy(&e.event.as_ref().unwrap().value).starts_with("wfault-after")
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&seen.event.unwrap().value), "wfault-after created 1");
}
