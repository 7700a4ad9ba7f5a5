//! The gRPC services berthd serves, each a plugin of kind `service`.
//!
//! They speak containerd's v1 API: the namespace of a request comes from the
//! `containerd-namespace` metadata key, errors become the status codes containerd clients expect
//! (in [`status`], the one place that mapping lives), and messages are containerd's.

pub mod containers;
pub mod content;
pub mod convert;
pub mod diff;
pub mod events;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod plugins;
pub mod rpclog;
pub mod sandboxes;
pub mod snapshots;
pub mod status;
pub mod tasks;
pub mod version;

use tonic::service::RoutesBuilder;

use crate::events::Exchange;
use crate::gc::GcScheduler;
use crate::ident;
use crate::plugin::{NoConfig, PluginId, PluginKind, Registration, Requirement};
use crate::store::MetadataStore;
use crate::{Error, Result};

/// The gRPC metadata key that carries the namespace, as in containerd.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// What a `service` plugin exports: a gRPC service the daemon mounts on its server.
pub struct GrpcService {
    /// The full gRPC service name, e.g. `containerd.services.containers.v1.Containers`.
    pub name: &'static str,
    add: Box<dyn Fn(&mut RoutesBuilder) + Send + Sync>,
}

impl GrpcService {
    /// Wraps a tonic server (`FooServer::new(..)`).
    pub fn new<S>(name: &'static str, server: S) -> Self
    where
        S: tower::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            name,
            add: Box::new(move |routes| {
                routes.add_service(server.clone());
            }),
        }
    }

    /// Mounts the service.
    pub fn add_to(&self, routes: &mut RoutesBuilder) {
        (self.add)(routes)
    }
}

/// The namespace a request is for.
pub fn namespace<T>(request: &tonic::Request<T>) -> Result<String> {
    let ns = request
        .metadata()
        .get(NAMESPACE_HEADER)
        .ok_or_else(|| {
            Error::FailedPrecondition(format!("namespace is required: set the {NAMESPACE_HEADER} gRPC metadata key"))
        })?
        .to_str()
        .map_err(|_| Error::InvalidArgument(format!("{NAMESPACE_HEADER} metadata is not valid ASCII")))?;
    ident::validate(ns).map_err(|e| e.context("namespace"))?;
    Ok(ns.to_string())
}

/// Publishes `event` (containerd's `containerd.events.<kind>`) after a change has been committed.
/// The change stands whether or not anyone hears of it, so a failure is only logged.
fn publish<M: prost::Message>(events: &Exchange, ns: &str, topic: &str, kind: &str, event: &M) {
    let any = crate::events::pack(&format!("containerd.events.{kind}"), event);
    if let Err(error) = events.publish(ns, topic, any) {
        tracing::warn!(%topic, %error, "event not published");
    }
}

/// The id of the metadata store plugin every stateful service requires.
pub fn store_id() -> PluginId {
    PluginId::new(PluginKind::Store, "lmdb")
}

/// The id of the event exchange plugin.
pub fn exchange_id() -> PluginId {
    PluginId::new(PluginKind::Event, "exchange")
}

/// The id of the garbage collector's scheduler, which Images and Leases ask for synchronous
/// collections.
pub fn gc_id() -> PluginId {
    PluginId::new(PluginKind::Gc, "scheduler")
}

/// What a stateful service is built from.
pub struct ServiceDeps {
    /// The metadata store.
    pub store: MetadataStore,
    /// Where the service publishes what it changed.
    pub events: Exchange,
    /// Largest request accepted.
    pub max_recv: usize,
    /// Largest response sent.
    pub max_send: usize,
}

/// Registers a service that needs the metadata store and the event exchange.
fn store_service(name: &str, description: &str, make: fn(ServiceDeps) -> GrpcService) -> Registration {
    store_service_with(name, description, move |deps, _| make(deps))
}

/// Registers a store service that may wait for garbage collections (the `sync` of Images.Delete
/// and Leases.Delete): it starts after the `gc` plugin and gets its scheduler, if that loaded.
fn collecting_service(
    name: &str,
    description: &str,
    make: fn(ServiceDeps, Option<GcScheduler>) -> GrpcService,
) -> Registration {
    store_service_with(name, description, make).requires(Requirement::Kind(PluginKind::Gc))
}

fn store_service_with<F>(name: &str, description: &str, make: F) -> Registration
where
    F: Fn(ServiceDeps, Option<GcScheduler>) -> GrpcService + Copy + Send + Sync + 'static,
{
    Registration::new::<NoConfig, _, _>(PluginKind::Service, name, move |ctx| {
        let store = ctx.get::<MetadataStore>(&store_id());
        let events = ctx.get::<Exchange>(&exchange_id());
        let gc = ctx.get::<GcScheduler>(&gc_id()).map(|gc| (*gc).clone());
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let missing = |what: &str| crate::plugin::InitError::Failed(format!("{what} not loaded"));
            let deps = ServiceDeps {
                store: (*store.ok_or_else(|| missing("metadata store"))?).clone(),
                events: (*events.ok_or_else(|| missing("event exchange"))?).clone(),
                max_recv: grpc.max_recv_message_size,
                max_send: grpc.max_send_message_size,
            };
            Ok(crate::plugin::Instance::new(make(deps, gc)))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .requires(Requirement::Plugin(exchange_id()))
    .describe(description)
}

/// The registrations of every built-in service.
pub fn registrations() -> Vec<Registration> {
    vec![
        version::registration(),
        store_service("namespaces", "containerd.services.namespaces.v1.Namespaces", namespaces::service),
        store_service("containers", "containerd.services.containers.v1.Containers", containers::service),
        store_service("sandboxes", "containerd.services.sandbox.v1.Store", sandboxes::service),
        collecting_service("leases", "containerd.services.leases.v1.Leases", leases::service),
        collecting_service("images", "containerd.services.images.v1.Images", images::service),
        content::registration(),
        diff::registration(),
        snapshots::registration(),
        tasks::registration(),
        events::registration(),
        introspection::registration(),
        plugins::registration(),
    ]
}
