//! The Content service end to end: `ctr content ...` and the `containerd-client` crate's Write
//! stream (interrupted and resumed), Status, ListStatuses, Abort and Read against a real berthd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use berth_core::content::Digest;
use containerd_client::services::v1 as api;
use containerd_client::tonic::Streaming;
use containerd_client::tonic::codegen::tokio_stream::StreamExt;
use containerd_client::tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tokio::sync::mpsc;

use crate::harness::*;

/// `ctr -a SOCKET args...` with `input` as its standard input (a file, so ctr may seek in it).
fn ctr_with_input(daemon: &Daemon, args: &[&str], input: &Path) -> Output {
    Command::new(ctr_path())
        .arg("-a")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::from(std::fs::File::open(input).unwrap()))
        .output()
        .expect("running ctr")
}

fn write_file(daemon: &Daemon, name: &str, data: &[u8]) -> PathBuf {
    let path = daemon.dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn blob_file(daemon: &Daemon, digest: &Digest) -> PathBuf {
    daemon.root().join("content/blobs/sha256").join(digest.encoded())
}

/// Bytes that are not all alike, `len` of them.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// The `DIGEST SIZE AGE LABELS` rows of `ctr content ls`, as (digest, labels).
fn ls(daemon: &Daemon, ns: &str) -> Vec<(String, String)> {
    let out = daemon.ctr_ok(&["-n", ns, "content", "ls"]);
    out.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<_> = line.split('\t').filter(|f| !f.is_empty()).collect();
            (fields[0].to_string(), fields.last().unwrap().to_string())
        })
        .collect()
}

