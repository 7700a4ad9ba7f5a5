//! `berth images`: containerd's Images service for records; `inspect` adds the manifest and OCI
//! image config from berth's own Images service (GetOciImage), `pull` is `berth pull`.

use berth_proto::berth::services::images::v1 as berth_images;
use berth_proto::containerd::services::images::v1::images_client::ImagesClient;
use berth_proto::containerd::services::images::v1::*;
use clap::Subcommand;
use serde_json::json;

use crate::output::{self, Format};
use crate::{Ctx, Reported, rpc_error};

#[derive(Subcommand)]
pub enum Cmd {
    /// List images, optionally matching containerd filters
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
        /// Filters such as `name~=busybox` or `labels.team==a`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Remove images
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Return only once the garbage collection the removal makes due has run
        #[arg(long)]
        sync: bool,
    },
    /// Print an image as JSON: its record, its manifest's descriptor and its OCI image config
    Inspect { name: String },
    /// Pull an image from a registry (the same as `berth pull`)
    Pull(crate::pull::Pull),
}

fn image_json(i: &Image) -> serde_json::Value {
    let target = i.target.as_ref().map(|t| {
        json!({
            "mediaType": t.media_type,
            "digest": t.digest,
            "size": t.size,
            "annotations": output::labels_json(&t.annotations),
        })
    });
    json!({
        "Name": i.name,
        "Labels": output::labels_json(&i.labels),
        "Target": target,
        "CreatedAt": output::timestamp_json(i.created_at.as_ref()),
        "UpdatedAt": output::timestamp_json(i.updated_at.as_ref()),
    })
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    if let Cmd::Pull(args) = cmd {
        return crate::pull::run(ctx, args).await;
    }
    let mut client = ImagesClient::with_interceptor(ctx.connect().await?.channel(), ctx.interceptor());
    match cmd {
        Cmd::Ls { quiet, filters } => {
            let response = client.list(ListImagesRequest { filters }).await.map_err(rpc_error("list images"))?;
            let mut images = response.into_inner().images;
            images.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                return output::emit(&images.iter().map(|i| format!("{}\n", i.name)).collect::<String>());
            }
            match ctx.format {
                Format::Json => output::emit_json(&images.iter().map(image_json).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> = images
                        .iter()
                        .map(|i| {
                            let t = i.target.clone().unwrap_or_default();
                            vec![
                                i.name.clone(),
                                t.media_type,
                                t.digest,
                                t.size.to_string(),
                                output::labels_text(&i.labels),
                            ]
                        })
                        .collect();
                    output::emit(&output::table(&["REF", "TYPE", "DIGEST", "SIZE", "LABELS"], &rows, 4, 4))
                }
            }
        }
        Cmd::Rm { names, sync } => {
            let mut failed = false;
            for name in names {
                if let Err(status) = client.delete(DeleteImageRequest { name: name.clone(), sync, target: None }).await
                {
                    crate::report(&rpc_error(format!("delete image {name}"))(status));
                    failed = true;
                }
            }
            if failed { Err(Reported.into()) } else { Ok(()) }
        }
        Cmd::Inspect { name } => {
            let response = client
                .get(GetImageRequest { name: name.clone() })
                .await
                .map_err(rpc_error(format!("get image {name}")))?;
            let image = response.into_inner().image.unwrap_or_default();
            let mut value = image_json(&image);
            let mut oci = berth_images::images_client::ImagesClient::with_interceptor(
                ctx.connect().await?.channel(),
                ctx.interceptor(),
            );
            match oci.get_oci_image(berth_images::GetOciImageRequest { name: name.clone() }).await {
                Ok(response) => {
                    let oci = response.into_inner();
                    let descriptor = |d: Option<berth_proto::containerd::types::Descriptor>| {
                        d.map(|d| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size}))
                    };
                    value["Manifest"] = json!(descriptor(oci.manifest_descriptor));
                    value["ConfigDescriptor"] = json!(descriptor(oci.config_descriptor));
                    value["Config"] = serde_json::from_slice(&oci.config)
                        .map_err(|e| anyhow::anyhow!("image {name}: its config is not JSON: {e}"))?;
                }
                // A record whose content is not (all) here: show the record, and say why not more.
                Err(status) => {
                    value["Config"] = json!(null);
                    value["ConfigError"] = json!(crate::status_message(&status));
                }
            }
            output::emit_json(&value)
        }
        Cmd::Pull(_) => unreachable!("handled above"),
    }
}
