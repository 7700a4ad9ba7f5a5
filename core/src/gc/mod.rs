//! The garbage collector: containerd's metadata GC (`metadata/gc.go`) over berth's store, content
//! store and snapshot backends, and its scheduler ([`scheduler`], the `gc.scheduler` plugin).
//!
//! A collection has three passes:
//!
//! 1. **Records** ([`MetadataStore::collect_records`]): one write transaction marks everything
//!    reachable from the roots (images, containers, sandboxes' labels, leases that have not
//!    expired, `containerd.io/gc.root` objects, live ingests; then label references and snapshot
//!    parents, per namespace; the rules are in `store/gc.rs`) and removes the content and snapshot
//!    records nothing reaches, and the expired leases with their resources.
//! 2. **Files and backend snapshots**: every blob file no namespace has a record of is removed,
//!    and every backend snapshot no record names (nor any named one stands on) is removed,
//!    children before parents, whether its record went in pass 1 or never existed (a crash
//!    between a backend call and its record). Then the backend's own cleanup runs.
//! 3. **Ingests**: those no live lease holds and nobody wrote to for `ingest_expiry` are aborted
//!    (an ingest a writer holds is locked and stays).
//!
//! # Why a write racing the collector is not lost
//!
//! Pass 1 marks and sweeps inside *one* LMDB write transaction: writes are serialised with it,
//! so every record is either committed before the mark (and seen by it) or written after the
//! sweep (and untouched by it). There is no window between a read-only mark and a sweep for a
//! reference to appear in, as there would be with the mark in a read transaction; the cost is that
//! other writes wait for the pass (containerd likewise holds its database's write lock), which is
//! what `pause_threshold` bounds.
//!
//! Pass 2 compares files and backend snapshots with records, which no transaction spans. So the
//! writes that put a file or backend snapshot in place before committing its record (a content
//! commit renames the blob then records it; a snapshot prepare, view or commit asks the backend
//! then records) hold [`MetadataStore::guard_against_sweep`] (shared) from before the file or
//! snapshot appears until the record is committed, and pass 2 decides under
//! [`MetadataStore::lock_for_sweep`] (exclusive): it never sees one without the other. Blob files
//! are removed under the lock too, since a commit may find a blob file already there and only add
//! a record; backend snapshots are removed after it is released, because no new record can name
//! a backend key that was unnamed (keys are fresh for every snapshot) and removal may take long.
//! A lock rather than a re-check in a write transaction, because files and backend calls cannot
//! take part in one.
//!
//! An import (a writer naming a blob another namespace has) checks at commit, under the guard,
//! that the blob file is still there.

pub mod scheduler;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use self::scheduler::{GcConfig, GcScheduler, registration};
use crate::content::{BlobStore, ContentError};
use crate::error::{Error, Result};
use crate::snapshot::{Info, SharedSnapshotter, SnapshotError};
use crate::store::{IngestRef, MetadataStore};

/// What one collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Expired leases removed.
    pub leases: usize,
    /// Content records removed.
    pub content: usize,
    /// Snapshot records removed.
    pub snapshots: usize,
    /// Blob files removed.
    pub blobs: usize,
    /// Backend snapshots removed.
    pub backend_snapshots: usize,
    /// Ingests aborted.
    pub ingests: usize,
    /// How long writers were held up: the record pass and pass 2's decision.
    pub pause: Duration,
    /// How long the whole collection took.
    pub elapsed: Duration,
}

/// Runs collections; the scheduler decides when.
pub struct Collector {
    store: MetadataStore,
    blobs: Arc<BlobStore>,
    snapshotters: Vec<SharedSnapshotter>,
    ingest_expiry: Duration,
    /// The backends' cleanup runs on the first collection, and after one removed something.
    cleaned: AtomicBool,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.snapshotters.iter().map(|s| s.name().to_owned()).collect();
        f.debug_struct("Collector").field("store", &self.store).field("snapshotters", &names).finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("garbage collection: a blocking task failed: {e}")))?
}

