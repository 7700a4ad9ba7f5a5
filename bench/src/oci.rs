//! `oci`: the lifecycle of a container through an OCI runtime's command line (runc, crun,
//! `berth oci`), timed per verb.
//!
//! Each iteration runs `RUNTIME create --bundle B --pid-file F ID`, `RUNTIME start ID`, waits for the
//! container's init to exit and runs `RUNTIME delete ID`, timing each step from spawn to exit. The
//! wait is a `waitpid` on the init: this process is a child subreaper (like containerd's shim), so
//! the init, orphaned when `create` exits, becomes its child. With `--run` an iteration is one
//! `RUNTIME run --bundle B ID` instead. Every phase is printed with its raw samples, for `pool`.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::stats::Phase;

#[derive(clap::Args)]
pub struct Options {
    /// Name of the runtime in the output, e.g. runc.
    #[arg(long)]
    label: String,
    /// The OCI bundle (config.json and rootfs).
    #[arg(long)]
    bundle: PathBuf,
    /// Measured iterations.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Iterations before measuring, not counted.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Container ids are PREFIX-N.
    #[arg(long, default_value = "bench")]
    id_prefix: String,
    /// Where the pid file goes (a directory this process may write).
    #[arg(long)]
    pid_dir: PathBuf,
    /// Time `RUNTIME run` instead of create, start, wait and delete.
    #[arg(long)]
    run: bool,
    /// The runtime and its global options, e.g. `runc --root /run/x`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    runtime: Vec<String>,
}

unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn waitpid(pid: i32, status: *mut c_int, options: c_int) -> i32;
}
const PR_SET_CHILD_SUBREAPER: c_int = 36;
const WNOHANG: c_int = 1;

/// The latencies of one iteration's steps.
struct Steps {
    create: Duration,
    start: Duration,
    wait: Duration,
    delete: Duration,
}

