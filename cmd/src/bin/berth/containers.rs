//! `berth containers`: containerd's Containers service (metadata only; tasks are not involved).

use std::collections::BTreeMap;

use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::containers::v1::{
    Container, DeleteContainerRequest, GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;
use tonic::Code;

use crate::output::{self, AnyJson, Format};
use crate::{Ctx, Reported, Service, key_value, rpc_error};

/// Suffix of the type URL containerd gives an OCI runtime spec, which it stores as JSON bytes.
const OCI_SPEC_TYPE: &str = "opencontainers/runtime-spec/1/Spec";

#[derive(Subcommand)]
pub enum Cmd {
    /// List containers, optionally matching containerd filters
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filters such as `labels.app==web` or `image~=alpine`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Print a container as JSON
    Info {
        id: String,
        /// Print only the OCI spec
        #[arg(long)]
        spec: bool,
    },
    /// Remove containers
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Set labels (KEY= removes KEY) and print the result, or print them when none are given
    Label {
        id: String,
        #[arg(value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let mut client = ctx.connect().await?.containers();
    match cmd {
        Cmd::Ls { quiet, filters } => {
            let mut containers = list(&mut client, filters).await?;
            containers.sort_by(|a, b| a.id.cmp(&b.id));
            if quiet {
                return output::emit(&containers.iter().map(|c| format!("{}\n", c.id)).collect::<String>());
            }
            match ctx.format {
                Format::Json => output::emit_json(&containers.iter().map(container_json).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> = containers
                        .iter()
                        .map(|c| {
                            let image = if c.image.is_empty() { "-".to_string() } else { c.image.clone() };
                            let runtime = c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                            vec![c.id.clone(), image, runtime]
                        })
                        .collect();
                    output::emit(&output::table(&["CONTAINER", "IMAGE", "RUNTIME"], &rows, 4, 4))
                }
            }
        }
        Cmd::Info { id, spec } => {
            let container = get(&mut client, &id).await?;
            // info is JSON whatever --format says, as in ctr.
            if spec {
                return output::emit_json(&container.spec.as_ref().map(spec_json));
            }
            output::emit_json(&container_json(&container))
        }
        Cmd::Rm { ids } => {
            // Keep going past failures so one bad ID does not leave the rest in place.
            let mut failed = false;
            for id in ids {
                if let Err(status) = client.delete(DeleteContainerRequest { id: id.clone() }).await {
                    crate::report(&rpc_error(format!("delete container {id}"))(status));
                    failed = true;
                }
            }
            if failed { Err(Reported.into()) } else { Ok(()) }
        }
        Cmd::Label { id, labels } if labels.is_empty() => {
            let container = get(&mut client, &id).await?;
            output::print_labels(ctx.format, &container.labels)
        }
        Cmd::Label { id, labels } => {
            // Only the listed `labels.KEY` paths change; an empty value makes the server drop the key.
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let container = Container { id: id.clone(), labels: labels.into_iter().collect(), ..Default::default() };
            let response = client
                .update(UpdateContainerRequest {
                    container: Some(container),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
                .map_err(rpc_error(format!("update labels of container {id}")))?;
            let labels = response.into_inner().container.map(|c| c.labels).unwrap_or_default();
            output::print_labels(ctx.format, &labels)
        }
    }
}

async fn get(client: &mut ContainersClient<Service>, id: &str) -> anyhow::Result<Container> {
    let response = client
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .map_err(rpc_error(format!("get container {id}")))?;
    response.into_inner().container.ok_or_else(|| anyhow::anyhow!("get container {id}: empty response"))
}

/// ListStream avoids the gRPC message size limit with many containers; servers without it
/// (older containerd) answer Unimplemented, then plain List is used, as containerd's client does.
async fn list(client: &mut ContainersClient<Service>, filters: Vec<String>) -> anyhow::Result<Vec<Container>> {
    let request = ListContainersRequest { filters };
    let error = rpc_error("list containers");
    match client.list_stream(request.clone()).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            let mut containers = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(message)) => containers.extend(message.container),
                    Ok(None) => return Ok(containers),
                    // The status may come as the stream's first item rather than as the reply.
                    Err(status) if status.code() == Code::Unimplemented && containers.is_empty() => {
                        break;
                    }
                    Err(status) => return Err(error(status)),
                }
            }
        }
        Err(status) if status.code() == Code::Unimplemented => {}
        Err(status) => return Err(error(status)),
    }
    let response = client.list(request).await.map_err(rpc_error("list containers"))?;
    Ok(response.into_inner().containers)
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    id: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
    image: &'a str,
    runtime: Option<RuntimeJson<'a>>,
    spec: Option<SpecJson<'a>>,
    snapshotter: &'a str,
    snapshot_key: &'a str,
    created_at: Option<String>,
    updated_at: Option<String>,
    extensions: BTreeMap<&'a str, AnyJson<'a>>,
    sandbox: &'a str,
}

#[derive(Serialize)]
struct RuntimeJson<'a> {
    name: &'a str,
    options: Option<AnyJson<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum SpecJson<'a> {
    Decoded(Value),
    Opaque(AnyJson<'a>),
}

/// The proto message's fields in snake_case, with the spec decoded when it is an OCI spec.
fn container_json(c: &Container) -> ContainerJson<'_> {
    ContainerJson {
        id: &c.id,
        labels: output::labels_json(&c.labels),
        image: &c.image,
        runtime: c
            .runtime
            .as_ref()
            .map(|r| RuntimeJson { name: &r.name, options: r.options.as_ref().map(output::any_json) }),
        spec: c.spec.as_ref().map(spec_json),
        snapshotter: &c.snapshotter,
        snapshot_key: &c.snapshot_key,
        created_at: output::timestamp_json(c.created_at.as_ref()),
        updated_at: output::timestamp_json(c.updated_at.as_ref()),
        extensions: c.extensions.iter().map(|(k, v)| (k.as_str(), output::any_json(v))).collect(),
        sandbox: &c.sandbox,
    }
}

/// containerd marshals Go types it registers, such as the OCI spec, as JSON into the Any's
/// bytes; anything else stays an opaque Any.
fn spec_json(spec: &prost_types::Any) -> SpecJson<'_> {
    if spec.type_url.ends_with(OCI_SPEC_TYPE)
        && let Ok(value) = serde_json::from_slice(&spec.value)
    {
        return SpecJson::Decoded(value);
    }
    SpecJson::Opaque(output::any_json(spec))
}
