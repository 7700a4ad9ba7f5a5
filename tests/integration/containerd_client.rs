//! The containerd v1 API through the `containerd-client` crate, as Rust programs use it.

use std::collections::HashMap;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::sandbox::*;
use containerd_client::services::v1::*;
use containerd_client::tonic::Status;
use containerd_client::tonic::transport::Channel;
use containerd_client::types::Sandbox;

use crate::harness::*;

type Containers = containers_client::ContainersClient<Channel>;
type Sandboxes = store_client::StoreClient<Channel>;

fn container(id: &str, labels: &[(&str, &str)]) -> Container {
    Container {
        id: id.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(spec_any(r#"{"ociVersion":"1.1.0","process":{"args":["sh"]}}"#)),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

/// Containers.Create of `container` in namespace `ns`; the container as created.
async fn create(c: &mut Containers, ns: &str, container: Container) -> Result<Container, Status> {
    let request = ns_request(ns, CreateContainerRequest { container: Some(container) });
    Ok(c.create(request).await?.into_inner().container.unwrap())
}

/// Containers.Get of `id` in namespace `ns`.
async fn get(c: &mut Containers, ns: &str, id: &str) -> Result<Container, Status> {
    Ok(c.get(ns_request(ns, GetContainerRequest { id: id.into() })).await?.into_inner().container.unwrap())
}

fn list_request(filters: &[&str]) -> ListContainersRequest {
    ListContainersRequest { filters: filters.iter().map(|f| f.to_string()).collect() }
}

/// Containers.List in namespace `ns` with `filters`: the ids listed.
async fn list_ids(c: &mut Containers, ns: &str, filters: &[&str]) -> Result<Vec<String>, Status> {
    let list = c.list(ns_request(ns, list_request(filters))).await?.into_inner().containers;
    Ok(list.into_iter().map(|c| c.id).collect())
}

/// Containers.Update of `container` in namespace `ns`, of the field paths `paths`; the container as updated.
async fn update(c: &mut Containers, ns: &str, container: Container, paths: &[&str]) -> Result<Container, Status> {
    let request = UpdateContainerRequest { container: Some(container), update_mask: mask(paths) };
    Ok(c.update(ns_request(ns, request)).await?.into_inner().container.unwrap())
}

/// The sandbox tests' namespace.
const K8S: &str = "k8s.io";

/// Sandbox store Create of `sandbox` in namespace k8s.io; the sandbox as created.
async fn create_sandbox(s: &mut Sandboxes, sandbox: Sandbox) -> Result<Sandbox, Status> {
    Ok(s.create(ns_request(K8S, StoreCreateRequest { sandbox: Some(sandbox) })).await?.into_inner().sandbox.unwrap())
}

/// Sandbox store Get of `id` in namespace k8s.io.
async fn get_sandbox(s: &mut Sandboxes, id: &str) -> Result<Sandbox, Status> {
    Ok(s.get(ns_request(K8S, StoreGetRequest { sandbox_id: id.into() })).await?.into_inner().sandbox.unwrap())
}

/// Sandbox store Update of `sandbox` in namespace k8s.io, of `fields`; the sandbox as updated.
async fn update_sandbox(s: &mut Sandboxes, sandbox: Sandbox, fields: &[&str]) -> Result<Sandbox, Status> {
    let request = StoreUpdateRequest { sandbox: Some(sandbox), fields: fields.iter().map(|f| f.to_string()).collect() };
    Ok(s.update(ns_request(K8S, request)).await?.into_inner().sandbox.unwrap())
}

#[tokio::test]
async fn version_and_introspection() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let version = client.version().version(()).await.unwrap().into_inner();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));

    let plugins = client.introspection().plugins(PluginsRequest::default()).await.unwrap().into_inner().plugins;
    let store = plugins.iter().find(|p| p.id == "lmdb").expect("store plugin listed");
    assert_eq!(store.r#type, "io.containerd.metadata.v1");
    assert!(store.init_err.is_none());
    for service in ["version", "namespaces", "containers", "sandboxes", "introspection"] {
        let p = plugins.iter().find(|p| p.id == service).unwrap_or_else(|| panic!("{service} not listed"));
        assert_eq!(p.r#type, "io.containerd.grpc.v1");
    }
    let filtered = client
        .introspection()
        .plugins(PluginsRequest { filters: vec!["type==io.containerd.metadata.v1".into()] })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(filtered.len(), 1);

    let server = client.introspection().server(()).await.unwrap().into_inner();
    assert_eq!(server.pid, u64::from(daemon.pid()));
    assert_eq!(server.uuid.len(), 36, "uuid {}", server.uuid);
}

#[tokio::test]
async fn namespaces_crud() {
    let daemon = Daemon::start();
    let mut ns = daemon.client().await.namespaces();
    let labels: HashMap<String, String> = [("team".to_string(), "a".to_string())].into();
    let created = ns
        .create(CreateNamespaceRequest { namespace: Some(Namespace { name: "web".into(), labels: labels.clone() }) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.namespace.unwrap().labels, labels);

    let dup = ns
        .create(CreateNamespaceRequest { namespace: Some(Namespace { name: "web".into(), labels: HashMap::new() }) })
        .await;
    let status = dup.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("web"), "{}", status.message());

    // One label changed through a field path, the other untouched.
    let update = Namespace { name: "web".into(), labels: [("tier".to_string(), "front".to_string())].into() };
    let updated = ns
        .update(UpdateNamespaceRequest { namespace: Some(update), update_mask: mask(&["labels.tier"]) })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(updated.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(updated.labels.get("tier").map(String::as_str), Some("front"));

    let bad = ns
        .update(UpdateNamespaceRequest {
            namespace: Some(Namespace { name: "web".into(), labels: HashMap::new() }),
            update_mask: mask(&["name"]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("name"), "{}", bad.message());
    let got = ns.get(GetNamespaceRequest { name: "web".into() }).await.unwrap().into_inner().namespace.unwrap();
    assert_eq!(got.labels.len(), 2, "a refused update must not change anything");

    let list = ns.list(ListNamespacesRequest::default()).await.unwrap().into_inner().namespaces;
    assert!(list.iter().any(|n| n.name == "web"));

    let missing = ns.get(GetNamespaceRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = ns
        .create(CreateNamespaceRequest {
            namespace: Some(Namespace { name: "bad/name".into(), labels: HashMap::new() }),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // A namespace holding a container cannot be deleted.
    let mut containers = daemon.client().await.containers();
    create(&mut containers, "web", container("c1", &[])).await.unwrap();
    let busy = ns.delete(DeleteNamespaceRequest { name: "web".into() }).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("containers"), "{}", busy.message());
    containers.delete(ns_request("web", DeleteContainerRequest { id: "c1".into() })).await.unwrap();
    ns.delete(DeleteNamespaceRequest { name: "web".into() }).await.unwrap();
    assert_eq!(ns.get(GetNamespaceRequest { name: "web".into() }).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn containers_crud_and_filters() {
    let daemon = Daemon::start();
    let mut c = daemon.client().await.containers();
    for (id, labels) in [
        ("web-1", &[("app", "web"), ("com.example.tier", "front")][..]),
        ("web-2", &[("app", "web")][..]),
        ("db", &[("app", "db")][..]),
    ] {
        let created = create(&mut c, "default", container(id, labels)).await.unwrap();
        assert_eq!(created.id, id);
        assert!(created.created_at.is_some() && created.updated_at.is_some());
    }
    let mut other = container("db", &[]);
    other.image = "docker.io/library/postgres:16".into();
    other.runtime = Some(Runtime { name: "io.containerd.berth.v1".into(), options: None });
    create(&mut c, "other", other).await.unwrap();

    let got = get(&mut c, "default", "web-1").await.unwrap();
    assert_eq!(got.labels["com.example.tier"], "front");
    assert_eq!(got.spec.unwrap().type_url, "types.containerd.io/opencontainers/runtime-spec/1/Spec");

    assert_eq!(list_ids(&mut c, "default", &[]).await.unwrap(), ["db", "web-1", "web-2"]);
    assert_eq!(list_ids(&mut c, "default", &["labels.app==web"]).await.unwrap(), ["web-1", "web-2"]);
    assert_eq!(list_ids(&mut c, "default", &["id==db", "id==web-2"]).await.unwrap(), ["db", "web-2"]);
    assert_eq!(list_ids(&mut c, "default", &[r#"labels."com.example.tier"==front"#]).await.unwrap(), ["web-1"]);
    let postgres_on_berth = ["image~=postgres", "runtime.name==io.containerd.berth.v1"];
    assert_eq!(list_ids(&mut c, "other", &postgres_on_berth).await.unwrap(), ["db"]);
    let postgres_on_runc = ["image~=^docker.io/library/postgres,runtime.name==io.containerd.runc.v2"];
    assert_eq!(list_ids(&mut c, "other", &postgres_on_runc).await.unwrap(), Vec::<String>::new());
    let bad_filter = list_ids(&mut c, "default", &["labels.app=="]).await.unwrap_err();
    assert_eq!(bad_filter.code(), Code::InvalidArgument);

    let mut stream =
        c.list_stream(ns_request("default", list_request(&["labels.app==web"]))).await.unwrap().into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        streamed.push(m.container.unwrap().id);
    }
    assert_eq!(streamed, ["web-1", "web-2"]);

    // Update one label through a field path; the others stay.
    let mut change = container("web-1", &[("app", "api")]);
    change.image = "ignored-because-not-in-mask".into();
    let updated = update(&mut c, "default", change, &["labels.app"]).await.unwrap();
    assert_eq!(updated.labels["app"], "api");
    assert_eq!(updated.labels["com.example.tier"], "front");
    assert_eq!(updated.image, "docker.io/library/busybox:latest");
    assert!(updated.updated_at.unwrap().seconds >= got.created_at.unwrap().seconds);

    let unknown_path =
        update(&mut c, "default", container("web-1", &[]), &["labels", "nosuchfield"]).await.unwrap_err();
    assert_eq!(unknown_path.code(), Code::InvalidArgument);
    assert!(unknown_path.message().contains("nosuchfield"), "{}", unknown_path.message());
    let after = get(&mut c, "default", "web-1").await.unwrap();
    assert_eq!(after.labels.len(), 2, "refused update wrote something: {:?}", after.labels);

    c.delete(ns_request("default", DeleteContainerRequest { id: "web-2".into() })).await.unwrap();
    let gone = get(&mut c, "default", "web-2").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("web-2"), "{}", gone.message());
    assert_eq!(
        c.delete(ns_request("default", DeleteContainerRequest { id: "web-2".into() })).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn container_bad_input_is_refused_and_nothing_written() {
    let daemon = Daemon::start();
    let mut c = daemon.client().await.containers();

    // No namespace at all.
    let no_ns =
        c.create(Request::new(CreateContainerRequest { container: Some(container("a", &[])) })).await.unwrap_err();
    assert_eq!(no_ns.code(), Code::FailedPrecondition, "{no_ns:?}");
    assert!(no_ns.message().contains("namespace"), "{}", no_ns.message());
    let bad_ns = create(&mut c, "-bad", container("a", &[])).await.unwrap_err();
    assert_eq!(bad_ns.code(), Code::InvalidArgument);

    for id in ["", "a..b", "with space", "-lead", &"x".repeat(77)] {
        let err = create(&mut c, "default", container(id, &[])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "id {id:?}: {err:?}");
    }
    let big = "v".repeat(5000);
    let err = create(&mut c, "default", container("big", &[("k", &big)])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("4096"), "{}", err.message());

    let mut no_runtime = container("nort", &[]);
    no_runtime.runtime = None;
    let err = create(&mut c, "default", no_runtime).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("runtime"), "{}", err.message());
    let mut no_spec = container("nospec", &[]);
    no_spec.spec = None;
    assert_eq!(create(&mut c, "default", no_spec).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        c.create(ns_request("default", CreateContainerRequest { container: None })).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    create(&mut c, "default", container("once", &[])).await.unwrap();
    let dup = create(&mut c, "default", container("once", &[("x", "y")])).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let kept = get(&mut c, "default", "once").await.unwrap();
    assert!(kept.labels.is_empty(), "duplicate create overwrote the record");

    let all = list_ids(&mut c, "default", &[]).await.unwrap();
    assert_eq!(all, ["once"], "refused creates left records behind");
    // Refused creates in a fresh namespace must not leave the namespace behind either.
    let namespaces = daemon
        .client()
        .await
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(namespaces.into_iter().map(|n| n.name).collect::<Vec<_>>(), ["default"]);
}

#[tokio::test]
async fn sandbox_store_crud() {
    let daemon = Daemon::start();
    let mut s = daemon.client().await.sandbox_store();
    let sandbox = |id: &str, labels: &[(&str, &str)]| Sandbox {
        sandbox_id: id.into(),
        runtime: Some(containerd_client::types::sandbox::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        sandboxer: "podsandbox".into(),
        ..Default::default()
    };
    let created = create_sandbox(&mut s, sandbox("pod-1", &[("app", "web")])).await.unwrap();
    assert!(created.created_at.is_some());
    create_sandbox(&mut s, sandbox("pod-2", &[("app", "db")])).await.unwrap();
    let dup = create_sandbox(&mut s, sandbox("pod-1", &[])).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let got = get_sandbox(&mut s, "pod-1").await.unwrap();
    assert_eq!(got.labels["app"], "web");
    assert_eq!(got.sandboxer, "podsandbox");

    let list = s
        .list(ns_request(K8S, StoreListRequest { filters: vec!["labels.app==db".into()] }))
        .await
        .unwrap()
        .into_inner()
        .list;
    assert_eq!(list.into_iter().map(|s| s.sandbox_id).collect::<Vec<_>>(), ["pod-2"]);

    let updated = update_sandbox(&mut s, sandbox("pod-1", &[("app", "api")]), &["labels.app"]).await.unwrap();
    assert_eq!(updated.labels["app"], "api");
    let bad = update_sandbox(&mut s, sandbox("pod-1", &[]), &["bogus"]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let ns = daemon.client().await.namespaces().delete(DeleteNamespaceRequest { name: K8S.into() }).await.unwrap_err();
    assert_eq!(ns.code(), Code::FailedPrecondition);
    assert!(ns.message().contains("sandboxes"), "{}", ns.message());

    let delete = |id: &str| ns_request(K8S, StoreDeleteRequest { sandbox_id: id.into() });
    s.delete(delete("pod-1")).await.unwrap();
    assert_eq!(get_sandbox(&mut s, "pod-1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(s.delete(delete("pod-1")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        s.get(Request::new(StoreGetRequest { sandbox_id: "pod-2".into() })).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}