pub fn run(options: Options) -> Result<()> {
    // SAFETY: prctl with an integer argument; no memory is passed.
    if unsafe { prctl(PR_SET_CHILD_SUBREAPER, 1 as std::ffi::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    std::fs::create_dir_all(&options.pid_dir)?;
    for i in 0..options.warmup {
        iteration(&options, &format!("{}-warm{i}", options.id_prefix))?;
    }
    let started = Instant::now();
    let mut all = Vec::with_capacity(options.runs);
    for i in 0..options.runs {
        all.push(iteration(&options, &format!("{}-{i}", options.id_prefix))?);
    }
    let elapsed = started.elapsed();
    let print = |phase: &str, latencies: Vec<Duration>| {
        Phase::new(&options.label, phase, 1, latencies.clone(), elapsed).with_samples(&latencies).print()
    };
    match all.first() {
        Some(Iteration::Run(_)) => print("run", all.iter().map(Iteration::total).collect())?,
        _ => {
            print("create+start+wait+delete", all.iter().map(Iteration::total).collect())?;
            let steps: Vec<&Steps> = all.iter().filter_map(Iteration::steps).collect();
            print("create", steps.iter().map(|s| s.create).collect())?;
            print("start", steps.iter().map(|s| s.start).collect())?;
            print("wait", steps.iter().map(|s| s.wait).collect())?;
            print("delete", steps.iter().map(|s| s.delete).collect())?;
        }
    }
    Ok(())
}

enum Iteration {
    Run(Duration),
    Lifecycle(Steps),
}

impl Iteration {
    fn total(&self) -> Duration {
        match self {
            Iteration::Run(d) => *d,
            Iteration::Lifecycle(s) => s.create + s.start + s.wait + s.delete,
        }
    }
    fn steps(&self) -> Option<&Steps> {
        match self {
            Iteration::Lifecycle(s) => Some(s),
            Iteration::Run(_) => None,
        }
    }
}

fn iteration(options: &Options, id: &str) -> Result<Iteration> {
    let bundle = options.bundle.to_string_lossy();
    let stderr = options.pid_dir.join("stderr");
    let result = if options.run {
        let run = timed(&options.runtime, &["run", "--bundle", &bundle, id], &stderr)?;
        Ok(Iteration::Run(run))
    } else {
        lifecycle(options, id, &bundle, &stderr)
    };
    reap_orphans();
    if result.is_err() {
        // Best effort: the next iteration should not trip over this one.
        let _ = timed(&options.runtime, &["delete", "--force", id], &stderr);
    }
    result
}

fn lifecycle(options: &Options, id: &str, bundle: &str, stderr: &Path) -> Result<Iteration> {
    let pid_file = options.pid_dir.join(format!("{id}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let pid_arg = pid_file.to_string_lossy();
    let create = timed(&options.runtime, &["create", "--bundle", bundle, "--pid-file", &pid_arg, id], stderr)?;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()
        .context("pid file")?;
    let start = timed(&options.runtime, &["start", id], stderr)?;
    let waited = Instant::now();
    let mut status: c_int = 0;
    // SAFETY: a pid and a pointer to a local int.
    let got = unsafe { waitpid(pid, &mut status, 0) };
    if got != pid {
        bail!("waitpid({pid}): {} (is the init not our child?)", std::io::Error::last_os_error());
    }
    let wait = waited.elapsed();
    // WIFEXITED && WEXITSTATUS == 0: /bin/true must have run, not been killed.
    ensure!(status & 0x7f == 0 && (status >> 8) & 0xff == 0, "container {id} init ended with wait status {status:#x}");
    let delete = timed(&options.runtime, &["delete", id], stderr)?;
    let _ = std::fs::remove_file(&pid_file);
    Ok(Iteration::Lifecycle(Steps { create, start, wait, delete }))
}

/// Runs `runtime args` once, from spawn to exit; fails with its stderr if it fails. stderr goes to a
/// file, not a pipe: the container's init inherits the runtime's stdio, so a pipe would stay open
/// (and a reader blocked) until the container exits.
fn timed(runtime: &[String], args: &[&str], stderr_path: &Path) -> Result<Duration> {
    let stderr = std::fs::File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let started = Instant::now();
    let status = Command::new(&runtime[0])
        .args(&runtime[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .with_context(|| format!("running {}", runtime[0]))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "`{} {}` failed ({status}): {}",
            runtime.join(" "),
            args.join(" "),
            std::fs::read_to_string(stderr_path).unwrap_or_default().trim()
        );
    }
    Ok(elapsed)
}

/// Reaps whatever else was orphaned onto us (intermediate processes of a runtime), so no zombie
/// outlives its iteration.
fn reap_orphans() {
    let mut status: c_int = 0;
    // SAFETY: as above; -1 is any child.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

/// `subreaper`: runs a command (a daemon) as our child with this process as child subreaper, so
/// what the daemon orphans (containerd's shims, reapers that double-fork) stays in our process tree
/// and its CPU time can be counted; reaps everything until the command exits, then exits with it.
#[derive(clap::Args)]
pub struct SubreaperOptions {
    /// Write the command's pid here.
    #[arg(long)]
    pid_file: PathBuf,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn subreaper(options: SubreaperOptions) -> Result<i32> {
    // SAFETY: as in `run`.
    if unsafe { prctl(PR_SET_CHILD_SUBREAPER, 1 as std::ffi::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    let child = Command::new(&options.command[0])
        .args(&options.command[1..])
        .spawn()
        .with_context(|| format!("running {}", options.command[0]))?;
    let pid = child.id() as i32;
    std::fs::write(&options.pid_file, format!("{pid}\n"))?;
    loop {
        let mut status: c_int = 0;
        // SAFETY: as above.
        let got = unsafe { waitpid(-1, &mut status, 0) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waitpid");
        }
        if got == pid {
            return Ok(if status & 0x7f == 0 { (status >> 8) & 0xff } else { 128 + (status & 0x7f) });
        }
    }
}
