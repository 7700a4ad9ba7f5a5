//! A native snapshot plugin as a [`Snapshotter`]: each call is containerd's snapshots service message
//! (`containerd.services.snapshots.v1`) across the ABI.
//!
//! A plugin with the `revision` method (ABI 1.2) has its stat answers kept in a [`StatCache`]: a stat asks
//! for the snapshot's revision (a few bytes each way) and crosses for the whole answer only when it moved;
//! an update's answer is kept too, so a stat after a label change does not cross whole either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use berth_plugin_sdk::abi::{code, snapshot_methods as m};
use berth_plugin_sdk::proto::snapshots::{self as pb, wire};
use berth_plugin_sdk::proto::{self as sdk, FieldMask, Timestamp};

use super::{CallError, NativePlugin};
use crate::mount::Mount;
use crate::snapshot::stat_cache::StatCache;
use crate::snapshot::{Info, Kind, Labels, Result, SnapshotError, Snapshotter, Usage, WalkFilter};

/// Method names by index, for messages.
pub(crate) const METHOD_NAMES: &[&str] =
    &["stat", "update", "usage", "mounts", "prepare", "view", "commit", "remove", "list", "cleanup", "revision"];

/// The adapter.
pub(crate) struct NativeSnapshotter {
    plugin: Arc<NativePlugin>,
    stats: StatCache,
    /// Whether stats go through `stats`: the plugin has the revision method and has not said it keeps none.
    revisions: AtomicBool,
    /// Held across an update and the revision read after it, so the revision names that update's answer
    /// and not a later update's state (see `update`).
    updates: tokio::sync::Mutex<()>,
}

impl NativeSnapshotter {
    pub(crate) fn new(plugin: Arc<NativePlugin>) -> Self {
        let revisions = AtomicBool::new(plugin.has(m::REVISION));
        Self { plugin, stats: StatCache::default(), revisions, updates: tokio::sync::Mutex::new(()) }
    }

    /// The whole answer, across the ABI.
    async fn fetch_stat(&self, key: &str) -> Result<Info> {
        let request = pb::StatSnapshotRequest { snapshotter: self.name_owned(), key: key.into() };
        let response: wire::InfoResponse = self.plugin.call(m::STAT, request).await.map_err(|e| self.error(e))?;
        info_from(response.info)
    }

    /// The plugin's revision of `key`. A plugin that answers none (the SDK's default) or unimplemented keeps
    /// no revisions: it is not asked again, so such a plugin pays this call once, not on every stat.
    async fn revision(&self, key: &str) -> Result<Option<u64>> {
        let request = pb::RevisionRequest { key: key.into() };
        let revision = match self.plugin.call::<_, pb::RevisionResponse>(m::REVISION, request).await {
            Ok(response) => response.revision,
            Err(e) if e.code == code::UNIMPLEMENTED => None,
            Err(e) => return Err(self.error(e)),
        };
        if revision.is_none() && self.revisions.swap(false, Ordering::Relaxed) {
            self.stats.clear();
        }
        Ok(revision)
    }

    fn name_owned(&self) -> String {
        self.plugin.id.name.clone()
    }

    fn error(&self, e: CallError) -> SnapshotError {
        match e.code {
            code::NOT_FOUND => SnapshotError::NotFound(e.message),
            code::ALREADY_EXISTS => SnapshotError::AlreadyExists(e.message),
            code::FAILED_PRECONDITION => SnapshotError::FailedPrecondition(e.message),
            code::INVALID_ARGUMENT => SnapshotError::InvalidArgument(e.message),
            _ => SnapshotError::Other(self.plugin.other_error(e)),
        }
    }
}

