//! `tasks up` / `tasks down`: many containers started at once through the Tasks service, and
//! everything of a namespace stopped and removed again.
//!
//! `up` sends, for N containers at the same moment, what `ctr run -d --null-io --rootfs DIR ID CMD`
//! sends (Containers.Create with ctr's default spec, Tasks.Create with no rootfs mounts and no
//! I/O, Tasks.Start), over a few shared connections, and stops the clock when every Start has
//! replied; then Tasks.List must show all N RUNNING. It leaves them running, so a caller can
//! measure memory; `down` kills (SIGKILL), waits for, deletes every task of the namespace, then its
//! containers and the namespace.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_core::client::connect_unix;
use berth_proto::containerd::services::containers::v1::container::Runtime;
use berth_proto::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_proto::containerd::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest,
};
use berth_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd::services::namespaces::v1::{CreateNamespaceRequest, DeleteNamespaceRequest, Namespace};
use berth_proto::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_proto::containerd::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, KillRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use berth_proto::containerd::v1::types::Status;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;

use crate::containers::{RUNTIME, RUNTIME_OPTIONS_TYPE_URL, SPEC_JSON, SPEC_TYPE_URL, request};
use crate::stats::Phase;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Start N containers at once; print the wall time until all are RUNNING; leave them running.
    Up(UpOptions),
    /// Kill, wait for and delete every task of the namespace, then its containers and itself.
    Down(DownOptions),
    /// What `ctr run --rm --null-io` asks, one container after the other, each call timed: where a
    /// run's time goes, without ctr's own start-up.
    Seq(SeqOptions),
}

#[derive(clap::Args)]
pub struct SeqOptions {
    /// The daemon's gRPC unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Name of the target in the output.
    #[arg(long)]
    label: String,
    /// Namespace to run in (created if missing, removed at the end).
    #[arg(long)]
    namespace: String,
    /// Measured runs (after 3 warm-up runs).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// The containers' root filesystem.
    #[arg(long)]
    rootfs: PathBuf,
    /// The process to run, e.g. /bin/true.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
pub struct UpOptions {
    /// The daemon's gRPC unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Name of the target in the output, e.g. berthd or containerd.
    #[arg(long)]
    label: String,
    /// Namespace to create the containers in (created if missing).
    #[arg(long)]
    namespace: String,
    /// Containers started at the same time.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Connections the requests are spread over.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The containers' root filesystem (a directory).
    #[arg(long)]
    rootfs: PathBuf,
    /// Container ids are PREFIX-N.
    #[arg(long, default_value = "task")]
    id_prefix: String,
    /// The process to run, e.g. /bin/sleep 1000.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
pub struct DownOptions {
    /// The daemon's gRPC unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Name of the target in the output.
    #[arg(long)]
    label: String,
    /// The namespace to empty and remove.
    #[arg(long)]
    namespace: String,
    /// Keep the (emptied) namespace.
    #[arg(long)]
    keep_namespace: bool,
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Up(o) => up(o).await,
        Command::Down(o) => down(o).await,
        Command::Seq(o) => seq(o).await,
    }
}

/// The calls of one `seq` run, in order.
const SEQ_CALLS: [&str; 6] = [
    "Containers.Create",
    "Tasks.Create",
    "Tasks.Start",
    "until the exit (Tasks.Wait)",
    "Tasks.Delete",
    "Containers.Delete",
];

async fn seq(o: SeqOptions) -> Result<()> {
    let channel = connect_unix(&o.socket).await.with_context(|| format!("connecting to {}", o.socket.display()))?;
    let ns: AsciiMetadataValue = o.namespace.parse()?;
    let namespace = Namespace { name: o.namespace.clone(), labels: Default::default() };
    match NamespacesClient::new(channel.clone())
        .create(request(&ns, CreateNamespaceRequest { namespace: Some(namespace) }))
        .await
    {
        Err(s) if s.code() != Code::AlreadyExists => return Err(s).context("creating the namespace"),
        _ => {}
    }
    let rootfs = std::fs::canonicalize(&o.rootfs).with_context(|| format!("rootfs {}", o.rootfs.display()))?;
    let mut spec: serde_json::Value = serde_json::from_str(SPEC_JSON).context("bench/src/spec.json")?;
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    spec["process"]["args"] = o.args.clone().into();
    let mut containers = ContainersClient::new(channel.clone());
    let mut tasks = TasksClient::new(channel.clone());
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); SEQ_CALLS.len() + 1];
    let started = Instant::now();
    for i in 0..o.runs + 3 {
        let id = format!("seq-{i}");
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", o.namespace).into();
        let container = Container {
            id: id.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.to_owned(),
                options: Some(prost_types::Any { type_url: RUNTIME_OPTIONS_TYPE_URL.to_owned(), value: Vec::new() }),
            }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.to_owned(), value: serde_json::to_vec(&spec)? }),
            ..Container::default()
        };
        let mut t = [Duration::ZERO; SEQ_CALLS.len()];
        let run = Instant::now();
        let mut lap = Instant::now();
        let mut next = |k: usize| {
            t[k] = lap.elapsed();
            lap = Instant::now();
        };
        containers.create(request(&ns, CreateContainerRequest { container: Some(container) })).await?;
        next(0);
        tasks.create(request(&ns, CreateTaskRequest { container_id: id.clone(), ..Default::default() })).await?;
        next(1);
        // ctr subscribes to the exit before it starts the task.
        let mut waiter = tasks.clone();
        let wait_req = request(&ns, WaitRequest { container_id: id.clone(), exec_id: String::new() });
        let wait = tokio::spawn(async move { waiter.wait(wait_req).await });
        tokio::task::yield_now().await;
        tasks.start(request(&ns, StartRequest { container_id: id.clone(), exec_id: String::new() })).await?;
        next(2);
        let exit = wait.await??.into_inner();
        ensure!(exit.exit_status == 0, "{id} exited with {}", exit.exit_status);
        next(3);
        tasks.delete(request(&ns, DeleteTaskRequest { container_id: id.clone() })).await?;
        next(4);
        containers.delete(request(&ns, DeleteContainerRequest { id: id.clone() })).await?;
        next(5);
        if i >= 3 {
            samples[0].push(run.elapsed());
            for (k, d) in t.iter().enumerate() {
                samples[k + 1].push(*d);
            }
        }
    }
    let elapsed = started.elapsed();
    NamespacesClient::new(channel)
        .delete(request(&ns, DeleteNamespaceRequest { name: o.namespace.clone() }))
        .await
        .with_context(|| format!("removing namespace {}", o.namespace))?;
    let names = std::iter::once("run (all calls)").chain(SEQ_CALLS);
    for (name, latencies) in names.zip(samples) {
        Phase::new(&o.label, name, 1, latencies.clone(), elapsed).with_samples(&latencies).print()?;
    }
    Ok(())
}

