//! A task monitor as a native berth plugin: `monitor.alerts`, an alert policy. It watches every task the
//! Tasks service feeds it and raises an alert when
//!
//! * a process exits with a non-zero status (`exit`),
//! * a process is OOM-killed (`oom`),
//! * a container's init exits `restart_loop_exits` times within `restart_loop_window_secs` (`restart-loop`:
//!   a container that `monitor.restart` keeps bringing back, which is a new task of the same id each time).
//!
//! Each alert is one JSON line appended to the `alerts` file and an event published into berthd's event
//! stream on `topic` (default `/berth/alert`) as a `google.protobuf.Struct` with the same fields, which
//! `ctr events` and every Events subscriber see. A container labelled `berth.alerts/ignore=true` raises none.
//!
//! ```toml
//! [plugins."monitor.alerts"]
//! source = "native"
//! path = "/usr/lib/berth/libberth_example_native_monitor.so"
//! [plugins."monitor.alerts".config]
//! alerts = "/var/log/berth/alerts.jsonl"  # default: alerts.jsonl in berthd's directory for the plugin
//! topic = "/berth/alert"
//! exit_nonzero = true
//! oom = true
//! restart_loop_exits = 3                  # 0: no restart-loop alerts
//! restart_loop_window_secs = 60
//!
//! [plugins."service.tasks"]
//! monitors = ["cgroups", "restart", "alerts"]
//! ```
//!
//! A line: `{"alert":"exit","namespace":"default","id":"web","exec_id":"","pid":4242,"status":3,
//! "time":"1764600000.123","labels":{...}}`; `oom` lines have no status, `restart-loop` lines carry `exits`
//! and `window_secs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use berth_plugin_sdk::monitor::{Monitor, Task, TaskEvent};
use berth_plugin_sdk::proto::{Any, Message};
use berth_plugin_sdk::{Error, Host, Init, Result};
use prost_types::value::Kind;
use serde::Deserialize;

/// The label that silences a container.
pub const IGNORE_LABEL: &str = "berth.alerts/ignore";

/// `[plugins."monitor.alerts".config]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The JSON-lines file alerts are appended to; empty: `alerts.jsonl` in the plugin's root directory.
    pub alerts: PathBuf,
    /// The topic alerts are published on.
    pub topic: String,
    /// Alert on processes that exit with a non-zero status.
    pub exit_nonzero: bool,
    /// Alert on OOM kills.
    pub oom: bool,
    /// Alert when a container's init exits this many times within the window; 0: never.
    pub restart_loop_exits: usize,
    /// The window of `restart_loop_exits`, in seconds.
    pub restart_loop_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            alerts: PathBuf::new(),
            topic: "/berth/alert".into(),
            exit_nonzero: true,
            oom: true,
            restart_loop_exits: 3,
            restart_loop_window_secs: 60,
        }
    }
}

/// One alert: a JSON object with string, number and object fields.
type Alert = serde_json::Map<String, serde_json::Value>;

/// The alert policy.
pub struct Alerts {
    config: Config,
    alerts: PathBuf,
    host: Host,
    /// Init exit times of each container (namespace, id) within the window; kept across its tasks.
    exits: Mutex<HashMap<(String, String), VecDeque<SystemTime>>>,
    /// Appends are whole lines under this lock, so concurrent alerts never interleave.
    file: Mutex<()>,
}

fn seconds(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

impl Alerts {
    fn alert(&self, kind: &str, task: &Task, fields: Alert) -> Result<()> {
        let mut alert = Alert::new();
        alert.insert("alert".into(), kind.into());
        alert.insert("namespace".into(), task.namespace.clone().into());
        alert.insert("id".into(), task.id.clone().into());
        alert.extend(fields);
        alert.insert("time".into(), seconds(SystemTime::now()).into());
        let labels: serde_json::Map<String, serde_json::Value> =
            task.labels.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        alert.insert("labels".into(), labels.into());
        let mut line = serde_json::to_vec(&alert).map_err(|e| Error::internal(format!("encoding an alert: {e}")))?;
        line.push(b'\n');
        {
            let _guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.alerts)
                .map_err(|e| Error::io(format_args!("opening {}", self.alerts.display()), e))?;
            file.write_all(&line).map_err(|e| Error::io(format_args!("writing {}", self.alerts.display()), e))?;
        }
        let event = Any { type_url: "google.protobuf.Struct".into(), value: to_struct(&alert).encode_to_vec() };
        self.host.publish(&task.namespace, &self.config.topic, event).map_err(|e| e.context("publishing an alert"))
    }

    /// Records an init exit of `task`'s container at `at`; the count within the window once it reaches the
    /// threshold (then the count starts over, so a loop raises one alert per `restart_loop_exits` exits).
    fn restart_loop(&self, task: &Task, at: SystemTime) -> Option<usize> {
        let threshold = self.config.restart_loop_exits;
        if threshold == 0 {
            return None;
        }
        let window = Duration::from_secs(self.config.restart_loop_window_secs);
        let mut exits = self.exits.lock().unwrap_or_else(PoisonError::into_inner);
        let times = exits.entry((task.namespace.clone(), task.id.clone())).or_default();
        times.push_back(at);
        while times.front().is_some_and(|t| at.duration_since(*t).unwrap_or_default() > window) {
            times.pop_front();
        }
        if times.len() >= threshold {
            times.clear();
            return Some(threshold);
        }
        None
    }
}