pub(crate) fn time_from(t: Option<Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The answers that carry an [`Info`] are decoded in their `wire` form: the labels arrive as a list of
/// entries and are made into the core's map in one pass (see `wire` in the SDK).
fn info_from(info: Option<wire::Info>) -> Result<Info> {
    let info =
        info.ok_or_else(|| SnapshotError::Other(crate::Error::Internal("plugin answered without info".into())))?;
    let kind = match pb::Kind::try_from(info.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Active) => Kind::Active,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => {
            return Err(SnapshotError::Other(crate::Error::Internal(format!(
                "plugin gave snapshot {} an unknown kind {}",
                info.name, info.kind
            ))));
        }
    };
    Ok(Info {
        kind,
        name: info.name,
        parent: (!info.parent.is_empty()).then_some(info.parent),
        labels: Arc::new(wire::labels(info.labels)),
        created: time_from(info.created_at),
        updated: time_from(info.updated_at),
    })
}

fn info_to(info: Info) -> pb::Info {
    let kind = match info.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        kind: kind as i32,
        created_at: Some(info.created.into()),
        updated_at: Some(info.updated.into()),
        // The SDK's labels are the core's type: moved, not rebuilt (copied only if the caller still shares them).
        labels: Arc::unwrap_or_clone(info.labels),
    }
}

