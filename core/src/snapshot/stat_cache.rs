//! berthd's copy of a plugin's stat answers, kept while the plugin says the snapshot has not changed.
//!
//! A stat crosses a plugin boundary (a native library's ABI, a wasm component's canonical ABI) as a whole
//! message: a snapshot with 64 KiB of labels costs the copy, encode and decode of every label on every call,
//! where a built-in backend hands out its shared map (`Info::labels` is an `Arc`). A plugin that keeps a
//! *revision* per snapshot (a value that names one state of it, as an HTTP ETag does) lets the adapter ask
//! for that small value first and answer from the copy it kept when it has not moved; only a changed or
//! unknown snapshot is fetched whole. A kept answer is handed out as a built-in one is: its labels are the
//! kept copy's map, shared, not copied.
//!
//! The revision is read before the whole answer is fetched, so a copy is never older than the revision it
//! is kept under: a change after the read moves the revision, and the next call fetches again. The plugin
//! promises that a revision never names two different states of one key (see the SDK's
//! `Snapshotter::revision`); the adapter forgets what it kept when the plugin is replaced (a wasm reload),
//! and when berthd itself removes or commits the key. An update's answer is kept too ([`StatCache::keep`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use super::{Info, Result};

/// How many snapshots' answers one adapter keeps; past it, an arbitrary one is forgotten per new one.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The kept answers of one plugin, by the plugin's own key.
#[derive(Debug)]
pub struct StatCache {
    entries: Mutex<HashMap<String, (u64, Info)>>,
    capacity: usize,
}

impl Default for StatCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl StatCache {
    /// A cache of at most `capacity` answers (0 keeps none).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The stat of `key`: `revision` is the plugin's current revision of it (`None`: it keeps none, and every
    /// stat is fetched whole), `fetch` the whole answer, called only when the kept copy is missing or stale.
    pub async fn stat<R, F>(&self, key: &str, revision: R, fetch: impl FnOnce() -> F) -> Result<Info>
    where
        R: Future<Output = Result<Option<u64>>>,
        F: Future<Output = Result<Info>>,
    {
        let Some(revision) = revision.await? else {
            return fetch().await;
        };
        if let Some(info) = self.kept(key, revision) {
            // The answer's labels are the kept copy's (a count bumped, not 1,024 strings copied).
            return Ok(info);
        }
        let info = fetch().await?;
        self.keep(key, revision, &info);
        Ok(info)
    }

