//! A task monitor as a wasm component: `monitor.watch`, an alert policy. It watches every task the Tasks
//! service feeds it and raises an alert when
//!
//! * a process exits with a non-zero status (`exit`; statuses listed in `ignore_statuses` do not count),
//! * a process is OOM-killed (`oom`),
//! * a container's init exits `restart_loop_exits` times within `restart_loop_window_secs` (`restart-loop`:
//!   a container that `monitor.restart` keeps bringing back, which is a new task of the same id each time).
//!
//! Each alert is one JSON line appended to `alerts.jsonl` in its directory and an event published into
//! berthd's event stream on `topic` (default `/berth/alert`) as a `google.protobuf.Struct` with the same
//! fields, which `ctr events` and every Events subscriber see. A container labelled `berth.alerts/ignore=true`
//! raises none.
//!
//! The component sees only the directory its table grants. berthd may replace an instance at any time (after
//! a trap, a hit limit, a reload) and may run several, so what must outlive one, the init exits each
//! container had within the window, is kept in `loops.json` there (written whole, then renamed), not in
//! memory.
//!
//! ```toml
//! [plugins."monitor.watch"]
//! source = "wasm"
//! path = "/usr/lib/berth/berth_example_wasm_monitor.wasm"
//! preopens = [{ host = "/var/log/berth/watch", guest = "/alerts" }]
//! [plugins."monitor.watch".config]
//! dir = "/alerts"                 # the granted directory as the component sees it (default /alerts)
//! topic = "/berth/alert"
//! exit_nonzero = true
//! ignore_statuses = [143]         # e.g. SIGTERM from `ctr tasks kill`
//! oom = true
//! restart_loop_exits = 3          # 0: no restart-loop alerts
//! restart_loop_window_secs = 60
//!
//! [plugins."service.tasks"]
//! monitors = ["cgroups", "restart", "watch"]
//! ```
//!
//! A line: `{"alert":"exit","namespace":"default","id":"web","exec_id":"","pid":4242,"status":3,
//! "time":"1764600000.123","labels":{...}}`; `oom` lines have no status, `restart-loop` lines carry `exits`
//! and `window_secs`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use berth_plugin_sdk::monitor::{Monitor, Task, TaskEvent};
use berth_plugin_sdk::proto::{Any, Message};
use berth_plugin_sdk::{Error, Host, Init, Result};
use prost_types::value::Kind;
use serde::{Deserialize, Serialize};

/// The label that silences a container.
pub const IGNORE_LABEL: &str = "berth.alerts/ignore";

/// `[plugins."monitor.watch".config]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The granted directory as the component sees it: `alerts.jsonl` and `loops.json` go there.
    pub dir: PathBuf,
    /// The topic alerts are published on.
    pub topic: String,
    /// Alert on processes that exit with a non-zero status.
    pub exit_nonzero: bool,
    /// Non-zero statuses that raise no exit alert.
    pub ignore_statuses: Vec<u32>,
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
            dir: "/alerts".into(),
            topic: "/berth/alert".into(),
            exit_nonzero: true,
            ignore_statuses: Vec::new(),
            oom: true,
            restart_loop_exits: 3,
            restart_loop_window_secs: 60,
        }
    }
}

/// One alert: a JSON object.
type Alert = serde_json::Map<String, serde_json::Value>;

/// `loops.json`: the recent init exits of each container, by `namespace/id`, as seconds since the epoch.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Loops {
    exits: BTreeMap<String, VecDeque<f64>>,
}

/// The alert policy.
pub struct Watch {
    config: Config,
    host: Host,
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn config_error(key: &str, message: String) -> Error {
    Error { config_path: vec![key.into()], ..Error::invalid_argument(message) }
}

impl Watch {
    fn alerts_file(&self) -> PathBuf {
        self.config.dir.join("alerts.jsonl")
    }

    fn loops_file(&self) -> PathBuf {
        self.config.dir.join("loops.json")
    }