pub(crate) fn mount_from(m: sdk::Mount) -> Mount {
    Mount { kind: m.r#type, source: m.source, target: m.target, options: m.options }
}

pub(crate) fn mount_to(m: &Mount) -> sdk::Mount {
    sdk::Mount {
        r#type: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        options: m.options.clone(),
    }
}

#[async_trait::async_trait]
impl Snapshotter for NativeSnapshotter {
    fn name(&self) -> &str {
        &self.plugin.id.name
    }

    async fn stat(&self, key: &str) -> Result<Info> {
        if !self.revisions.load(Ordering::Relaxed) {
            return self.fetch_stat(key).await;
        }
        self.stats.stat(key, self.revision(key), || self.fetch_stat(key)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let name = info.name.clone();
        let request = pb::UpdateSnapshotRequest {
            snapshotter: self.name_owned(),
            info: Some(info_to(info)),
            update_mask: (!fieldpaths.is_empty()).then(|| FieldMask { paths: fieldpaths.to_vec() }),
        };
        let _one_update_at_a_time = self.updates.lock().await;
        let response = self.plugin.call::<_, wire::InfoResponse>(m::UPDATE, request).await;
        // Forgotten whatever the outcome: the plugin moves the revision too, this keeps nothing stale even
        // when it does not.
        self.stats.forget(&name);
        let info = info_from(response.map_err(|e| self.error(e))?.info)?;
        // The answer is the snapshot's new state, whole: kept under the revision read right after it (no
        // other update can come between, and only berthd's calls move a revision), so the next stat need
        // not fetch every label again. A failed read (the snapshot removed meanwhile) keeps nothing.
        if self.revisions.load(Ordering::Relaxed)
            && let Ok(Some(revision)) = self.revision(&name).await
        {
            self.stats.keep(&name, revision, &info);
        }
        Ok(info)
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let request = pb::UsageRequest { snapshotter: self.name_owned(), key: key.into() };
        let response: pb::UsageResponse = self.plugin.call(m::USAGE, request).await.map_err(|e| self.error(e))?;
        Ok(Usage { size: response.size.max(0) as u64, inodes: response.inodes.max(0) as u64 })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let request = pb::MountsRequest { snapshotter: self.name_owned(), key: key.into() };
        let response: pb::MountsResponse = self.plugin.call(m::MOUNTS, request).await.map_err(|e| self.error(e))?;
        Ok(response.mounts.into_iter().map(mount_from).collect())
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let request = pb::PrepareSnapshotRequest {
            snapshotter: self.name_owned(),
            key: key.into(),
            parent: parent.unwrap_or_default().into(),
            labels,
        };
        let response: pb::PrepareSnapshotResponse =
            self.plugin.call(m::PREPARE, request).await.map_err(|e| self.error(e))?;
        Ok(response.mounts.into_iter().map(mount_from).collect())
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let request = pb::ViewSnapshotRequest {
            snapshotter: self.name_owned(),
            key: key.into(),
            parent: parent.unwrap_or_default().into(),
            labels,
        };
        let response: pb::ViewSnapshotResponse = self.plugin.call(m::VIEW, request).await.map_err(|e| self.error(e))?;
        Ok(response.mounts.into_iter().map(mount_from).collect())
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let request =
            pb::CommitSnapshotRequest { snapshotter: self.name_owned(), name: name.into(), key: key.into(), labels };
        let result = self.plugin.call::<_, ()>(m::COMMIT, request).await;
        self.stats.forget(key);
        self.stats.forget(name);
        result.map_err(|e| self.error(e))
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let request = pb::RemoveSnapshotRequest { snapshotter: self.name_owned(), key: key.into() };
        let result = self.plugin.call::<_, ()>(m::REMOVE, request).await;
        self.stats.forget(key);
        result.map_err(|e| self.error(e))
    }

    async fn walk(&self, filter: WalkFilter<'_>) -> Result<Vec<Info>> {
        let request = pb::ListSnapshotsRequest { snapshotter: self.name_owned(), filters: Vec::new() };
        let response: wire::ListSnapshotsResponse =
            self.plugin.call(m::LIST, request).await.map_err(|e| self.error(e))?;
        let mut infos = Vec::with_capacity(response.info.len());
        for info in response.info {
            let info = info_from(Some(info))?;
            if filter(&info) {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    async fn cleanup(&self) -> Result<()> {
        let request = pb::CleanupRequest { snapshotter: self.name_owned() };
        self.plugin.call::<_, ()>(m::CLEANUP, request).await.map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use berth_plugin_sdk::proto::Message;

    /// The SDK's hand-written messages are wire-identical to berth-proto's generated ones.
    #[test]
    fn sdk_snapshot_messages_match_containerds() {
        use berth_proto::containerd::services::snapshots::v1 as generated;
        let request = super::pb::PrepareSnapshotRequest {
            snapshotter: "example".into(),
            key: "k".into(),
            parent: "p".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let decoded = generated::PrepareSnapshotRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (decoded.snapshotter.as_str(), decoded.key.as_str(), decoded.parent.as_str()),
            ("example", "k", "p")
        );
        assert_eq!(decoded.labels.get("a").map(String::as_str), Some("b"));

        let info = generated::Info {
            name: "n".into(),
            parent: "p".into(),
            kind: generated::Kind::Committed as i32,
            created_at: Some(std::time::SystemTime::UNIX_EPOCH.into()),
            updated_at: None,
            labels: [("l".to_string(), "v".to_string())].into(),
        };
        let response = generated::UpdateSnapshotResponse { info: Some(info) };
        let ours = super::pb::UpdateSnapshotResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        let ours = ours.info.unwrap();
        assert_eq!((ours.name.as_str(), ours.kind), ("n", super::pb::Kind::Committed as i32));
        assert_eq!(ours.labels.get("l").map(String::as_str), Some("v"));

        let mounts = generated::MountsResponse {
            mounts: vec![berth_proto::containerd::types::Mount {
                r#type: "bind".into(),
                source: "/s".into(),
                target: String::new(),
                options: vec!["rbind".into(), "ro".into()],
            }],
        };
        let ours = super::pb::MountsResponse::decode(mounts.encode_to_vec().as_slice()).unwrap();
        assert_eq!(ours.mounts[0].options, ["rbind", "ro"]);
        let usage = super::pb::UsageResponse { size: 4096, inodes: 3 };
        let decoded = generated::UsageResponse::decode(usage.encode_to_vec().as_slice()).unwrap();
        assert_eq!((decoded.size, decoded.inodes), (4096, 3));
    }

    /// The revision messages, berth's own, are wire-identical to berth-proto's; a revision of 0 is still
    /// there (proto3 `optional`), not taken for none.
    #[test]
    fn sdk_revision_messages_match_berths() {
        use berth_proto::berth::plugin::snapshot::v1 as generated;
        let request = super::pb::RevisionRequest { key: "ns/1/k".into() };
        let decoded = generated::RevisionRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.key, "ns/1/k");
        for revision in [None, Some(0), Some(7), Some(u64::MAX)] {
            let theirs = generated::RevisionResponse { revision };
            let ours = super::pb::RevisionResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
            assert_eq!(ours.revision, revision);
            let back = generated::RevisionResponse::decode(ours.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back.revision, revision);
        }
    }
}