    fn kept(&self, key: &str, revision: u64) -> Option<Info> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // A clone is the name, the parent and a count on the shared labels: cheap enough under the lock.
        entries.get(key).filter(|(kept, _)| *kept == revision).map(|(_, info)| info.clone())
    }

    /// Keeps `info` as the answer for `key` at `revision`. Besides the fetches of [`Self::stat`], an adapter
    /// keeps an update's answer under the revision it read right after the update, with no other update of
    /// the plugin in between (the SDK's `Snapshotter::revision` promises that only berthd's calls move a
    /// revision): the stat that follows a label change (`ctr snapshots label`, then `info`) is answered
    /// from it instead of fetching every label again.
    pub fn keep(&self, key: &str, revision: u64, info: &Info) {
        if self.capacity == 0 {
            return;
        }
        // Shares the labels with the answer the caller gets.
        let info = info.clone();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity
            && !entries.contains_key(key)
            && let Some(victim) = entries.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        entries.insert(key.to_owned(), (revision, info));
    }

    /// Forgets the answer kept for `key` (berthd removed or committed it).
    pub fn forget(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Forgets every kept answer (the plugin was replaced: its revisions may start again).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::snapshot::{Kind, SnapshotError};

    fn info(label: &str) -> Info {
        Info {
            kind: Kind::Committed,
            name: "k".into(),
            parent: None,
            labels: Arc::new([("l".to_string(), label.to_string())].into()),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    /// One stat through the cache, counting the whole fetches.
    async fn stat(cache: &StatCache, revision: Option<u64>, label: &str, fetches: &Cell<u32>) -> Result<Info> {
        cache
            .stat("k", async move { Ok(revision) }, || async {
                fetches.set(fetches.get() + 1);
                Ok(info(label))
            })
            .await
    }

    #[tokio::test]
    async fn an_unchanged_revision_is_answered_from_the_copy_and_a_changed_one_is_fetched() {
        let cache = StatCache::default();
        let fetches = Cell::new(0);
        assert_eq!(stat(&cache, Some(1), "a", &fetches).await.unwrap(), info("a"));
        // The fetch would now say "b": the copy answers, as the revision did not move.
        assert_eq!(stat(&cache, Some(1), "b", &fetches).await.unwrap(), info("a"));
        assert_eq!(fetches.get(), 1);
        assert_eq!(stat(&cache, Some(2), "b", &fetches).await.unwrap(), info("b"));
        assert_eq!(fetches.get(), 2);
        assert_eq!(stat(&cache, Some(2), "c", &fetches).await.unwrap(), info("b"));
        assert_eq!(fetches.get(), 2);
    }

    #[tokio::test]
    async fn a_kept_answer_shares_its_labels_and_does_not_copy_them() {
        let cache = StatCache::default();
        let fetches = Cell::new(0);
        let fetched = stat(&cache, Some(1), "a", &fetches).await.unwrap();
        let kept = cache.kept("k", 1).unwrap();
        assert!(Arc::ptr_eq(&fetched.labels, &kept.labels), "the fetched answer and the kept copy share one map");
        for _ in 0..2 {
            let hit = stat(&cache, Some(1), "b", &fetches).await.unwrap();
            assert!(Arc::ptr_eq(&hit.labels, &kept.labels), "a hit hands out the kept map");
        }
        assert_eq!(fetches.get(), 1);
        // A caller that changes its answer's labels copies them first: the kept copy stays as fetched.
        let mut hit = stat(&cache, Some(1), "b", &fetches).await.unwrap();
        Arc::make_mut(&mut hit.labels).insert("l".into(), "changed".into());
        assert_eq!(stat(&cache, Some(1), "b", &fetches).await.unwrap(), info("a"));
        assert!(Arc::ptr_eq(&cache.kept("k", 1).unwrap().labels, &kept.labels));
    }

    #[tokio::test]
    async fn without_revisions_every_stat_is_fetched_and_nothing_is_kept() {
        let cache = StatCache::default();
        let fetches = Cell::new(0);
        assert_eq!(stat(&cache, None, "a", &fetches).await.unwrap(), info("a"));
        assert_eq!(stat(&cache, None, "b", &fetches).await.unwrap(), info("b"));
        assert_eq!(fetches.get(), 2);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn forget_clear_and_errors_leave_nothing_stale() {
        let cache = StatCache::default();
        let fetches = Cell::new(0);
        stat(&cache, Some(7), "a", &fetches).await.unwrap();
        cache.forget("k");
        assert_eq!(stat(&cache, Some(7), "b", &fetches).await.unwrap(), info("b"));
        cache.clear();
        assert_eq!(stat(&cache, Some(7), "c", &fetches).await.unwrap(), info("c"));
        assert_eq!(fetches.get(), 3);

        // A failed revision read or fetch is the caller's error, and keeps nothing new.
        let missing =
            cache.stat("gone", async { Err(SnapshotError::NotFound("gone".into())) }, || async { Ok(info("x")) });
        assert!(matches!(missing.await, Err(SnapshotError::NotFound(k)) if k == "gone"));
        let failed = cache
            .stat("other", async { Ok(Some(1)) }, || async { Err(SnapshotError::FailedPrecondition("busy".into())) });
        assert!(matches!(failed.await, Err(SnapshotError::FailedPrecondition(_))));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn the_capacity_bounds_what_is_kept() {
        let cache = StatCache::with_capacity(2);
        for key in ["a", "b", "c", "d"] {
            cache.stat(key, async { Ok(Some(1)) }, || async { Ok(info(key)) }).await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        let none = StatCache::with_capacity(0);
        none.stat("a", async { Ok(Some(1)) }, || async { Ok(info("a")) }).await.unwrap();
        assert!(none.is_empty());
    }
}