impl Collector {
    /// A collector over the records of `store`, the blob files of `blobs` and the backends
    /// `snapshotters`; ingests nobody leases are aborted once not written for `ingest_expiry`.
    pub fn new(
        store: MetadataStore,
        blobs: BlobStore,
        snapshotters: Vec<SharedSnapshotter>,
        ingest_expiry: Duration,
    ) -> Collector {
        Collector { store, blobs: Arc::new(blobs), snapshotters, ingest_expiry, cleaned: AtomicBool::new(false) }
    }

    /// Runs one collection (see the module doc) and logs what it did at info.
    pub async fn collect(&self) -> Result<Stats> {
        let started = Instant::now();
        let now = SystemTime::now();
        let expiry = self.ingest_expiry;
        let blobs = self.blobs.clone();
        let listed = blocking(move || Ok(blobs.list_all_statuses()?)).await?;
        let ingests = listed
            .into_iter()
            .map(|(namespace, status)| IngestRef {
                namespace,
                expected: status.expected.map(|d| d.to_string()),
                fresh: now.duration_since(status.updated_at).map_or(true, |age| age < expiry),
                reference: status.reference,
            })
            .collect();

        let records_started = Instant::now();
        let swept = self.store.collect_records(now, ingests).await?;
        let mut pause = records_started.elapsed();
        let mut stats = Stats {
            leases: swept.leases.len(),
            content: swept.content.len(),
            snapshots: swept.snapshots.len(),
            ..Stats::default()
        };
        for (ns, id) in &swept.leases {
            tracing::debug!(namespace = %ns, lease = %id, "garbage collection: expired lease removed");
        }
        for (ns, digest) in &swept.content {
            tracing::debug!(namespace = %ns, %digest, "garbage collection: content record removed");
        }
        for (ns, snapshotter, key, _) in &swept.snapshots {
            tracing::debug!(namespace = %ns, %snapshotter, %key, "garbage collection: snapshot record removed");
        }

        let (blobs_removed, doomed, hold) = self.decide().await?;
        pause += hold;
        stats.blobs = blobs_removed;
        let first = !self.cleaned.swap(true, Ordering::Relaxed);
        for (snapshotter, keys) in doomed {
            let mut removed = 0;
            for key in &keys {
                match snapshotter.remove(key).await {
                    Ok(()) => removed += 1,
                    Err(SnapshotError::NotFound(_)) => {}
                    Err(e) => tracing::warn!(
                        snapshotter = snapshotter.name(),
                        %key,
                        error = %e,
                        "garbage collection: backend snapshot not removed"
                    ),
                }
            }
            stats.backend_snapshots += removed;
            if (removed > 0 || first)
                && let Err(e) = snapshotter.cleanup().await
            {
                tracing::warn!(snapshotter = snapshotter.name(), error = %e, "garbage collection: backend cleanup failed");
            }
        }
        stats.ingests = self.abort_stale(swept.stale_ingests).await?;
        stats.pause = pause;
        stats.elapsed = started.elapsed();
        tracing::info!(
            leases = stats.leases,
            content = stats.content,
            blobs = stats.blobs,
            snapshots = stats.snapshots,
            backend_snapshots = stats.backend_snapshots,
            ingests = stats.ingests,
            kept_content = swept.content_kept,
            kept_snapshots = swept.snapshots_kept,
            pause_us = stats.pause.as_micros() as u64,
            elapsed_ms = stats.elapsed.as_millis() as u64,
            "garbage collected"
        );
        Ok(stats)
    }

