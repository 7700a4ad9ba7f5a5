//! `containerd.services.introspection.v1.Introspection`: which plugins run, and which server.

use std::io::Read;
use std::path::Path;

use berth_proto::containerd::services::introspection::v1::introspection_server::{Introspection, IntrospectionServer};
use berth_proto::containerd::services::introspection::v1::*;
use berth_proto::containerd::types::Platform;
use berth_proto::google::rpc;
use tonic::{Code, Request, Response, Status};

use super::GrpcService;
use crate::Error;
use crate::external::Origin;
use crate::filters::{Adaptor, FilterSet};
use crate::plugin::{InitError, Instance, NoConfig, PluginKind, Registration, Requirement, SharedPluginTable};
use crate::registry::{PluginState, PluginStatus};

struct IntrospectionService {
    table: SharedPluginTable,
    uuid: String,
}

/// A row of the plugin table as containerd clients filter it: `type`, `id`, and berth's own
/// `kind`, `name` and `source`.
struct PluginRow<'a>(&'a PluginStatus);

impl Adaptor for PluginRow<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let id = &self.0.id;
        match path.first().map(String::as_str)? {
            "type" => Some(id.kind.containerd_type().to_string()),
            "id" | "name" => Some(id.name.clone()),
            "kind" => Some(id.kind.to_string()),
            "source" => Some(match &self.0.origin {
                Origin::Builtin => "builtin".to_string(),
                Origin::External(o) => o.source.clone(),
            }),
            _ => None,
        }
    }
}

fn to_proto(status: &PluginStatus) -> Plugin {
    let init_err = match &status.state {
        PluginState::Loaded => None,
        // ctr shows "skip" when the message contains "skip plugin", as containerd's ErrSkipPlugin does.
        PluginState::Skipped(reason) => Some(rpc::Status {
            code: Code::FailedPrecondition as i32,
            message: InitError::Skip(reason.clone()).to_string(),
            details: vec![],
        }),
        PluginState::Failed(error) => {
            Some(rpc::Status { code: Code::Unknown as i32, message: error.clone(), details: vec![] })
        }
        PluginState::Pending => {
            Some(rpc::Status { code: Code::Unavailable as i32, message: "not started yet".into(), details: vec![] })
        }
    };
    Plugin {
        r#type: status.id.kind.containerd_type().into(),
        id: status.id.name.clone(),
        requires: status
            .requires
            .iter()
            .map(|r| match r {
                Requirement::Kind(k) => k.containerd_type().to_string(),
                Requirement::Plugin(p) => p.kind.containerd_type().to_string(),
            })
            .collect(),
        platforms: vec![host_platform()],
        exports: exports(status),
        capabilities: vec![],
        init_err,
    }
}

/// berth's own facts about a plugin, in the exports map containerd clients show (`ctr plugins ls -d`):
/// `berth.kind`, `berth.description`, `berth.source` (`builtin`, `native`...), `berth.version` (berthd's for
/// built-ins, the header's for external plugins), and for external plugins `berth.path`, `berth.sha256`
/// and what the source read (`berth.abi`, `berth.sdk`, `berth.rustc`, `berth.target`); `berth.last_error`
/// once a call into the plugin failed inside it.
fn exports(status: &PluginStatus) -> std::collections::HashMap<String, String> {
    let mut exports = std::collections::HashMap::new();
    let mut put = |k: &str, v: String| {
        exports.insert(format!("berth.{k}"), v);
    };
    put("kind", status.id.kind.to_string());
    put("description", status.description.clone());
    match &status.origin {
        Origin::Builtin => {
            put("source", "builtin".into());
            put("version", super::version::VERSION.into());
        }
        Origin::External(origin) => {
            put("source", origin.source.clone());
            put("path", origin.path.display().to_string());
            if let Some(sha256) = &origin.sha256 {
                put("sha256", sha256.clone());
            }
            if let Some(version) = &origin.version {
                put("version", version.clone());
            }
            for (k, v) in &origin.details {
                put(k, v.clone());
            }
        }
    }
    if let Some(error) = &status.last_error {
        put("last_error", error.clone());
    }
    exports
}

/// The host platform in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: String::new(),
        os_version: String::new(),
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(&self, request: Request<PluginsRequest>) -> Result<Response<PluginsResponse>, Status> {
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let table = self.table.read().expect("plugin table lock");
        let plugins = table.plugins.iter().filter(|p| filters.matches(&PluginRow(p))).map(to_proto).collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: std::process::id().into(),
            pidns: pid_namespace().unwrap_or(0),
            deprecations: vec![],
        }))
    }

    async fn plugin_info(&self, request: Request<PluginInfoRequest>) -> Result<Response<PluginInfoResponse>, Status> {
        let request = request.into_inner();
        let table = self.table.read().expect("plugin table lock");
        let plugin = table
            .plugins
            .iter()
            .find(|p| {
                p.id.name == request.id
                    && (p.id.kind.containerd_type() == request.r#type || p.id.kind.as_str() == request.r#type)
            })
            .ok_or_else(|| Error::NotFound(format!("plugin {}.{}", request.r#type, request.id)))?;
        Ok(Response::new(PluginInfoResponse { plugin: Some(to_proto(plugin)), extra: None }))
    }
}

/// The inode of berthd's pid namespace, as containerd reports it.
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The server's UUID: made once and kept in `dir/uuid`, so it survives restarts.
fn server_uuid(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(uuid) if !uuid.trim().is_empty() => return Ok(uuid.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let uuid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("uuid.tmp");
    std::fs::write(&tmp, &uuid)?;
    std::fs::rename(&tmp, &path)?;
    Ok(uuid)
}

pub(super) fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "introspection", |ctx| {
        let table = ctx.plugin_table();
        let dir = ctx.dirs().root.clone();
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let uuid =
                server_uuid(&dir).map_err(|e| InitError::Failed(format!("server uuid in {}: {e}", dir.display())))?;
            let server = IntrospectionServer::new(IntrospectionService { table, uuid })
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new("containerd.services.introspection.v1.Introspection", server)))
        }
    })
    .describe("containerd.services.introspection.v1.Introspection")
}
