//! The `monitor.restart` plugin: keeps containers that carry `containerd.io/restart.status=running`
//! running, as containerd's restart monitor (`runtime/restart/monitor`) does, with back-off.
//!
//! - When the init process of such a container's task exits, the monitor waits (back-off: the
//!   n-th restart in a row waits `backoff_base × 2ⁿ`, at most `backoff_max`; a task that ran
//!   `backoff_reset` or longer starts the count over), removes the stopped task and creates and
//!   starts a new one from the container record: its snapshot's mounts (or the spec's root path),
//!   its spec, and stdout and stderr appended to the file `containerd.io/restart.loguri`
//!   (`file:///path`) or `containerd.io/restart.logpath` names, else no stdio. It counts its
//!   restarts in the container's `containerd.io/restart.count` label.
//! - Every `interval` (containerd's 10 s) it checks every labelled container of every namespace:
//!   one whose task is missing or stopped (berthd restarted, the host rebooted, an exit was
//!   missed) is restarted the same way; one labelled `containerd.io/restart.status=stopped` whose
//!   task runs has it killed and removed.
//! - `containerd.io/restart.policy` (`always`, the default; `on-failure[:N]`; `unless-stopped`;
//!   `no`) and `containerd.io/restart.explicitly-stopped` are honoured as containerd does.
//!
//! Every restart re-reads the container first: once it is deleted or its label no longer says
//! running, no restart happens. The monitor acts through berthd's own containerd API (see
//! [`client`]), so a task it makes is like any client's; the Tasks service removes a task whose
//! container is deleted while it is being made, so restarts racing deletions leave nothing behind.

pub mod backoff;
pub mod client;
pub mod labels;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_core::monitor::{Monitor, MonitorError, Result, SharedMonitor, TaskEvent, TaskInfo};
use berth_core::plugin::{Instance, PluginKind, Registration};
use berth_core::runtime::Exit;
use serde::{Deserialize, Deserializer};
use tokio::sync::{OnceCell, watch};
use tonic::Code;

use backoff::Backoff;
use client::{Client, describe};
use labels::{Decision, Desired, Observed, Policy};

/// `[plugins."monitor.restart"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// How often every labelled container is checked against its task; 0 means containerd's 10 s.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// The wait before the first restart in a row.
    #[serde(deserialize_with = "duration")]
    pub backoff_base: Duration,
    /// The longest wait between restarts.
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// A task that ran at least this long before it exited starts the back-off over.
    #[serde(deserialize_with = "duration")]
    pub backoff_reset: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
            backoff_reset: Duration::from_secs(10),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    berth_core::gc::scheduler::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The plugin's registration.
pub fn registration() -> Registration {
    Registration::new::<RestartConfig, _, _>(PluginKind::Monitor, "restart", |ctx| {
        let config = ctx.config::<RestartConfig>();
        let socket = ctx.daemon_config().grpc.address.clone();
        async move {
            let monitor = RestartMonitor::new((*config).clone(), socket);
            let stopping = monitor.clone();
            Ok(Instance::new(Arc::new(monitor) as SharedMonitor).on_shutdown(move || stopping.shut_down()))
        }
    })
    .describe("task monitor: restarts containers labelled containerd.io/restart.status=running, with back-off")
}

type Key = (String, String);

/// What the monitor keeps about one container.
#[derive(Debug, Default)]
struct Entry {
    /// Restarts in a row, for the back-off.
    restarts: u32,
    /// When its task last started.
    started: Option<SystemTime>,
    /// The pid of the task the monitor last started.
    pid: u32,
    /// A restart is waiting or under way.
    busy: bool,
    /// An exit that came while a restart was under way (a process that ended at once).
    pending: Option<Exit>,
    /// The exit status of its last exit, for a restart policy when the task was removed since.
    last_exit: Option<u32>,
}

/// How one restart went.
#[derive(Debug)]
enum Outcome {
    Started(u32),
    Left(&'static str),
    Gone,
    Failed(String),
}

struct Inner {
    config: RestartConfig,
    backoff: Backoff,
    socket: PathBuf,
    client: OnceCell<Client>,
    entries: Mutex<HashMap<Key, Entry>>,
    active: AtomicBool,
    stopping: watch::Sender<bool>,
}

/// The restart monitor.
#[derive(Clone)]
pub struct RestartMonitor {
    inner: Arc<Inner>,
}

impl RestartMonitor {
    /// A monitor that acts through berthd's socket at `socket`. It stays idle until activated.
    pub fn new(config: RestartConfig, socket: PathBuf) -> Self {
        let backoff = Backoff { base: config.backoff_base, max: config.backoff_max, reset: config.backoff_reset };
        Self {
            inner: Arc::new(Inner {
                config,
                backoff,
                socket,
                client: OnceCell::new(),
                entries: Mutex::new(HashMap::new()),
                active: AtomicBool::new(false),
                stopping: watch::channel(false).0,
            }),
        }
    }