    /// Pass 2's decision, under the sweep lock: removes the blob files no record names and says
    /// which backend snapshots to remove, in order. Returns how long the lock was held.
    async fn decide(&self) -> Result<(usize, Vec<(SharedSnapshotter, Vec<String>)>, Duration)> {
        let lock = self.store.lock_for_sweep().await;
        let locked = Instant::now();
        let in_use = self.store.content_in_use()?;
        let blobs = self.blobs.clone();
        let removed = blocking(move || {
            let mut removed = 0;
            for digest in blobs.list_blobs()? {
                if in_use.contains(digest.as_str()) {
                    continue;
                }
                match blobs.remove_blob(&digest) {
                    Ok(true) => {
                        tracing::debug!(%digest, "garbage collection: blob removed");
                        removed += 1;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "garbage collection: blob not removed"),
                }
            }
            Ok::<_, Error>(removed)
        })
        .await?;
        let mut doomed = Vec::new();
        for snapshotter in &self.snapshotters {
            let named = self.store.snapshots_in_use(snapshotter.name())?;
            match snapshotter.walk(&|_| true).await {
                Ok(infos) => doomed.push((snapshotter.clone(), removal_order(&infos, &named))),
                Err(e) => tracing::warn!(
                    snapshotter = snapshotter.name(),
                    error = %e,
                    "garbage collection: cannot list the backend's snapshots; skipping it"
                ),
            }
        }
        let held = locked.elapsed();
        drop(lock);
        Ok((removed, doomed, held))
    }

    /// Aborts the ingests the record pass found unleased and stale, unless a lease took one or
    /// someone wrote to it since; an ingest a writer holds is locked and stays.
    async fn abort_stale(&self, stale: Vec<(String, String)>) -> Result<usize> {
        let mut aborted = 0;
        for (ns, reference) in stale {
            if self.store.ingest_leased(&ns, &reference, SystemTime::now())? {
                continue;
            }
            let (blobs, expiry) = (self.blobs.clone(), self.ingest_expiry);
            let (owned_ns, owned_ref) = (ns.clone(), reference.clone());
            let outcome = blocking(move || {
                let status = match blobs.status(&owned_ns, &owned_ref) {
                    Ok(status) => status,
                    Err(ContentError::IngestNotFound { .. }) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
                if SystemTime::now().duration_since(status.updated_at).map_or(true, |age| age < expiry) {
                    return Ok(false);
                }
                match blobs.abort(&owned_ns, &owned_ref) {
                    Ok(()) => Ok(true),
                    Err(ContentError::Locked(_) | ContentError::IngestNotFound { .. }) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await;
            match outcome {
                Ok(true) => {
                    tracing::debug!(namespace = %ns, %reference, "garbage collection: stale ingest aborted");
                    aborted += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, %reference, error = %e, "garbage collection: ingest not aborted")
                }
            }
        }
        Ok(aborted)
    }
}

/// The backend snapshots of `infos` to remove: those no key of `named` is, nor stands on
/// (a named snapshot's parents stay), children before parents.
fn removal_order(infos: &[Info], named: &HashSet<String>) -> Vec<String> {
    let parents: HashMap<&str, Option<&str>> =
        infos.iter().map(|i| (i.name.as_str(), i.parent.as_deref().filter(|p| !p.is_empty()))).collect();
    let mut keep: HashSet<&str> = HashSet::new();
    for key in named {
        let mut current = Some(key.as_str());
        while let Some(k) = current {
            if !parents.contains_key(k) || !keep.insert(k) {
                break;
            }
            current = parents[k];
        }
    }
    // Depth in the parent chain: removing deepest first removes every child before its parent.
    let mut depths: HashMap<&str, usize> = HashMap::new();
    fn depth<'a>(
        key: &'a str,
        parents: &HashMap<&'a str, Option<&'a str>>,
        depths: &mut HashMap<&'a str, usize>,
    ) -> usize {
        let mut chain = Vec::new();
        let mut current = Some(key);
        let mut base = 0;
        while let Some(k) = current {
            if let Some(&d) = depths.get(k) {
                base = d + 1;
                break;
            }
            // A cycle or an unknown parent ends the chain.
            if chain.contains(&k) || !parents.contains_key(k) {
                break;
            }
            chain.push(k);
            current = parents[k];
        }
        for (i, k) in chain.iter().rev().enumerate() {
            depths.insert(k, base + i);
        }
        depths.get(key).copied().unwrap_or(0)
    }
    let mut doomed: Vec<(usize, &str)> = infos
        .iter()
        .map(|i| i.name.as_str())
        .filter(|k| !keep.contains(k))
        .map(|k| (depth(k, &parents, &mut depths), k))
        .collect();
    doomed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    doomed.into_iter().map(|(_, k)| k.to_owned()).collect()
}

#[cfg(test)]
mod tests;
