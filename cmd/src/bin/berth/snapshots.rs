//! `berth snapshots`: containerd's Snapshots service, with `ctr snapshots`' commands; the
//! snapshotter is picked per command with `--snapshotter` (default `overlayfs`, as in ctr).

use std::collections::BTreeMap;

use berth_proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_proto::containerd::services::snapshots::v1::*;
use berth_proto::containerd::types::Mount;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::output::{self, Format};
use crate::{Ctx, Reported, Service, key_value, rpc_error};

#[derive(Args)]
pub struct Snapshots {
    /// The snapshotter: `overlayfs` or `native`
    #[arg(long, env = "BERTH_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List snapshots
    #[command(visible_alias = "list")]
    Ls {
        /// Filters such as `kind==committed` or `labels.team==a`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Make an active snapshot on an optional committed parent and print its mount command
    Prepare {
        key: String,
        parent: Option<String>,
        /// Where the printed mount command mounts it
        #[arg(long, default_value = "/tmp/mnt")]
        target: String,
    },
    /// Make a read-only snapshot on an optional committed parent and print its mount command
    View {
        key: String,
        parent: Option<String>,
        #[arg(long, default_value = "/tmp/mnt")]
        target: String,
    },
    /// Print the mount command of an active or view snapshot, mounting it at TARGET
    Mounts { target: String, key: String },
    /// Commit active snapshot ACTIVE as NAME
    Commit { name: String, active: String },
    /// Remove snapshots
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Print the disk usage of snapshots (all of them without KEYs)
    Usage { keys: Vec<String> },
    /// Print a snapshot as JSON
    Info { key: String },
    /// Set labels (KEY= removes KEY) and print the result, or print them when none are given
    Label {
        key: String,
        #[arg(value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
}

/// `mount -t TYPE SOURCE TARGET -o OPTIONS`, one line per mount, as `ctr snapshots mounts` prints.
fn mount_commands(target: &str, mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| format!("mount -t {} {} {} -o {}\n", m.r#type, m.source, target, m.options.join(",")))
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind).unwrap_or(Kind::Unknown) {
        Kind::View => "View",
        Kind::Active => "Active",
        Kind::Committed => "Committed",
        Kind::Unknown => "Unknown",
    }
}

fn info_json(i: &Info) -> serde_json::Value {
    json!({
        "Kind": kind_name(i.kind),
        "Name": i.name,
        "Parent": (!i.parent.is_empty()).then_some(&i.parent),
        "Labels": output::labels_json(&i.labels),
        "Created": output::timestamp_json(i.created_at.as_ref()),
        "Updated": output::timestamp_json(i.updated_at.as_ref()),
    })
}

async fn list(
    client: &mut SnapshotsClient<Service>,
    snapshotter: &str,
    filters: Vec<String>,
) -> anyhow::Result<Vec<Info>> {
    let request = ListSnapshotsRequest { snapshotter: snapshotter.to_string(), filters };
    let mut stream = client.list(request).await.map_err(rpc_error("list snapshots"))?.into_inner();
    let mut infos = Vec::new();
    while let Some(block) = stream.message().await.map_err(rpc_error("list snapshots"))? {
        infos.extend(block.info);
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

pub async fn run(ctx: &Ctx, args: Snapshots) -> anyhow::Result<()> {
    let mut client = SnapshotsClient::with_interceptor(ctx.connect().await?.channel(), ctx.interceptor());
    let snapshotter = args.snapshotter;
    match args.cmd {
        Cmd::Ls { filters } => {
            let infos = list(&mut client, &snapshotter, filters).await?;
            match ctx.format {
                Format::Json => output::emit_json(&infos.iter().map(info_json).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> = infos
                        .iter()
                        .map(|i| vec![i.name.clone(), i.parent.clone(), kind_name(i.kind).to_string()])
                        .collect();
                    output::emit(&output::table(&["KEY", "PARENT", "KIND"], &rows, 4, 4))
                }
            }
        }
        Cmd::Prepare { key, parent, target } => {
            let request = PrepareSnapshotRequest {
                snapshotter,
                key: key.clone(),
                parent: parent.unwrap_or_default(),
                labels: Default::default(),
            };
            let mounts = client.prepare(request).await.map_err(rpc_error(format!("prepare snapshot {key}")))?;
            output::emit(&mount_commands(&target, &mounts.into_inner().mounts))
        }
        Cmd::View { key, parent, target } => {
            let request = ViewSnapshotRequest {
                snapshotter,
                key: key.clone(),
                parent: parent.unwrap_or_default(),
                labels: Default::default(),
            };
            let mounts = client.view(request).await.map_err(rpc_error(format!("view snapshot {key}")))?;
            output::emit(&mount_commands(&target, &mounts.into_inner().mounts))
        }
        Cmd::Mounts { target, key } => {
            let request = MountsRequest { snapshotter, key: key.clone() };
            let mounts = client.mounts(request).await.map_err(rpc_error(format!("mounts of snapshot {key}")))?;
            output::emit(&mount_commands(&target, &mounts.into_inner().mounts))
        }
        Cmd::Commit { name, active } => {
            let request = CommitSnapshotRequest { snapshotter, name, key: active.clone(), labels: Default::default() };
            client.commit(request).await.map_err(rpc_error(format!("commit snapshot {active}")))?;
            Ok(())
        }
        Cmd::Rm { keys } => {
            // Keep going past failures so one bad key does not leave the rest in place.
            let mut failed = false;
            for key in keys {
                let request = RemoveSnapshotRequest { snapshotter: snapshotter.clone(), key: key.clone() };
                if let Err(status) = client.remove(request).await {
                    crate::report(&rpc_error(format!("remove snapshot {key}"))(status));
                    failed = true;
                }
            }
            if failed { Err(Reported.into()) } else { Ok(()) }
        }
        Cmd::Usage { keys } => {
            let keys = if keys.is_empty() {
                list(&mut client, &snapshotter, vec![]).await?.into_iter().map(|i| i.name).collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            for key in keys {
                let request = UsageRequest { snapshotter: snapshotter.clone(), key: key.clone() };
                let usage = client.usage(request).await.map_err(rpc_error(format!("usage of snapshot {key}")))?;
                let usage = usage.into_inner();
                rows.push(vec![key, usage.size.to_string(), usage.inodes.to_string()]);
            }
            output::emit(&output::table(&["KEY", "SIZE", "INODES"], &rows, 4, 4))
        }
        Cmd::Info { key } => {
            let request = StatSnapshotRequest { snapshotter, key: key.clone() };
            let info = client.stat(request).await.map_err(rpc_error(format!("stat snapshot {key}")))?;
            output::emit_json(&info.into_inner().info.as_ref().map(info_json))
        }
        Cmd::Label { key, labels } if labels.is_empty() => {
            let request = StatSnapshotRequest { snapshotter, key: key.clone() };
            let info = client.stat(request).await.map_err(rpc_error(format!("stat snapshot {key}")))?;
            output::print_labels(ctx.format, &info.into_inner().info.map(|i| i.labels).unwrap_or_default())
        }
        Cmd::Label { key, labels } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let info = Info { name: key.clone(), labels: labels.into_iter().collect(), ..Default::default() };
            let request = UpdateSnapshotRequest {
                snapshotter,
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            let response =
                client.update(request).await.map_err(rpc_error(format!("update labels of snapshot {key}")))?;
            output::print_labels(ctx.format, &response.into_inner().info.map(|i| i.labels).unwrap_or_default())
        }
    }
}
