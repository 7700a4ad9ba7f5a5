//! `berth namespaces`: containerd's Namespaces service.

use std::collections::BTreeMap;

use berth_proto::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use clap::Subcommand;
use serde::Serialize;

use crate::output::{self, Format};
use crate::{Ctx, Reported, key_value, rpc_error};

#[derive(Subcommand)]
pub enum Cmd {
    /// List namespaces
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a namespace
    Create {
        name: String,
        #[arg(value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Remove namespaces; they must be empty
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set labels (KEY= removes KEY), or print them when none are given
    Label {
        name: String,
        #[arg(value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let mut client = ctx.connect().await?.namespaces();
    match cmd {
        Cmd::Ls { quiet } => {
            let response = client.list(ListNamespacesRequest::default()).await.map_err(rpc_error("list namespaces"))?;
            let mut namespaces = response.into_inner().namespaces;
            namespaces.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                return output::emit(&namespaces.iter().map(|ns| format!("{}\n", ns.name)).collect::<String>());
            }
            match ctx.format {
                Format::Json => output::emit_json(&namespaces.iter().map(namespace_json).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> =
                        namespaces.iter().map(|ns| vec![ns.name.clone(), output::labels_text(&ns.labels)]).collect();
                    output::emit(&output::table(&["NAME", "LABELS"], &rows, 1, 1))
                }
            }
        }
        Cmd::Create { name, labels } => {
            let namespace = Namespace { name: name.clone(), labels: labels.into_iter().collect() };
            client
                .create(CreateNamespaceRequest { namespace: Some(namespace) })
                .await
                .map_err(rpc_error(format!("create namespace {name}")))?;
            Ok(())
        }
        Cmd::Rm { names } => {
            // Keep going past failures so one bad name does not leave the rest in place.
            let mut failed = false;
            for name in names {
                match client.delete(DeleteNamespaceRequest { name: name.clone() }).await {
                    Ok(_) => output::emit(&format!("{name}\n"))?,
                    Err(status) => {
                        crate::report(&rpc_error(format!("delete namespace {name}"))(status));
                        failed = true;
                    }
                }
            }
            if failed { Err(Reported.into()) } else { Ok(()) }
        }
        Cmd::Label { name, labels } if labels.is_empty() => {
            let response = client
                .get(GetNamespaceRequest { name: name.clone() })
                .await
                .map_err(rpc_error(format!("get namespace {name}")))?;
            let labels = response.into_inner().namespace.map(|ns| ns.labels).unwrap_or_default();
            output::print_labels(ctx.format, &labels)
        }
        Cmd::Label { name, labels } => {
            // One Update with a `labels.KEY` path per key touches only those keys; an empty
            // value under a listed path makes the server drop the key.
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let namespace = Namespace { name: name.clone(), labels: labels.into_iter().collect() };
            client
                .update(UpdateNamespaceRequest {
                    namespace: Some(namespace),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
                .map_err(rpc_error(format!("update labels of namespace {name}")))?;
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct NamespaceJson<'a> {
    name: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
}

fn namespace_json(ns: &Namespace) -> NamespaceJson<'_> {
    NamespaceJson { name: &ns.name, labels: output::labels_json(&ns.labels) }
}
