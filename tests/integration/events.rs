//! The Events service: what the metadata services publish, Publish/Forward, and `ctr events`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_client::events::ContainerCreate;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::*;
use containerd_client::types::Envelope;
use prost::Message;

use crate::harness::*;

async fn next(stream: &mut containerd_client::tonic::Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no event within 10 s")
        .unwrap()
        .expect("event stream ended")
}

#[tokio::test]
async fn metadata_changes_are_published_and_filtered() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let mut events = client.events();
    let mut containers_only =
        events.subscribe(SubscribeRequest { filters: vec!["topic~=^/containers/".into()] }).await.unwrap().into_inner();
    let mut everything = events.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();

    client
        .namespaces()
        .create(CreateNamespaceRequest { namespace: Some(Namespace { name: "ev".into(), labels: Default::default() }) })
        .await
        .unwrap();
    let container = Container {
        id: "c1".into(),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(spec_any("{}")),
        ..Default::default()
    };
    client.containers().create(ns_request("ev", CreateContainerRequest { container: Some(container) })).await.unwrap();
    client.containers().delete(ns_request("ev", DeleteContainerRequest { id: "c1".into() })).await.unwrap();

    let created = next(&mut containers_only).await;
    assert_eq!((created.namespace.as_str(), created.topic.as_str()), ("ev", "/containers/create"));
    let any = created.event.unwrap();
    assert_eq!(any.type_url, "containerd.events.ContainerCreate");
    let event = ContainerCreate::decode(any.value.as_slice()).unwrap();
    assert_eq!(event.id, "c1");
    assert_eq!(event.runtime.unwrap().name, "io.containerd.runc.v2");
    assert_eq!(next(&mut containers_only).await.topic, "/containers/delete");

    let topics: Vec<String> = [next(&mut everything).await, next(&mut everything).await, next(&mut everything).await]
        .into_iter()
        .map(|e| e.topic)
        .collect();
    assert_eq!(topics, ["/namespaces/create", "/containers/create", "/containers/delete"]);

    // Publish and Forward from a client.
    let custom = prost_types::Any { type_url: "example.Custom".into(), value: vec![1, 2, 3] };
    events
        .publish(ns_request("ev", PublishRequest { topic: "/example/hello".into(), event: Some(custom.clone()) }))
        .await
        .unwrap();
    let got = next(&mut everything).await;
    assert_eq!((got.topic.as_str(), got.event.unwrap()), ("/example/hello", custom.clone()));
    let bad = events
        .publish(ns_request("ev", PublishRequest { topic: "no-slash".into(), event: Some(custom.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("no-slash"), "{}", bad.message());
    let no_ns = events
        .publish(Request::new(PublishRequest { topic: "/a/b".into(), event: Some(custom.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(no_ns.code(), Code::FailedPrecondition);
    let envelope = Envelope {
        timestamp: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
        namespace: "other".into(),
        topic: "/forwarded/event".into(),
        event: Some(custom),
    };
    events.forward(ForwardRequest { envelope: Some(envelope.clone()) }).await.unwrap();
    assert_eq!(next(&mut everything).await, envelope);
    let bad_filter = events.subscribe(SubscribeRequest { filters: vec!["topic==".into()] }).await.unwrap_err();
    assert_eq!(bad_filter.code(), Code::InvalidArgument);
}

#[test]
fn ctr_events_shows_what_happens() {
    let daemon = Daemon::start();
    let mut events = Command::new(ctr_path())
        .arg("-a")
        .arg(&daemon.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // ctr subscribes asynchronously: keep creating namespaces until one is seen.
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = None;
    for i in 0..50 {
        daemon.ctr_ok(&["namespaces", "create", &format!("seen-{i}")]);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let line = seen.expect("ctr events printed nothing");
    assert!(line.contains("/namespaces/create") && line.contains("seen-"), "{line}");
}

#[tokio::test]
async fn snapshot_changes_are_published_as_containerd_does() {
    use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
    use containerd_client::services::v1::snapshots::*;

    let daemon = Daemon::start();
    let client = daemon.client().await;
    let mut stream = client
        .events()
        .subscribe(SubscribeRequest { filters: vec!["topic~=^/snapshot/".into()] })
        .await
        .unwrap()
        .into_inner();
    let mut snapshots = client.snapshots();
    let prepare = PrepareSnapshotRequest { snapshotter: "native".into(), key: "k1".into(), ..Default::default() };
    snapshots.prepare(ns_request("ev", prepare)).await.unwrap();
    let commit = CommitSnapshotRequest {
        snapshotter: "native".into(),
        name: "c1".into(),
        key: "k1".into(),
        ..Default::default()
    };
    snapshots.commit(ns_request("ev", commit)).await.unwrap();
    snapshots
        .remove(ns_request("ev", RemoveSnapshotRequest { snapshotter: "native".into(), key: "c1".into() }))
        .await
        .unwrap();
    // A failed call publishes nothing: the next event is still the remove above.
    let missing = RemoveSnapshotRequest { snapshotter: "native".into(), key: "missing".into() };
    snapshots.remove(ns_request("ev", missing)).await.unwrap_err();

    let e = next(&mut stream).await;
    assert_eq!((e.namespace.as_str(), e.topic.as_str()), ("ev", "/snapshot/prepare"));
    let any = e.event.unwrap();
    assert_eq!(any.type_url, "containerd.events.SnapshotPrepare");
    let p = SnapshotPrepare::decode(any.value.as_slice()).unwrap();
    assert_eq!((p.key.as_str(), p.parent.as_str(), p.snapshotter.as_str()), ("k1", "", "native"));
    let e = next(&mut stream).await;
    assert_eq!(e.topic, "/snapshot/commit");
    let c = SnapshotCommit::decode(e.event.unwrap().value.as_slice()).unwrap();
    assert_eq!((c.key.as_str(), c.name.as_str(), c.snapshotter.as_str()), ("k1", "c1", "native"));
    let e = next(&mut stream).await;
    assert_eq!(e.topic, "/snapshot/remove");
    let r = SnapshotRemove::decode(e.event.unwrap().value.as_slice()).unwrap();
    assert_eq!((r.key.as_str(), r.snapshotter.as_str()), ("c1", "native"));
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(), "an extra event");
}
