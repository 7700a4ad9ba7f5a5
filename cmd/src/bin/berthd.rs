//! berthd: the berth daemon.
//!
//! `berthd` runs on the embedded default config, `berthd --config PATH` on another;
//! `berthd config default` prints the default and `berthd config check FILE` validates a file.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_core::config::{Config, DEFAULT_CONFIG};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "berthd", version, about = "berth container daemon, speaking containerd's v1 gRPC API")]
struct Args {
    /// Config file to use instead of the embedded default.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration.
    Default,
    /// Check a configuration file and report the first problem with its line, column and key.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = berth_core::builtin::registry()?;
    // Backends from plugins/, registered next to the built-ins of core.
    registry.register(berth_plugin_linux::registration())?;
    registry.register(berth_plugin_snapshot_overlayfs::registration())?;
    registry.register(berth_plugin_snapshot_native::registration())?;
    registry.register(berth_plugin_pull::registration())?;
    registry.register(berth_plugin_linux::monitor::registration())?;
    registry.register(berth_plugin_monitor_restart::registration())?;
    // Plugins from outside the binary: tables with `source = "native"` name a dynamic library, with
    // `source = "wasm"` a wasm component.
    registry.add_source(berth_core::external::native::source())?;
    registry.add_source(berth_plugin_wasm::source())?;
    match args.command {
        Some(Command::Config { command: ConfigCommand::Default }) => {
            print!("{DEFAULT_CONFIG}");
            return Ok(());
        }
        Some(Command::Config { command: ConfigCommand::Check { file } }) => {
            Config::load(&file, &registry)?;
            println!("{}: ok", file.display());
            return Ok(());
        }
        None => {}
    }
    let config = match &args.config {
        Some(path) => Config::load(path, &registry)?,
        None => Config::default_config(&registry)?,
    };
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    tracing::info!(
        version = berth_core::services::version::VERSION,
        config = %args.config.as_ref().map_or("<embedded default>".to_string(), |p| p.display().to_string()),
        "berthd starting"
    );
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("berthd").build()?;
    runtime.block_on(berth_core::daemon::run(config, registry))?;
    Ok(())
}

/// berthd holds a few descriptors per task (the event stream of each reaper, client connections): lift the
/// soft limit on open files to the hard one, as containerd does, so hundreds of tasks do not run out.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open files limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}
