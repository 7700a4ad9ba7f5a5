//! berth's overlayfs snapshot backend (`snapshot.overlayfs`), the default snapshotter and the one `ctr` names:
//! a snapshot's own changes are one directory, and its parents' directories are stacked under it as overlay
//! lower layers, so making a snapshot copies nothing.
//!
//! On disk, under the plugin's root directory, metadata and directories as
//! [`berth_core::snapshot::storage`] keeps them:
//!
//! ```text
//! <root>/                              /var/lib/berth/snapshot.overlayfs by default
//! ├── lock
//! ├── metadata/<id>.json               one record per snapshot: kind, name, parent, labels, times
//! └── snapshots/<id>/
//!     ├── fs/                          the snapshot's own changes: the upper directory while active,
//!     │                                a lower directory of its children once committed
//!     └── work/                        overlayfs's work directory (active snapshots only)
//! ```
//!
//! The mounts of a snapshot whose parents' `fs/` directories are, nearest first, `p1 … pn`:
//!
//! | snapshot | no parent | one parent | several parents |
//! |---|---|---|---|
//! | active | `bind` of `fs/`, `rbind,rw` | `overlay`: `lowerdir=p1,upperdir=fs,workdir=work` | `overlay`: `lowerdir=p1:…:pn,upperdir=fs,workdir=work` |
//! | view | `bind` of `fs/`, `rbind,ro` | `bind` of `p1`, `rbind,ro` | `overlay`: `lowerdir=p1:…:pn` (read-only without an upper) |
//!
//! Committing changes only the record: the upper directory becomes a lower one where it is.
//!
//! Every lower is `<root>/snapshots/<id>/fs`, so when a deep image's `lowerdir=` outgrows the page of
//! options mount(2) takes, a mounter can name the lowers relative to `<root>/snapshots/` from there:
//! containerd's mount package (in ctr) and berth's reaper both do.
//!
//! The backend loads only where it can work (see [`check_support`]): the kernel must have overlayfs and a
//! test mount in the root directory must succeed, and the root must not itself be on overlayfs, which
//! cannot hold an upper directory (containerd#2071). Otherwise the plugin is skipped with the reason.
#![warn(missing_docs)]

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::mount::Mount;
use berth_core::plugin::{InitError, Instance, PluginKind, Registration};
use berth_core::snapshot::storage::{MetaStore, Record, Reservation, StoredBackend};
use berth_core::snapshot::{Kind, Result, SharedSnapshotter, SnapshotError};
use serde::Deserialize;

/// `[plugins."snapshot.overlayfs"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayConfig {
    /// Where the snapshots are kept; empty: the plugin's directory under berthd's root. Must not be on
    /// overlayfs.
    pub root_path: String,
}

