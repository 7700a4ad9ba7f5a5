//! `exec`: the latency of a command line tool against a daemon, e.g. `ctr containers create`.
//!
//! Each run is timed from spawn to exit, so it includes the tool's own start-up, as a user or a
//! script calling it would see. Runs are sequential; `{i}` in the arguments becomes the run
//! number so each run can create a distinct object.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stats::Phase;

#[derive(clap::Args)]
pub struct Options {
    /// Name of the target in the output, e.g. berthd or containerd.
    #[arg(long)]
    label: String,
    /// Name of what is measured in the output, e.g. ctr-create.
    #[arg(long)]
    phase: String,
    /// Measured runs.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Runs before measuring, not counted (page cache, first connection); `{i}` becomes
    /// `warm-N` in them.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also print every run's latency (`samples_us`), for `pool`.
    #[arg(long)]
    samples: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(options: Options) -> Result<()> {
    for i in 0..options.warmup {
        run_once(&options.command, &format!("warm-{i}"))?;
    }
    let started = Instant::now();
    let latencies =
        (0..options.runs).map(|i| run_once(&options.command, &i.to_string())).collect::<Result<Vec<_>>>()?;
    let phase = Phase::new(&options.label, &options.phase, 1, latencies.clone(), started.elapsed());
    if options.samples { phase.with_samples(&latencies) } else { phase }.print()
}

/// Runs the command once with `{i}` replaced by `run`; fails with its stderr if it fails.
fn run_once(command: &[String], run: &str) -> Result<Duration> {
    let args: Vec<String> = command.iter().map(|a| a.replace("{i}", run)).collect();
    let started = Instant::now();
    let output = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("`{}` failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(elapsed)
}
