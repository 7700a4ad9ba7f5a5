//! The container labels the restart monitor reads and writes, as containerd's `runtime/restart`
//! package names them, and what they decide for a container's task.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

/// `running`: keep the container's task running; `stopped`: keep it stopped (a running task is
/// killed and removed).
pub const STATUS: &str = "containerd.io/restart.status";
/// When to restart: `always` (the default), `on-failure` or `on-failure:N`, `unless-stopped`, `no`.
pub const POLICY: &str = "containerd.io/restart.policy";
/// How many times the monitor restarted the container; written by the monitor.
pub const COUNT: &str = "containerd.io/restart.count";
/// `true`: the container was stopped on purpose; no policy restarts it.
pub const EXPLICITLY_STOPPED: &str = "containerd.io/restart.explicitly-stopped";
/// Where a restarted task's stdout and stderr go: `file:///absolute/path`.
pub const LOG_URI: &str = "containerd.io/restart.loguri";
/// The older spelling of a log file (containerd deprecated it in 1.5): an absolute path.
pub const LOG_PATH: &str = "containerd.io/restart.logpath";

/// A restart label with a value the monitor cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {label}={value:?}: {why}")]
pub struct LabelError {
    /// The label.
    pub label: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

fn invalid(label: &'static str, value: &str, why: impl Into<String>) -> LabelError {
    LabelError { label, value: value.into(), why: why.into() }
}

/// What [`STATUS`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// Keep the task running.
    Running,
    /// Keep the task stopped.
    Stopped,
}

/// What [`STATUS`] asks for; None without the label.
pub fn desired(labels: &BTreeMap<String, String>) -> Result<Option<Desired>, LabelError> {
    match labels.get(STATUS).map(String::as_str) {
        None => Ok(None),
        Some("running") => Ok(Some(Desired::Running)),
        Some("stopped") => Ok(Some(Desired::Stopped)),
        Some(other) => Err(invalid(STATUS, other, "expected running or stopped")),
    }
}

/// A restart policy ([`POLICY`]), parsed as containerd's `restart.NewPolicy` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Restart whenever the task is not running.
    Always,
    /// Never restart.
    No,
    /// Restart unless [`EXPLICITLY_STOPPED`] is true.
    UnlessStopped,
    /// Restart after a non-zero exit, at most `max` times in all (0: no limit).
    OnFailure {
        /// Most restarts, counted by [`COUNT`]; 0 for no limit.
        max: u32,
    },
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, count) = match s.split_once(':') {
            Some((name, count)) => (name, Some(count)),
            None => (s, None),
        };
        let policy = match name {
            "" | "always" => Policy::Always,
            "no" => Policy::No,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => {
                let max = match count {
                    None => 0,
                    Some(count) => count.parse().map_err(|_| format!("invalid max retry count {count:?}"))?,
                };
                return Ok(Policy::OnFailure { max });
            }
            other => {
                return Err(format!(
                    "restart policy {other:?} is not supported (always, on-failure[:N], unless-stopped, no)"
                ));
            }
        };
        match count {
            Some(_) => Err(format!("restart policy {name:?} takes no max retry count")),
            None => Ok(policy),
        }
    }
}

impl Policy {
    /// The policy of a container with `labels` ([`Policy::Always`] without the label).
    pub fn of(labels: &BTreeMap<String, String>) -> Result<Self, LabelError> {
        match labels.get(POLICY) {
            None => Ok(Policy::Always),
            Some(value) => value.parse().map_err(|why| invalid(POLICY, value, why)),
        }
    }

    /// Whether a container with `labels` whose task ended with `exit_status` (None: not known)
    /// is restarted, as containerd's `Policy.Reconcile` decides.
    pub fn restarts(self, labels: &BTreeMap<String, String>, exit_status: Option<u32>) -> Result<bool, LabelError> {
        Ok(match self {
            Policy::Always => true,
            Policy::No => false,
            Policy::UnlessStopped => !explicitly_stopped(labels),
            Policy::OnFailure { max } => {
                let failed = exit_status.is_some_and(|s| s != 0);
                failed && (max == 0 || count(labels)? < max)
            }
        })
    }
}

