//! Task commands: containerd's Tasks service, driven the way ctr drives it. `run` (in run.rs)
//! and the process verbs are top-level commands; `berth tasks` has ls, rm, start and the verbs
//! again, as `ctr tasks` does.

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_proto::containerd::services::tasks::v1::{
    DeleteProcessRequest, DeleteResponse, DeleteTaskRequest, ExecProcessRequest, GetRequest, ListPidsRequest,
    ListTasksRequest, PauseTaskRequest, ResumeTaskRequest, StartRequest,
};
use berth_proto::containerd::v1::types::{Process, ProcessInfo, Status};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cio::{self, Fifos, Streams, Target};
use crate::output::{self, AnyJson, Format};
use crate::spec::{self, ExecOptions};
use crate::{Conn, Ctx, Reported, Service, rpc_error};

/// The label (from an image's config, in containerd) naming the signal that stops a container.
const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";

impl Conn {
    pub fn tasks(&self) -> TasksClient<Service> {
        TasksClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
}

/// berth's top-level task commands.
#[derive(Subcommand)]
pub enum TaskCommand {
    /// Run a process in a new container made from a root filesystem directory
    Run(Box<crate::run::Run>),
    #[command(flatten)]
    Process(ProcessCmd),
}

/// Commands on a task's processes, both top-level and under `berth tasks`.
#[derive(Subcommand)]
pub enum ProcessCmd {
    /// Run another process in a running task
    Exec(Exec),
    /// Signal a task's process (default: the container's stop signal, else SIGTERM)
    Kill(Kill),
    /// Stop a task: signal it, SIGKILL after a timeout, delete it and print its exit status
    Stop(Stop),
    /// List a task's processes
    Ps { container: String },
    /// Freeze a task's processes
    Pause { container: String },
    /// Thaw a paused task
    Resume { container: String },
    /// Copy a running task's I/O to and from this terminal until it exits
    Attach { container: String },
}

/// `berth tasks`.
#[derive(Subcommand)]
pub enum Cmd {
    /// List tasks
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Delete stopped tasks (or, with --exec-id, a process of one)
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm {
        /// Kill the task first if it is still running
        #[arg(short, long)]
        force: bool,
        /// Delete this exec process instead of the task
        #[arg(long, value_name = "ID")]
        exec_id: Option<String>,
        #[arg(required = true, value_name = "CONTAINER")]
        ids: Vec<String>,
    },
    /// Create and start the task of an existing container
    Start(Start),
    #[command(flatten)]
    Process(ProcessCmd),
}

#[derive(Args)]
pub struct Exec {
    /// Give the process a terminal
    #[arg(short, long)]
    tty: bool,
    /// Start the process and return
    #[arg(short, long)]
    detach: bool,
    /// Id of the new process (default: random)
    #[arg(long, value_name = "ID")]
    exec_id: Option<String>,
    /// Working directory of the process
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// User as UID[:GID] or NAME[:GROUP] (names from the container's /etc/passwd and /etc/group)
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Set an environment variable
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = spec::env_var)]
    env: Vec<String>,
    /// Directory in which the FIFOs are made
    #[arg(long, value_name = "DIR")]
    fifo_dir: Option<PathBuf>,
    container: String,
    #[arg(required = true, value_name = "CMD", trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct Kill {
    /// Signal, by name (TERM, SIGKILL) or number
    #[arg(short, long, value_parser = parse_signal)]
    signal: Option<i32>,
    /// Signal every process of the task (no -a: that is the global --address)
    #[arg(long, conflicts_with = "exec_id")]
    all: bool,
    /// Signal this exec process instead of the task's init
    #[arg(long, value_name = "ID")]
    exec_id: Option<String>,
    container: String,
}

#[derive(Args)]
pub struct Stop {
    /// Seconds to wait after the signal before SIGKILL
    #[arg(short, long, default_value_t = 10, value_name = "SECONDS")]
    timeout: u64,
    /// Signal, by name or number (default: the container's stop signal, else SIGTERM)
    #[arg(short, long, value_parser = parse_signal)]
    signal: Option<i32>,
    container: String,
}