/// The plugin: `snapshot.overlayfs`, exporting a [`SharedSnapshotter`]; skipped where overlayfs cannot work.
pub fn registration() -> Registration {
    Registration::new::<OverlayConfig, _, _>(PluginKind::Snapshot, "overlayfs", |ctx| {
        let config = ctx.config::<OverlayConfig>();
        let root = if config.root_path.is_empty() { ctx.dirs().root.clone() } else { PathBuf::from(&config.root_path) };
        async move {
            let shown = root.display().to_string();
            let opened = tokio::task::spawn_blocking(move || OverlaySnapshotter::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the overlayfs snapshotter: {e}")))?;
            let overlay = match opened {
                Ok(overlay) => overlay,
                Err(OpenError::Unsupported(reason)) => return Err(InitError::Skip(reason)),
                Err(OpenError::Store(e)) => {
                    return Err(InitError::Failed(format!("snapshot.overlayfs in {shown}: {e}")));
                }
            };
            tracing::info!(root = %shown, "overlayfs snapshotter open");
            Ok(Instance::new(Arc::new(overlay) as SharedSnapshotter))
        }
    })
    .describe("snapshots as overlayfs layers: parents are lower directories, nothing is copied")
}

/// Why [`OverlaySnapshotter::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// overlayfs cannot work here; the reason says why.
    #[error("{0}")]
    Unsupported(String),
    /// The metadata could not be opened.
    #[error(transparent)]
    Store(#[from] SnapshotError),
}

/// overlayfs's `f_type` in statfs.
const OVERLAYFS_SUPER_MAGIC: libc::c_long = 0x794c_7630;

/// Whether overlayfs works with upper directories in `root` (created if missing): the kernel knows the
/// filesystem, `root` is not on overlayfs (containerd#2071), and a test mount with two lowers, an upper and
/// a work directory in `root` succeeds. The error is the reason, for the log.
pub fn check_support(root: &Path) -> std::result::Result<(), String> {
    let filesystems = fs::read_to_string("/proc/filesystems").map_err(|e| format!("reading /proc/filesystems: {e}"))?;
    if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        return Err("the kernel has no overlay filesystem (not in /proc/filesystems; try modprobe overlay)".into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("creating {}: {e}", root.display()))?;
    if statfs_type(root).map_err(|e| format!("statfs {}: {e}", root.display()))? == OVERLAYFS_SUPER_MAGIC {
        return Err(format!(
            "{} is on overlayfs, which cannot hold overlay upper directories (containerd#2071): \
             put the snapshot root on another filesystem (root_path)",
            root.display()
        ));
    }
    let text = root.to_string_lossy();
    if text.contains([',', ':']) {
        return Err(format!("{text}: a snapshot root with ',' or ':' cannot be named in overlay mount options"));
    }
    test_mount(root).map_err(|e| format!("a test overlay mount in {} failed: {e}", root.display()))
}

fn statfs_type(path: &Path) -> io::Result<libc::c_long> {
    let c = cstring(path)?;
    // SAFETY: statfs with a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as libc::c_long)
}

fn cstring(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains a NUL byte"))
}

/// Mounts an overlay of two lowers with an upper in `root`, then unmounts it and removes its directories.
fn test_mount(root: &Path) -> io::Result<()> {
    let dir = root.join(format!("overlay-check-{}", std::process::id()));
    let _ = berth_core::snapshot::storage::remove_tree(&dir);
    let result = (|| {
        for d in ["lower1", "lower2", "upper", "work", "merged"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let p = |d: &str| dir.join(d).to_string_lossy().into_owned();
        let options = format!("lowerdir={}:{},upperdir={},workdir={}", p("lower2"), p("lower1"), p("upper"), p("work"));
        // `volatile` (Linux 5.10) spares the unmount a sync of the whole upper filesystem, which takes
        // seconds on a busy disk; older kernels refuse the option, and get the plain mount.
        if let Err(e) = mount_overlay(&dir.join("merged"), &format!("{options},volatile")) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            mount_overlay(&dir.join("merged"), &options)?;
        }
        let c = cstring(&dir.join("merged"))?;
        // SAFETY: umount2 of what was just mounted.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    let _ = berth_core::snapshot::storage::remove_tree(&dir);
    result
}

fn mount_overlay(target: &Path, options: &str) -> io::Result<()> {
    let (source, target) = (c"overlay", cstring(target)?);
    let data = std::ffi::CString::new(options).map_err(|_| io::Error::other("options contain a NUL byte"))?;
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The overlayfs snapshot backend.
#[derive(Debug, Clone)]
pub struct OverlaySnapshotter {
    store: Arc<MetaStore>,
    /// Whether mounts say `index=off`: with the index on, a lower directory shared by several overlays
    /// makes later mounts fail, so it is turned off where the kernel has the option.
    index_off: bool,
}

/// Where a snapshot keeps its files: the `fs/` and `work/` directories of `snapshots/<id>/`.
struct Dirs {
    fs: PathBuf,
    work: PathBuf,
}

fn dirs(store: &MetaStore, id: u64) -> Dirs {
    let dir = store.snapshot_dir(id);
    Dirs { fs: dir.join("fs"), work: dir.join("work") }
}

fn bind(source: &Path, mode: &str) -> Mount {
    Mount {
        kind: "bind".into(),
        source: source.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec!["rbind".into(), mode.into()],
    }
}

/// The mounts of a snapshot of `kind` with directories `own` and parents' `fs/` directories `lowers`,
/// nearest first, as the crate doc's table says.
fn overlay_mounts(kind: Kind, own: &Dirs, lowers: &[PathBuf], index_off: bool) -> Vec<Mount> {
    let readonly = kind == Kind::View;
    match lowers {
        [] => return vec![bind(&own.fs, if readonly { "ro" } else { "rw" })],
        // overlayfs needs an upper or at least two lowers: a view of one layer is that layer, read-only.
        [only] if readonly => return vec![bind(only, "ro")],
        _ => {}
    }
    let lowerdir = lowers.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join(":");
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_string());
    }
    options.push(format!("lowerdir={lowerdir}"));
    if !readonly {
        options.push(format!("upperdir={}", own.fs.display()));
        options.push(format!("workdir={}", own.work.display()));
    }
    vec![Mount { kind: "overlay".into(), source: "overlay".into(), target: String::new(), options }]
}

impl OverlaySnapshotter {
    /// Opens (creating) the snapshots kept in `root`, after [`check_support`].
    pub fn open(root: &Path) -> std::result::Result<OverlaySnapshotter, OpenError> {
        check_support(root).map_err(OpenError::Unsupported)?;
        let store = Arc::new(MetaStore::open(root)?);
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Ok(OverlaySnapshotter { store, index_off })
    }
}

impl StoredBackend for OverlaySnapshotter {
    const NAME: &'static str = "overlayfs";

    fn store(&self) -> &MetaStore {
        &self.store
    }

    /// An empty `fs/`, and for an active snapshot its `work/`: the parents stay where they are.
    fn fill(&self, _key: &str, reservation: &Reservation<'_>, kind: Kind) -> Result<()> {
        let own = dirs(&self.store, reservation.id());
        let mkdir = |path: &Path, mode| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(|e| SnapshotError::io(format_args!("creating {}", path.display()), e))
        };
        // The root of a snapshot without parent shows as fs/ itself: the usual mode of a root directory.
        mkdir(&own.fs, 0o755)?;
        if kind == Kind::Active {
            mkdir(&own.work, 0o700)?;
        }
        Ok(())
    }

    fn mounts_of(&self, record: &Record, parents: &[Record]) -> Vec<Mount> {
        let lowers: Vec<PathBuf> = parents.iter().map(|p| dirs(&self.store, p.id).fs).collect();
        overlay_mounts(record.info.kind, &dirs(&self.store, record.id), &lowers, self.index_off)
    }

    /// Only the snapshot's own layer: its parents are counted as theirs.
    fn usage_dir(&self, id: u64) -> PathBuf {
        dirs(&self.store, id).fs
    }
}

#[cfg(test)]
mod tests {
    use berth_core::snapshot::{Labels, Snapshotter};

    use super::*;

    fn own() -> Dirs {
        Dirs { fs: "/s/snapshots/9/fs".into(), work: "/s/snapshots/9/work".into() }
    }

    fn lowers(n: usize) -> Vec<PathBuf> {
        (1..=n).map(|i| PathBuf::from(format!("/s/snapshots/{i}/fs"))).collect()
    }

    fn options(m: &[Mount]) -> (&str, &str, Vec<&str>) {
        assert_eq!(m.len(), 1, "{m:?}");
        (&m[0].kind, &m[0].source, m[0].options.iter().map(String::as_str).collect())
    }

    #[test]
    fn without_parents_a_bind_of_the_snapshots_own_directory() {
        let m = overlay_mounts(Kind::Active, &own(), &[], true);
        assert_eq!(options(&m), ("bind", "/s/snapshots/9/fs", vec!["rbind", "rw"]));
        let m = overlay_mounts(Kind::View, &own(), &[], true);
        assert_eq!(options(&m), ("bind", "/s/snapshots/9/fs", vec!["rbind", "ro"]));
    }

    #[test]
    fn one_parent_an_overlay_when_active_and_a_read_only_bind_for_a_view() {
        let m = overlay_mounts(Kind::Active, &own(), &lowers(1), true);
        assert_eq!(
            options(&m),
            (
                "overlay",
                "overlay",
                vec![
                    "index=off",
                    "lowerdir=/s/snapshots/1/fs",
                    "upperdir=/s/snapshots/9/fs",
                    "workdir=/s/snapshots/9/work"
                ]
            )
        );
        let m = overlay_mounts(Kind::View, &own(), &lowers(1), true);
        assert_eq!(options(&m), ("bind", "/s/snapshots/1/fs", vec!["rbind", "ro"]));
    }

    #[test]
    fn many_parents_stack_nearest_first() {
        let m = overlay_mounts(Kind::Active, &own(), &lowers(3), false);
        assert_eq!(
            options(&m).2,
            [
                "lowerdir=/s/snapshots/1/fs:/s/snapshots/2/fs:/s/snapshots/3/fs",
                "upperdir=/s/snapshots/9/fs",
                "workdir=/s/snapshots/9/work"
            ]
        );
        let m = overlay_mounts(Kind::View, &own(), &lowers(2), false);
        assert_eq!(options(&m), ("overlay", "overlay", vec!["lowerdir=/s/snapshots/1/fs:/s/snapshots/2/fs"]));
    }

    #[tokio::test]
    async fn parents_are_passed_nearest_first() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = match OverlaySnapshotter::open(dir.path()) {
            Ok(o) => o,
            Err(e) => return eprintln!("skipping: {e}"),
        };
        let mut parent = None;
        let mut ids = Vec::new();
        for i in 0..3 {
            overlay.prepare(&format!("a{i}"), parent.as_deref(), Labels::new()).await.unwrap();
            ids.push(overlay.store.get(&format!("a{i}")).unwrap().id);
            overlay.commit(&format!("c{i}"), &format!("a{i}"), Labels::new()).await.unwrap();
            parent = Some(format!("c{i}"));
        }
        let m = overlay.prepare("top", Some("c2"), Labels::new()).await.unwrap();
        let lowerdir = m[0].options.iter().find_map(|o| o.strip_prefix("lowerdir=")).unwrap();
        let want: Vec<String> = ids.iter().rev().map(|id| dirs(&overlay.store, *id).fs.display().to_string()).collect();
        assert_eq!(lowerdir, want.join(":"));
        assert_eq!(overlay.mounts("top").await.unwrap(), m);
        for key in ["top", "c2", "c1", "c0"] {
            overlay.remove(key).await.unwrap();
        }
    }

    /// A stat hands out the labels the metadata holds, shared: no copy of a large map per call.
    #[tokio::test]
    async fn stats_share_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = match OverlaySnapshotter::open(dir.path()) {
            Ok(o) => o,
            Err(e) => return eprintln!("skipping: {e}"),
        };
        let many: Labels = (0..1024).map(|i| (format!("label-{i:04}"), "x".repeat(48))).collect();
        overlay.prepare("a", None, many).await.unwrap();
        let (one, two) = (overlay.stat("a").await.unwrap(), overlay.stat("a").await.unwrap());
        assert!(std::sync::Arc::ptr_eq(&one.labels, &two.labels));
        overlay.remove("a").await.unwrap();
    }

    /// An overlay mounted for the test, unmounted on drop.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let c = cstring(&self.0).unwrap();
            // SAFETY: umount2 of the test's own mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn a_root_on_overlayfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = check_support(dir.path()) {
            return eprintln!("skipping: {e}");
        }
        for d in ["l1", "l2", "upper", "work", "merged"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        let p = |d: &str| dir.path().join(d).display().to_string();
        let options = format!("lowerdir={}:{},upperdir={},workdir={}", p("l1"), p("l2"), p("upper"), p("work"));
        mount_overlay(&dir.path().join("merged"), &options).unwrap();
        let _unmount = Unmount(dir.path().join("merged"));
        match OverlaySnapshotter::open(&dir.path().join("merged/snapshots")) {
            Err(OpenError::Unsupported(reason)) => {
                assert!(reason.contains("is on overlayfs") && reason.contains("containerd#2071"), "{reason}")
            }
            other => panic!("a root on overlayfs must be refused as unsupported, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn config_table_refuses_unknown_keys() {
        let mut registry = berth_core::registry::Registry::new();
        registry.register(registration()).unwrap();
        let config = |table: &str| {
            let text = format!(
                "version = 1\nroot = \"/r\"\nstate = \"/s\"\nrequired_plugins = []\n[grpc]\naddress = \"/a.sock\"\n[plugins.\"snapshot.overlayfs\"]\n{table}\n"
            );
            berth_core::config::Config::parse("c.toml", &text, &registry)
        };
        config("root_path = \"/x\"").unwrap();
        let e = config("upperdir = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("upperdir"), "{e}");
    }
}
