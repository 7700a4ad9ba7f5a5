//! A client program: creates a container record in berthd, lists what is there, and cleans up.
//!
//! ```sh
//! cargo run -p berth-example-client -- /run/berth/berth.sock
//! ```
//!
//! It uses berth's generated clients; the `containerd-client` crate works the same way, since
//! berthd speaks containerd's v1 API on the wire.

use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest, container,
};
use berth_proto::containerd::services::namespaces::v1::ListNamespacesRequest;
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use tonic::Request;

/// Every namespaced call carries the namespace in this metadata key, as with containerd.
fn in_namespace<T>(ns: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().expect("ascii namespace"));
    request
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let socket = std::env::args().nth(1).unwrap_or_else(|| "/run/berth/berth.sock".into());
    let channel = berth_core::client::connect_unix(&socket).await?;
    let mut containers = ContainersClient::new(channel.clone());

    let spec = prost_types_any(
        r#"{"ociVersion":"1.1.0","process":{"args":["/bin/true"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
    );
    let container = Container {
        id: "example".into(),
        labels: [("made-by".to_string(), "berth-example-client".to_string())].into(),
        runtime: Some(container::Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(spec),
        ..Default::default()
    };
    containers.create(in_namespace("example", CreateContainerRequest { container: Some(container) })).await?;

    let namespaces = NamespacesClient::new(channel).list(ListNamespacesRequest::default()).await?.into_inner();
    for ns in namespaces.namespaces {
        let list = containers.list(in_namespace(&ns.name, ListContainersRequest::default())).await?.into_inner();
        println!("namespace {}: {} container(s)", ns.name, list.containers.len());
        for c in list.containers {
            println!("  {} runtime={} labels={:?}", c.id, c.runtime.map(|r| r.name).unwrap_or_default(), c.labels);
        }
    }
    containers.delete(in_namespace("example", DeleteContainerRequest { id: "example".into() })).await?;
    Ok(())
}

fn prost_types_any(json: &str) -> berth_proto::prost_types::Any {
    berth_proto::prost_types::Any {
        type_url: format!("{}/opencontainers/runtime-spec/1/Spec", berth_proto::TYPE_URL_PREFIX),
        value: json.as_bytes().to_vec(),
    }
}