#[derive(Args)]
pub struct Start {
    /// Start the task and return, leaving its FIFOs for `berth attach`
    #[arg(short, long)]
    detach: bool,
    /// Directory in which the FIFOs are made
    #[arg(long, value_name = "DIR")]
    fifo_dir: Option<PathBuf>,
    container: String,
}

/// Signal names as runc and ctr take them: `KILL`, `SIGKILL`, `kill`, `9`, `RTMIN+3`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    berth_plugin_linux::container::parse_signal(s).map_err(|e| e.to_string())
}

pub async fn run_top(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Run(run) => crate::run::run(ctx, *run).await,
        TaskCommand::Process(cmd) => process_cmd(ctx, cmd).await,
    }
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Ls { quiet } => ls(ctx, quiet).await,
        Cmd::Rm { force, exec_id, ids } => rm(ctx, force, exec_id, ids).await,
        Cmd::Start(start) => {
            let conn = ctx.connect().await?;
            let container = get_container(&conn, &start.container).await?;
            let terminal = container
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.value).ok())
                .and_then(|s| s.pointer("/process/terminal").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            let status =
                crate::run::start_task(&conn, &start.container, terminal, start.detach, start.fifo_dir.as_deref())
                    .await?;
            status.map_or(Ok(()), cio::exit_with)
        }
        Cmd::Process(cmd) => process_cmd(ctx, cmd).await,
    }
}

async fn process_cmd(ctx: &Ctx, cmd: ProcessCmd) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    match cmd {
        ProcessCmd::Exec(exec) => exec_cmd(&conn, exec).await,
        ProcessCmd::Kill(Kill { signal, all, exec_id, container }) => {
            let signal = match signal {
                Some(s) => s,
                None => stop_signal(&conn, &container).await?,
            };
            target(&conn, &container, exec_id.unwrap_or_default()).kill(signal, all).await
        }
        ProcessCmd::Stop(stop) => stop_cmd(ctx, &conn, stop).await,
        ProcessCmd::Ps { container } => ps(ctx, &conn, &container).await,
        ProcessCmd::Pause { container } => {
            conn.tasks()
                .pause(PauseTaskRequest { container_id: container.clone() })
                .await
                .map_err(rpc_error(format!("pause task {container}")))?;
            Ok(())
        }
        ProcessCmd::Resume { container } => {
            conn.tasks()
                .resume(ResumeTaskRequest { container_id: container.clone() })
                .await
                .map_err(rpc_error(format!("resume task {container}")))?;
            Ok(())
        }
        ProcessCmd::Attach { container } => attach(&conn, &container).await,
    }
}

fn target(conn: &Conn, container: &str, exec_id: String) -> Target {
    Target { tasks: conn.tasks(), container_id: container.to_string(), exec_id }
}

async fn get_container(
    conn: &Conn,
    id: &str,
) -> anyhow::Result<berth_proto::containerd::services::containers::v1::Container> {
    let response = conn
        .containers()
        .get(berth_proto::containerd::services::containers::v1::GetContainerRequest { id: id.to_string() })
        .await
        .map_err(rpc_error(format!("get container {id}")))?;
    response.into_inner().container.ok_or_else(|| anyhow::anyhow!("get container {id}: empty response"))
}

/// The container's stop signal (containerd's GetStopSignal), SIGTERM without one.
async fn stop_signal(conn: &Conn, container: &str) -> anyhow::Result<i32> {
    let c = get_container(conn, container).await?;
    match c.labels.get(STOP_SIGNAL_LABEL) {
        Some(name) => parse_signal(name)
            .map_err(|e| anyhow::anyhow!("container {container}: label {STOP_SIGNAL_LABEL}={name:?}: {e}")),
        None => Ok(libc::SIGTERM),
    }
}

