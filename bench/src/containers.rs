//! `containers`: Containers.Create, Get and Delete throughput and latency over gRPC.
//!
//! N closed-loop clients, each on its own connection (one tonic Channel, so one HTTP/2
//! connection per client, as N separate processes would have), take operation numbers from a
//! shared counter until M operations are done. Each operation's latency is timed from the call to
//! its reply. Everything happens in a namespace made for the run and removed at the end.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use berth_core::client::connect_unix;
use berth_core::services::NAMESPACE_HEADER;
use berth_proto::containerd::services::containers::v1::container::Runtime;
use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
};
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd::services::namespaces::v1::{CreateNamespaceRequest, DeleteNamespaceRequest, Namespace};
use tokio::task::JoinSet;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::stats::Phase;

/// The OCI spec `ctr containers create --rootfs DIR ID /bin/true` sends (containerd 1.6.20's
/// defaults), captured with `ctr containers info`: the payload should weigh what real clients send.
pub(crate) const SPEC_JSON: &str = include_str!("spec.json");
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub(crate) const RUNTIME: &str = "io.containerd.runc.v2";
/// ctr attaches empty runc options to every container it creates.
pub(crate) const RUNTIME_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

#[derive(clap::Args)]
pub struct Options {
    /// The daemon's gRPC unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Name of the target in the output, e.g. berthd or containerd.
    #[arg(long)]
    label: String,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Operations per measured phase, split over the clients.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Creates and gets before measuring, not counted: connections, caches and the database file
    /// warm up.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Runtime threads of this client process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

type Client = ContainersClient<Channel>;
/// One operation: operation number `i` on a client. Boxed so the phases share one driver; the
/// allocation is noise next to a gRPC round trip.
type Op = Arc<dyn Fn(Client, usize) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> + Send + Sync>;

pub async fn run(options: Options) -> Result<()> {
    ensure!(options.clients >= 1 && options.ops >= 1, "--clients and --ops must be at least 1");
    let mut channels = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        let channel = connect_unix(&options.socket)
            .await
            .with_context(|| format!("connecting to {}", options.socket.display()))?;
        channels.push(channel);
    }
    // A fresh namespace per run: runs never see each other's containers, and removing it at the
    // end proves the run cleaned up after itself.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let ns = format!("berth-bench-{}-{nanos}", std::process::id());
    let ns_header: AsciiMetadataValue = ns.parse()?;
    let mut namespaces = NamespacesClient::new(channels[0].clone());
    let labels = [("bench.berth.dev/target".to_owned(), options.label.clone())].into();
    let namespace = Namespace { name: ns.clone(), labels };
    // containerd wants a namespace on every call, even this one (for the event it publishes).
    namespaces
        .create(request(&ns_header, CreateNamespaceRequest { namespace: Some(namespace) }))
        .await
        .with_context(|| format!("creating namespace {ns}"))?;

    let clients: Vec<Client> = channels.into_iter().map(ContainersClient::new).collect();
    let measured = measure(&options, &clients, &ns_header).await;
    if measured.is_err() {
        // Best effort, so a failed run does not leave a namespace behind; the first error wins.
        let _ = remove_all(clients[0].clone(), &ns_header).await;
    }
    let removed = namespaces.delete(request(&ns_header, DeleteNamespaceRequest { name: ns.clone() })).await;
    measured?;
    removed.with_context(|| format!("removing namespace {ns}: not empty after the run?"))?;
    Ok(())
}

/// Warm-up, then the measured create, get and delete phases, then removal of the warm-up
/// containers.
async fn measure(options: &Options, clients: &[Client], ns: &AsciiMetadataValue) -> Result<()> {
    let template = Arc::new(container_template(&options.label)?);
    let report = |phase: &str, (latencies, elapsed)| {
        Phase::new(&options.label, phase, clients.len(), latencies, elapsed).print()
    };

    if options.warmup > 0 {
        timed(clients, options.warmup, create(ns, &template, "warm")).await.context("warm-up create")?;
        timed(clients, options.warmup, get(ns, "warm")).await.context("warm-up get")?;
    }
    report("create", timed(clients, options.ops, create(ns, &template, "c")).await.context("create")?)?;
    report("get", timed(clients, options.ops, get(ns, "c")).await.context("get")?)?;
    report("delete", timed(clients, options.ops, delete(ns, "c")).await.context("delete")?)?;
    if options.warmup > 0 {
        timed(clients, options.warmup, delete(ns, "warm")).await.context("warm-up delete")?;
    }
    Ok(())
}