    /// Stops the periodic check and every waiting restart (berthd is stopping).
    pub fn shut_down(&self) {
        self.inner.stopping.send_replace(true);
    }
}

/// The labels of a container the monitor manages are checked when its task is first monitored,
/// so a mistake shows up in the log when the container is run, not only when it exits.
fn check_labels(labels: &BTreeMap<String, String>) -> std::result::Result<(), labels::LabelError> {
    if labels::desired(labels)?.is_none() {
        return Ok(());
    }
    let policy = Policy::of(labels)?;
    if matches!(policy, Policy::OnFailure { .. }) {
        labels::count(labels)?;
    }
    labels::log_file(labels)?;
    Ok(())
}

#[async_trait::async_trait]
impl Monitor for RestartMonitor {
    async fn activate(&self) -> Result<()> {
        if !self.inner.active.swap(true, Ordering::SeqCst) {
            tokio::spawn(Arc::clone(&self.inner).run());
        }
        Ok(())
    }

    async fn monitor(&self, task: &TaskInfo) -> Result<()> {
        check_labels(&task.labels)
            .map_err(|e| MonitorError::new(format!("container {:?}: {e}: it will not be restarted", task.id)))
    }

    async fn stop(&self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    async fn event(&self, task: &TaskInfo, event: &TaskEvent) -> Result<()> {
        if !self.inner.active.load(Ordering::SeqCst) {
            return Ok(());
        }
        let wanted = labels::desired(&task.labels)
            .map_err(|e| MonitorError::new(format!("container {:?}: {e}", task.id)))?
            == Some(Desired::Running);
        if !wanted {
            return Ok(());
        }
        let key = (task.namespace.clone(), task.id.clone());
        match event {
            TaskEvent::Started { .. } => {
                self.inner.entries.lock().expect("entries lock").entry(key).or_default().started =
                    Some(SystemTime::now());
            }
            TaskEvent::Exited { exec_id: None, exit } => self.inner.schedule(key, Some(*exit)),
            _ => {}
        }
        Ok(())
    }
}

impl Inner {
    /// Resolves when berthd is stopping.
    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// The client of berthd's API, once its socket answers (the monitor is activated before
    /// berthd serves); None when berthd stops first.
    async fn client(&self) -> Option<Client> {
        let connect = || async {
            loop {
                if self.is_stopping() {
                    return Err(());
                }
                if let Ok(channel) = berth_core::client::connect_unix(&self.socket).await {
                    return Ok(Client::new(channel));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = self.stopped() => return Err(()),
                }
            }
        };
        self.client.get_or_try_init(connect).await.ok().cloned()
    }

    /// The periodic check, until berthd stops.
    async fn run(self: Arc<Self>) {
        let interval = if self.config.interval.is_zero() { Duration::from_secs(10) } else { self.config.interval };
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.stopped() => return,
            }
        }
    }

