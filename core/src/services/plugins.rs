//! `berth.services.plugins.v1.Plugins`: berth's own plugin calls, beside containerd's Introspection.
//! `Reload` swaps in a plugin's artifact anew, for sources that can (wasm); the rest say they cannot.

use berth_proto::berth::services::plugins::v1::plugins_server::{Plugins, PluginsServer};
use berth_proto::berth::services::plugins::v1::{ReloadRequest, ReloadResponse};
use tonic::{Request, Response, Status};

use super::GrpcService;
use crate::Error;
use crate::plugin::{Instance, NoConfig, PluginId, PluginKind, Registration, SharedPluginTable};

struct PluginsService {
    table: SharedPluginTable,
}

#[tonic::async_trait]
impl Plugins for PluginsService {
    async fn reload(&self, request: Request<ReloadRequest>) -> Result<Response<ReloadResponse>, Status> {
        let text = request.into_inner().id;
        let id: PluginId = text.parse().map_err(Error::InvalidArgument)?;
        let reload = {
            let table = self.table.read().expect("plugin table lock");
            if !table.plugins.iter().any(|p| p.id == id) {
                return Err(Error::NotFound(format!("plugin {id}")).into());
            }
            table.reloaders.get(&id).cloned()
        };
        let Some(reload) = reload else {
            return Err(Error::FailedPrecondition(format!(
                "plugin {id} cannot be reloaded: only plugins of a source that reloads (wasm) can; a built-in or native plugin takes a berthd restart"
            ))
            .into());
        };
        let (sha256, version) =
            (reload.0)().await.map_err(|e| Error::FailedPrecondition(format!("plugin {id}: {e}")))?;
        Ok(Response::new(ReloadResponse { sha256, version }))
    }
}

pub(super) fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "plugins", |ctx| {
        let table = ctx.plugin_table();
        async move {
            Ok(Instance::new(GrpcService::new(
                "berth.services.plugins.v1.Plugins",
                PluginsServer::new(PluginsService { table }),
            )))
        }
    })
    .describe("berth.services.plugins.v1.Plugins")
}
