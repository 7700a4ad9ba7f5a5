//! `berth version`: ctr's layout, client first so it prints even when berthd is unreachable.

use serde::Serialize;

use crate::output::{self, Format};
use crate::{Ctx, rpc_error};

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let client_version = env!("CARGO_PKG_VERSION");
    if ctx.format == Format::Table {
        output::emit(&format!("Client:\n  Version:  {client_version}\n\n"))?;
    }
    let mut client = ctx.connect().await?.version();
    let server = client.version(()).await.map_err(rpc_error("get server version"))?.into_inner();
    match ctx.format {
        Format::Json => output::emit_json(&VersionsJson {
            client: ClientJson { version: client_version },
            server: ServerJson { version: &server.version, revision: &server.revision },
        }),
        Format::Table => {
            output::emit(&format!("Server:\n  Version:  {}\n  Revision: {}\n", server.version, server.revision))
        }
    }
}

#[derive(Serialize)]
struct VersionsJson<'a> {
    client: ClientJson<'a>,
    server: ServerJson<'a>,
}

#[derive(Serialize)]
struct ClientJson<'a> {
    version: &'a str,
}

#[derive(Serialize)]
struct ServerJson<'a> {
    version: &'a str,
    revision: &'a str,
}