    /// Restarts container `key` after its back-off, unless a restart is waiting or under way.
    /// `exit` is the exit that prompted it, if any.
    fn schedule(self: &Arc<Self>, key: Key, exit: Option<Exit>) {
        let (delay, restarts) = {
            let mut entries = self.entries.lock().expect("entries lock");
            let entry = entries.entry(key.clone()).or_default();
            if entry.busy {
                if exit.is_some() {
                    entry.pending = exit;
                }
                return;
            }
            if let Some(exit) = exit {
                if entry.started.is_some_and(|started| self.backoff.ran_long_enough(started, exit.timestamp)) {
                    entry.restarts = 0;
                }
                entry.last_exit = Some(exit.status);
            }
            entry.busy = true;
            (self.backoff.delay(entry.restarts), entry.restarts)
        };
        tracing::info!(
            namespace = %key.0,
            container = %key.1,
            delay_ms = delay.as_millis() as u64,
            restarts_in_a_row = restarts,
            "restart scheduled"
        );
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inner.stopped() => return,
            }
            let outcome = inner.restart(&key).await;
            inner.finish(key, outcome);
        });
    }

    /// Records how a restart went, and schedules the next one for a failure or an exit that came
    /// meanwhile.
    fn finish(self: &Arc<Self>, key: Key, outcome: Outcome) {
        let (ns, id) = (&key.0, &key.1);
        let mut entries = self.entries.lock().expect("entries lock");
        if let Outcome::Gone = outcome {
            entries.remove(&key);
            tracing::info!(namespace = %ns, container = %id, "container deleted: not restarted");
            return;
        }
        let entry = entries.entry(key.clone()).or_default();
        entry.busy = false;
        let pending = entry.pending.take();
        let again = match outcome {
            Outcome::Started(pid) => {
                entry.restarts = entry.restarts.saturating_add(1);
                entry.started = Some(SystemTime::now());
                entry.pid = pid;
                tracing::info!(namespace = %ns, container = %id, pid, "container restarted");
                pending.filter(|exit| exit.pid == pid).map(Some)
            }
            Outcome::Left(reason) => {
                tracing::info!(namespace = %ns, container = %id, reason, "container not restarted");
                None
            }
            Outcome::Failed(error) => {
                entry.restarts = entry.restarts.saturating_add(1);
                tracing::warn!(namespace = %ns, container = %id, %error, "restarting container failed: trying again");
                Some(None)
            }
            Outcome::Gone => unreachable!("handled above"),
        };
        drop(entries);
        if let Some(exit) = again {
            self.schedule(key, exit);
        }
    }

    /// One restart of container `key`: re-reads the container and its task, and if its labels
    /// still want it running, replaces the stopped task with a new one.
    async fn restart(&self, key: &Key) -> Outcome {
        let (ns, id) = (key.0.as_str(), key.1.as_str());
        let Some(client) = self.client().await else { return Outcome::Left("berthd is stopping") };
        let container = match client.container(ns, id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Outcome::Gone,
            Err(s) => return Outcome::Failed(describe("reading the container", &s)),
        };
        let observed = match client.task(ns, id).await {
            Ok(o) => o,
            Err(s) => return Outcome::Failed(describe("reading its task", &s)),
        };
        let labels: BTreeMap<String, String> = container.labels.clone().into_iter().collect();
        // A task removed since its exit: the exit's status still counts for the policy.
        let for_policy = match observed {
            Observed::Missing => {
                let last = self.entries.lock().expect("entries lock").get(key).and_then(|e| e.last_exit);
                last.map_or(Observed::Missing, |status| Observed::Stopped { exit_status: Some(status) })
            }
            other => other,
        };
        match labels::decide(&labels, for_policy) {
            Ok(Decision::Start) => {}
            Ok(Decision::Leave(reason)) => return Outcome::Left(reason),
            Ok(Decision::Stop) => return Outcome::Left("its restart status is stopped"),
            Err(e) => {
                tracing::warn!(namespace = %ns, container = %id, error = %e, "restart labels");
                return Outcome::Left("its restart labels are invalid");
            }
        }
        let log = match labels::log_file(&labels) {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(namespace = %ns, container = %id, error = %e, "restart labels");
                return Outcome::Left("its restart labels are invalid");
            }
        };
        if let Some(path) = &log
            && let Err(e) = open_log(path)
        {
            return Outcome::Failed(format!("opening the log file {}: {e}", path.display()));
        }
        if let Observed::Stopped { .. } = observed
            && let Err(s) = client.delete(ns, id).await
        {
            return Outcome::Failed(describe("removing the stopped task", &s));
        }
        let count = labels::count(&labels).unwrap_or(0).saturating_add(1);
        match client.set_count(ns, id, count).await {
            Ok(true) => {}
            Ok(false) => return Outcome::Gone,
            Err(s) => return Outcome::Failed(describe("recording the restart count", &s)),
        }
        let rootfs = if container.snapshot_key.is_empty() {
            Vec::new()
        } else {
            match client.mounts(ns, &container.snapshotter, &container.snapshot_key).await {
                Ok(mounts) => mounts,
                Err(s) => return Outcome::Failed(describe("reading the snapshot's mounts", &s)),
            }
        };
        let log = log.map(|p| p.display().to_string());
        match client.run(ns, id, rootfs, log).await {
            Ok(pid) => Outcome::Started(pid),
            Err(s) if s.code() == Code::AlreadyExists => Outcome::Left("someone else created its task meanwhile"),
            Err(s) => match client.container(ns, id).await {
                Ok(None) => Outcome::Gone,
                _ => Outcome::Failed(describe("creating and starting its task", &s)),
            },
        }
    }

    /// The periodic check of every labelled container.
    async fn reconcile(self: &Arc<Self>) {
        let Some(client) = self.client().await else { return };
        let namespaces = match client.namespaces().await {
            Ok(n) => n,
            Err(s) => {
                tracing::warn!(error = %describe("listing namespaces", &s), "restart monitor check");
                return;
            }
        };
        let mut seen = HashSet::new();
        for ns in namespaces {
            let containers = match client.labelled(&ns).await {
                Ok(c) => c,
                Err(s) => {
                    tracing::warn!(namespace = %ns, error = %describe("listing containers", &s), "restart monitor check");
                    continue;
                }
            };
            for container in containers {
                let key = (ns.clone(), container.id.clone());
                seen.insert(key.clone());
                if self.entries.lock().expect("entries lock").get(&key).is_some_and(|e| e.busy) {
                    continue;
                }
                let observed = match client.task(&ns, &container.id).await {
                    Ok(o) => o,
                    Err(s) => {
                        tracing::warn!(namespace = %ns, container = %container.id, error = %describe("reading its task", &s), "restart monitor check");
                        continue;
                    }
                };
                let labels: BTreeMap<String, String> = container.labels.into_iter().collect();
                match labels::decide(&labels, observed) {
                    Ok(Decision::Start) => self.schedule(key, None),
                    Ok(Decision::Stop) => {
                        tracing::info!(namespace = %ns, container = %container.id, "stopping container: its restart status is stopped");
                        if let Err(s) = client.stop(&ns, &container.id).await {
                            tracing::warn!(namespace = %ns, container = %container.id, error = %describe("stopping its task", &s), "restart monitor check");
                        }
                        self.entries.lock().expect("entries lock").remove(&key);
                    }
                    Ok(Decision::Leave(_)) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, container = %container.id, error = %e, "restart labels: not restarted")
                    }
                }
            }
        }
        self.entries.lock().expect("entries lock").retain(|key, entry| entry.busy || seen.contains(key));
    }
}