#[test]
fn ctr_ingest_ls_get_label_rm() {
    let daemon = Daemon::start();
    let small = b"hello, berth content\n".to_vec();
    // Larger than one 1 MiB read and one ctr write buffer.
    let big = pattern(3 << 20 | 12345);
    let (small_digest, big_digest) = (Digest::sha256_of(&small), Digest::sha256_of(&big));
    let small_file = write_file(&daemon, "small", &small);
    let big_file = write_file(&daemon, "big", &big);

    ok(ctr_with_input(&daemon, &["content", "ingest", "small-ref"], &small_file), "ctr content ingest small-ref");
    let args = [
        "content",
        "ingest",
        "--expected-size",
        &big.len().to_string(),
        "--expected-digest",
        big_digest.as_str(),
        "big-ref",
    ];
    ok(ctr_with_input(&daemon, &args, &big_file), "ctr content ingest big-ref");

    let mut want = vec![(small_digest.to_string(), "-".to_string()), (big_digest.to_string(), "-".to_string())];
    want.sort();
    assert_eq!(ls(&daemon, "default"), want);
    let out = daemon.ctr_ok(&["content", "ls", "-q"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(std::fs::read(blob_file(&daemon, &big_digest)).unwrap() == big);
    // No ingest is left once committed.
    assert!(daemon.ctr_ok(&["content", "active"]).lines().nth(1).is_none());

    let out = daemon.ctr(&["content", "get", small_digest.as_str()]);
    assert_eq!(ok_bytes(out), small);
    let out = daemon.ctr(&["content", "get", big_digest.as_str()]);
    assert!(ok_bytes(out) == big, "ctr content get returns the blob, byte for byte");

    // Labels: set two, then remove one with `key=`.
    daemon.ctr_ok(&["content", "label", small_digest.as_str(), "team=a", "gc=keep"]);
    let labels = |digest: &Digest| ls(&daemon, "default").into_iter().find(|(d, _)| d == digest.as_str()).unwrap().1;
    let mut got: Vec<_> = labels(&small_digest).split(',').map(str::to_string).collect();
    got.sort();
    assert_eq!(got, ["gc=keep", "team=a"]);
    daemon.ctr_ok(&["content", "label", small_digest.as_str(), "gc="]);
    assert_eq!(labels(&small_digest), "team=a");
    // `ctr content ls` filters.
    let out = daemon.ctr_ok(&["content", "ls", "-q", "labels.team==a"]);
    assert_eq!(out.trim(), small_digest.as_str());

    // Another namespace sees none of it.
    assert!(ls(&daemon, "other").is_empty());
    let stderr = fails(daemon.ctr(&["-n", "other", "content", "get", small_digest.as_str()]), "get in other namespace");
    assert!(stderr.contains("not found"), "{stderr}");

    daemon.ctr_ok(&["content", "rm", small_digest.as_str()]);
    assert_eq!(ls(&daemon, "default"), [(big_digest.to_string(), "-".to_string())]);
    let stderr = fails(daemon.ctr(&["content", "get", small_digest.as_str()]), "get after rm");
    assert!(stderr.contains("not found"), "{stderr}");
    // The file stays until garbage collection (a later step): other namespaces may hold it.
    assert!(blob_file(&daemon, &small_digest).exists());

    // Ingesting it in another namespace makes it visible there, and only there.
    ok(ctr_with_input(&daemon, &["-n", "other", "content", "ingest", "again"], &small_file), "ingest in other");
    assert_eq!(ls(&daemon, "other"), [(small_digest.to_string(), "-".to_string())]);
    assert_eq!(ls(&daemon, "default").len(), 1);
}

fn ok_bytes(out: Output) -> Vec<u8> {
    assert!(out.status.success(), "ctr failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn ctr_ingest_with_a_wrong_expected_digest_commits_nothing() {
    let daemon = Daemon::start();
    let data = pattern(100_000);
    let actual = Digest::sha256_of(&data);
    let wrong = Digest::sha256_of(b"something else entirely");
    let file = write_file(&daemon, "data", &data);

    let args = ["content", "ingest", "--expected-digest", wrong.as_str(), "bad-ref"];
    let stderr = fails(ctr_with_input(&daemon, &args, &file), "ingest with a wrong digest");
    assert!(stderr.contains("unexpected digest"), "{stderr}");
    assert!(stderr.contains(actual.as_str()) && stderr.contains(wrong.as_str()), "names both digests: {stderr}");
    assert!(stderr.contains("failed precondition"), "{stderr}");
    assert!(ls(&daemon, "default").is_empty());
    for digest in [&actual, &wrong] {
        assert!(!blob_file(&daemon, digest).exists(), "no blob for {digest}");
        let stderr = fails(daemon.ctr(&["content", "get", digest.as_str()]), "get");
        assert!(stderr.contains("not found"), "{stderr}");
    }
    // The ingest stays, whole, for the client to resume or abort.
    let active = daemon.ctr_ok(&["content", "active"]);
    assert!(active.lines().any(|l| l.starts_with("bad-ref\t")), "{active}");

    // A wrong expected size is refused the same way.
    let args = ["content", "ingest", "--expected-size", "99999", "short-ref"];
    let stderr = fails(ctr_with_input(&daemon, &args, &file), "ingest with a wrong size");
    assert!(stderr.contains("unexpected size 100000, expected 99999"), "{stderr}");
    assert!(ls(&daemon, "default").is_empty());

    // The same ref with the right digest resumes the ingest where it stands, and commits.
    let args = ["content", "ingest", "--expected-digest", actual.as_str(), "bad-ref"];
    ok(ctr_with_input(&daemon, &args, &file), "ingest again with the right digest");
    assert_eq!(ls(&daemon, "default"), [(actual.to_string(), "-".to_string())]);
    assert_eq!(std::fs::read(blob_file(&daemon, &actual)).unwrap(), data);
}

#[test]
fn namespace_with_content_cannot_be_removed() {
    let daemon = Daemon::start();
    let file = write_file(&daemon, "data", b"kept");
    ok(ctr_with_input(&daemon, &["-n", "busy", "content", "ingest", "r"], &file), "ingest");
    let stderr = fails(daemon.ctr(&["namespaces", "rm", "busy"]), "ctr namespaces rm busy");
    assert!(stderr.contains("must be empty, but it still has blobs"), "{stderr}");
    daemon.ctr_ok(&["-n", "busy", "content", "rm", Digest::sha256_of(b"kept").as_str()]);
    daemon.ctr_ok(&["namespaces", "rm", "busy"]);
}

/// One Write stream of the containerd-client crate: requests go in through a channel.
struct WriteStream {
    requests: mpsc::Sender<api::WriteContentRequest>,
    responses: Streaming<api::WriteContentResponse>,
}

impl WriteStream {
    async fn open(daemon: &Daemon, ns: &str, lease: Option<&str>) -> WriteStream {
        let (requests, rx) = mpsc::channel(4);
        let mut request = ns_request(ns, ReceiverStream::new(rx));
        if let Some(lease) = lease {
            request.metadata_mut().insert("containerd-lease", lease.parse().unwrap());
        }
        let mut client = daemon.client().await.content();
        let responses = client.write(request).await.expect("write stream").into_inner();
        WriteStream { requests, responses }
    }

    async fn send(
        &mut self,
        request: api::WriteContentRequest,
    ) -> Result<api::WriteContentResponse, containerd_client::tonic::Status> {
        self.requests.send(request).await.expect("sending on the write stream");
        match self.responses.next().await {
            Some(answer) => answer,
            None => panic!("the write stream ended without an answer"),
        }
    }
}

fn stat(reference: &str, total: usize, expected: &Digest) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: reference.into(),
        total: total as i64,
        expected: expected.to_string(),
        ..Default::default()
    }
}

fn write(offset: usize, data: &[u8]) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: api::WriteAction::Write as i32,
        offset: offset as i64,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn commit(offset: usize, total: usize, expected: &Digest) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        offset: offset as i64,
        total: total as i64,
        expected: expected.to_string(),
        labels: [("origin".to_string(), "test".to_string())].into(),
        ..Default::default()
    }
}

