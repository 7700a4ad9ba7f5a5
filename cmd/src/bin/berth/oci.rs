//! `berth oci`: the built-in OCI runtime with runc's command line (create, start, state, kill, delete, run, exec,
//! ps, pause, resume, features, list), so tools that drive runc can drive berth.
//!
//! This path never builds a tokio runtime: the runtime forks, and forking is only sound from a
//! single-threaded process (see `berth_plugin_linux::container`). `main` dispatches here before anything else.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use berth_plugin_linux::container::{self, CreateOptions, ExecOptions, Runtime};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::output::{self, Format};

/// runc's global flags.
#[derive(Args)]
pub struct Global {
    /// Directory of the containers' state
    #[arg(long, global = true, default_value = container::DEFAULT_ROOT, value_name = "DIR")]
    root: PathBuf,
    /// Log file (default: stderr)
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Format of the log
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log debug messages too
    #[arg(long, global = true)]
    debug: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct Oci {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct CreateArgs {
    /// Container id
    id: String,
    /// Bundle directory (with config.json)
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the init pid to FILE
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master (process.terminal)
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container (its process waits for `start`)
    Create(CreateArgs),
    /// Start a created container's process
    Start { id: String },
    /// Print a container's state as JSON
    State { id: String },
    /// Send a signal (default TERM) to the container's init, or with --all to all its processes
    Kill {
        /// Signal every process of the container
        #[arg(long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a stopped container (--force: kill it first)
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it; exits with its status
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait: leave the container running
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a process in a running container; exits with its status
    Exec {
        id: String,
        /// The command and its arguments (unless --process)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// OCI process JSON to run instead of COMMAND
        #[arg(short, long, value_name = "FILE")]
        process: Option<PathBuf>,
        /// Extra environment variable
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory in the container
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// User as UID[:GID]
        #[arg(short, long, value_name = "UID[:GID]", value_parser = parse_user)]
        user: Option<(u32, u32)>,
        /// Additional group ids
        #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
        additional_gids: Vec<u32>,
        /// Allocate a pseudo-TTY (needs --console-socket)
        #[arg(short, long)]
        tty: bool,
        /// Do not wait for the process
        #[arg(short, long)]
        detach: bool,
        /// Write the process' pid to FILE
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master
        #[arg(long, value_name = "PATH")]
        console_socket: Option<PathBuf>,
        /// Set no_new_privileges
        #[arg(long)]
        no_new_privs: bool,
    },
    /// List the processes of a container (--format json: a JSON array of pids)
    Ps { id: String },
    /// Freeze every process of a container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// List the containers under --root
    List,
    /// Print what this runtime supports, as JSON
    Features,
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = s.split_once(':').unwrap_or((s, "0"));
    let num = |v: &str| v.parse::<u32>().map_err(|_| format!("{s:?}: expected numeric UID[:GID]"));
    Ok((num(uid)?, num(gid)?))
}

/// Entry point: returns runc's exit status (the container's for run and exec, 1 on errors).
pub fn main(oci: Oci, format: Format) -> ExitCode {
    let log = init_logging(&oci.global);
    match run(oci, format) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // In the log file for whoever drives us (containerd reads the last error), and on stderr like runc.
            if log {
                tracing::error!("{err:#}");
            }
            eprintln!("berth: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(oci: Oci, format: Format) -> anyhow::Result<i32> {
    let rt = Runtime::new(&oci.global.root);
    let create_opts = |a: CreateArgs| CreateOptions {
        id: a.id,
        bundle: a.bundle,
        pid_file: a.pid_file,
        console_socket: a.console_socket,
        ..Default::default()
    };
    let code = match oci.cmd {
        Cmd::Create(a) => rt.create(&create_opts(a)).map(|_| 0)?,
        Cmd::Start { id } => rt.start(&id).map(|_| 0)?,
        Cmd::State { id } => {
            output::emit_json(&rt.state(&id)?)?;
            0
        }
        Cmd::Kill { all, id, signal } => {
            let sig = container::parse_signal(&signal)?;
            rt.kill(&id, sig, all).map(|_| 0)?
        }
        Cmd::Delete { force, id } => rt.delete(&id, force).map(|_| 0)?,
        Cmd::Run { create, detach } => rt.run(&create_opts(create), detach)?,
        Cmd::Exec {
            id,
            command,
            process,
            env,
            cwd,
            user,
            additional_gids,
            tty,
            detach,
            pid_file,
            console_socket,
            no_new_privs,
        } => {
            if process.is_none() && command.is_empty() {
                anyhow::bail!("exec: give a command or --process");
            }
            let opts = ExecOptions {
                process,
                args: command,
                env,
                cwd,
                user,
                additional_gids,
                tty,
                detach,
                pid_file,
                console_socket,
                no_new_privs,
                ..Default::default()
            };
            rt.exec(&id, &opts)?
        }
        Cmd::Ps { id } => {
            let pids = rt.ps(&id)?;
            match format {
                Format::Json => output::emit_json(&pids)?,
                Format::Table => output::emit(&ps_table(&pids))?,
            }
            0
        }
        Cmd::Pause { id } => rt.pause(&id).map(|_| 0)?,
        Cmd::Resume { id } => rt.resume(&id).map(|_| 0)?,
        Cmd::List => {
            let mut text = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\n");
            for id in rt.list()? {
                if let Ok(st) = rt.state(&id) {
                    let pid = if st.status == container::Status::Stopped { 0 } else { st.pid };
                    text.push_str(&format!("{id}\t{pid}\t{}\t{}\t{}\n", st.status, st.bundle.display(), st.created));
                }
            }
            output::emit(&output::tabwrite(&text, 0, 3))?;
            0
        }
        Cmd::Features => {
            output::emit_json(&container::features())?;
            0
        }
    };
    Ok(code)
}

/// runc's table: `ps -ef` filtered to the container's pids (just the pids when ps is missing).
fn ps_table(pids: &[i32]) -> String {
    let Ok(out) = std::process::Command::new("ps").arg("-ef").output() else {
        return pids.iter().map(|p| format!("{p}\n")).collect::<String>();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let mut table = lines.next().map(|h| format!("{h}\n")).unwrap_or_default();
    for line in lines {
        let pid = line.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            table.push_str(line);
            table.push('\n');
        }
    }
    table
}

/// Logs to --log (text or runc's JSON lines) or stderr. Returns true when logging goes to a file.
fn init_logging(g: &Global) -> bool {
    let level = if g.debug { tracing::Level::DEBUG } else { tracing::Level::WARN };
    let Some(path) = &g.log else {
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).without_time().init();
        return false;
    };
    let file = match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth: cannot open log file {}: {e}", path.display());
            return false;
        }
    };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(Mutex::new(file));
    match g.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLine).init(),
    }
    true
}

/// runc's JSON log line (`{"level":"error","msg":"...","time":"..."}`), which containerd's go-runc reads back.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        #[derive(Serialize)]
        struct Line<'a> {
            level: String,
            msg: &'a str,
            time: String,
        }
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" {
                    self.0 = value.to_string();
                } else {
                    self.0.push_str(&format!(" {}={value}", field.name()));
                }
            }
        }
        let mut msg = Message(String::new());
        event.record(&mut msg);
        let line = Line {
            level: event.metadata().level().as_str().to_ascii_lowercase(),
            msg: &msg.0,
            time: container::state::now_rfc3339(),
        };
        let json = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(w, "{json}")
    }
}