/// Creates the log file (and its directory) a restarted task appends to, as containerd's shim
/// does for `file://` log uris.
fn open_log(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_durations() {
        let empty: RestartConfig = toml::from_str("").unwrap();
        assert_eq!(empty, RestartConfig::default());
        assert_eq!(empty.interval, Duration::from_secs(10));
        let set: RestartConfig = toml::from_str(
            "interval = \"500ms\"\nbackoff_base = \"1s\"\nbackoff_max = \"5m\"\nbackoff_reset = \"1m30s\"",
        )
        .unwrap();
        assert_eq!(
            (set.interval, set.backoff_base, set.backoff_max, set.backoff_reset),
            (Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(300), Duration::from_secs(90))
        );
        let e = toml::from_str::<RestartConfig>("intervall = \"1s\"").unwrap_err();
        assert!(e.message().contains("unknown field `intervall`"), "{e}");
        assert!(toml::from_str::<RestartConfig>("interval = \"soon\"").is_err());
    }

    #[test]
    fn the_embedded_config_holds_the_defaults() {
        let config: toml::Table = berth_core::config::DEFAULT_CONFIG.parse().unwrap();
        let table = config["plugins"]["monitor.restart"].clone();
        assert_eq!(table.try_into::<RestartConfig>().unwrap(), RestartConfig::default());
    }

    #[test]
    fn labels_are_checked_when_a_task_is_monitored() {
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(check_labels(&labels(&[])).is_ok());
        // Not managed: other restart labels are not looked at.
        assert!(check_labels(&labels(&[(labels::POLICY, "bogus")])).is_ok());
        assert!(check_labels(&labels(&[(labels::STATUS, "running"), (labels::POLICY, "on-failure:2")])).is_ok());
        assert!(check_labels(&labels(&[(labels::STATUS, "running"), (labels::POLICY, "bogus")])).is_err());
        assert!(check_labels(&labels(&[(labels::STATUS, "sometimes")])).is_err());
        assert!(check_labels(&labels(&[(labels::STATUS, "running"), (labels::LOG_URI, "binary:///x")])).is_err());
    }

    #[tokio::test]
    async fn an_inactive_monitor_does_nothing_and_a_log_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = RestartMonitor::new(RestartConfig::default(), dir.path().join("none.sock"));
        let task = TaskInfo {
            namespace: "default".into(),
            id: "web".into(),
            labels: [(labels::STATUS.to_string(), "running".to_string())].into(),
            ..Default::default()
        };
        let exit = Exit { pid: 1, status: 1, timestamp: SystemTime::now() };
        monitor.event(&task, &TaskEvent::Exited { exec_id: None, exit }).await.unwrap();
        assert!(monitor.inner.entries.lock().unwrap().is_empty(), "not configured: not acting");
        monitor.shut_down();

        let log = dir.path().join("logs/web/out.log");
        open_log(&log).unwrap();
        open_log(&log).unwrap();
        assert!(log.is_file());
    }
}