pub async fn get_process(conn: &Conn, container: &str, exec_id: &str) -> anyhow::Result<Process> {
    let response = conn
        .tasks()
        .get(GetRequest { container_id: container.to_string(), exec_id: exec_id.to_string() })
        .await
        .map_err(rpc_error(format!("get task {container}")))?;
    response.into_inner().process.ok_or_else(|| anyhow::anyhow!("get task {container}: empty response"))
}

/// Deletes a task and the FIFOs it reported, returning how it exited.
pub async fn delete_task(conn: &Conn, container: &str) -> anyhow::Result<DeleteResponse> {
    // The paths are only known before the delete.
    let fifos = get_process(conn, container, "").await.ok().map(|p| Fifos::reported(&p.stdin, &p.stdout, &p.stderr));
    let response = conn
        .tasks()
        .delete(DeleteTaskRequest { container_id: container.to_string() })
        .await
        .map_err(rpc_error(format!("delete task {container}")))?;
    if let Some(fifos) = fifos {
        fifos.remove();
    }
    Ok(response.into_inner())
}

async fn exec_cmd(conn: &Conn, exec: Exec) -> anyhow::Result<()> {
    let container = get_container(conn, &exec.container).await?;
    let spec = container.spec.as_ref().ok_or_else(|| anyhow::anyhow!("container {} has no spec", exec.container))?;
    let process = spec::exec_process(
        spec,
        &ExecOptions {
            args: &exec.command,
            terminal: exec.tty,
            cwd: exec.cwd.as_deref(),
            user: exec.user.as_deref(),
            env: &exec.env,
        },
    )
    .map_err(|e| e.context(format!("container {}", exec.container)))?;
    let exec_id = exec.exec_id.unwrap_or_else(cio::random_id);
    let fifos = Fifos::create(exec.fifo_dir.as_deref(), &exec_id, exec.tty)?;
    let result = async {
        let output = fifos.open_output()?;
        let stdin = if exec.detach { None } else { fifos.open_stdin()? };
        conn.tasks()
            .exec(ExecProcessRequest {
                container_id: exec.container.clone(),
                stdin: Fifos::path_str(&fifos.stdin),
                stdout: Fifos::path_str(&fifos.stdout),
                stderr: Fifos::path_str(&fifos.stderr),
                terminal: exec.tty,
                spec: Some(spec::any(spec::PROCESS_TYPE_URL, &process)),
                exec_id: exec_id.clone(),
            })
            .await
            .map_err(rpc_error(format!("exec process {exec_id} in task {}", exec.container)))?;
        let target = target(conn, &exec.container, exec_id.clone());
        let wait = if exec.detach { None } else { Some(target.spawn_wait().await) };
        let started = conn
            .tasks()
            .start(StartRequest { container_id: exec.container.clone(), exec_id: exec_id.clone() })
            .await
            .map_err(rpc_error(format!("start process {exec_id} in task {}", exec.container)));
        if let Err(err) = started {
            let _ = delete_process(conn, &exec.container, &exec_id).await;
            return Err(err);
        }
        let Some(wait) = wait else { return Ok(None) };
        let status =
            cio::session(&target, Streams { stdin, output, terminal: exec.tty, close_stdin: true }, wait).await;
        let deleted = delete_process(conn, &exec.container, &exec_id).await;
        let status = status?;
        deleted?;
        Ok(Some(status.exit_status))
    }
    .await;
    match result {
        // Detached: the FIFOs stay, as the process still has them.
        Ok(None) => Ok(()),
        Ok(Some(status)) => {
            fifos.remove();
            cio::exit_with(status)
        }
        Err(err) => {
            fifos.remove();
            Err(err)
        }
    }
}

async fn delete_process(conn: &Conn, container: &str, exec_id: &str) -> anyhow::Result<u32> {
    let response = conn
        .tasks()
        .delete_process(DeleteProcessRequest { container_id: container.to_string(), exec_id: exec_id.to_string() })
        .await
        .map_err(rpc_error(format!("delete process {exec_id} of task {container}")))?;
    Ok(response.into_inner().exit_status)
}

