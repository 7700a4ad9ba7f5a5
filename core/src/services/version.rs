//! `containerd.services.version.v1.Version`.

use berth_proto::containerd::services::version::v1::VersionResponse;
use berth_proto::containerd::services::version::v1::version_server::{Version, VersionServer};
use tonic::{Request, Response, Status};

use super::GrpcService;
use crate::plugin::{Instance, NoConfig, PluginKind, Registration};

/// berth's version, reported to clients.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision berth was built from (`BERTH_REVISION` at build time), or "unknown".
pub const REVISION: &str = match option_env!("BERTH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse { version: VERSION.into(), revision: REVISION.into() }))
    }
}

pub(super) fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "version", |_| async {
        Ok(Instance::new(GrpcService::new(
            "containerd.services.version.v1.Version",
            VersionServer::new(VersionService),
        )))
    })
    .describe("containerd.services.version.v1.Version")
}
