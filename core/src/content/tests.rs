//! Tests of the content store: ingests, resume, verification, locking and namespaces.

use std::collections::BTreeMap;

use super::*;
use crate::store::Lease;
use crate::store::testutil::open_temp;

struct Fixture {
    dir: tempfile::TempDir,
    content: ContentStore,
}

fn fixture() -> Fixture {
    let (dir, store) = open_temp();
    let blobs = BlobStore::open(&dir.path().join("content")).unwrap();
    Fixture { content: ContentStore::new(blobs, store), dir }
}

impl Fixture {
    fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join("content/blobs/sha256").join(digest.encoded())
    }

    fn ingest_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("content/ingest")).unwrap().count()
    }

    async fn writer(&self, ns: &str, reference: &str) -> Result<Writer> {
        self.content.writer(ns, reference, 0, None, None).await
    }

    /// Writes `data` through ingest `reference` of `ns` in one go and commits it.
    async fn put(&self, ns: &str, reference: &str, data: &[u8]) -> Committed {
        let mut w = self.writer(ns, reference).await.unwrap();
        w.write(0, data.to_vec()).await.unwrap();
        w.commit(data.len() as u64, Some(Digest::sha256_of(data)), BTreeMap::new()).await.unwrap()
    }
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[tokio::test]
async fn ingest_in_chunks_and_commit() {
    let f = fixture();
    let data = b"hello, content store";
    let digest = Digest::sha256_of(data);
    let mut w = f.content.writer("default", "ref-1", data.len() as u64, Some(digest.clone()), None).await.unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    assert_eq!(w.write(0, data[..5].to_vec()).await.unwrap(), 5);
    assert_eq!(w.write(5, data[5..].to_vec()).await.unwrap(), data.len() as u64);
    // The running hash is the digest of what is written so far.
    assert_eq!(w.digest().unwrap(), digest);

    let status = f.content.status("default", "ref-1").await.unwrap();
    assert_eq!((status.reference.as_str(), status.offset, status.total), ("ref-1", 20, 20));
    assert_eq!(status.expected, Some(digest.clone()));
    assert!(status.updated_at >= status.started_at);
    // Not visible before the commit.
    assert!(matches!(f.content.info("default", &digest), Err(Error::NotFound(_))));
    assert!(!f.blob_file(&digest).exists());

    let labels: BTreeMap<_, _> = [("k".to_string(), "v".to_string())].into();
    let committed = w.commit(0, None, labels.clone()).await.unwrap();
    assert!(committed.created);
    assert_eq!((committed.info.digest.as_str(), committed.info.size), (digest.as_str(), 20));
    assert_eq!(committed.info.labels, labels);
    assert_eq!(std::fs::read(f.blob_file(&digest)).unwrap(), data);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f.blob_file(&digest)).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o444, "blobs are read-only");
    assert_eq!(f.content.info("default", &digest).unwrap(), committed.info);
    // The ingest is gone.
    assert!(matches!(f.content.status("default", "ref-1").await, Err(Error::NotFound(_))));
    assert_eq!(f.ingest_dirs(), 0);
    // A committed writer takes nothing more.
    let err = w.write(20, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");

    let (info, file) = f.content.open("default", &digest).unwrap();
    assert_eq!(info.size, 20);
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut read).unwrap();
    assert_eq!(read, data);
}

#[tokio::test]
async fn empty_blob() {
    let f = fixture();
    let committed = f.put("default", "empty", b"").await;
    assert_eq!(committed.info.digest, Digest::sha256_of(b"").to_string());
    assert_eq!(committed.info.size, 0);
}

#[tokio::test]
async fn interrupted_ingest_resumes_at_its_offset() {
    let f = fixture();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&data);
    {
        let mut w = f.content.writer("default", "big", data.len() as u64, None, None).await.unwrap();
        w.write(0, data[..1_234_567].to_vec()).await.unwrap();
        // Dropped: the client went away mid-way.
    }
    let status = f.content.status("default", "big").await.unwrap();
    assert_eq!((status.offset, status.total), (1_234_567, data.len() as u64));

    // A new writer finds the ingest where it stands, with its hash rebuilt from disk.
    let mut w = f.content.writer("default", "big", 0, Some(digest.clone()), None).await.unwrap();
    let status = w.status().unwrap();
    assert_eq!((status.offset, status.total), (1_234_567, data.len() as u64));
    assert_eq!(status.expected, Some(digest.clone()));
    assert_eq!(w.digest().unwrap(), Digest::sha256_of(&data[..1_234_567]));

    // Only the current offset continues it.
    for wrong in [1, 1_234_566, 1_234_568, 5_000_000] {
        let err = w.write(wrong, data[1_234_567..].to_vec()).await.unwrap_err();
        assert_eq!(
            err,
            Error::FailedPrecondition(format!(
                "write at offset {wrong} of ingest \"big\" must occur at its current offset 1234567"
            ))
        );
    }
    assert_eq!(w.status().unwrap().offset, 1_234_567, "a refused write writes nothing");
    w.write(1_234_567, data[1_234_567..].to_vec()).await.unwrap();
    let committed = w.commit(data.len() as u64, Some(digest.clone()), no_labels()).await.unwrap();
    assert_eq!(committed.info.digest, digest.to_string());
    assert_eq!(std::fs::read(f.blob_file(&digest)).unwrap(), data);
}

