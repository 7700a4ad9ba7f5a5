//! `berth run`: a container record with ctr's default spec, then its task, with the process's
//! I/O on this terminal, as `ctr run --rootfs` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use berth_proto::containerd::services::containers::v1::container::Runtime;
use berth_proto::containerd::services::containers::v1::{Container, CreateContainerRequest, DeleteContainerRequest};
use berth_proto::containerd::services::tasks::v1::{CreateTaskRequest, StartRequest};
use clap::Args;

use crate::cio::{self, Fifos, Streams, Target};
use crate::spec::{self, SpecOptions};
use crate::{Conn, Ctx, key_value, rpc_error};

pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";

#[derive(Args)]
pub struct Run {
    /// Delete the task and the container once the process exits
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Start the task and return, leaving its FIFOs for `berth attach`
    #[arg(short, long)]
    detach: bool,
    /// Give the process a terminal (this one is put in raw mode and its size followed)
    #[arg(short, long)]
    tty: bool,
    /// ROOTFS is a directory; accepted for ctr's habit, as directories are all berth runs until images land
    #[arg(long)]
    rootfs: bool,
    /// Set an environment variable (PATH has containerd's default unless set)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = spec::env_var)]
    env: Vec<String>,
    /// Working directory of the process (default /)
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// User as UID[:GID] or NAME[:GROUP] (names from the rootfs's /etc/passwd and /etc/group)
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Label of the container, also set as an annotation of its spec
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Runtime that runs the task
    #[arg(long, default_value = DEFAULT_RUNTIME, value_name = "NAME")]
    runtime: String,
    /// Directory in which the FIFOs are made (default /run/berth/fifo)
    #[arg(long, value_name = "DIR")]
    fifo_dir: Option<PathBuf>,
    /// Memory limit in bytes
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(i64).range(1..))]
    memory_limit: Option<i64>,
    /// Most processes the container may have
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pids_limit: Option<i64>,
    /// Root filesystem directory of the container
    #[arg(value_name = "ROOTFS")]
    rootfs_dir: PathBuf,
    /// Container id
    id: String,
    /// What to run, with its arguments
    #[arg(value_name = "CMD", trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(ctx: &Ctx, run: Run) -> anyhow::Result<()> {
    let rootfs = rootfs_dir(&run.rootfs_dir)?;
    if run.command.is_empty() {
        bail!("no command to run: a root filesystem has no image config to take one from; give CMD after the id");
    }
    let namespace = ctx.namespace.0.to_str().context("namespace is not valid text")?;
    let annotations: BTreeMap<String, String> = run.labels.iter().cloned().collect();
    let spec = spec::default_spec(&SpecOptions {
        namespace,
        id: &run.id,
        rootfs: &rootfs,
        args: &run.command,
        env: &run.env,
        cwd: run.cwd.as_deref(),
        user: run.user.as_deref(),
        terminal: run.tty,
        annotations: &annotations,
        memory_limit: run.memory_limit,
        pids_limit: run.pids_limit,
    })?;

    let conn = ctx.connect().await?;
    let container = Container {
        id: run.id.clone(),
        labels: annotations.into_iter().collect(),
        runtime: Some(Runtime { name: run.runtime.clone(), options: None }),
        spec: Some(spec::any(spec::SPEC_TYPE_URL, &spec)),
        ..Default::default()
    };
    conn.containers()
        .create(CreateContainerRequest { container: Some(container) })
        .await
        .map_err(rpc_error(format!("create container {}", run.id)))?;

    let result = start_task(&conn, &run.id, run.tty, run.detach, run.fifo_dir.as_deref()).await;
    if run.rm {
        let deleted = conn
            .containers()
            .delete(DeleteContainerRequest { id: run.id.clone() })
            .await
            .map_err(rpc_error(format!("delete container {}", run.id)));
        if let Err(err) = deleted {
            // The run's own error, if any, is the one to return; this one is still worth saying.
            if result.is_err() {
                crate::report(&err);
            } else {
                return Err(err);
            }
        }
    }
    match result? {
        Some(status) => cio::exit_with(status),
        None => Ok(()),
    }
}

/// The first positional names a root filesystem directory; images come later.
fn rootfs_dir(arg: &Path) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(arg).with_context(|| format!("rootfs {}", arg.display()))?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => bail!(
            "rootfs {} is not a directory: berth runs root filesystem directories only (images are not supported yet)",
            arg.display()
        ),
        Err(e) => bail!(
            "rootfs {}: {e}; berth runs root filesystem directories only (images are not supported yet)",
            arg.display()
        ),
    }
}

/// Creates and starts the task of container `id` with FIFOs made here, then (unless detached)
/// copies its I/O until it exits and deletes it. Returns the exit status; None when detached.
pub async fn start_task(
    conn: &Conn,
    id: &str,
    terminal: bool,
    detach: bool,
    fifo_dir: Option<&Path>,
) -> anyhow::Result<Option<u32>> {
    let fifos = Fifos::create(fifo_dir, id, terminal)?;
    let result = async {
        // Read ends first: the server opens the write ends, blocking, during Create.
        let output = fifos.open_output()?;
        let stdin = if detach { None } else { fifos.open_stdin()? };
        conn.tasks()
            .create(CreateTaskRequest {
                container_id: id.to_string(),
                stdin: Fifos::path_str(&fifos.stdin),
                stdout: Fifos::path_str(&fifos.stdout),
                stderr: Fifos::path_str(&fifos.stderr),
                terminal,
                ..Default::default()
            })
            .await
            .map_err(rpc_error(format!("create task {id}")))?;
        let target = Target { tasks: conn.tasks(), container_id: id.to_string(), exec_id: String::new() };
        let wait = if detach { None } else { Some(target.spawn_wait().await) };
        let started = conn
            .tasks()
            .start(StartRequest { container_id: id.to_string(), exec_id: String::new() })
            .await
            .map_err(rpc_error(format!("start task {id}")));
        if let Err(err) = started {
            let _ = crate::tasks::delete_task(conn, id).await;
            return Err(err);
        }
        let Some(wait) = wait else { return Ok(None) };
        let status = cio::session(&target, Streams { stdin, output, terminal, close_stdin: true }, wait).await;
        // ctr deletes the task once it exited, with or without --rm.
        let deleted = crate::tasks::delete_task(conn, id).await;
        let status = status?;
        deleted?;
        Ok(Some(status.exit_status))
    }
    .await;
    match result {
        // Detached: the FIFOs stay for `attach`.
        Ok(None) => {}
        _ => fifos.remove(),
    }
    result
}
