//! Task monitors from native libraries: the monitor conformance suite on the built-in monitors and on
//! examples/native-monitor (`monitor.alerts`) as berthd's registry loads it; the example fed by the Tasks
//! service of a real berthd, raising alerts (JSON lines and `/berth/alert` events) for real containers that
//! exit non-zero, are OOM-killed and loop through restarts; broken monitors (tests/plugins/faulty's
//! `monitor-panics` and `monitor-blocks` contained while tasks and the other monitors carry on, libraries
//! of the wrong kind or ABI refused). Container ids start with `nmon-`: cgroups are host-wide.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::events::Exchange;
use berth_core::filters::FilterSet;
use berth_core::monitor::{NoopMonitor, SharedMonitor};
use berth_core::registry::PluginState;
use berth_core::testsuite::monitor as suite;

use crate::harness::*;
use crate::monitor_fixtures::*;
use crate::native_plugins::{faulty_copies, init_error, library, native_table};
use crate::plugin_fixtures::{assert_loaded_from, plugin, plugin_status, plugins_json};

fn monitor_library() -> PathBuf {
    library("berth_example_native_monitor")
}

/// [`load_alone`] with this file's source and an event exchange.
async fn load_with_exchange(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_core::external::native::source(), dir, tables, true).await
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
    assert_eq!(plugin_status(&started, "monitor.alerts").state, PluginState::Loaded);
    let exchange = started.get::<Exchange>(&"event.exchange".parse().unwrap()).unwrap();
    let mut events = exchange.subscribe(FilterSet::parse_all(&["topic==/berth/alert"]).unwrap());
    let monitor: SharedMonitor =
        (*started.get::<SharedMonitor>(&"monitor.alerts".parse().unwrap()).expect("a SharedMonitor")).clone();
    suite::run_all(monitor.as_ref(), "conformance").await;

    assert_suite_alerts(&alerts(&file), &mut events).await;
    drop(monitor);
    started.shutdown();
}

/// The tables of berthd with the alerts example fed after the built-in monitors.
fn alerts_tables(file: &Path, monitors: &str, extra: &str) -> String {
    let alerts = native_table("monitor.alerts", &monitor_library(), &format!("alerts = \"{}\"", file.display()));
    fed_in_order(&alerts, monitors, extra)
}

#[tokio::test]
async fn native_monitor_raises_alerts_for_real_containers() {
    if !requires_root() {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("berth-nmon").tempdir_in("/tmp").unwrap();
    let file = scratch.path().join("alerts.jsonl");
    let daemon = Daemon::start_with(&alerts_tables(&file, "\"cgroups\", \"restart\", \"alerts\"", FAST_RESTARTS));
    let mut containers = RealContainers::watch(&daemon, "nmon").await;

    // Introspection: a native monitor plugin, loaded, fed.
    let alerts_row = assert_loaded_from(&daemon, "monitor", "alerts", "native", &monitor_library());
    assert_eq!(alerts_row["type"], "io.containerd.monitor.task.v1", "{alerts_row:#}");
    assert_eq!(alerts_row["exports"]["berth.abi"], "1.2");
    assert!(daemon.log_text().contains("monitors=[\"cgroups\", \"restart\", \"alerts\"]"), "{}", daemon.log_text());

    containers.assert_exit_alert().await;
    containers.assert_oom_alerts().await;
    containers.assert_restart_loop_alert().await;
    containers.assert_alert_lines(&file);
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
    let mut events = daemon.subscribe(&["topic==/berth/alert", "topic==/faulty/released", "topic==/tasks/exit"]).await;

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
