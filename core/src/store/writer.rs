//! The single writer thread and its group commit.
//!
//! A durable LMDB commit costs an fsync, milliseconds on real disks, and LMDB allows one write
//! transaction at a time. So every write is queued to one thread, which takes everything queued
//! (up to `max_batch` operations), runs each operation in its own nested transaction inside one
//! outer transaction, and commits once: N concurrent writers pay for one fsync, not N.
//!
//! A nested transaction is committed into the outer one only if its operation succeeded, so a
//! failing operation leaves nothing behind and does not disturb the others in its batch. Nobody
//! hears back before the outer commit is durable; if that commit fails, every operation of the
//! batch fails with it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use heed::{Env, RwTxn, WithoutTls};
use tokio::sync::oneshot;

use super::internal;
use super::tables::Tables;
use crate::error::{Error, Result};

/// A queued write, type-erased so operations of every result type share one queue.
pub trait WriteOp: Send {
    /// Runs the operation in `txn` (a nested transaction); true if it succeeded and its writes
    /// should be kept.
    fn run(&mut self, txn: &mut RwTxn<'_>, tables: &Tables<'static>) -> bool;
    /// Marks the operation failed, whether or not it ran.
    fn fail(&mut self, error: Error);
    /// Replies to the caller once the batch is over: `committed` is the outer commit's outcome.
    fn complete(self: Box<Self>, committed: Result<()>);
}

/// A write operation `F` producing `T`, and where to send it.
struct Pending<T, F> {
    op: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteOp for Pending<T, F>
where
    T: Send,
    F: FnOnce(&mut RwTxn<'_>, &Tables<'static>) -> Result<T> + Send,
{
    fn run(&mut self, txn: &mut RwTxn<'_>, tables: &Tables<'static>) -> bool {
        let Some(op) = self.op.take() else { return false };
        let result = op(txn, tables);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, error: Error) {
        self.result = Some(Err(error));
    }

    fn complete(self: Box<Self>, committed: Result<()>) {
        let Pending { result, reply, .. } = *self;
        let result = committed.and_then(|()| {
            result.unwrap_or_else(|| Err(Error::Internal("metadata store: the write operation never ran".into())))
        });
        // The caller may have stopped waiting; the write stands either way.
        let _ = reply.send(result);
    }
}

/// Counters, for the log line at shutdown.
#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    ops: AtomicU64,
}

/// Handle to the writer thread. Dropping it lets the thread finish what is queued, then waits
/// for it.
pub struct Writer {
    queue: Mutex<Option<Sender<Box<dyn WriteOp>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer thread for `env`; a batch holds at most `max_batch` operations.
    pub fn spawn(env: Env<WithoutTls>, tables: Tables<'static>, max_batch: usize) -> Result<Writer> {
        let (queue, ops) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("berth-store-writer".into())
            .spawn(move || run(env, tables, ops, max_batch, &thread_stats))
            .map_err(|e| Error::Internal(format!("metadata store: starting the writer thread: {e}")))?;
        Ok(Writer { queue: Mutex::new(Some(queue)), thread: Mutex::new(Some(thread)), stats })
    }

    /// Queues `op` and waits until its batch is durably committed (or failed).
    ///
    /// If the caller stops waiting, the operation still runs: it was already queued.
    pub async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut RwTxn<'_>, &Tables<'static>) -> Result<T> + Send + 'static,
    {
        let replied = self.submit(op)?;
        replied
            .await
            .map_err(|_| Error::Internal("metadata store: the writer thread stopped before replying".into()))?
    }

    /// Queues `op` now; the receiver gets its result once its batch is over.
    fn submit<T, F>(&self, op: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut RwTxn<'_>, &Tables<'static>) -> Result<T> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let pending: Box<dyn WriteOp> = Box::new(Pending { op: Some(op), result: None, reply });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.as_ref().map(|queue| queue.send(pending)) {
            Some(Ok(())) => Ok(replied),
            _ => Err(Error::Unavailable("metadata store is closed".into())),
        }
    }

    /// How many batches (commits) the thread has run.
    #[cfg(test)]
    pub fn batches(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// Stops accepting writes, lets the thread commit what is queued, and waits for it.
    pub fn shutdown(&self) {
        drop(self.queue.lock().unwrap_or_else(PoisonError::into_inner).take());
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("metadata store writer thread panicked");
            }
            tracing::debug!(
                batches = self.stats.batches.load(Ordering::Relaxed),
                ops = self.stats.ops.load(Ordering::Relaxed),
                "metadata store writer stopped"
            );
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The writer thread: blocks for an operation, takes whatever else is queued, commits them as
/// one batch; returns once the queue is closed and empty.
fn run(
    env: Env<WithoutTls>,
    tables: Tables<'static>,
    ops: Receiver<Box<dyn WriteOp>>,
    max_batch: usize,
    stats: &Stats,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = ops.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(&env, &tables, &mut batch);
    }
}