/// A JSON object as a protobuf Struct.
fn to_struct(object: &Alert) -> prost_types::Struct {
    fn value(v: &serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => {
                Kind::ListValue(prost_types::ListValue { values: a.iter().map(value).collect() })
            }
            serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct { fields: object.iter().map(|(k, v)| (k.clone(), value(v))).collect::<BTreeMap<_, _>>() }
}

impl Monitor for Alerts {
    const NAME: &'static str = "alerts";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        let alerts = if config.alerts.as_os_str().is_empty() {
            init.root_dir.join("alerts.jsonl")
        } else {
            config.alerts.clone()
        };
        if !alerts.is_absolute() {
            let mut e = Error::invalid_argument(format!("{} is not an absolute path", alerts.display()));
            e.config_path = vec!["alerts".into()];
            return Err(e);
        }
        if let Some(parent) = alerts.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format_args!("creating {}", parent.display()), e))?;
        }
        init.host.info(&format!("alerts go to {} and {}", alerts.display(), config.topic));
        Ok(Self { config, alerts, host: init.host, exits: Mutex::new(HashMap::new()), file: Mutex::new(()) })
    }

    fn monitor(&self, _task: &Task) -> Result<()> {
        Ok(())
    }

    /// Forgets nothing: a restarted container is a new task of the same id, and its loop spans tasks.
    fn stop(&self, _task: &Task) -> Result<()> {
        Ok(())
    }

    fn event(&self, task: &Task, event: &TaskEvent) -> Result<()> {
        if task.labels.get(IGNORE_LABEL).is_some_and(|v| v == "true") {
            return Ok(());
        }
        match event {
            TaskEvent::Oom if self.config.oom => self.alert("oom", task, Alert::new()),
            TaskEvent::Exited { exec_id, exit } => {
                if self.config.exit_nonzero && exit.status != 0 {
                    let mut fields = Alert::new();
                    fields.insert("exec_id".into(), exec_id.clone().unwrap_or_default().into());
                    fields.insert("pid".into(), exit.pid.into());
                    fields.insert("status".into(), exit.status.into());
                    self.alert("exit", task, fields)?;
                }
                if exec_id.is_none()
                    && let Some(exits) = self.restart_loop(task, exit.exited_at)
                {
                    let mut fields = Alert::new();
                    fields.insert("exits".into(), exits.into());
                    fields.insert("window_secs".into(), self.config.restart_loop_window_secs.into());
                    self.alert("restart-loop", task, fields)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

berth_plugin_sdk::export_monitor!(Alerts);

#[cfg(test)]
mod tests {
    use berth_plugin_sdk::monitor::Exit;

    use super::*;

    fn alerts(dir: &std::path::Path, config: &str) -> Alerts {
        Alerts::new(Init::for_tests("monitor.alerts", config, dir)).unwrap()
    }

    fn lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("root/alerts.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn task(id: &str) -> Task {
        Task { namespace: "ns".into(), id: id.into(), runtime: "linux".into(), pid: 5, labels: BTreeMap::new() }
    }

    fn exited(status: u32, at: SystemTime) -> TaskEvent {
        TaskEvent::Exited { exec_id: None, exit: Exit { pid: 5, status, exited_at: at } }
    }

    // A detached host cannot publish: the alert is written, then the call reports the publish failure.
    #[test]
    fn exits_and_ooms_are_written_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = alerts(dir.path(), r#"{"restart_loop_exits": 0}"#);
        let now = SystemTime::now();
        monitor.event(&task("ok"), &exited(0, now)).unwrap();
        let e = monitor.event(&task("bad"), &exited(3, now)).unwrap_err();
        assert!(e.message.contains("publishing an alert: no host"), "{e}");
        let _ = monitor.event(&task("big"), &TaskEvent::Oom);
        let mut quiet = task("quiet");
        quiet.labels.insert(IGNORE_LABEL.into(), "true".into());
        monitor.event(&quiet, &exited(1, now)).unwrap();
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (lines[0]["alert"].as_str(), lines[0]["id"].as_str(), lines[0]["status"].as_u64()),
            (Some("exit"), Some("bad"), Some(3))
        );
        assert_eq!((lines[1]["alert"].as_str(), lines[1]["id"].as_str()), (Some("oom"), Some("big")));
    }

    #[test]
    fn a_restart_loop_is_n_init_exits_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let monitor =
            alerts(dir.path(), r#"{"exit_nonzero": false, "restart_loop_exits": 3, "restart_loop_window_secs": 10}"#);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Two exits, then one 20 s later: the first two fell out of the window.
        for s in [0, 1, 21] {
            monitor.event(&task("loop"), &exited(1, at(s))).unwrap();
        }
        assert!(lines(dir.path()).is_empty());
        // An exec'd process's exit does not count.
        let exec = TaskEvent::Exited { exec_id: Some("e".into()), exit: Exit { pid: 6, status: 1, exited_at: at(22) } };
        monitor.event(&task("loop"), &exec).unwrap();
        assert!(lines(dir.path()).is_empty());
        monitor.event(&task("loop"), &exited(0, at(22))).unwrap();
        let _ = monitor.event(&task("loop"), &exited(0, at(23)));
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!((lines[0]["alert"].as_str(), lines[0]["exits"].as_u64()), (Some("restart-loop"), Some(3)));
    }

    #[test]
    fn config_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let e = Alerts::new(Init::for_tests("monitor.alerts", r#"{"alert": "/x"}"#, dir.path())).err().unwrap();
        assert_eq!(e.config_path, ["alert"]);
        let e = Alerts::new(Init::for_tests("monitor.alerts", r#"{"alerts": "x.jsonl"}"#, dir.path())).err().unwrap();
        assert_eq!(e.config_path, ["alerts"]);
    }
}
