//! OCI runtime specs the way containerd 1.6's `ctr run --rootfs` generates them (its
//! `oci.WithDefaultSpec` plus the flags' options), so a container made by berth looks to a
//! runtime exactly like one made by ctr. `bench/src/spec.json` is such a spec, dumped from ctr.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Type URL containerd gives the OCI spec in a container record: JSON bytes in an Any.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of an exec's OCI process, sent in Tasks.Exec.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// containerd's default PATH for Linux containers (oci.DefaultPathEnv), which ctr takes from the
/// image; a bare rootfs has no image, so berth sets it unless `--env PATH=...` does.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set (oci.defaultUnixCaps); ctr grants it as bounding,
/// effective and permitted.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// What `berth run` lets a user choose; everything else is containerd's default.
pub struct SpecOptions<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: Option<&'a str>,
    pub user: Option<&'a str>,
    pub terminal: bool,
    /// ctr puts `--label`s on the container and also into the spec's annotations.
    pub annotations: &'a BTreeMap<String, String>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// The spec as JSON. The fields are those of containerd's default Unix spec; ctr run also sets
/// cpu shares to its `--cpu-shares` default, 1024, so berth does the same.
pub fn default_spec(opts: &SpecOptions<'_>) -> anyhow::Result<Value> {
    let (uid, gid) = match opts.user {
        Some(user) => resolve_user(opts.rootfs, user)?,
        None => (0, 0),
    };
    let mut env = vec![DEFAULT_PATH.to_string()];
    for var in opts.env {
        set_env(&mut env, var);
    }
    // ctr's WithTTY sets TERM=xterm; one the user chose is kept.
    if opts.terminal && !env.iter().any(|v| v.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut process = json!({
        "user": {"uid": uid, "gid": gid},
        "args": opts.args,
        "env": env,
        "cwd": opts.cwd.unwrap_or("/"),
        "capabilities": {
            "bounding": DEFAULT_CAPS,
            "effective": DEFAULT_CAPS,
            "permitted": DEFAULT_CAPS,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
    });
    if opts.terminal {
        process["terminal"] = json!(true);
    }
    let mut resources = json!({
        "devices": default_device_rules(),
        "cpu": {"shares": 1024},
    });
    if let Some(limit) = opts.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    if let Some(limit) = opts.pids_limit {
        resources["pids"] = json!({"limit": limit});
    }
    let namespaces: Vec<Value> = ["pid", "ipc", "uts", "mount", "network"].map(|t| json!({"type": t})).into();
    let mut spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": opts.rootfs},
        "mounts": default_mounts(),
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{}/{}", opts.namespace, opts.id),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    if !opts.annotations.is_empty() {
        spec["annotations"] = json!(opts.annotations);
    }
    Ok(spec)
}

fn default_mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    ])
}

/// Deny every device, then allow the standard character devices (null, zero, full, tty, random,
/// urandom, console, pts, ptmx), in the order of containerd's default rules.
fn default_device_rules() -> Value {
    let mut rules = vec![json!({"allow": false, "access": "rwm"})];
    for (major, minor) in [(1, Some(3)), (1, Some(8)), (1, Some(7)), (5, Some(0)), (1, Some(5)), (1, Some(9))]
        .into_iter()
        .chain([(5, Some(1)), (136, None), (5, Some(2))])
    {
        let mut rule = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        if let Some(minor) = minor {
            rule["minor"] = json!(minor);
        }
        rules.push(rule);
    }
    Value::Array(rules)
}

/// Sets `KEY=VALUE` in an environment list, replacing an earlier value of KEY as containerd's
/// replaceOrAppendEnvValues does.
pub fn set_env(env: &mut Vec<String>, var: &str) {
    let key = var.split_once('=').map_or(var, |(k, _)| k);
    match env.iter_mut().find(|v| v.split_once('=').map_or(v.as_str(), |(k, _)| k) == key) {
        Some(slot) => *slot = var.to_string(),
        None => env.push(var.to_string()),
    }
}

