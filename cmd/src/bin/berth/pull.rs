//! `berth pull`: berthd pulls the image (berth.services.images.v1.Images/Pull) and streams its
//! progress, shown as one bar per item on a terminal and as one line per status change otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};

use berth_proto::berth::services::images::v1::images_client::ImagesClient;
use berth_proto::berth::services::images::v1::{ProgressInfo, PullRequest, RegistryAuth};
use berth_proto::containerd::types::Platform;
use clap::Args;

use crate::{Ctx, rpc_error};

#[derive(Args)]
pub struct Pull {
    /// The image, e.g. `docker.io/library/busybox:latest`, `busybox` or `127.0.0.1:5000/app@sha256:...`
    #[arg(value_name = "REF")]
    reference: String,
    /// Registry credentials, `USER[:PASSWORD]`; without the password, it is read from stdin
    #[arg(long, short = 'u', value_name = "USER[:PASSWORD]")]
    user: Option<String>,
    /// A bearer token for the registry, instead of --user
    #[arg(long, value_name = "TOKEN", env = "BERTH_REGISTRY_TOKEN", hide_env_values = true, conflicts_with = "user")]
    token: Option<String>,
    /// The snapshotter to unpack into (default: the puller's configured one)
    #[arg(long, value_name = "NAME", default_value = "")]
    snapshotter: String,
    /// Fetch the content only; do not unpack it
    #[arg(long)]
    skip_unpack: bool,
    /// Pick this platform from an index instead of the host's, `os/arch[/variant]`
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    platform: Option<Platform>,
    /// Print only the image name and digest at the end
    #[arg(long, short)]
    quiet: bool,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts[..] {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: parts.get(2).copied().unwrap_or_default().into(),
            os_version: String::new(),
        }),
        _ => Err(format!("{s:?} is not os/arch[/variant], e.g. linux/arm64/v8")),
    }
}

fn credentials(user: &str) -> anyhow::Result<(String, String)> {
    if let Some((name, password)) = user.split_once(':') {
        return Ok((name.to_owned(), password.to_owned()));
    }
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password)?;
    Ok((user.to_owned(), password.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Draws the items: redrawn in place on a terminal, status changes as lines otherwise.
struct Display {
    terminal: bool,
    drawn: usize,
    last_status: HashMap<String, String>,
}

fn human(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

fn bar(p: &ProgressInfo, width: usize) -> String {
    let filled =
        if p.total > 0 { (p.offset.clamp(0, p.total) as f64 / p.total as f64 * width as f64) as usize } else { 0 };
    format!("[{}{}]", "=".repeat(filled), " ".repeat(width - filled))
}

fn short(r: &str) -> String {
    // `layer-sha256:<64 hex>` → `layer-sha256:<12 hex>`: enough to tell them apart.
    match r.split_once("sha256:") {
        Some((kind, hex)) if hex.len() > 12 => format!("{kind}sha256:{}", &hex[..12]),
        _ => r.to_owned(),
    }
}

impl Display {
    fn show(&mut self, items: &[ProgressInfo]) -> std::io::Result<()> {
        let mut out = std::io::stderr().lock();
        if self.terminal {
            if self.drawn > 0 {
                write!(out, "\x1b[{}A", self.drawn)?;
            }
            for p in items {
                let size =
                    if p.total > 0 { format!("{} / {}", human(p.offset), human(p.total)) } else { String::new() };
                writeln!(out, "\x1b[2K{:<32} {:<12} {} {size}", short(&p.r#ref), p.status, bar(p, 30))?;
            }
            self.drawn = items.len();
        } else {
            for p in items {
                if self.last_status.get(&p.r#ref) != Some(&p.status) {
                    self.last_status.insert(p.r#ref.clone(), p.status.clone());
                    writeln!(out, "{} {} {}/{}", p.r#ref, p.status, p.offset, p.total)?;
                }
            }
        }
        out.flush()
    }
}

pub async fn run(ctx: &Ctx, args: Pull) -> anyhow::Result<()> {
    let auth = match (&args.user, &args.token) {
        (Some(user), _) => {
            let (username, password) = credentials(user)?;
            Some(RegistryAuth { username, password, token: String::new() })
        }
        (None, Some(token)) => Some(RegistryAuth { token: token.clone(), ..Default::default() }),
        (None, None) => None,
    };
    let mut client = ImagesClient::with_interceptor(ctx.connect().await?.channel(), ctx.interceptor());
    let request = PullRequest {
        r#ref: args.reference.clone(),
        auth,
        snapshotter: args.snapshotter,
        skip_unpack: args.skip_unpack,
        platform: args.platform,
    };
    let what = "pull";
    let mut stream = client.pull(request).await.map_err(rpc_error(what))?.into_inner();
    let mut display = Display { terminal: std::io::stderr().is_terminal(), drawn: 0, last_status: HashMap::new() };
    while let Some(message) = stream.message().await.map_err(rpc_error(what))? {
        if !args.quiet {
            display.show(&message.progress)?;
        }
        if !message.image.is_empty() {
            let digest = message.target.map(|t| t.digest).unwrap_or_default();
            println!("{} {digest}", message.image);
            return Ok(());
        }
    }
    anyhow::bail!("{what}: berthd ended the stream before the image was recorded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_bars() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_str()), ("linux", "arm64", "v8"));
        assert!(parse_platform("linux").is_err() && parse_platform("/amd64").is_err());
        let p = ProgressInfo { offset: 50, total: 100, ..Default::default() };
        assert_eq!(bar(&p, 10), "[=====     ]");
        assert_eq!(short(&format!("layer-sha256:{}", "a".repeat(64))), "layer-sha256:aaaaaaaaaaaa");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