async fn up(o: UpOptions) -> Result<()> {
    ensure!(o.count >= 1 && o.connections >= 1, "--count and --connections must be at least 1");
    let mut channels = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        channels.push(connect_unix(&o.socket).await.with_context(|| format!("connecting to {}", o.socket.display()))?);
    }
    let ns: AsciiMetadataValue = o.namespace.parse()?;
    let namespace = Namespace { name: o.namespace.clone(), labels: Default::default() };
    match NamespacesClient::new(channels[0].clone())
        .create(request(&ns, CreateNamespaceRequest { namespace: Some(namespace) }))
        .await
    {
        Err(s) if s.code() != Code::AlreadyExists => return Err(s).context("creating the namespace"),
        _ => {}
    }
    let rootfs = std::fs::canonicalize(&o.rootfs).with_context(|| format!("rootfs {}", o.rootfs.display()))?;
    let mut spec: serde_json::Value = serde_json::from_str(SPEC_JSON).context("bench/src/spec.json")?;
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    spec["process"]["args"] = o.args.clone().into();

    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..o.count {
        let channel = channels[i % channels.len()].clone();
        let id = format!("{}-{i}", o.id_prefix);
        let mut spec = spec.clone();
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", o.namespace).into();
        let container = Container {
            id: id.clone(),
            labels: [("io.containerd.image.config.stop-signal".to_owned(), "SIGTERM".to_owned())].into(),
            runtime: Some(Runtime {
                name: RUNTIME.to_owned(),
                options: Some(prost_types::Any { type_url: RUNTIME_OPTIONS_TYPE_URL.to_owned(), value: Vec::new() }),
            }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.to_owned(), value: serde_json::to_vec(&spec)? }),
            ..Container::default()
        };
        let ns = ns.clone();
        set.spawn(async move {
            let mut steps = [Duration::ZERO; 3];
            let t = Instant::now();
            ContainersClient::new(channel.clone())
                .create(request(&ns, CreateContainerRequest { container: Some(container) }))
                .await
                .with_context(|| format!("Containers.Create {id}"))?;
            steps[0] = t.elapsed();
            let mut tasks = TasksClient::new(channel);
            let t = Instant::now();
            tasks
                .create(request(&ns, CreateTaskRequest { container_id: id.clone(), ..Default::default() }))
                .await
                .with_context(|| format!("Tasks.Create {id}"))?;
            steps[1] = t.elapsed();
            let t = Instant::now();
            tasks
                .start(request(&ns, StartRequest { container_id: id.clone(), exec_id: String::new() }))
                .await
                .with_context(|| format!("Tasks.Start {id}"))?;
            steps[2] = t.elapsed();
            anyhow::Ok((started.elapsed(), steps))
        });
    }
    let mut done = Vec::with_capacity(o.count);
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined? {
            Ok(r) => done.push(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!("{} of {} containers started", done.len(), o.count)));
    }
    let all_started = started.elapsed();
    let listed =
        TasksClient::new(channels[0].clone()).list(request(&ns, ListTasksRequest::default())).await?.into_inner();
    let all_listed = started.elapsed();
    let running = listed.tasks.iter().filter(|t| t.status == Status::Running as i32).count();
    ensure!(running == o.count, "Tasks.List shows {running} of {} tasks RUNNING", o.count);

    let phase = |name: &str, latencies: Vec<Duration>, elapsed| {
        Phase::new(&o.label, name, o.count, latencies.clone(), elapsed).with_samples(&latencies).print()
    };
    // The headline: wall time from the first request to the last Start reply (each sample: when
    // that container was running, counted from the first request), then the List check.
    phase(&format!("{} started concurrently", o.count), done.iter().map(|d| d.0).collect(), all_started)?;
    phase("... and Tasks.List shows all RUNNING", vec![all_listed], all_listed)?;
    for (k, name) in ["Containers.Create", "Tasks.Create", "Tasks.Start"].iter().enumerate() {
        phase(&format!("{name} under the burst"), done.iter().map(|d| d.1[k]).collect(), all_started)?;
    }
    Ok(())
}