/// Runs and commits one batch, then replies to every operation in it.
fn commit_batch(env: &Env<WithoutTls>, tables: &Tables<'static>, batch: &mut Vec<Box<dyn WriteOp>>) {
    let committed = run_batch(env, tables, batch).map_err(internal("committing a write batch"));
    if let Err(e) = &committed {
        tracing::error!(ops = batch.len(), "{e}");
    }
    for op in batch.drain(..) {
        op.complete(committed.clone());
    }
}

fn run_batch(env: &Env<WithoutTls>, tables: &Tables<'static>, batch: &mut [Box<dyn WriteOp>]) -> heed::Result<()> {
    let mut outer = env.write_txn()?;
    for op in batch.iter_mut() {
        let mut nested = match env.nested_write_txn(&mut outer) {
            Ok(nested) => nested,
            Err(e) => {
                op.fail(internal("opening a nested write transaction")(e));
                continue;
            }
        };
        // A panicking operation must not take the whole batch (and the writer) down with it.
        let ok = catch_unwind(AssertUnwindSafe(|| op.run(&mut nested, tables))).unwrap_or_else(|_| {
            op.fail(Error::Internal("metadata store: a write operation panicked".into()));
            false
        });
        if ok {
            if let Err(e) = nested.commit() {
                op.fail(internal("committing a nested write transaction")(e));
            }
        } else {
            nested.abort();
        }
    }
    // LMDB's default commit: data and meta page are fsynced before this returns.
    outer.commit()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    use super::*;
    use crate::store::records::Namespace;
    use crate::store::{MetadataStore, StoreOptions};

    fn ns(name: &str) -> Namespace {
        Namespace { name: name.into(), labels: Default::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_op_writes_nothing_and_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        let writer = &store.inner.writer;

        // Hold the writer inside a first batch until the rest is queued, so the rest forms one
        // batch of its own.
        let (release, gate) = sync_channel::<()>(0);
        let (entered, inside) = sync_channel::<()>(1);
        let before = writer.stats.batches.load(Ordering::Relaxed);
        let mut first = writer
            .submit(move |_, _| {
                entered.send(()).unwrap();
                gate.recv().unwrap();
                Ok(())
            })
            .unwrap();
        inside.recv().unwrap();

        let mut queued = Vec::new();
        for i in 0..8 {
            let name = format!("ns{i}");
            let replied = writer.submit(move |txn, tables| {
                tables.namespaces.put(txn, &name, &ns(&name)).map_err(internal("test put"))?;
                if i == 3 {
                    // Fails after writing: the nested transaction must take the write back.
                    return Err(Error::InvalidArgument(format!("{name} refused")));
                }
                Ok(i)
            });
            queued.push(replied.unwrap());
        }
        // Nothing can have been answered yet: the writer is stuck in the first batch.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(first.try_recv().is_err());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();

        for (i, replied) in queued.into_iter().enumerate() {
            let result = replied.await.unwrap();
            if i == 3 {
                assert_eq!(result, Err(Error::InvalidArgument("ns3 refused".into())));
            } else {
                assert_eq!(result, Ok(i));
            }
        }
        // The first batch plus one batch for all eight.
        assert_eq!(writer.stats.batches.load(Ordering::Relaxed) - before, 2);
        let names: Vec<_> = store.list_namespaces().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["ns0", "ns1", "ns2", "ns4", "ns5", "ns6", "ns7"]);
    }

    #[tokio::test]
    async fn a_panicking_op_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        let err = store.inner.writer.write(|_, _| -> Result<()> { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        // The writer is still alive.
        store.create_namespace(ns("after")).await.unwrap();
    }

    #[tokio::test]
    async fn writes_after_shutdown_are_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path(), StoreOptions::default()).unwrap();
        let other = store.clone();
        store.close();
        let err = other.create_namespace(ns("late")).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        // Reads still work on the remaining handle.
        assert!(other.list_namespaces().unwrap().is_empty());
    }
}