/// Parses `--env` arguments: KEY=VALUE with a non-empty KEY.
pub fn env_var(arg: &str) -> Result<String, String> {
    match arg.split_once('=') {
        Some(("", _)) => Err(format!("{arg:?} has an empty name; expected KEY=VALUE")),
        Some(_) => Ok(arg.to_string()),
        None => Err(format!("{arg:?} lacks '='; expected KEY=VALUE")),
    }
}

/// Resolves `UID`, `UID:GID`, `NAME` or `NAME:GROUP` as containerd's oci.WithUser does: names
/// are looked up in the rootfs's /etc/passwd and /etc/group, and a bare UID takes its primary
/// group from /etc/passwd when it has an entry there (0 otherwise).
pub fn resolve_user(rootfs: &Path, user: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        bail!("invalid user {user:?}: expected UID[:GID] or NAME[:GROUP]");
    }
    let passwd = || read_db(&rootfs.join("etc/passwd"));
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            // A missing or unreadable passwd only matters when a name has to be looked up.
            let gid = passwd().ok().and_then(|db| db.into_iter().find(|e| e.id == uid).map(|e| e.gid));
            (uid, gid.unwrap_or(0))
        }
        Err(_) => {
            let db = passwd().with_context(|| format!("looking up user {u:?}"))?;
            let entry = db
                .into_iter()
                .find(|e| e.name == u)
                .ok_or_else(|| anyhow::anyhow!("no user {u:?} in {}", rootfs.join("etc/passwd").display()))?;
            (entry.id, entry.gid)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let path = rootfs.join("etc/group");
                let db = read_db(&path).with_context(|| format!("looking up group {g:?}"))?;
                db.into_iter()
                    .find(|e| e.name == g)
                    .map(|e| e.id)
                    .ok_or_else(|| anyhow::anyhow!("no group {g:?} in {}", path.display()))?
            }
        },
    };
    Ok((uid, gid))
}

/// One line of /etc/passwd (name:x:uid:gid:...) or /etc/group (name:x:gid:...).
struct DbEntry {
    name: String,
    id: u32,
    gid: u32,
}

fn read_db(path: &Path) -> anyhow::Result<Vec<DbEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.to_string();
            let _password = fields.next()?;
            let id = fields.next()?.parse().ok()?;
            let gid = fields.next().and_then(|g| g.parse().ok()).unwrap_or(id);
            Some(DbEntry { name, id, gid })
        })
        .collect())
}

/// What `berth exec` may change in the process it derives from the container's spec.
pub struct ExecOptions<'a> {
    pub args: &'a [String],
    pub terminal: bool,
    pub cwd: Option<&'a str>,
    pub user: Option<&'a str>,
    pub env: &'a [String],
}