/// Whether [`EXPLICITLY_STOPPED`] is true (Go's `strconv.ParseBool` spellings).
pub fn explicitly_stopped(labels: &BTreeMap<String, String>) -> bool {
    matches!(labels.get(EXPLICITLY_STOPPED).map(String::as_str), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// How many restarts [`COUNT`] records (0 without the label).
pub fn count(labels: &BTreeMap<String, String>) -> Result<u32, LabelError> {
    match labels.get(COUNT) {
        None => Ok(0),
        Some(value) => value.parse().map_err(|_| invalid(COUNT, value, "not a count")),
    }
}

/// The file a restarted task's stdout and stderr are appended to, from [`LOG_URI`] or else
/// [`LOG_PATH`]; None: no stdio.
pub fn log_file(labels: &BTreeMap<String, String>) -> Result<Option<PathBuf>, LabelError> {
    if let Some(uri) = labels.get(LOG_URI) {
        let path = match uri.split_once("://") {
            Some(("file", path)) => path,
            Some((scheme, _)) => {
                return Err(invalid(
                    LOG_URI,
                    uri,
                    format!("{scheme}:// log uris are not supported by berth's runtimes: use file:///path"),
                ));
            }
            None => return Err(invalid(LOG_URI, uri, "not a uri: use file:///path")),
        };
        return absolute(LOG_URI, uri, path).map(Some);
    }
    match labels.get(LOG_PATH) {
        None => Ok(None),
        Some(path) => absolute(LOG_PATH, path, path).map(Some),
    }
}

fn absolute(label: &'static str, value: &str, path: &str) -> Result<PathBuf, LabelError> {
    if !path.starts_with('/') {
        return Err(invalid(label, value, "the log file path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// A container's task as the monitor finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// No task.
    Missing,
    /// Created, not started: someone is starting it.
    Created,
    /// Running, or frozen (paused or pausing).
    Running,
    /// Exited with this status, or its supervisor is gone (unknown).
    Stopped {
        /// The exit status when known.
        exit_status: Option<u32>,
    },
}

/// What to do about a container's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing, for this reason.
    Leave(&'static str),
    /// Remove a stopped task, then create and start a new one.
    Start,
    /// Kill and remove the task.
    Stop,
}

/// What to do for a container with `labels` whose task is `observed`.
///
/// As containerd's restart monitor, except that a created task is left alone: it is someone's
/// start in progress (`ctr run` creates, then starts), not one to replace.
pub fn decide(labels: &BTreeMap<String, String>, observed: Observed) -> Result<Decision, LabelError> {
    let Some(desired) = desired(labels)? else { return Ok(Decision::Leave("no restart status label")) };
    Ok(match (desired, observed) {
        (Desired::Running, Observed::Running | Observed::Created) => Decision::Leave("its task is running"),
        (Desired::Running, Observed::Missing | Observed::Stopped { .. }) => {
            let exit_status = match observed {
                Observed::Stopped { exit_status } => exit_status,
                _ => None,
            };
            if explicitly_stopped(labels) {
                Decision::Leave("it was stopped explicitly")
            } else if Policy::of(labels)?.restarts(labels, exit_status)? {
                Decision::Start
            } else {
                Decision::Leave("its restart policy does not restart it")
            }
        }
        (Desired::Stopped, Observed::Running | Observed::Created) => Decision::Stop,
        (Desired::Stopped, Observed::Missing | Observed::Stopped { .. }) => Decision::Leave("its task is stopped"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn status_labels_parse() {
        assert_eq!(desired(&labels(&[])), Ok(None));
        assert_eq!(desired(&labels(&[(STATUS, "running")])), Ok(Some(Desired::Running)));
        assert_eq!(desired(&labels(&[(STATUS, "stopped")])), Ok(Some(Desired::Stopped)));
        let e = desired(&labels(&[(STATUS, "Running")])).unwrap_err();
        assert_eq!(e.to_string(), "label containerd.io/restart.status=\"Running\": expected running or stopped");
    }

    #[test]
    fn policies_parse_as_containerd_does() {
        assert_eq!("".parse(), Ok(Policy::Always));
        assert_eq!("always".parse(), Ok(Policy::Always));
        assert_eq!("no".parse(), Ok(Policy::No));
        assert_eq!("unless-stopped".parse(), Ok(Policy::UnlessStopped));
        assert_eq!("on-failure".parse(), Ok(Policy::OnFailure { max: 0 }));
        assert_eq!("on-failure:3".parse(), Ok(Policy::OnFailure { max: 3 }));
        assert!("on-failure:x".parse::<Policy>().unwrap_err().contains("invalid max retry count \"x\""));
        assert!("always:3".parse::<Policy>().unwrap_err().contains("takes no max retry count"));
        assert!("sometimes".parse::<Policy>().unwrap_err().contains("\"sometimes\" is not supported"));
        assert_eq!(Policy::of(&labels(&[])), Ok(Policy::Always));
        let e = Policy::of(&labels(&[(POLICY, "bogus")])).unwrap_err();
        assert!(e.to_string().starts_with("label containerd.io/restart.policy=\"bogus\": "), "{e}");
    }

    #[test]
    fn policies_decide_by_exit_status_count_and_explicit_stop() {
        let none = labels(&[]);
        assert!(Policy::Always.restarts(&none, Some(0)).unwrap());
        assert!(Policy::Always.restarts(&none, None).unwrap());
        assert!(!Policy::No.restarts(&none, Some(1)).unwrap());
        assert!(Policy::UnlessStopped.restarts(&none, Some(0)).unwrap());
        assert!(!Policy::UnlessStopped.restarts(&labels(&[(EXPLICITLY_STOPPED, "true")]), Some(1)).unwrap());
        assert!(Policy::UnlessStopped.restarts(&labels(&[(EXPLICITLY_STOPPED, "false")]), Some(1)).unwrap());

        let on_failure = Policy::OnFailure { max: 2 };
        assert!(on_failure.restarts(&none, Some(1)).unwrap());
        assert!(!on_failure.restarts(&none, Some(0)).unwrap());
        // An unknown exit status is not a failure (containerd reads it as 0).
        assert!(!on_failure.restarts(&none, None).unwrap());
        assert!(on_failure.restarts(&labels(&[(COUNT, "1")]), Some(137)).unwrap());
        assert!(!on_failure.restarts(&labels(&[(COUNT, "2")]), Some(137)).unwrap());
        assert!(Policy::OnFailure { max: 0 }.restarts(&labels(&[(COUNT, "99")]), Some(1)).unwrap());
        let e = on_failure.restarts(&labels(&[(COUNT, "many")]), Some(1)).unwrap_err();
        assert_eq!(e.to_string(), "label containerd.io/restart.count=\"many\": not a count");
    }

    #[test]
    fn log_labels_name_a_file_or_nothing() {
        assert_eq!(log_file(&labels(&[])), Ok(None));
        assert_eq!(log_file(&labels(&[(LOG_URI, "file:///var/log/web.log")])), Ok(Some("/var/log/web.log".into())));
        assert_eq!(log_file(&labels(&[(LOG_PATH, "/var/log/old.log")])), Ok(Some("/var/log/old.log".into())));
        // The uri wins over the deprecated path.
        let both = labels(&[(LOG_URI, "file:///new.log"), (LOG_PATH, "/old.log")]);
        assert_eq!(log_file(&both), Ok(Some("/new.log".into())));
        let e = log_file(&labels(&[(LOG_URI, "binary:///usr/bin/logger")])).unwrap_err();
        assert!(e.why.contains("binary:// log uris are not supported"), "{e}");
        assert!(log_file(&labels(&[(LOG_URI, "/var/log/x")])).unwrap_err().why.contains("not a uri"));
        assert!(log_file(&labels(&[(LOG_URI, "file://relative/x")])).unwrap_err().why.contains("absolute"));
        assert!(log_file(&labels(&[(LOG_PATH, "x.log")])).unwrap_err().why.contains("absolute"));
    }

    #[test]
    fn decisions_follow_the_labels_and_the_task() {
        let running = labels(&[(STATUS, "running")]);
        let stopped = labels(&[(STATUS, "stopped")]);
        let failed = Observed::Stopped { exit_status: Some(1) };
        assert_eq!(decide(&labels(&[]), Observed::Missing), Ok(Decision::Leave("no restart status label")));
        assert_eq!(decide(&running, Observed::Missing), Ok(Decision::Start));
        assert_eq!(decide(&running, failed), Ok(Decision::Start));
        assert_eq!(decide(&running, Observed::Stopped { exit_status: None }), Ok(Decision::Start));
        assert_eq!(decide(&running, Observed::Running), Ok(Decision::Leave("its task is running")));
        assert_eq!(decide(&running, Observed::Created), Ok(Decision::Leave("its task is running")));
        assert_eq!(decide(&stopped, Observed::Running), Ok(Decision::Stop));
        assert_eq!(decide(&stopped, Observed::Created), Ok(Decision::Stop));
        assert_eq!(decide(&stopped, failed), Ok(Decision::Leave("its task is stopped")));
        assert_eq!(decide(&stopped, Observed::Missing), Ok(Decision::Leave("its task is stopped")));

        let mut explicit = running.clone();
        explicit.insert(EXPLICITLY_STOPPED.into(), "true".into());
        assert_eq!(decide(&explicit, failed), Ok(Decision::Leave("it was stopped explicitly")));
        let mut no = running.clone();
        no.insert(POLICY.into(), "no".into());
        assert_eq!(decide(&no, failed), Ok(Decision::Leave("its restart policy does not restart it")));
        let mut on_failure = running.clone();
        on_failure.insert(POLICY.into(), "on-failure".into());
        assert_eq!(decide(&on_failure, failed), Ok(Decision::Start));
        assert_eq!(
            decide(&on_failure, Observed::Stopped { exit_status: Some(0) }),
            Ok(Decision::Leave("its restart policy does not restart it"))
        );
        let mut bad = running.clone();
        bad.insert(POLICY.into(), "bogus".into());
        assert!(decide(&bad, failed).is_err());
        assert!(decide(&labels(&[(STATUS, "paused")]), failed).is_err());
    }
}