/// A container as `ctr containers create --rootfs` sends it; only the id changes per operation.
fn container_template(target: &str) -> Result<Container> {
    // Compact, as Go's json.Marshal sends it; the file is indented for readers.
    let spec: serde_json::Value = serde_json::from_str(SPEC_JSON).context("bench/src/spec.json")?;
    Ok(Container {
        labels: [
            ("io.containerd.image.config.stop-signal".to_owned(), "SIGTERM".to_owned()),
            ("bench.berth.dev/target".to_owned(), target.to_owned()),
        ]
        .into(),
        runtime: Some(Runtime {
            name: RUNTIME.to_owned(),
            options: Some(prost_types::Any { type_url: RUNTIME_OPTIONS_TYPE_URL.to_owned(), value: Vec::new() }),
        }),
        spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.to_owned(), value: serde_json::to_vec(&spec)? }),
        ..Container::default()
    })
}

fn container_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:06}")
}

/// A request carrying the namespace the way containerd clients send it.
pub(crate) fn request<T>(ns: &AsciiMetadataValue, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(NAMESPACE_HEADER, ns.clone());
    request
}

fn create(ns: &AsciiMetadataValue, template: &Arc<Container>, prefix: &'static str) -> Op {
    let (ns, template) = (ns.clone(), template.clone());
    Arc::new(move |mut client, i| {
        let container = Container { id: container_id(prefix, i), ..(*template).clone() };
        let request = request(&ns, CreateContainerRequest { container: Some(container) });
        Box::pin(async move { client.create(request).await.map(drop) })
    })
}

fn get(ns: &AsciiMetadataValue, prefix: &'static str) -> Op {
    let ns = ns.clone();
    Arc::new(move |mut client, i| {
        let request = request(&ns, GetContainerRequest { id: container_id(prefix, i) });
        Box::pin(async move {
            let reply = client.get(request).await?.into_inner();
            // A reply without the container would make Get look cheaper than it is.
            match reply.container {
                Some(c) if c.spec.is_some() => Ok(()),
                _ => Err(Status::internal("Get replied without the container or its spec")),
            }
        })
    })
}

fn delete(ns: &AsciiMetadataValue, prefix: &'static str) -> Op {
    let ns = ns.clone();
    Arc::new(move |mut client, i| {
        let request = request(&ns, DeleteContainerRequest { id: container_id(prefix, i) });
        Box::pin(async move { client.delete(request).await.map(drop) })
    })
}

/// Runs `ops` operations over the clients, each client in a closed loop (next operation once the
/// previous one replied); returns every operation's latency and the phase's wall-clock time.
async fn timed(clients: &[Client], ops: usize, op: Op) -> Result<(Vec<Duration>, Duration)> {
    let per_client = ops.div_ceil(clients.len());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        let (client, next, op) = (client.clone(), next.clone(), op.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok(latencies);
                }
                let sent = Instant::now();
                op(client.clone(), i).await.with_context(|| format!("operation {i}"))?;
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(ops);
    while let Some(joined) = tasks.join_next().await {
        let client_latencies: Result<Vec<Duration>> = joined?;
        latencies.extend(client_latencies?);
    }
    Ok((latencies, started.elapsed()))
}

/// Deletes every container of the namespace (cleanup after a failed run).
async fn remove_all(mut client: Client, ns: &AsciiMetadataValue) -> Result<()> {
    let listed = client.list(request(ns, ListContainersRequest { filters: Vec::new() })).await?.into_inner();
    for container in listed.containers {
        client.delete(request(ns, DeleteContainerRequest { id: container.id })).await?;
    }
    Ok(())
}