async fn status(daemon: &Daemon, reference: &str) -> Result<api::Status, containerd_client::tonic::Status> {
    let request = ns_request("default", api::StatusRequest { r#ref: reference.into() });
    Ok(daemon.client().await.content().status(request).await?.into_inner().status.unwrap())
}

async fn read(daemon: &Daemon, digest: &Digest, offset: i64, size: i64) -> Vec<u8> {
    let request = ns_request("default", api::ReadContentRequest { digest: digest.to_string(), offset, size });
    let mut stream = daemon.client().await.content().read(request).await.expect("read").into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.expect("read message");
        assert_eq!(message.offset, offset.max(0) + data.len() as i64, "each message says where it starts");
        data.extend(message.data);
    }
    data
}

#[tokio::test]
async fn client_write_interrupted_resumed_and_read_back() {
    let daemon = Daemon::start();
    let data = pattern(2_500_000);
    let digest = Digest::sha256_of(&data);
    let half = 1_300_000;

    // First stream: negotiate, write part of it, then go away without a commit.
    {
        let mut w = WriteStream::open(&daemon, "default", None).await;
        let answer = w.send(stat("layer", data.len(), &digest)).await.unwrap();
        assert_eq!((answer.offset, answer.total), (0, data.len() as i64));
        assert!(answer.started_at.is_some());
        for (i, piece) in data[..half].chunks(1 << 20).enumerate() {
            let answer = w.send(write(i << 20, piece)).await.unwrap();
            assert_eq!(answer.offset as usize, (i << 20) + piece.len());
        }

        // While this stream holds the ref, nobody else may write it.
        let mut other = WriteStream::open(&daemon, "default", None).await;
        let err = other.send(stat("layer", 0, &digest)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("locked"), "{}", err.message());
    }

    let st = status(&daemon, "layer").await.unwrap();
    assert_eq!((st.r#ref.as_str(), st.offset, st.total), ("layer", half as i64, data.len() as i64));
    assert_eq!(st.expected, digest.to_string());
    let request = ns_request("default", api::ListStatusesRequest { filters: vec!["ref==layer".into()] });
    let listed = daemon.client().await.content().list_statuses(request).await.unwrap().into_inner().statuses;
    assert_eq!(listed.len(), 1);

    // Second stream: the server says where the ingest stands; a write elsewhere is refused.
    {
        let mut w = WriteStream::open(&daemon, "default", None).await;
        let answer = w.send(stat("layer", data.len(), &digest)).await.unwrap();
        assert_eq!(answer.offset, half as i64);
        assert_eq!(answer.digest, Digest::sha256_of(&data[..half]).to_string());
        let err = w.send(write(half + 10, &data[half + 10..])).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(&format!("current offset {half}")), "{}", err.message());
    }
    assert_eq!(status(&daemon, "layer").await.unwrap().offset, half as i64, "a refused write writes nothing");

    // Third stream: resume at the offset and commit.
    let mut w = WriteStream::open(&daemon, "default", None).await;
    let answer = w.send(stat("layer", data.len(), &digest)).await.unwrap();
    assert_eq!(answer.offset, half as i64);
    let answer = w.send(write(half, &data[half..])).await.unwrap();
    assert_eq!(answer.offset, data.len() as i64);
    let answer = w.send(commit(data.len(), data.len(), &digest)).await.unwrap();
    assert_eq!((answer.offset, answer.digest.as_str()), (data.len() as i64, digest.as_str()));
    drop(w);

    let err = status(&daemon, "layer").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let request = ns_request("default", api::InfoRequest { digest: digest.to_string() });
    let info = daemon.client().await.content().info(request).await.unwrap().into_inner().info.unwrap();
    assert_eq!(info.size, data.len() as i64);
    assert_eq!(info.labels["origin"], "test");

    assert!(read(&daemon, &digest, 0, 0).await == data);
    assert!(read(&daemon, &digest, 1_000_000, 0).await == data[1_000_000..]);
    assert!(read(&daemon, &digest, 5, 1_500_000).await == data[5..1_500_005]);
    assert!(read(&daemon, &digest, data.len() as i64, 0).await.is_empty());
    let request = ns_request(
        "default",
        api::ReadContentRequest { digest: digest.to_string(), offset: data.len() as i64 + 1, size: 0 },
    );
    let err = daemon.client().await.content().read(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Writing it again: the namespace has it.
    let mut w = WriteStream::open(&daemon, "default", None).await;
    let err = w.send(stat("again", data.len(), &digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // ctr sees what the client wrote.
    let out = daemon.ctr(&["content", "get", digest.as_str()]);
    assert!(ok_bytes(out) == data);
}

#[tokio::test]
async fn client_abort_and_digest_mismatch() {
    let daemon = Daemon::start();
    let data = b"some bytes to throw away";
    let digest = Digest::sha256_of(data);
    {
        let mut w = WriteStream::open(&daemon, "default", None).await;
        w.send(stat("tmp", 0, &digest)).await.unwrap();
        w.send(write(0, data)).await.unwrap();
    }
    let request = ns_request("default", api::AbortRequest { r#ref: "tmp".into() });
    daemon.client().await.content().abort(request).await.unwrap();
    assert_eq!(status(&daemon, "tmp").await.unwrap_err().code(), Code::NotFound);
    let request = ns_request("default", api::AbortRequest { r#ref: "tmp".into() });
    let err = daemon.client().await.content().abort(request).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A commit whose digest does not match: FailedPrecondition naming both, and nothing committed.
    let wrong = Digest::sha256_of(b"not these bytes");
    let mut w = WriteStream::open(&daemon, "default", None).await;
    w.send(stat("mismatch", data.len(), &wrong)).await.unwrap();
    w.send(write(0, data)).await.unwrap();
    let err = w.send(commit(data.len(), data.len(), &wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(digest.as_str()) && err.message().contains(wrong.as_str()), "{}", err.message());
    for d in [&digest, &wrong] {
        let request = ns_request("default", api::InfoRequest { digest: d.to_string() });
        assert_eq!(daemon.client().await.content().info(request).await.unwrap_err().code(), Code::NotFound);
    }
    assert!(ls(&daemon, "default").is_empty());
}

#[tokio::test]
async fn written_under_a_lease() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let request = ns_request("default", api::CreateRequest { id: "pull-1".into(), ..Default::default() });
    client.leases().create(request).await.unwrap();
    let data = b"leased blob";
    let digest = Digest::sha256_of(data);
    let mut w = WriteStream::open(&daemon, "default", Some("pull-1")).await;
    w.send(stat("leased", data.len(), &digest)).await.unwrap();
    w.send(write(0, data)).await.unwrap();
    let resources = || async {
        let request = ns_request("default", api::ListResourcesRequest { id: "pull-1".into() });
        let held = client.leases().list_resources(request).await.unwrap().into_inner().resources;
        held.into_iter().map(|r| (r.r#type, r.id)).collect::<Vec<_>>()
    };
    assert_eq!(resources().await, [("ingests".to_string(), "leased".to_string())]);
    w.send(commit(data.len(), data.len(), &digest)).await.unwrap();
    assert_eq!(resources().await, [("content".to_string(), digest.to_string())]);

    // A lease that does not exist is refused.
    let mut w = WriteStream::open(&daemon, "default", Some("no-such-lease")).await;
    let err = w.send(stat("other", 0, &Digest::sha256_of(b"x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