#[derive(Serialize)]
struct StopJson<'a> {
    id: &'a str,
    exit_status: u32,
    exited_at: Option<String>,
}

async fn stop_cmd(ctx: &Ctx, conn: &Conn, stop: Stop) -> anyhow::Result<()> {
    let id = &stop.container;
    let process = get_process(conn, id, "").await?;
    let status = Status::try_from(process.status).unwrap_or(Status::Unknown);
    if status != Status::Stopped {
        let signal = match stop.signal {
            Some(s) => s,
            None => stop_signal(conn, id).await?,
        };
        let mut target = target(conn, id, String::new());
        let mut wait = target.spawn_wait().await;
        target.kill(signal, false).await?;
        // A frozen process gets the signal only once thawed.
        if status == Status::Paused || status == Status::Pausing {
            conn.tasks()
                .resume(ResumeTaskRequest { container_id: id.clone() })
                .await
                .map_err(rpc_error(format!("resume task {id}")))?;
        }
        match tokio::time::timeout(Duration::from_secs(stop.timeout), &mut wait).await {
            Ok(done) => {
                done??;
            }
            Err(_) => {
                target.kill(libc::SIGKILL, true).await?;
                wait.await??;
            }
        }
    }
    let deleted = delete_task(conn, id).await?;
    match ctx.format {
        Format::Json => output::emit_json(&StopJson {
            id,
            exit_status: deleted.exit_status,
            exited_at: exited_at(deleted.exited_at.as_ref()),
        }),
        Format::Table => output::emit(&format!("{}\n", deleted.exit_status)),
    }
}

async fn attach(conn: &Conn, container: &str) -> anyhow::Result<()> {
    let process = get_process(conn, container, "").await?;
    let fifos = Fifos::reported(&process.stdin, &process.stdout, &process.stderr);
    let output = fifos.open_output()?;
    let stdin = fifos.open_stdin()?;
    let target = target(conn, container, String::new());
    let wait = target.spawn_wait().await;
    let status =
        cio::session(&target, Streams { stdin, output, terminal: process.terminal, close_stdin: false }, wait).await?;
    cio::exit_with(status.exit_status)
}

/// containerd's runc shim describes each process of ListPids with this message.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

#[derive(Serialize)]
struct PidJson<'a> {
    pid: u32,
    exec_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<AnyJson<'a>>,
}

/// The exec id in a process's info; None for the init process or an info berth cannot read.
fn exec_id_of(info: &ProcessInfo) -> Option<String> {
    use prost::Message as _;
    let any = info.info.as_ref()?;
    if !any.type_url.ends_with("ProcessDetails") {
        return None;
    }
    ProcessDetails::decode(any.value.as_slice()).ok().map(|d| d.exec_id).filter(|e| !e.is_empty())
}

async fn ps(ctx: &Ctx, conn: &Conn, container: &str) -> anyhow::Result<()> {
    let response = conn
        .tasks()
        .list_pids(ListPidsRequest { container_id: container.to_string() })
        .await
        .map_err(rpc_error(format!("list processes of task {container}")))?;
    let mut processes = response.into_inner().processes;
    processes.sort_by_key(|p| p.pid);
    match ctx.format {
        Format::Json => output::emit_json(
            &processes
                .iter()
                .map(|p| {
                    let exec_id = exec_id_of(p);
                    let info = if exec_id.is_none() { p.info.as_ref().map(output::any_json) } else { None };
                    PidJson { pid: p.pid, exec_id, info }
                })
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = processes
                .iter()
                .map(|p| vec![p.pid.to_string(), exec_id_of(p).unwrap_or_else(|| "-".into())])
                .collect();
            output::emit(&output::table(&["PID", "EXEC ID"], &rows, 1, 4))
        }
    }
}