async fn down(o: DownOptions) -> Result<()> {
    let channel = connect_unix(&o.socket).await.with_context(|| format!("connecting to {}", o.socket.display()))?;
    let ns: AsciiMetadataValue = o.namespace.parse()?;
    let started = Instant::now();
    let mut tasks = TasksClient::new(channel.clone());
    let listed = tasks.list(request(&ns, ListTasksRequest::default())).await?.into_inner().tasks;
    let mut set = JoinSet::new();
    for task in &listed {
        // containerd's List fills `id` (the container's id for an init) but not `container_id`.
        let id = if task.container_id.is_empty() { task.id.clone() } else { task.container_id.clone() };
        let (mut tasks, ns) = (tasks.clone(), ns.clone());
        let running = task.status != Status::Stopped as i32;
        set.spawn(async move {
            if running {
                let kill = KillRequest { container_id: id.clone(), exec_id: String::new(), signal: 9, all: true };
                if let Err(s) = tasks.kill(request(&ns, kill)).await
                    && s.code() != Code::NotFound
                {
                    return Err(anyhow::Error::from(s).context(format!("Tasks.Kill {id}")));
                }
                // A task that has exited already answers Wait at once with its status.
                let wait = tasks.wait(request(&ns, WaitRequest { container_id: id.clone(), exec_id: String::new() }));
                match tokio::time::timeout(Duration::from_secs(30), wait).await {
                    Ok(w) => {
                        w.with_context(|| format!("Tasks.Wait {id}"))?;
                    }
                    Err(_) => anyhow::bail!("Tasks.Wait {id}: no exit 30 s after SIGKILL"),
                }
            }
            tasks
                .delete(request(&ns, DeleteTaskRequest { container_id: id.clone() }))
                .await
                .with_context(|| format!("Tasks.Delete {id}"))?;
            anyhow::Ok(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined? {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        // containerd deletes a container record under a live task; keep the records so a second
        // `down` can still find the tasks.
        return Err(e);
    }
    let mut containers = ContainersClient::new(channel.clone());
    let listed_containers = containers.list(request(&ns, ListContainersRequest { filters: Vec::new() })).await?;
    for c in listed_containers.into_inner().containers {
        if let Err(e) = containers.delete(request(&ns, DeleteContainerRequest { id: c.id.clone() })).await {
            first_error.get_or_insert(anyhow::Error::from(e).context(format!("Containers.Delete {}", c.id)));
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if !o.keep_namespace {
        NamespacesClient::new(channel)
            .delete(request(&ns, DeleteNamespaceRequest { name: o.namespace.clone() }))
            .await
            .with_context(|| format!("removing namespace {}", o.namespace))?;
    }
    let elapsed = started.elapsed();
    Phase::new(&o.label, &format!("{} tasks killed, waited for and removed", listed.len()), 1, vec![elapsed], elapsed)
        .print()
}
