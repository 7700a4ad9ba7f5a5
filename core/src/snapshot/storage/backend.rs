//! A [`Snapshotter`] for every backend whose snapshots are directories a [`MetaStore`] keeps: the
//! backend fills a new snapshot's directory and says how it is mounted, the store does the rest.

use std::path::PathBuf;

use super::{MetaStore, Record, Reservation, disk_usage};
use crate::mount::Mount;
use crate::snapshot::{Info, Kind, Labels, Result, SnapshotError, Snapshotter, Usage, WalkFilter};

/// A snapshot backend built on a [`MetaStore`]; it is a [`Snapshotter`] by that alone. Its calls
/// do file I/O, so they run on a blocking thread, with a clone of the backend.
pub trait StoredBackend: Clone + Send + Sync + 'static {
    /// The backend's name, as [`Snapshotter::name`] gives it (`native`).
    const NAME: &'static str;

    /// The store of its snapshots.
    fn store(&self) -> &MetaStore;

    /// Fills the directory of snapshot `key`, of `kind`, being made; its record is written after.
    fn fill(&self, key: &str, reservation: &Reservation<'_>, kind: Kind) -> Result<()>;

    /// The mounts of active or view snapshot `record` on `parents`, nearest first.
    fn mounts_of(&self, record: &Record, parents: &[Record]) -> Vec<Mount>;

    /// The directory whose disk use is snapshot `id`'s [`Usage`].
    fn usage_dir(&self, id: u64) -> PathBuf;
}

/// Runs `f` on a blocking thread with a clone of `backend`.
async fn blocking<B, T, F>(backend: &B, f: F) -> Result<T>
where
    B: StoredBackend,
    T: Send + 'static,
    F: FnOnce(&B) -> Result<T> + Send + 'static,
{
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || f(&backend)).await.map_err(|e| {
        SnapshotError::Other(crate::Error::Internal(format!("snapshot.{}: a blocking task failed: {e}", B::NAME)))
    })?
}

async fn create<B: StoredBackend>(
    backend: &B,
    kind: Kind,
    key: &str,
    parent: Option<&str>,
    labels: Labels,
) -> Result<Vec<Mount>> {
    let (key, parent) = (key.to_owned(), parent.map(str::to_owned));
    blocking(backend, move |backend| {
        let reservation = backend.store().reserve(&key, parent.as_deref())?;
        backend.fill(&key, &reservation, kind)?;
        let parents = reservation.ancestors().to_vec();
        let record = reservation.finish(kind, labels)?;
        Ok(backend.mounts_of(&record, &parents))
    })
    .await
}

#[async_trait::async_trait]
impl<B: StoredBackend> Snapshotter for B {
    fn name(&self) -> &str {
        B::NAME
    }

    async fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.store().get(key)?.info)
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let fieldpaths = fieldpaths.to_vec();
        blocking(self, move |backend| backend.store().update(&info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_owned();
        blocking(self, move |backend| {
            let record = backend.store().get(&key)?;
            let dir = backend.usage_dir(record.id);
            disk_usage(&dir).map_err(|e| SnapshotError::io(format_args!("usage of snapshot {key}"), e))
        })
        .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (record, parents) = self.store().mountable(key)?;
        Ok(self.mounts_of(&record, &parents))
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        create(self, Kind::Active, key, parent, labels).await
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        create(self, Kind::View, key, parent, labels).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_owned(), key.to_owned());
        blocking(self, move |backend| backend.store().commit(&name, &key, labels).map(drop)).await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        blocking(self, move |backend| backend.store().remove(&key).map(drop)).await
    }

    async fn walk(&self, filter: WalkFilter<'_>) -> Result<Vec<Info>> {
        Ok(self.store().walk(filter))
    }

    async fn cleanup(&self) -> Result<()> {
        blocking(self, |backend| backend.store().cleanup()).await
    }
}
