//! What the tests of the alerting monitor examples (examples/native-monitor's `monitor.alerts`, examples/wasm
//! monitor's `monitor.watch`) share: the same alert rules, so the same alerts, as JSON lines and as
//! `/berth/alert` events, for the monitor suite's tasks and for real containers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use berth_core::testsuite::monitor as suite;
use containerd_client::tonic::Streaming;
use containerd_client::types::Envelope;
use prost::Message;

use crate::harness::*;

/// monitor.restart checking often and backing off briefly, so that a restart loop comes quickly.
pub(crate) const FAST_RESTARTS: &str = "[plugins.\"monitor.restart\"]\ninterval = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"400ms\"\nbackoff_reset = \"1m\"\n";

/// `tables` with the Tasks service feeding `monitors`, in that order, and `extra` after.
pub(crate) fn fed_in_order(tables: &str, monitors: &str, extra: &str) -> String {
    format!("{tables}\n[plugins.\"service.tasks\"]\nmonitors = [{monitors}]\n{extra}")
}

/// The alerts file's lines as JSON.
pub(crate) fn alerts(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

/// An alert event's fields, from its `google.protobuf.Struct`.
pub(crate) fn alert_fields(envelope: &Envelope) -> BTreeMap<String, String> {
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

/// Asserts what the monitor suite's exits were worth: the exec'd process's status 3, the unknown task's 137,
/// and the eight tasks' status 1, each a line of `lines` and an event of `events`; no line for the status-0
/// exits; an oom line for the unknown task.
pub(crate) async fn assert_suite_alerts(lines: &[serde_json::Value], events: &mut berth_core::events::Subscription) {
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
}

/// Runs `ctr run --rm` of a busybox rootfs; returns its exit code.
pub(crate) fn run(daemon: &Daemon, id: &str, extra: &[&str], script: &str) -> i32 {
    let rootfs = daemon.busybox_rootfs();
    let fifo = daemon.fifo_dir();
    let mut args = vec!["run", "--rm", "--fifo-dir", fifo.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap(), id, "sh", "-c", script]);
    let out = daemon.ctr(&args);
    let code = out.status.code().unwrap_or_else(|| panic!("ctr run {id}: {}", String::from_utf8_lossy(&out.stderr)));
    if !out.stderr.is_empty() {
        // Shown with the test's failure: a wrong exit code is ctr's own error more often than the task's.
        eprintln!("ctr run {id} (exit {code}): {}", String::from_utf8_lossy(&out.stderr));
    }
    code
}

/// The next event of `stream` within 30 s.
pub(crate) async fn next(stream: &mut Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("no event within 30 s")
        .unwrap()
        .expect("event stream ended")
}

/// Events of `stream` until one satisfies `want`, which is returned.
pub(crate) async fn until(stream: &mut Streaming<Envelope>, mut want: impl FnMut(&Envelope) -> bool) -> Envelope {
    loop {
        let envelope = next(stream).await;
        if want(&envelope) {
            return envelope;
        }
    }
}

/// A berthd feeding an alerting example after monitor.cgroups and monitor.restart, with [`FAST_RESTARTS`],
/// and its `/berth/alert` and `/tasks/oom` events; the containers it runs are named `{prefix}-…`, as
/// cgroups are host-wide.
pub(crate) struct RealContainers<'a> {
    daemon: &'a Daemon,
    events: Streaming<Envelope>,
    prefix: &'a str,
}

impl<'a> RealContainers<'a> {
    pub(crate) async fn watch(daemon: &'a Daemon, prefix: &'a str) -> Self {
        let events = daemon.subscribe(&["topic==/berth/alert", "topic==/tasks/oom"]).await;
        RealContainers { daemon, events, prefix }
    }

    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A clean exit raises nothing; a non-zero one an exit alert.
    pub(crate) async fn assert_exit_alert(&mut self) {
        assert_eq!(run(self.daemon, &self.id("ok"), &[], "exit 0"), 0);
        let id = self.id("exit");
        assert_eq!(run(self.daemon, &id, &[], "exit 3"), 3);
        let alert = alert_fields(&next(&mut self.events).await);
        assert_eq!((alert["alert"].as_str(), alert["id"].as_str(), alert["status"].as_str()), ("exit", &*id, "3"));
    }

    /// An OOM kill: monitor.cgroups' /tasks/oom, then the example's oom alert and the exit by SIGKILL.
    pub(crate) async fn assert_oom_alerts(&mut self) {
        let id = self.id("oom");
        assert_eq!(run(self.daemon, &id, &["--memory-limit", "33554432"], "tail /dev/zero"), 137);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let envelope = next(&mut self.events).await;
            if envelope.topic == "/tasks/oom" {
                seen.push("/tasks/oom".to_string());
            } else {
                let alert = alert_fields(&envelope);
                assert_eq!(alert["id"], id, "{alert:?}");
                seen.push(format!("{} {}", alert["alert"], alert.get("status").map(String::as_str).unwrap_or("-")));
            }
        }
        seen.sort();
        assert_eq!(seen, ["/tasks/oom", "exit 137", "oom -"], "{}", self.daemon.log_text());
    }

    /// A restart loop: monitor.restart brings the container back, the example counts its exits.
    pub(crate) async fn assert_restart_loop_alert(&mut self) {
        let daemon = self.daemon;
        let id = self.id("loop");
        let rootfs = daemon.busybox_rootfs();
        // ctr's create would take `-c` for a flag of its own, so the command is a script in the rootfs.
        std::fs::write(rootfs.join(format!("{id}.sh")), "sleep 0.1; exit 1\n").unwrap();
        let script = format!("/{id}.sh");
        daemon.ctr_ok(&["containers", "create", "--rootfs", rootfs.to_str().unwrap(), &id, "sh", &script]);
        daemon.ctr_ok(&["tasks", "start", "--null-io", "-d", &id]);
        daemon.ctr_ok(&["containers", "label", &id, "containerd.io/restart.status=running"]);
        let looped =
            until(&mut self.events, |e| e.topic == "/berth/alert" && alert_fields(e)["alert"] == "restart-loop").await;
        let looped = alert_fields(&looped);
        assert_eq!(
            (looped["id"].as_str(), looped["exits"].as_str(), looped["window_secs"].as_str()),
            (&*id, "3", "60")
        );
        daemon.ctr_ok(&["containers", "label", &id, "containerd.io/restart.status=stopped"]);
        // The next check kills a running task; ctr removes a stopped one with the container.
        eventually(&format!("{id} removed"), 20, || daemon.ctr(&["containers", "rm", &id]).status.success());
    }

    /// The same alerts, as JSON lines in `file`.
    pub(crate) fn assert_alert_lines(&self, file: &Path) {
        let lines = alerts(file);
        let kinds: Vec<String> =
            lines.iter().map(|l| format!("{} {}", l["alert"].as_str().unwrap(), l["id"].as_str().unwrap())).collect();
        let (exit, oom, looped) = (self.id("exit"), self.id("oom"), self.id("loop"));
        for want in
            [format!("exit {exit}"), format!("oom {oom}"), format!("exit {oom}"), format!("restart-loop {looped}")]
        {
            assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k.ends_with(&self.id("ok"))), "{kinds:?}");
        let exit = lines.iter().find(|l| l["id"] == exit).unwrap();
        assert_eq!(
            (exit["namespace"].as_str(), exit["exec_id"].as_str(), exit["status"].as_u64()),
            (Some("default"), Some(""), Some(3))
        );
        assert!(exit["pid"].as_u64().unwrap() > 0, "{exit}");
    }
}
