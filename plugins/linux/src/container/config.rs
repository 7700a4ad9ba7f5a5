//! Reading and validating bundle/config.json. Errors name the field (`linux.namespaces[2].type: ...`), so a
//! user can find the mistake without reading the runtime's source.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::process::rootfs::MountOptions;
use super::{Error, Result};

/// The spec and the absolute rootfs path.
pub struct Config {
    pub spec: Spec,
    pub rootfs: PathBuf,
}

pub fn load(bundle: &Path) -> Result<Config> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|e| Error::config(format!("opening {}: {e}", path.display())))?;
    // The plain parse is the fast path; only a config it refuses is parsed again, tracking the path, so the
    // error names the field.
    let spec: Spec = match serde_json::from_slice(&data) {
        Ok(spec) => spec,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = e.path().to_string();
                if field == "." {
                    Error::config(e.into_inner())
                } else {
                    Error::config(format!("{field}: {}", e.into_inner()))
                }
            })?
        }
    };
    let rootfs = validate(&spec, bundle)?;
    Ok(Config { spec, rootfs })
}

/// Checks what the kernel would otherwise reject half-way through setup; returns the absolute rootfs.
pub fn validate(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    if !spec.version().is_empty() && !spec.version().starts_with("1.") {
        return Err(Error::config(format!("ociVersion: {:?} is not a 1.x version", spec.version())));
    }
    let root = spec.root().as_ref().ok_or_else(|| Error::config("root: missing (root.path is required)"))?;
    if root.path().as_os_str().is_empty() {
        return Err(Error::config("root.path: missing"));
    }
    let rootfs = bundle.join(root.path());
    let rootfs =
        std::fs::canonicalize(&rootfs).map_err(|e| Error::config(format!("root.path: {}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(Error::config(format!("root.path: {} is not a directory", rootfs.display())));
    }

    let process = spec.process().as_ref().ok_or_else(|| Error::config("process: missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::config("process.args: must not be empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::config(format!("process.cwd: {:?} is not an absolute path", process.cwd())));
    }
    for (i, rl) in process.rlimits().iter().flatten().enumerate() {
        if rl.soft() > rl.hard() {
            return Err(Error::config(format!("process.rlimits[{i}]: soft limit is above the hard limit")));
        }
    }

    let linux = spec.linux().as_ref().ok_or_else(|| Error::config("linux: missing"))?;
    let mut seen = HashSet::new();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(Error::config(format!("linux.namespaces[{i}]: duplicate namespace {}", ns.typ())));
        }
        if let Some(path) = ns.path()
            && !path.exists()
        {
            return Err(Error::config(format!("linux.namespaces[{i}].path: {} does not exist", path.display())));
        }
    }
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    let new = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t && n.path().is_none());
    if !new(LinuxNamespaceType::Mount) {
        // pivot_root in the runtime's own mount namespace would replace the host's root.
        return Err(Error::config("linux.namespaces: a new mount namespace (type \"mount\" without path) is required"));
    }
    if new(LinuxNamespaceType::User) {
        if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(Error::config("linux.uidMappings: required with a new user namespace"));
        }
        if linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(Error::config("linux.gidMappings: required with a new user namespace"));
        }
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::config("hostname: cannot set the hostname without a UTS namespace"));
    }

    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if m.destination().as_os_str().is_empty() {
            return Err(Error::config(format!("mounts[{i}].destination: missing")));
        }
        let opts = MountOptions::parse(m).map_err(|e| Error::config(format!("mounts[{i}].options: {e}")))?;
        if opts.bind && m.source().is_none() {
            return Err(Error::config(format!("mounts[{i}].source: a bind mount needs a source")));
        }
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        use oci_spec::runtime::LinuxDeviceType as T;
        if !matches!(d.typ(), T::C | T::B | T::U | T::P) {
            return Err(Error::config(format!("linux.devices[{i}].type: must be c, b, u or p")));
        }
        if !d.path().starts_with("/dev/") {
            return Err(Error::config(format!("linux.devices[{i}].path: {:?} is not under /dev", d.path())));
        }
    }
    for key in linux.sysctl().iter().flat_map(|s| s.keys()) {
        if key.is_empty() || key.split(['.', '/']).any(|p| p.is_empty() || p == "..") {
            return Err(Error::config(format!("linux.sysctl: invalid key {key:?}")));
        }
        // Init writes sysctls as root of the host (without a user namespace): one that is not isolated by one of
        // the container's own namespaces would change the host's kernel (runc refuses these too).
        let in_own = |t: LinuxNamespaceType| {
            namespaces.iter().any(|n| n.typ() == t && n.path().as_ref().is_none_or(|p| !is_own_namespace(p, t)))
        };
        match sysctl_namespace(key) {
            Some(t) if in_own(t) => {}
            Some(t) => {
                return Err(Error::config(format!(
                    "linux.sysctl: {key} needs a {t} namespace of the container's own, not the host's"
                )));
            }
            None => {
                return Err(Error::config(format!("linux.sysctl: {key} is not namespaced: it would be the host's")));
            }
        }
    }
    for (field, hooks) in hook_lists(spec) {
        for (i, h) in hooks.iter().enumerate() {
            if !h.path().is_absolute() {
                return Err(Error::config(format!("hooks.{field}[{i}].path: {:?} is not absolute", h.path())));
            }
            if h.timeout().is_some_and(|t| t <= 0) {
                return Err(Error::config(format!("hooks.{field}[{i}].timeout: must be positive")));
            }
        }
    }
    Ok(rootfs)
}

/// The namespace that isolates a sysctl (runc's list), None for the host-wide ones.
fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    let key = key.replace('/', ".");
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// Whether a namespace path to join is the runtime's own namespace (the host's), which isolates nothing.
fn is_own_namespace(path: &Path, t: LinuxNamespaceType) -> bool {
    use std::os::unix::fs::MetadataExt;
    let own = format!("/proc/self/ns/{}", super::process::namespaces::proc_name(t));
    match (std::fs::metadata(path), std::fs::metadata(own)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn hook_lists(spec: &Spec) -> Vec<(&'static str, Vec<oci_spec::runtime::Hook>)> {
    let Some(h) = spec.hooks() else { return Vec::new() };
    #[allow(deprecated)]
    let prestart = h.prestart().clone().unwrap_or_default();
    vec![
        ("prestart", prestart),
        ("createRuntime", h.create_runtime().clone().unwrap_or_default()),
        ("createContainer", h.create_container().clone().unwrap_or_default()),
        ("startContainer", h.start_container().clone().unwrap_or_default()),
        ("poststart", h.poststart().clone().unwrap_or_default()),
        ("poststop", h.poststop().clone().unwrap_or_default()),
    ]
}

/// Container ids: runc's rule, letters, digits and `_+-.`, not starting with a dot.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidId(id.into(), "empty"));
    }
    if id.len() > 1024 {
        return Err(Error::InvalidId(id.into(), "too long"));
    }
    if id.starts_with('.') || !id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c)) {
        return Err(Error::InvalidId(id.into(), "use letters, digits and _+-. only, not starting with a dot"));
    }
    Ok(())
}
