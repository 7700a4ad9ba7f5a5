//! What a pull is doing, item by item (manifest, config, layers), for the client's progress
//! stream: every change bumps a version the stream task waits on.

use std::sync::Mutex;
use std::time::SystemTime;

use berth_proto::berth::services::images::v1::ProgressInfo;
use tokio::sync::watch;

/// The states an item goes through, as the stream spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Known, not started.
    Waiting,
    /// Asking the registry what a tag is.
    Resolving,
    /// Bytes coming in.
    Downloading,
    /// Already in the content store (or the snapshotter): nothing to fetch.
    Exists,
    /// Fetched and committed.
    Done,
    /// Its layer going into a snapshot.
    Unpacking,
    /// Its snapshot committed.
    Unpacked,
    /// It failed; the pull's error says why.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Resolving => "resolving",
            Status::Downloading => "downloading",
            Status::Exists => "exists",
            Status::Done => "done",
            Status::Unpacking => "unpacking",
            Status::Unpacked => "unpacked",
            Status::Failed => "failed",
        }
    }
}

/// One pull's items; shared by its download tasks and its progress stream.
pub struct Progress {
    items: Mutex<Vec<ProgressInfo>>,
    version: watch::Sender<u64>,
}

/// An item's position in [`Progress`].
#[derive(Debug, Clone, Copy)]
pub struct Item(usize);

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}

impl Default for Progress {
    fn default() -> Self {
        Progress { items: Mutex::new(Vec::new()), version: watch::channel(0).0 }
    }
}

impl Progress {
    /// Adds item `reference` of `total` bytes (0: unknown yet), waiting.
    pub fn add(&self, reference: &str, total: u64) -> Item {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = items.iter().position(|p| p.r#ref == reference) {
            return Item(i);
        }
        items.push(ProgressInfo {
            r#ref: reference.to_owned(),
            status: Status::Waiting.as_str().into(),
            offset: 0,
            total: to_i64(total),
            started: None,
            updated: now(),
        });
        let item = Item(items.len() - 1);
        drop(items);
        self.changed();
        item
    }

    /// Sets `item`'s status; the first status past waiting starts its clock.
    pub fn set(&self, item: Item, status: Status) {
        self.update(item, |p| {
            if p.started.is_none() && status != Status::Waiting {
                p.started = now();
            }
            p.status = status.as_str().into();
            if matches!(status, Status::Done | Status::Exists) && p.total > 0 {
                p.offset = p.total;
            }
        });
    }

    /// Records that `item` has `offset` of its `total` bytes (0: unchanged).
    pub fn fetched(&self, item: Item, offset: u64, total: u64) {
        self.update(item, |p| {
            if p.started.is_none() {
                p.started = now();
            }
            p.offset = to_i64(offset);
            if total > 0 {
                p.total = to_i64(total);
            }
        });
    }

    fn update(&self, item: Item, change: impl FnOnce(&mut ProgressInfo)) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = items.get_mut(item.0) {
            change(p);
            p.updated = now();
        }
        drop(items);
        self.changed();
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Every item as it stands.
    pub fn snapshot(&self) -> Vec<ProgressInfo> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_order_and_a_ref_is_added_once() {
        let p = Progress::default();
        let mut rx = p.subscribe();
        let a = p.add("manifest-sha256:a", 100);
        let b = p.add("layer-sha256:b", 0);
        assert_eq!(p.add("manifest-sha256:a", 100).0, a.0);
        p.fetched(b, 10, 50);
        p.set(a, Status::Done);
        let items = p.snapshot();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].status.as_str(), items[0].offset, items[0].total), ("done", 100, 100));
        assert_eq!((items[1].status.as_str(), items[1].offset, items[1].total), ("waiting", 10, 50));
        assert!(items[1].started.is_some() && items[1].updated.is_some());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        p.set(b, Status::Downloading);
        assert!(rx.has_changed().unwrap());
    }
}