fn status_name(status: i32) -> &'static str {
    Status::try_from(status).unwrap_or(Status::Unknown).as_str_name()
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    id: &'a str,
    pid: u32,
    status: &'static str,
    stdin: &'a str,
    stdout: &'a str,
    stderr: &'a str,
    terminal: bool,
    exit_status: u32,
    exited_at: Option<String>,
}

/// Go's zero time (year 1), which containerd sends for a process that has not exited, is no time.
fn exited_at(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    const GO_ZERO_TIME: i64 = -62_135_596_800;
    ts.filter(|t| t.seconds > GO_ZERO_TIME).map(output::rfc3339)
}

/// A task's name: containerd fills both fields with the container id for a task.
fn task_id(p: &Process) -> &str {
    if p.container_id.is_empty() { &p.id } else { &p.container_id }
}

async fn ls(ctx: &Ctx, quiet: bool) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let response =
        conn.tasks().list(ListTasksRequest { filter: String::new() }).await.map_err(rpc_error("list tasks"))?;
    let mut tasks = response.into_inner().tasks;
    tasks.sort_by(|a, b| task_id(a).cmp(task_id(b)));
    if quiet {
        return output::emit(&tasks.iter().map(|t| format!("{}\n", task_id(t))).collect::<String>());
    }
    match ctx.format {
        Format::Json => output::emit_json(
            &tasks
                .iter()
                .map(|t| ProcessJson {
                    id: task_id(t),
                    pid: t.pid,
                    status: status_name(t.status),
                    stdin: &t.stdin,
                    stdout: &t.stdout,
                    stderr: &t.stderr,
                    terminal: t.terminal,
                    exit_status: t.exit_status,
                    exited_at: exited_at(t.exited_at.as_ref()),
                })
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| vec![task_id(t).to_string(), t.pid.to_string(), status_name(t.status).to_string()])
                .collect();
            output::emit(&output::table(&["TASK", "PID", "STATUS"], &rows, 4, 4))
        }
    }
}

async fn rm(ctx: &Ctx, force: bool, exec_id: Option<String>, ids: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    // Keep going past failures, as `containers rm` does.
    let mut failed = false;
    for id in ids {
        let result = async {
            if let Some(exec_id) = &exec_id {
                let process = get_process(&conn, &id, exec_id).await?;
                if force && Status::try_from(process.status) != Ok(Status::Stopped) {
                    kill_and_wait(&conn, &id, exec_id).await?;
                }
                delete_process(&conn, &id, exec_id).await?;
                Fifos::reported(&process.stdin, &process.stdout, &process.stderr).remove();
                return Ok(());
            }
            if force {
                let process = get_process(&conn, &id, "").await?;
                if Status::try_from(process.status) != Ok(Status::Stopped) {
                    kill_and_wait(&conn, &id, "").await?;
                }
            }
            delete_task(&conn, &id).await.map(drop)
        }
        .await;
        if let Err(err) = result {
            crate::report(&err);
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// SIGKILL to every process of a task (or to one exec process), then its exit.
async fn kill_and_wait(conn: &Conn, container: &str, exec_id: &str) -> anyhow::Result<()> {
    let mut target = target(conn, container, exec_id.to_string());
    let wait = target.spawn_wait().await;
    target.kill(libc::SIGKILL, exec_id.is_empty()).await?;
    wait.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_before_any_call() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("FOO").unwrap_err().contains("FOO"));
    }

    #[test]
    fn exec_ids_come_from_process_details() {
        use prost::Message as _;
        let details = ProcessDetails { exec_id: "e1".into() };
        let info = ProcessInfo {
            pid: 7,
            info: Some(prost_types::Any {
                type_url: "containerd.runc.v1.ProcessDetails".into(),
                value: details.encode_to_vec(),
            }),
        };
        assert_eq!(exec_id_of(&info).as_deref(), Some("e1"));
        assert_eq!(exec_id_of(&ProcessInfo { pid: 1, info: None }), None);
    }
}