    fn alert(&self, kind: &str, task: &Task, fields: Alert) -> Result<()> {
        let mut alert = Alert::new();
        alert.insert("alert".into(), kind.into());
        alert.insert("namespace".into(), task.namespace.clone().into());
        alert.insert("id".into(), task.id.clone().into());
        alert.extend(fields);
        alert.insert("time".into(), format!("{:.3}", seconds(SystemTime::now())).into());
        let labels: Alert = task.labels.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        alert.insert("labels".into(), labels.into());
        let mut line = serde_json::to_vec(&alert).map_err(|e| Error::internal(format!("encoding an alert: {e}")))?;
        line.push(b'\n');
        // One write of a whole line in append mode: lines of concurrent instances never interleave.
        let path = self.alerts_file();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format_args!("opening {}", path.display()), e))?;
        file.write_all(&line).map_err(|e| Error::io(format_args!("writing {}", path.display()), e))?;
        let event = Any { type_url: "google.protobuf.Struct".into(), value: to_struct(&alert).encode_to_vec() };
        self.host.publish(&task.namespace, &self.config.topic, event).map_err(|e| e.context("publishing an alert"))
    }

    /// Records an init exit of `task`'s container at `at`; the count within the window once it reaches the
    /// threshold (then the count starts over, so a loop raises one alert per `restart_loop_exits` exits).
    fn restart_loop(&self, task: &Task, at: SystemTime) -> Result<Option<usize>> {
        let threshold = self.config.restart_loop_exits;
        if threshold == 0 {
            return Ok(None);
        }
        let path = self.loops_file();
        let mut loops: Loops = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // A damaged file costs the windows, not the monitor.
                self.host.warn(&format!("{} is not valid, starting over: {e}", path.display()));
                Loops::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loops::default(),
            Err(e) => return Err(Error::io(format_args!("reading {}", path.display()), e)),
        };
        let (at, window) = (seconds(at), self.config.restart_loop_window_secs as f64);
        // Windows of containers that have been quiet for longer are dropped, so the file stays small.
        loops.exits.retain(|_, times| times.back().is_some_and(|last| at - last <= window));
        let times = loops.exits.entry(format!("{}/{}", task.namespace, task.id)).or_default();
        times.push_back(at);
        while times.front().is_some_and(|t| at - t > window) {
            times.pop_front();
        }
        let looped = times.len() >= threshold;
        if looped {
            times.clear();
        }
        let temporary = self.config.dir.join(".loops.json.new");
        let bytes = serde_json::to_vec(&loops).map_err(|e| Error::internal(format!("encoding the windows: {e}")))?;
        fs::write(&temporary, bytes).map_err(|e| Error::io(format_args!("writing {}", temporary.display()), e))?;
        fs::rename(&temporary, &path).map_err(|e| Error::io(format_args!("replacing {}", path.display()), e))?;
        Ok(looped.then_some(threshold))
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

impl Monitor for Watch {
    const NAME: &'static str = "watch";

    fn new(init: Init) -> Result<Self> {
        let config: Config = init.config()?;
        if !config.dir.is_absolute() {
            return Err(config_error("dir", format!("{} is not an absolute path", config.dir.display())));
        }
        if !config.topic.starts_with('/') {
            return Err(config_error("topic", format!("topic {:?} does not start with /", config.topic)));
        }
        let watch = Self { config, host: init.host };
        // The directory must be granted, writable: found out now rather than at the first alert.
        let path = watch.alerts_file();
        OpenOptions::new().create(true).append(true).open(&path).map_err(|e| {
            config_error(
                "dir",
                format!("cannot open {}: {e} (grant the directory with preopens of the table)", path.display()),
            )
        })?;
        watch.host.info(&format!("alerts go to {} and {}", path.display(), watch.config.topic));
        Ok(watch)
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
                if self.config.exit_nonzero && exit.status != 0 && !self.config.ignore_statuses.contains(&exit.status) {
                    let mut fields = Alert::new();
                    fields.insert("exec_id".into(), exec_id.clone().unwrap_or_default().into());
                    fields.insert("pid".into(), exit.pid.into());
                    fields.insert("status".into(), exit.status.into());
                    self.alert("exit", task, fields)?;
                }
                if exec_id.is_none()
                    && let Some(exits) = self.restart_loop(task, exit.exited_at)?
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

berth_plugin_sdk::export_monitor!(Watch);
