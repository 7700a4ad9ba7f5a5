//! berth-bench: measures berthd and containerd through the same client code.
//!
//! Every subcommand prints one JSON line per measured phase (see [`stats::Phase`]); `report` turns
//! those lines into the markdown tables of docs/benchmarks.md. `bench/run.sh` drives it all.

mod containers;
mod exec;
mod oci;
mod plugins;
mod pool;
mod report;
mod stats;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-bench", about = "Benchmarks berthd against containerd over the same gRPC API")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Containers.Create, Get and Delete over gRPC: throughput and latency with N concurrent clients.
    Containers(containers::Options),
    /// Times a command run sequentially, `{i}` in its arguments replaced by the run number.
    Exec(exec::Options),
    /// Times create, start, wait and delete (or run) of a container through an OCI runtime's CLI.
    Oci(oci::Options),
    /// Per-call overhead of plugin sources against a built-in backend, and berthd's start-up with the
    /// native examples loaded.
    Plugins(plugins::Options),
    /// Runs a command (a daemon) with this process as its child subreaper.
    Subreaper(oci::SubreaperOptions),
    /// Starts many containers at once through the Tasks service, or removes them again.
    #[command(subcommand)]
    Tasks(tasks::Command),
    /// One table from lines with raw samples (oci, exec --samples): rounds pooled, `target`
    /// against each `base`.
    Pool {
        #[arg(long)]
        target: String,
        #[arg(long = "base")]
        bases: Vec<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Renders the JSON lines of earlier runs as markdown tables, `target` against `base`.
    Report {
        /// The label the ratios are computed for (numerator).
        #[arg(long, default_value = "berthd")]
        target: String,
        /// The label compared against (denominator).
        #[arg(long, default_value = "containerd")]
        base: String,
        /// Files of JSON lines, as printed by the other subcommands.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, no backtrace: this is a tool's error, not a crash.
            eprintln!("berth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Containers(options) => {
            // One runtime thread by default: on a 2-core machine a second one only competes with
            // the daemon under test for the same cores (measured: no better figures).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(options.threads.max(1))
                .enable_all()
                .build()?;
            runtime.block_on(containers::run(options))
        }
        Command::Exec(options) => exec::run(options),
        Command::Oci(options) => oci::run(options),
        Command::Plugins(options) => plugins::run(options),
        Command::Subreaper(options) => {
            let code = oci::subreaper(options)?;
            std::process::exit(code)
        }
        Command::Tasks(command) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            runtime.block_on(tasks::run(command))
        }
        Command::Pool { target, bases, files } => pool::run(&target, &bases, &files),
        Command::Report { target, base, files } => report::run(&target, &base, &files),
    }
}
