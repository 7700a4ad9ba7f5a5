//! `berth plugins`: the daemon's plugins and their init status, via the Introspection service.

use std::collections::BTreeMap;

use berth_proto::containerd::services::introspection::v1::{Plugin, PluginsRequest};
use berth_proto::containerd::types::Platform;
use berth_proto::google::rpc::Status;
use clap::Subcommand;
use serde::Serialize;

use crate::output::{self, AnyJson, Format};
use crate::{Ctx, rpc_error};

#[derive(Subcommand)]
pub enum Cmd {
    /// List plugins, optionally matching containerd filters
    #[command(visible_alias = "list")]
    Ls {
        /// Print every field of each plugin
        #[arg(short, long)]
        detailed: bool,
        /// Filters such as `type==io.containerd.grpc.v1`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Load a plugin's artifact again and swap it in without restarting berthd (wasm plugins)
    Reload {
        /// The plugin, as kind.name (e.g. snapshot.layers)
        id: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let (detailed, filters) = match cmd {
        Cmd::Ls { detailed, filters } => (detailed, filters),
        Cmd::Reload { id } => return reload(ctx, id).await,
    };
    let mut client = ctx.connect().await?.introspection();
    let response = client.plugins(PluginsRequest { filters }).await.map_err(rpc_error("list plugins"))?;
    let plugins = response.into_inner().plugins;
    match ctx.format {
        Format::Json => output::emit_json(&plugins.iter().map(plugin_json).collect::<Vec<_>>()),
        Format::Table if detailed => output::emit(&output::tabwrite(&detailed_text(&plugins), 4, 4)),
        Format::Table => {
            let rows: Vec<Vec<String>> = plugins
                .iter()
                .map(|p| {
                    let export = |k: &str| p.exports.get(&format!("berth.{k}")).cloned().unwrap_or_default();
                    let kind = p.exports.get("berth.kind").cloned().unwrap_or_else(|| p.r#type.clone());
                    // The init error, or else the last error of a call that failed inside the plugin.
                    let error = p.init_err.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| export("last_error"));
                    vec![kind, p.id.clone(), source_text(p), export("version"), status(p).to_string(), error]
                })
                .collect();
            output::emit(&output::table(&["KIND", "NAME", "SOURCE", "VERSION", "STATUS", "ERROR"], &rows, 4, 4))
        }
    }
}

async fn reload(ctx: &Ctx, id: String) -> anyhow::Result<()> {
    use berth_proto::berth::services::plugins::v1::ReloadRequest;
    use berth_proto::berth::services::plugins::v1::plugins_client::PluginsClient;
    let mut client = PluginsClient::new(ctx.connect().await?.channel());
    let reloaded =
        client.reload(ReloadRequest { id: id.clone() }).await.map_err(rpc_error("reload plugin"))?.into_inner();
    match ctx.format {
        Format::Json => {
            output::emit_json(&serde_json::json!({ "id": id, "sha256": reloaded.sha256, "version": reloaded.version }))
        }
        Format::Table => {
            output::emit(&format!("{id} reloaded: version {}, sha256:{}\n", reloaded.version, reloaded.sha256))
        }
    }
}

/// ctr's status words; plugins that decline to load (wrong OS, missing kernel feature) report
/// containerd's "skip plugin" error and are not failures.
fn status(plugin: &Plugin) -> &'static str {
    match &plugin.init_err {
        None => "ok",
        Some(err) if err.message.contains("skip plugin") => "skip",
        Some(_) => "error",
    }
}

/// Where a plugin comes from: `builtin`, or the source with the artifact's path and the first 12 hex digits
/// of its sha256 (`-d` and `--format json` show the whole hash).
fn source_text(plugin: &Plugin) -> String {
    let export = |k: &str| plugin.exports.get(&format!("berth.{k}")).map(String::as_str);
    match (export("source"), export("path")) {
        (Some(source), Some(path)) => {
            let hash = export("sha256").map(|h| format!(" sha256:{}", &h[..h.len().min(12)])).unwrap_or_default();
            format!("{source} {path}{hash}")
        }
        (Some(source), None) => source.to_string(),
        (None, _) => "builtin".into(),
    }
}

/// containerd's platform notation (os/arch/variant, "unknown" without an OS), deduplicated and sorted.
fn platforms_text(platforms: &[Platform]) -> String {
    let mut names: Vec<String> = platforms
        .iter()
        .map(|p| {
            if p.os.is_empty() {
                return "unknown".to_string();
            }
            [&p.os, &p.architecture, &p.variant]
                .into_iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() { "-".to_string() } else { names.join(",") }
}

/// The layout of `ctr plugins ls -d`, as tab-separated text for `output::tabwrite`.
fn detailed_text(plugins: &[Plugin]) -> String {
    let mut text = String::new();
    for (i, p) in plugins.iter().enumerate() {
        if i > 0 {
            text.push_str("\t\t\t\n");
        }
        text.push_str(&format!("Type:\t {}\n", p.r#type));
        text.push_str(&format!("ID:\t {}\n", p.id));
        if !p.requires.is_empty() {
            text.push_str("Requires:\t\n");
            for r in &p.requires {
                text.push_str(&format!("\t {r}\n"));
            }
        }
        if !p.platforms.is_empty() {
            text.push_str(&format!("Platforms:\t {}\n", platforms_text(&p.platforms)));
        }
        if !p.exports.is_empty() {
            text.push_str("Exports:\t\n");
            let mut exports: Vec<_> = p.exports.iter().collect();
            exports.sort();
            for (k, v) in exports {
                text.push_str(&format!("\t {k} \t {v}\n"));
            }
        }
        if !p.capabilities.is_empty() {
            text.push_str(&format!("Capabilities:\t {}\n", p.capabilities.join(",")));
        }
        if let Some(err) = &p.init_err {
            text.push_str("Error:\t\n");
            text.push_str(&format!("\t Code:\t {:?}\n", tonic::Code::from(err.code)));
            text.push_str(&format!("\t Message:\t {}\n", err.message.replace(['\t', '\n'], " ")));
        }
    }
    text
}

#[derive(Serialize)]
struct PluginJson<'a> {
    r#type: &'a str,
    id: &'a str,
    requires: &'a [String],
    platforms: Vec<PlatformJson<'a>>,
    exports: BTreeMap<&'a str, &'a str>,
    capabilities: &'a [String],
    init_err: Option<StatusJson<'a>>,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    os: &'a str,
    architecture: &'a str,
    variant: &'a str,
    os_version: &'a str,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    code: i32,
    message: &'a str,
    details: Vec<AnyJson<'a>>,
}

fn plugin_json(p: &Plugin) -> PluginJson<'_> {
    PluginJson {
        r#type: &p.r#type,
        id: &p.id,
        requires: &p.requires,
        platforms: p
            .platforms
            .iter()
            .map(|p| PlatformJson {
                os: &p.os,
                architecture: &p.architecture,
                variant: &p.variant,
                os_version: &p.os_version,
            })
            .collect(),
        exports: output::labels_json(&p.exports),
        capabilities: &p.capabilities,
        init_err: p.init_err.as_ref().map(|s: &Status| StatusJson {
            code: s.code,
            message: &s.message,
            details: s.details.iter().map(output::any_json).collect(),
        }),
    }
}