/// The OCI process of an exec: the container's own process (env, capabilities, rlimits, user...)
/// with the arguments replaced, as ctr's `tasks exec` builds it.
pub fn exec_process(spec: &prost_types::Any, opts: &ExecOptions<'_>) -> anyhow::Result<Value> {
    if !spec.type_url.ends_with("opencontainers/runtime-spec/1/Spec") {
        bail!("the container's spec is a {:?}, not an OCI runtime spec", spec.type_url);
    }
    let spec: Value = serde_json::from_slice(&spec.value).context("decoding the container's OCI spec")?;
    let mut process = match spec.get("process") {
        Some(Value::Object(p)) => Value::Object(p.clone()),
        _ => bail!("the container's OCI spec has no process"),
    };
    process["args"] = json!(opts.args);
    process["terminal"] = json!(opts.terminal);
    if let Some(cwd) = opts.cwd {
        process["cwd"] = json!(cwd);
    }
    if let Some(user) = opts.user {
        let root = spec.pointer("/root/path").and_then(Value::as_str).unwrap_or("/");
        let (uid, gid) = resolve_user(Path::new(root), user)?;
        process["user"] = json!({"uid": uid, "gid": gid});
    }
    let mut env: Vec<String> = match process.get("env") {
        Some(Value::Array(vars)) => vars.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    for var in opts.env {
        set_env(&mut env, var);
    }
    if opts.terminal && !env.iter().any(|v| v.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    process["env"] = json!(env);
    Ok(process)
}

pub fn any(type_url: &str, value: &Value) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_string(), value: value.to_string().into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec ctr 1.6.20 generated for `ctr containers create --rootfs`, minus the bench's
    /// annotation and with ctr run's cpu shares.
    #[test]
    fn default_spec_matches_ctr() {
        let mut expected: Value = serde_json::from_str(include_str!("../../../../bench/src/spec.json")).unwrap();
        expected.as_object_mut().unwrap().remove("annotations");
        expected["linux"]["resources"]["cpu"] = json!({"shares": 1024});
        expected["process"]["env"] = json!([DEFAULT_PATH]);
        let args = vec!["/bin/true".to_string()];
        let spec = default_spec(&SpecOptions {
            namespace: "bench",
            id: "c",
            rootfs: Path::new("/var/lib/berth-bench/rootfs"),
            args: &args,
            env: &[],
            cwd: None,
            user: None,
            terminal: false,
            annotations: &BTreeMap::new(),
            memory_limit: None,
            pids_limit: None,
        })
        .unwrap();
        assert_eq!(spec, expected);
    }

    #[test]
    fn options_land_in_the_spec() {
        let args = vec!["/bin/sh".to_string()];
        let env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let annotations = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let spec = default_spec(&SpecOptions {
            namespace: "ns",
            id: "x",
            rootfs: Path::new("/nonexistent"),
            args: &args,
            env: &env,
            cwd: Some("/tmp"),
            user: Some("7:8"),
            terminal: true,
            annotations: &annotations,
            memory_limit: Some(1 << 20),
            pids_limit: Some(5),
        })
        .unwrap();
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "A=1", "TERM=xterm"]));
        assert_eq!(spec["process"]["user"], json!({"uid": 7, "gid": 8}));
        assert_eq!(spec["process"]["terminal"], json!(true));
        assert_eq!(spec["process"]["cwd"], "/tmp");
        assert_eq!(spec["annotations"], json!({"k": "v"}));
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 5);
        assert_eq!(spec["linux"]["cgroupsPath"], "/ns/x");
    }

    #[test]
    fn users_resolve_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nbob:x:1000:1001::/:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |u| resolve_user(dir.path(), u);
        assert_eq!(r("bob").unwrap(), (1000, 1001));
        assert_eq!(r("1000").unwrap(), (1000, 1001));
        assert_eq!(r("1234").unwrap(), (1234, 0));
        assert_eq!(r("bob:staff").unwrap(), (1000, 50));
        assert_eq!(r("5:6").unwrap(), (5, 6));
        assert!(r("alice").unwrap_err().to_string().contains("no user \"alice\""));
        assert!(r("bob:nogroup").unwrap_err().to_string().contains("no group"));
        assert!(r("1:").is_err());
    }

    #[test]
    fn exec_derives_from_the_container() {
        let spec = any(
            SPEC_TYPE_URL,
            &json!({"root": {"path": "/nonexistent"}, "process": {"args": ["a"], "env": ["PATH=/x", "B=2"], "cwd": "/"}}),
        );
        let args = vec!["/bin/ls".to_string(), "-l".to_string()];
        let env = vec!["B=3".to_string()];
        let p =
            exec_process(&spec, &ExecOptions { args: &args, terminal: false, cwd: None, user: Some("9"), env: &env })
                .unwrap();
        assert_eq!(p["args"], json!(["/bin/ls", "-l"]));
        assert_eq!(p["env"], json!(["PATH=/x", "B=3"]));
        assert_eq!(p["user"], json!({"uid": 9, "gid": 0}));
        assert_eq!(p["terminal"], json!(false));
    }
}
