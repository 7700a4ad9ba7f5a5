//! berth's native snapshot backend (`snapshot.native`): every snapshot is a plain directory holding a full
//! copy of its parent's tree, handed out as a bind mount. It needs nothing of the kernel or the filesystem,
//! so it works where overlayfs does not, at the price of a copy per snapshot.
//!
//! The copy keeps what a container image's layers carry: owners, modes (setuid, sticky), extended
//! attributes where the filesystem takes them, times, symlinks as they are, hard links within the tree as
//! hard links, device nodes, fifos and sockets (see [`copy`]).
//!
//! On disk, under the plugin's root directory, metadata and directories as
//! [`berth_core::snapshot::storage`] keeps them:
//!
//! ```text
//! <root>/                              /var/lib/berth/snapshot.native by default
//! ├── lock
//! ├── metadata/<id>.json               one record per snapshot: kind, name, parent, labels, times
//! └── snapshots/<id>/
//!     └── fs/                          the snapshot's whole tree; the bind mount's source
//! ```
//!
//! Active snapshots mount `fs/` read-write (`rbind,rw`), views read-only (`rbind,ro`); committing changes
//! only the record.
//!
//! ```
//! use berth_core::snapshot::Snapshotter;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let native = berth_plugin_snapshot_native::NativeSnapshotter::open(dir.path()).unwrap();
//! let mounts = native.prepare("rootfs", None, Default::default()).await.unwrap();
//! assert_eq!(mounts[0].kind, "bind");
//! assert_eq!(mounts[0].options, ["rbind", "rw"]);
//! # }
//! ```
#![warn(missing_docs)]

pub mod copy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::mount::Mount;
use berth_core::plugin::{InitError, Instance, PluginKind, Registration};
use berth_core::snapshot::storage::{MetaStore, Record, Reservation, StoredBackend};
use berth_core::snapshot::{Kind, Result, SharedSnapshotter, SnapshotError};
use serde::Deserialize;

/// `[plugins."snapshot.native"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    /// Where the snapshots are kept; empty: the plugin's directory under berthd's root.
    pub root_path: String,
}