#[tokio::test]
async fn offset_zero_starts_over() {
    let f = fixture();
    let mut w = f.writer("default", "r").await.unwrap();
    w.write(0, b"wrong data".to_vec()).await.unwrap();
    assert_eq!(w.write(0, b"right".to_vec()).await.unwrap(), 5);
    assert_eq!(w.digest().unwrap(), Digest::sha256_of(b"right"));
    let committed = w.commit(5, Some(Digest::sha256_of(b"right")), no_labels()).await.unwrap();
    assert_eq!(committed.info.size, 5);
}

#[tokio::test]
async fn a_resumed_ingest_keeps_its_expected_size() {
    let f = fixture();
    drop(f.content.writer("default", "r", 10, None, None).await.unwrap());
    let err = f.content.writer("default", "r", 11, None, None).await.unwrap_err();
    assert_eq!(
        err,
        Error::FailedPrecondition("ingest \"r\": expected size 11 differs from the 10 it was started with".into())
    );
    // The same size, or none, resumes it.
    drop(f.content.writer("default", "r", 10, None, None).await.unwrap());
    drop(f.writer("default", "r").await.unwrap());
}

#[tokio::test]
async fn digest_mismatch_is_refused_and_nothing_is_committed() {
    let f = fixture();
    let wrong = Digest::sha256_of(b"something else");
    let actual = Digest::sha256_of(b"the data");
    let mut w = f.content.writer("default", "r", 0, Some(wrong.clone()), None).await.unwrap();
    w.write(0, b"the data".to_vec()).await.unwrap();
    let err = w.commit(0, Some(wrong.clone()), no_labels()).await.unwrap_err();
    assert_eq!(
        err,
        Error::FailedPrecondition(format!("commit of ingest \"r\": unexpected digest {actual}, expected {wrong}"))
    );
    // No blob under either digest, in no namespace; the ingest stays, whole.
    for digest in [&wrong, &actual] {
        assert!(!f.blob_file(digest).exists());
        assert!(matches!(f.content.info("default", digest), Err(Error::NotFound(_))));
    }
    assert!(f.content.list("default", &|_| true).unwrap().is_empty());
    assert_eq!(f.content.status("default", "r").await.unwrap().offset, 8);

    // A digest berth does not compute can never match.
    let sha512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
    let err = w.commit(0, Some(sha512), no_labels()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");

    // The same writer may still commit with the right digest.
    let committed = w.commit(8, Some(actual.clone()), no_labels()).await.unwrap();
    assert_eq!(committed.info.digest, actual.to_string());
}

#[tokio::test]
async fn size_mismatch_is_refused_and_nothing_is_committed() {
    let f = fixture();
    let mut w = f.writer("default", "r").await.unwrap();
    w.write(0, b"12345".to_vec()).await.unwrap();
    let err = w.commit(6, None, no_labels()).await.unwrap_err();
    assert_eq!(err, Error::FailedPrecondition("commit of ingest \"r\": unexpected size 5, expected 6".into()));
    assert!(!f.blob_file(&Digest::sha256_of(b"12345")).exists());
    assert!(f.content.list("default", &|_| true).unwrap().is_empty());
    // Too short: write the rest and commit.
    w.write(5, b"6".to_vec()).await.unwrap();
    w.commit(6, None, no_labels()).await.unwrap();
}

#[tokio::test]
async fn one_writer_per_ref() {
    let f = fixture();
    let mut first = f.writer("default", "locked").await.unwrap();
    first.write(0, b"abc".to_vec()).await.unwrap();
    let err = f.writer("default", "locked").await.unwrap_err();
    assert_eq!(err, Error::Unavailable("ref \"locked\" locked: another writer holds it".into()));
    // Abort waits for the writer to let go too.
    let err = f.content.abort("default", "locked", None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    // Status does not need the lock.
    assert_eq!(f.content.status("default", "locked").await.unwrap().offset, 3);
    // Other refs, and the same ref of another namespace, are other ingests.
    let mut other = f.writer("default", "other").await.unwrap();
    let mut elsewhere = f.writer("elsewhere", "locked").await.unwrap();
    assert_eq!(elsewhere.status().unwrap().offset, 0);
    elsewhere.write(0, b"x".to_vec()).await.unwrap();
    other.write(0, b"y".to_vec()).await.unwrap();

    drop(first);
    let mut again = f.writer("default", "locked").await.unwrap();
    assert_eq!(again.status().unwrap().offset, 3);
    again.write(3, b"d".to_vec()).await.unwrap();
    again.commit(4, Some(Digest::sha256_of(b"abcd")), no_labels()).await.unwrap();
    // Once committed, the ref is free for a new ingest.
    let fresh = f.writer("default", "locked").await.unwrap();
    assert_eq!(fresh.status().unwrap().offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_ref_get_one_lock() {
    let f = fixture();
    let content = f.content.clone();
    let tries: Vec<_> = (0..16)
        .map(|_| {
            let content = content.clone();
            tokio::spawn(async move { content.writer("default", "race", 0, None, None).await })
        })
        .collect();
    let mut held = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok(w) => held.push(w),
            Err(e) => assert!(matches!(e, Error::Unavailable(_)), "{e:?}"),
        }
    }
    // Some writers may have come after others dropped theirs; at most one holds it at any time,
    // and here every winner is still held.
    assert_eq!(held.len(), 1, "exactly one writer holds the ref");
}

#[tokio::test]
async fn abort_removes_the_ingest() {
    let f = fixture();
    let mut w = f.writer("default", "gone").await.unwrap();
    w.write(0, b"partial".to_vec()).await.unwrap();
    drop(w);
    f.content.abort("default", "gone", None).await.unwrap();
    assert_eq!(f.ingest_dirs(), 0);
    let err = f.content.status("default", "gone").await.unwrap_err();
    assert_eq!(err, Error::NotFound("ingest \"gone\" in namespace \"default\"".into()));
    let err = f.content.abort("default", "gone", None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    // Aborting another namespace's ref finds nothing.
    drop(f.writer("default", "mine").await.unwrap());
    assert!(matches!(f.content.abort("other", "mine", None).await, Err(Error::NotFound(_))));
    // A new writer starts from nothing.
    assert_eq!(f.writer("default", "gone").await.unwrap().status().unwrap().offset, 0);
}

#[tokio::test]
async fn list_statuses_per_namespace() {
    let f = fixture();
    let _b = f.writer("default", "b").await.unwrap();
    let mut a = f.writer("default", "a").await.unwrap();
    a.write(0, b"12".to_vec()).await.unwrap();
    let _other = f.writer("other", "c").await.unwrap();
    let listed = f.content.list_statuses("default").await.unwrap();
    let refs: Vec<_> = listed.iter().map(|s| (s.reference.as_str(), s.offset)).collect();
    assert_eq!(refs, [("a", 2), ("b", 0)]);
    assert_eq!(f.content.list_statuses("other").await.unwrap().len(), 1);
    assert!(f.content.list_statuses("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn namespaces_see_only_what_they_committed_or_imported() {
    let f = fixture();
    let data = b"shared bytes";
    let digest = Digest::sha256_of(data);
    f.put("a", "r", data).await;
    assert!(matches!(f.content.info("b", &digest), Err(Error::NotFound(_))));
    assert!(matches!(f.content.open("b", &digest), Err(Error::NotFound(_))));
    assert!(f.content.list("b", &|_| true).unwrap().is_empty());

    // Namespace a has it: a writer expecting it there is refused, as containerd does.
    let err = f.content.writer("a", "again", 0, Some(digest.clone()), None).await.unwrap_err();
    assert_eq!(err, Error::AlreadyExists(format!("content {digest}")));

    // Namespace b names the digest: the blob is imported without being written again.
    let mut w = f.content.writer("b", "import", data.len() as u64, Some(digest.clone()), None).await.unwrap();
    let status = w.status().unwrap();
    assert_eq!((status.offset, status.total), (data.len() as u64, data.len() as u64));
    assert_eq!(f.ingest_dirs(), 0, "an import takes no ingest");
    assert_eq!(w.write(data.len() as u64, Vec::new()).await.unwrap(), data.len() as u64);
    let committed = w.commit(data.len() as u64, Some(digest.clone()), no_labels()).await.unwrap();
    assert!(committed.created);
    assert_eq!(f.content.info("b", &digest).unwrap().size, data.len() as i64);

    // Deleting from b leaves a's record and the file.
    f.content.delete("b", &digest, None).await.unwrap();
    assert!(matches!(f.content.info("b", &digest), Err(Error::NotFound(_))));
    assert!(f.content.info("a", &digest).is_ok());
    assert!(f.blob_file(&digest).exists(), "the file stays for the garbage collector");
    let err = f.content.delete("b", &digest, None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");

    // Writing the same bytes in a third namespace shares the file.
    let committed = f.put("c", "r", data).await;
    assert!(committed.created);
    assert_eq!(std::fs::read(f.blob_file(&digest)).unwrap(), data);
    // And a second ingest of the same bytes in a namespace that has them says so.
    let mut w = f.writer("c", "dup").await.unwrap();
    w.write(0, data.to_vec()).await.unwrap();
    assert!(!w.commit(0, None, no_labels()).await.unwrap().created);
    assert_eq!(f.ingest_dirs(), 0);
}

#[tokio::test]
async fn an_import_written_after_all_becomes_an_ingest() {
    let f = fixture();
    let data = b"bytes";
    let digest = Digest::sha256_of(data);
    f.put("a", "r", data).await;
    let mut w = f.content.writer("b", "r", 0, Some(digest.clone()), None).await.unwrap();
    assert_eq!(w.write(0, data.to_vec()).await.unwrap(), 5);
    assert_eq!(f.ingest_dirs(), 1);
    let err = w.write(3, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert!(w.commit(5, Some(digest.clone()), no_labels()).await.unwrap().created);

    // An import refuses what does not match the blob it imports.
    let mut w = f.content.writer("c", "r", 5, Some(digest.clone()), None).await.unwrap();
    let err = w.commit(6, None, no_labels()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let err = w.commit(0, Some(Digest::sha256_of(b"other")), no_labels()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let err = w.write(2, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert!(matches!(f.content.info("c", &digest), Err(Error::NotFound(_))));
}

#[tokio::test]
async fn a_lease_holds_the_ingest_then_the_blob() {
    let f = fixture();
    let store = &f.content.store;
    store.create_lease("default", Lease { id: "pull".into(), ..Default::default() }).await.unwrap();
    let held = || store.list_lease_resources("default", "pull").unwrap();
    let resource = |kind: &str, id: &str| LeaseResource { id: id.into(), kind: kind.into() };

    let mut w = f.content.writer("default", "layer", 0, None, Some("pull".into())).await.unwrap();
    assert_eq!(held(), [resource("ingests", "layer")]);
    w.write(0, b"layer data".to_vec()).await.unwrap();
    let committed = w.commit(0, None, no_labels()).await.unwrap();
    assert_eq!(held(), [resource("content", &committed.info.digest)]);

    // An aborted ingest leaves the lease too.
    drop(f.content.writer("default", "tmp", 0, None, Some("pull".into())).await.unwrap());
    assert_eq!(held().len(), 2);
    f.content.abort("default", "tmp", Some("pull".into())).await.unwrap();
    assert_eq!(held(), [resource("content", &committed.info.digest)]);

    // A blob the namespace has already is taken by another lease that asks for it.
    store.create_lease("default", Lease { id: "second".into(), ..Default::default() }).await.unwrap();
    let digest = Digest::parse(&committed.info.digest).unwrap();
    let err = f.content.writer("default", "x", 0, Some(digest), Some("second".into())).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    let second = store.list_lease_resources("default", "second").unwrap();
    assert_eq!(second, [resource("content", &committed.info.digest)]);

    // A lease that does not exist fails the write before anything is on disk.
    let err = f.content.writer("default", "y", 0, None, Some("nope".into())).await.unwrap_err();
    assert_eq!(err, Error::NotFound("lease \"nope\" in namespace \"default\"".into()));
    assert_eq!(f.ingest_dirs(), 0);
}

#[tokio::test]
async fn an_ingest_left_half_made_starts_empty() {
    let f = fixture();
    // A crash between creating the data file and recording the ingest.
    let dir = ingest::dir(&f.dir.path().join("content/ingest"), "default", "crashed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data"), b"junk").unwrap();
    assert!(matches!(f.content.status("default", "crashed").await, Err(Error::NotFound(_))));
    let w = f.writer("default", "crashed").await.unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    assert_eq!(w.digest().unwrap(), Digest::sha256_of(b""));
}

#[tokio::test]
async fn bad_arguments() {
    let f = fixture();
    let err = f.writer("default", "").await.unwrap_err();
    assert_eq!(err, Error::InvalidArgument("ingest ref must not be empty".into()));
    assert!(matches!(f.writer("a/b", "r").await, Err(Error::InvalidArgument(_))));
    let mut w = f.writer("default", "labels").await.unwrap();
    let big: BTreeMap<_, _> = [("k".to_string(), "v".repeat(5000))].into();
    let err = w.commit(0, None, big).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // Nothing was committed: the ingest can still be.
    w.commit(0, None, no_labels()).await.unwrap();
}
