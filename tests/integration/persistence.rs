//! Everything created survives a restart of berthd, a `kill -9` included.

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::*;

use crate::harness::*;

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(spec_any("{}")),
        labels: [("n".to_string(), id.to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn survives_clean_restart() {
    let mut daemon = Daemon::start();
    let client = daemon.client().await;
    client
        .namespaces()
        .create(CreateNamespaceRequest {
            namespace: Some(Namespace { name: "keep".into(), labels: [("a".to_string(), "b".to_string())].into() }),
        })
        .await
        .unwrap();
    client
        .containers()
        .create(ns_request("keep", CreateContainerRequest { container: Some(container("c1")) }))
        .await
        .unwrap();
    drop(client);
    daemon.stop();
    assert!(!daemon.socket.exists(), "socket left behind after SIGTERM");
    daemon.spawn();
    let client = daemon.client().await;
    let ns = client
        .namespaces()
        .get(GetNamespaceRequest { name: "keep".into() })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(ns.labels["a"], "b");
    let c = client
        .containers()
        .get(ns_request("keep", GetContainerRequest { id: "c1".into() }))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(c.labels["n"], "c1");
}

/// Every create acknowledged before a SIGKILL is there after restart: commits are durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9() {
    let mut daemon = Daemon::start();
    let client = daemon.client().await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let mut containers = client.containers();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let id = format!("w{worker}-c{i}");
                containers
                    .create(ns_request("crash", CreateContainerRequest { container: Some(container(&id)) }))
                    .await
                    .unwrap();
                acked.push(id);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    drop(client);
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client().await;
    let list = client
        .containers()
        .list(ns_request("crash", ListContainersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .containers;
    let mut have: Vec<String> = list.into_iter().map(|c| c.id).collect();
    have.sort();
    acked.sort();
    assert_eq!(have, acked);
}

/// Clients writing containers into namespace `ns` until berthd stops answering; yields the ids
/// berthd acknowledged.
async fn write_until_stopped(socket: &std::path::Path, ns: &'static str, stop: impl FnOnce()) -> Vec<String> {
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let acked = acked.clone();
        let socket = socket.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let client = containerd_client::Client::from_path(&socket).await.unwrap();
            let mut containers = client.containers();
            for i in 0.. {
                let id = format!("w{worker}-c{i}");
                let request = ns_request(ns, CreateContainerRequest { container: Some(container(&id)) });
                match containers.create(request).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tokio::task::block_in_place(stop);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no write was acknowledged before berthd stopped");
    acked
}

/// Restarts berthd and checks every acknowledged container is there, whole.
async fn assert_all_present(daemon: &mut Daemon, ns: &str, acked: &[String]) {
    daemon.spawn();
    let client = daemon.client().await;
    let list = client.containers().list(ns_request(ns, ListContainersRequest::default())).await.unwrap().into_inner();
    let have: std::collections::BTreeSet<&str> = list.containers.iter().map(|c| c.id.as_str()).collect();
    for id in acked {
        assert!(have.contains(id.as_str()), "acknowledged container {id} lost");
    }
    for c in &list.containers {
        assert!(c.runtime.is_some() && c.spec.is_some() && c.labels["n"] == c.id, "half-written record {c:?}");
    }
}

/// A kill -9 in the middle of a stream of writes leaves a store that opens, with every
/// acknowledged write in it and no half-written record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_keeps_acknowledged_writes() {
    let mut daemon = Daemon::start();
    let socket = daemon.socket.clone();
    let acked = write_until_stopped(&socket, "crash", || daemon.kill9()).await;
    assert_all_present(&mut daemon, "crash", &acked).await;
}

/// SIGTERM while clients are writing: berthd lets requests in flight finish, exits 0, and every
/// acknowledged write is there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_finishes_in_flight_requests() {
    let mut daemon = Daemon::start();
    let socket = daemon.socket.clone();
    let mut status = None;
    let acked = write_until_stopped(&socket, "term", || status = Some(daemon.signal_and_wait(SIGTERM))).await;
    let status = status.unwrap();
    assert!(status.success(), "berthd exited with {status}:\n{}", daemon.log_text());
    assert!(daemon.log_text().contains("berthd stopped"));
    assert_all_present(&mut daemon, "term", &acked).await;
}