/// The plugin: `snapshot.native`, exporting a [`SharedSnapshotter`].
pub fn registration() -> Registration {
    Registration::new::<NativeConfig, _, _>(PluginKind::Snapshot, "native", |ctx| {
        let config = ctx.config::<NativeConfig>();
        let root = if config.root_path.is_empty() { ctx.dirs().root.clone() } else { PathBuf::from(&config.root_path) };
        async move {
            let shown = root.display().to_string();
            let native = tokio::task::spawn_blocking(move || NativeSnapshotter::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the native snapshotter: {e}")))?
                .map_err(|e| InitError::Failed(format!("snapshot.native in {shown}: {e}")))?;
            tracing::info!(root = %shown, "native snapshotter open");
            Ok(Instance::new(Arc::new(native) as SharedSnapshotter))
        }
    })
    .describe("snapshots as full copies of their parent, bind mounted; works on any filesystem")
}

/// The native snapshot backend.
#[derive(Debug, Clone)]
pub struct NativeSnapshotter {
    store: Arc<MetaStore>,
}

/// The tree of snapshot `id`.
fn fs_dir(store: &MetaStore, id: u64) -> PathBuf {
    store.snapshot_dir(id).join("fs")
}

impl NativeSnapshotter {
    /// Opens (creating) the snapshots kept in `root`.
    pub fn open(root: &Path) -> Result<NativeSnapshotter> {
        Ok(NativeSnapshotter { store: Arc::new(MetaStore::open(root)?) })
    }
}

impl StoredBackend for NativeSnapshotter {
    const NAME: &'static str = "native";

    fn store(&self) -> &MetaStore {
        &self.store
    }

    /// A copy of the parent's tree, or an empty root directory without a parent.
    fn fill(&self, key: &str, reservation: &Reservation<'_>, _kind: Kind) -> Result<()> {
        let fs = reservation.dir().join("fs");
        match reservation.ancestors().first() {
            Some(parent) => {
                let from = fs_dir(&self.store, parent.id);
                copy::copy_tree(&from, &fs)
                    .map_err(|e| SnapshotError::io(format_args!("copying {} into snapshot {key}", from.display()), e))
            }
            None => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&fs)
                    .map_err(|e| SnapshotError::io(format_args!("creating {}", fs.display()), e))
            }
        }
    }

    fn mounts_of(&self, record: &Record, _parents: &[Record]) -> Vec<Mount> {
        let mode = if record.info.kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            kind: "bind".into(),
            source: fs_dir(&self.store, record.id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }

    fn usage_dir(&self, id: u64) -> PathBuf {
        fs_dir(&self.store, id)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use berth_core::snapshot::{Labels, Snapshotter};

    use super::*;

    /// A child's copy keeps the parent's hard links and symlinks (without mounting: the bind source is the tree).
    #[tokio::test]
    async fn children_keep_hard_links_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let native = NativeSnapshotter::open(dir.path()).unwrap();
        let mounts = native.prepare("a", None, Labels::new()).await.unwrap();
        let tree = PathBuf::from(&mounts[0].source);
        fs::create_dir(tree.join("sub")).unwrap();
        fs::write(tree.join("file"), b"data").unwrap();
        fs::hard_link(tree.join("file"), tree.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("../file", tree.join("sub/rel")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", tree.join("abs")).unwrap();
        native.commit("base", "a", Labels::new()).await.unwrap();

        let mounts = native.view("v", Some("base"), Labels::new()).await.unwrap();
        assert_eq!(mounts[0].options, ["rbind", "ro"]);
        let copy = PathBuf::from(&mounts[0].source);
        assert_ne!(copy, tree);
        let (a, b) = (fs::metadata(copy.join("file")).unwrap(), fs::metadata(copy.join("sub/link")).unwrap());
        assert_eq!(a.ino(), b.ino(), "hard links stay one inode");
        assert_eq!(a.nlink(), 2);
        assert_ne!(a.ino(), fs::metadata(tree.join("file")).unwrap().ino(), "the copy is its own inode");
        assert_eq!(fs::read_link(copy.join("sub/rel")).unwrap(), Path::new("../file"));
        assert_eq!(fs::read_link(copy.join("abs")).unwrap(), Path::new("/nowhere/at/all"));
        assert_eq!(fs::read(copy.join("sub/rel")).unwrap(), b"data");

        native.remove("v").await.unwrap();
        native.remove("base").await.unwrap();
        assert_eq!(fs::read_dir(dir.path().join("snapshots")).unwrap().count(), 0, "removal removes the files");
    }

    /// A stat hands out the labels the metadata holds, shared: no copy of a large map per call.
    #[tokio::test]
    async fn stats_share_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let native = NativeSnapshotter::open(dir.path()).unwrap();
        let many: Labels = (0..1024).map(|i| (format!("label-{i:04}"), "x".repeat(48))).collect();
        native.prepare("a", None, many).await.unwrap();
        let (one, two) = (native.stat("a").await.unwrap(), native.stat("a").await.unwrap());
        assert!(std::sync::Arc::ptr_eq(&one.labels, &two.labels));
        native.remove("a").await.unwrap();
    }

    #[test]
    fn config_table_refuses_unknown_keys() {
        let mut registry = berth_core::registry::Registry::new();
        registry.register(registration()).unwrap();
        let config = |table: &str| {
            let text = format!(
                "version = 1\nroot = \"/r\"\nstate = \"/s\"\nrequired_plugins = []\n[grpc]\naddress = \"/a.sock\"\n[plugins.\"snapshot.native\"]\n{table}\n"
            );
            berth_core::config::Config::parse("c.toml", &text, &registry)
        };
        config("root_path = \"/x\"").unwrap();
        let e = config("root_pth = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("root_pth"), "{e}");
    }
}
