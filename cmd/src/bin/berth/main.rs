//! berth: the command line client of berthd.
//!
//! berthd speaks containerd's v1 API, so commands and their output follow containerd's `ctr`
//! where ctr has the same command; that keeps scripts and habits portable between the two.

// The commands' doc comments are their --help text (clap), written for the terminal: `UID[:GID]` there is
// a usage pattern, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

mod cio;
mod containers;
mod images;
mod namespaces;
mod oci;
mod output;
mod plugins;
mod pull;
mod run;
mod snapshots;
mod spec;
mod tasks;
mod version;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd::services::version::v1::version_client::VersionClient;
use clap::{Parser, Subcommand};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use output::Format;

#[derive(Parser)]
#[command(name = "berth", version, about = "Command line client for berthd", propagate_version = true)]
struct Cli {
    /// Path of berthd's unix socket
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = "/run/berth/berth.sock",
        value_name = "PATH"
    )]
    address: PathBuf,
    /// Namespace the command works in
    #[arg(short, long, global = true, env = "BERTH_NAMESPACE", default_value = "default", value_name = "NS")]
    namespace: String,
    /// Output format of ls, label and version (info always prints JSON)
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the client and server versions
    Version,
    /// Manage namespaces
    #[command(visible_alias = "ns", subcommand)]
    Namespaces(namespaces::Cmd),
    /// Manage containers
    #[command(visible_aliases = ["c", "container"], subcommand)]
    Containers(containers::Cmd),
    /// Inspect the daemon's plugins
    #[command(visible_alias = "plugin", subcommand)]
    Plugins(plugins::Cmd),
    /// The built-in OCI runtime, with runc's commands and flags (runs without berthd)
    Oci(Box<oci::Oci>),
    #[command(flatten)]
    Task(tasks::TaskCommand),
    /// Manage tasks
    #[command(visible_alias = "t", subcommand)]
    Tasks(tasks::Cmd),
    /// Snapshots of the snapshot backends (`--snapshotter overlayfs|native`)
    #[command(visible_aliases = ["snapshot", "snap"])]
    Snapshots(snapshots::Snapshots),
    /// Images: records, OCI configs, removal
    #[command(visible_aliases = ["image", "i"], subcommand)]
    Images(images::Cmd),
    /// Pull an image from a registry into berthd, with progress
    Pull(pull::Pull),
}

/// What every command needs: where to connect, in which namespace, and how to print.
pub struct Ctx {
    address: PathBuf,
    namespace: Namespaced,
    pub format: Format,
}

impl Ctx {
    /// Connects on demand, so `version` can print the client's half even when berthd is down.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let channel = berth_core::client::connect_unix(&self.address).await.map_err(|e| {
            anyhow::anyhow!("cannot connect to berthd at {}: {}", self.address.display(), error_chain(&e))
        })?;
        Ok(Conn { channel, namespace: self.namespace.clone() })
    }

    /// What adds the namespace to every request.
    pub fn interceptor(&self) -> Namespaced {
        self.namespace.clone()
    }
}

/// Adds containerd's namespace header to every request: the API takes the namespace from
/// metadata, not from the messages.
#[derive(Clone)]
pub struct Namespaced(AsciiMetadataValue);

impl Interceptor for Namespaced {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("containerd-namespace", self.0.clone());
        Ok(request)
    }
}

pub type Service = InterceptedService<Channel, Namespaced>;

/// An open connection; the typed clients share its channel.
pub struct Conn {
    channel: Channel,
    namespace: Namespaced,
}

impl Conn {
    pub fn namespaces(&self) -> NamespacesClient<Service> {
        NamespacesClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
    pub fn containers(&self) -> ContainersClient<Service> {
        ContainersClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
    pub fn introspection(&self) -> IntrospectionClient<Service> {
        IntrospectionClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
    /// The connection, for clients of services without a method here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
    pub fn version(&self) -> VersionClient<Service> {
        VersionClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
}

/// Marks a failure whose details are already on stderr (e.g. per-item errors of `rm`), so
/// `main` only sets the exit code.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("some operations failed")
    }
}

impl std::error::Error for Reported {}

/// `tonic::Status`'s Display carries code, details and metadata; users want the message only.
pub fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() { status.code().description().to_string() } else { status.message().to_string() }
}

/// Builds the `map_err` closure for an RPC, naming what failed.
pub fn rpc_error(what: impl fmt::Display) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |status| anyhow::anyhow!("{what}: {}", status_message(&status))
}

/// Prints an error the way `main` would, for commands that keep going after a failure.
pub fn report(err: &anyhow::Error) {
    eprintln!("berth: {err:#}");
}

/// tonic's transport errors say only "transport error"; the cause is in the source chain.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

/// Parses `KEY=VALUE` label arguments; an empty VALUE is kept because it means "remove" to `label`.
pub fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some(("", _)) => Err(format!("{arg:?} has an empty key; expected KEY=VALUE")),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!("{arg:?} lacks '='; expected KEY=VALUE")),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let namespace = AsciiMetadataValue::try_from(cli.namespace.as_str())
        .map_err(|_| anyhow::anyhow!("invalid namespace {:?}: not valid in gRPC metadata", cli.namespace))?;
    let ctx = Ctx { address: cli.address, namespace: Namespaced(namespace), format: cli.format };
    match cli.command {
        Command::Version => version::run(&ctx).await,
        Command::Namespaces(cmd) => namespaces::run(&ctx, cmd).await,
        Command::Containers(cmd) => containers::run(&ctx, cmd).await,
        Command::Plugins(cmd) => plugins::run(&ctx, cmd).await,
        Command::Task(cmd) => tasks::run_top(&ctx, cmd).await,
        Command::Tasks(cmd) => tasks::run(&ctx, cmd).await,
        Command::Snapshots(args) => snapshots::run(&ctx, args).await,
        Command::Images(cmd) => images::run(&ctx, cmd).await,
        Command::Pull(args) => pull::run(&ctx, args).await,
        Command::Oci(_) => unreachable!("`oci` is dispatched before the tokio runtime exists"),
    }
}

/// `berth oci ...` alone: what runc's callers (containerd's shim) run several times per container, so it skips
/// building the parser of every other command.
#[derive(Parser)]
#[command(name = "berth oci", about = "The built-in OCI runtime, with runc's commands and flags")]
struct OciOnly {
    /// Output format of ps (runc's `ps --format json`)
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    oci: oci::Oci,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if let (Some(_), Some(first)) = (args.next(), args.next())
        && first == "oci"
    {
        let parsed = OciOnly::parse_from(std::iter::once(first).chain(args));
        return oci::main(parsed.oci, parsed.format);
    }
    let cli = Cli::parse();
    // `oci` forks container processes: it must run before any tokio runtime (and its threads) exists.
    if let Command::Oci(oci) = cli.command {
        return oci::main(*oci, cli.format);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("berth: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<Reported>() => ExitCode::FAILURE,
        // A closed pipe (`berth c ls | head`) is the reader's choice, not our failure.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_args() {
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), String::new())));
        assert!(key_value("a").unwrap_err().contains("lacks '='"));
        assert!(key_value("=b").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["berth", "ns", "create", "x", "k=v", "-n", "other"]).unwrap();
        assert_eq!(cli.namespace, "other");
        assert!(Cli::try_parse_from(["berth", "ns", "label", "x", "novalue"]).is_err());
    }
}
