//! OCI hooks: each is run with the container state on stdin; a non-zero exit or a timeout fails it.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

use super::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }
}

/// Whether the spec has hooks the runtime runs while init waits after its mounts (prestart, createRuntime).
pub fn has_runtime_hooks(spec: &Spec) -> bool {
    !list(spec, Kind::Prestart).is_empty() || !list(spec, Kind::CreateRuntime).is_empty()
}

pub fn list(spec: &Spec, kind: Kind) -> Vec<Hook> {
    let Some(h) = spec.hooks() else { return Vec::new() };
    #[allow(deprecated)]
    let hooks = match kind {
        Kind::Prestart => h.prestart(),
        Kind::CreateRuntime => h.create_runtime(),
        Kind::CreateContainer => h.create_container(),
        Kind::StartContainer => h.start_container(),
        Kind::Poststart => h.poststart(),
        Kind::Poststop => h.poststop(),
    };
    hooks.clone().unwrap_or_default()
}

/// Runs the hooks of `kind` in order; the first failure stops and names the hook.
pub fn run(spec: &Spec, kind: Kind, state_json: &str) -> Result<()> {
    for (i, hook) in list(spec, kind).iter().enumerate() {
        run_one(hook, state_json)
            .map_err(|e| Error::Other(format!("{} hook #{i} ({}): {e}", kind.name(), hook.path().display())))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state_json: &str) -> std::result::Result<(), String> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.stdin(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let deadline = hook.timeout().map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            return Err(match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (_, Some(sig)) => format!("killed by signal {sig}"),
                _ => "failed".into(),
            });
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or_default()));
        }
        sleep(Duration::from_millis(2));
    }
}
