//! `plugins`: what a plugin source adds per call, and to berthd's start-up (issue 5).
//!
//! Per call, in this process, on a tokio runtime like berthd's, through the trait object the daemon uses
//! (`SharedSnapshotter`): `stat` of a snapshot with one label (small), `stat` of one with 64 KiB of labels,
//! the same after one of its labels changed (`stat-64k-changed`: an update, not timed, before each call; a
//! source that keeps stat answers under the plugin's revision keeps the update's answer), the first stat of
//! a snapshot just made with 64 KiB of labels (`stat-64k-new`: nothing kept, the whole answer crosses), and
//! `mounts`, each against
//!
//! * `builtin`: `snapshot.native`, berth's built-in copying snapshotter;
//! * `native`: examples/native-snapshot (`snapshot.example`, the same kind of backend) loaded from its `.so`
//!   through berth's native source, as berthd loads it.
//!
//! A source is one [`Source`]: a label and how to load the snapshotter into a registry; the wasm source adds
//! its row the same way. Two more rows split the native figure into its parts: `abi` is the bare crossing
//! (encode, call through the function table, decode, free) on the calling thread, against `direct`, the
//! example's own Rust method called in-process; `hop` is one empty `spawn_blocking` round trip, the thread
//! change every native call makes so a plugin may block (and, for comparison, one empty `block_in_place`).
//! The `abi` rows include `revision`, the small call a native stat makes first (ABI 1.2).
//!
//! The same stats and mounts are also measured through `Namespaced` (phases `service ...`), the namespaced view of
//! the backend that berthd's Snapshots service calls: berthd answers a stat from its own record, whose labels
//! the backend is never given, so there a stat does not reach the plugin at all and a mounts does.
//!
//! Start-up (`--berthd`): berthd started on a fresh root until its socket answers, then stopped, alternately
//! with the built-in plugins only and with the native examples loaded (snapshot, runtime, monitor).
//!
//! Figures are medians of per-call times in each round, and the median round; ratios against `builtin`.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_core::config::Config;
use berth_core::registry::{Registry, Started};
use berth_core::snapshot::namespaced::Namespaced;
use berth_core::snapshot::{Labels, SharedSnapshotter};
use berth_core::store::{MetadataStore, StoreOptions};
use berth_plugin_sdk::abi::{self, Buffer, Bytes, Header, HostApi, snapshot_methods as m};
use berth_plugin_sdk::proto::snapshots as pb;
use berth_plugin_sdk::proto::{InitRequest, Message};
use berth_plugin_sdk::snapshot::Snapshotter as _;

#[derive(clap::Args)]
pub struct Options {
    /// The directory holding the examples' libraries (libberth_example_native_*.so), e.g. target/release.
    #[arg(long)]
    libs: PathBuf,
    /// Calls per request kind and round.
    #[arg(long, default_value_t = 20000)]
    calls: usize,
    /// Rounds; the median round is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where the snapshotters keep their data (a real disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// A berthd binary: also measure its start-up with and without the native examples.
    #[arg(long)]
    berthd: Option<PathBuf>,
    /// Start-ups of each configuration.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// The directory holding the wasm examples' components (berth_example_wasm_*.wasm, e.g.
    /// examples/wasm/target/wasm32-wasip2/release): with --berthd, also measure start-up with them, and with
    /// every example of both sources.
    #[arg(long)]
    components: Option<PathBuf>,
}

/// A plugin source to measure: its label in the tables and the config table that loads `snapshot.NAME`.
pub struct Source {
    pub label: &'static str,
    pub name: &'static str,
    /// The `[plugins."snapshot.NAME"]` table (and anything else it needs) for a config rooted at the
    /// scratch directory given.
    pub table: Box<dyn Fn(&Path) -> String>,
}

fn sources(libs: &Path) -> Vec<Source> {
    let native = libs.join("libberth_example_native_snapshot.so");
    vec![
        Source { label: "builtin", name: "native", table: Box::new(|_| String::new()) },
        Source {
            label: "native",
            name: "example",
            table: Box::new(move |_| {
                format!("[plugins.\"snapshot.example\"]\nsource = \"native\"\npath = \"{}\"\n", native.display())
            }),
        },
        // The wasm source's row goes here: a table with source = "wasm" and its component.
    ]
}

/// The labels of the large snapshot: 512 of 130 bytes, just over 64 KiB.
fn big_labels() -> Labels {
    (0..512).map(|i| (format!("bench.berth.dev/label-{i:04}"), "x".repeat(104))).collect()
}

fn small_labels() -> Labels {
    [("bench.berth.dev/label".to_string(), "x".to_string())].into()
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    target: String,
    phase: String,
    /// Median per-call time of the median round, in nanoseconds.
    median_ns: u64,
    /// The range of the rounds' medians.
    min_ns: u64,
    max_ns: u64,
    calls: usize,
}

fn figure(target: &str, phase: &str, mut rounds: Vec<u64>, calls: usize) -> Figure {
    rounds.sort_unstable();
    Figure {
        target: target.into(),
        phase: phase.into(),
        median_ns: rounds[rounds.len() / 2],
        min_ns: rounds[0],
        max_ns: rounds[rounds.len() - 1],
        calls,
    }
}

fn median_ns(mut samples: Vec<Duration>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_nanos() as u64
}

/// Times `calls` awaits of `call`, one at a time; the median per call.
async fn time_async<F, Fut>(calls: usize, mut call: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(median_ns(samples))
}

fn time_sync(calls: usize, mut call: impl FnMut() -> Result<()>) -> Result<u64> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call()?;
        samples.push(started.elapsed());
    }
    Ok(median_ns(samples))
}

async fn start_registry(dir: &Path, tables: &str) -> Result<Started> {
    let mut registry = Registry::new();
    registry.add_source(berth_core::external::native::source())?;
    registry.register(berth_plugin_snapshot_native::registration())?;
    let text = format!(
        "version = 1\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\naddress = \"{dir}/s.sock\"\n{tables}\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        dir = dir.display(),
    );
    let config = Config::parse("bench.toml", &text, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(registry.start(Arc::new(config)).await?)
}

/// The per-call figures of one source through `SharedSnapshotter`.
async fn measure_source(source: &Source, scratch: &Path, calls: usize, rounds: usize) -> Result<Vec<Figure>> {
    let dir = scratch.join(source.label);
    std::fs::create_dir_all(&dir)?;
    let started = start_registry(&dir, &(source.table)(&dir)).await?;
    let id: berth_core::plugin::PluginId =
        format!("snapshot.{}", source.name).parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let snapshotter: SharedSnapshotter = (*started
        .get::<SharedSnapshotter>(&id)
        .with_context(|| format!("{id} did not load: {:?}", started.table.read().unwrap().plugins))?)
    .clone();
    snapshotter.prepare("small", None, small_labels()).await?;
    snapshotter.prepare("big", None, big_labels()).await?;
    let big = snapshotter.stat("big").await?;
    let size: usize = big.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    anyhow::ensure!(size >= 64 * 1024, "the big snapshot has {size} bytes of labels");
    let stat: Call<SharedSnapshotter> =
        |s, key| Box::pin(async move { s.stat(key).await.map(drop).map_err(Into::into) });
    let mounts: Call<SharedSnapshotter> =
        |s, key| Box::pin(async move { s.mounts(key).await.map(drop).map_err(Into::into) });
    let mut figures = Vec::new();
    for (phase, key, call) in [("stat", "small", stat), ("stat-64k", "big", stat), ("mounts", "small", mounts)] {
        figures.push(measure_repeated(source, &snapshotter, phase, key, call, calls, rounds).await?);
    }
    figures.push(measure_changed_stat(source, &snapshotter, calls, rounds).await?);
    figures.push(measure_new_stat(source, &snapshotter, calls, rounds).await?);
    figures.extend(measure_service(source, &dir, &snapshotter, calls, rounds).await?);
    snapshotter.remove("small").await?;
    snapshotter.remove("big").await?;
    drop(snapshotter);
    started.shutdown();
    Ok(figures)
}

/// One call of `measure_repeated` on a `T` (the snapshotter, or berthd's namespaced view of it) for `key`.
type Call<T> = fn(T, &'static str) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// `phase` of `source`: `calls` calls a round of `call` for `key`, each awaited on a runtime worker as a gRPC
/// handler awaits it.
async fn measure_repeated<T: Clone + Send + Sync + 'static>(
    source: &Source,
    target: &T,
    phase: &str,
    key: &'static str,
    call: Call<T>,
    calls: usize,
    rounds: usize,
) -> Result<Figure> {
    let mut medians = Vec::new();
    for _ in 0..rounds {
        let t = target.clone();
        medians.push(tokio::spawn(async move { time_async(calls, || call(t.clone(), key)).await }).await??);
    }
    Ok(figure(source.label, phase, medians, calls))
}

/// A timed step of `measure_stepped` on a `T` (the snapshotter, or berthd's namespaced view of it): the untimed
/// set-up and check around one timed call, for call `i` of `round`, returning the timed part.
type Step<T> = fn(T, usize, usize) -> Pin<Box<dyn Future<Output = Result<Duration>> + Send>>;

/// `phase` of `source`: a tenth of `calls` steps a round (their untimed parts write the backend's records),
/// each on a runtime worker as a gRPC handler calls it.
async fn measure_stepped<T: Clone + Send + 'static>(
    source: &Source,
    target: &T,
    phase: &str,
    step: Step<T>,
    calls: usize,
    rounds: usize,
) -> Result<Figure> {
    let calls = (calls / 10).max(1);
    let mut medians = Vec::new();
    for round in 0..rounds {
        let s = target.clone();
        let median = tokio::spawn(async move {
            let mut samples = Vec::with_capacity(calls);
            for i in 0..calls {
                samples.push(step(s.clone(), round, i).await?);
            }
            Ok::<_, anyhow::Error>(median_ns(samples))
        })
        .await??;
        medians.push(median);
    }
    Ok(figure(source.label, phase, medians, calls))
}

/// `stat` of the big snapshot right after one of its labels changed (the update not timed): every call meets
/// a new revision.
async fn measure_changed_stat(
    source: &Source,
    snapshotter: &SharedSnapshotter,
    calls: usize,
    rounds: usize,
) -> Result<Figure> {
    let step: Step<SharedSnapshotter> = |s, round, i| {
        Box::pin(async move {
            let mut info = s.stat("big").await?;
            Arc::make_mut(&mut info.labels).insert("bench.berth.dev/changed".into(), format!("{round}-{i}"));
            let info = s.update(info, &["labels.bench.berth.dev/changed".into()]).await?;
            let started = Instant::now();
            let stat = s.stat("big").await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(stat.labels == info.labels, "a stat after an update must show the update");
            Ok(elapsed)
        })
    };
    measure_stepped(source, snapshotter, "stat-64k-changed", step, calls, rounds).await
}

/// The first `stat` of a snapshot just made with 64 KiB of labels: nothing of it is kept yet, so a plugin's
/// whole answer crosses. The prepare and remove are not timed.
async fn measure_new_stat(
    source: &Source,
    snapshotter: &SharedSnapshotter,
    calls: usize,
    rounds: usize,
) -> Result<Figure> {
    let step: Step<SharedSnapshotter> = |s, round, i| {
        Box::pin(async move {
            let key = format!("new-{round}-{i}");
            s.prepare(&key, None, big_labels()).await?;
            let started = Instant::now();
            let stat = s.stat(&key).await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(stat.labels.len() == big_labels().len(), "the new snapshot's stat lost labels");
            s.remove(&key).await?;
            Ok(elapsed)
        })
    };
    measure_stepped(source, snapshotter, "stat-64k-new", step, calls, rounds).await
}

/// The namespace berthd's view of the snapshotter is measured in.
const SERVICE_NS: &str = "bench";

/// The same requests through `Namespaced`, the view of the backend that berthd's Snapshots service calls (with a
/// metadata store of its own under `dir`): a stat is answered from berthd's record of the snapshot, whose
/// labels the backend is never given, and a mounts asks the backend. Phases `service stat`, `service stat-64k`,
/// `service mounts` and `service stat-64k-new` (the first stat of a snapshot just made with 64 KiB of labels).
async fn measure_service(
    source: &Source,
    dir: &Path,
    snapshotter: &SharedSnapshotter,
    calls: usize,
    rounds: usize,
) -> Result<Vec<Figure>> {
    let store = MetadataStore::open(&dir.join("service-store"), StoreOptions::default())?;
    let view = Namespaced::new(store.clone(), Arc::clone(snapshotter));
    view.prepare(SERVICE_NS, "small", None, small_labels(), None).await?;
    view.prepare(SERVICE_NS, "big", None, big_labels(), None).await?;
    let stat: Call<Namespaced> = |v, key| {
        Box::pin(async move {
            let info = v.stat(SERVICE_NS, key).await?;
            anyhow::ensure!(!info.labels.is_empty(), "the stat lost the labels");
            Ok(())
        })
    };
    let mounts: Call<Namespaced> =
        |v, key| Box::pin(async move { v.mounts(SERVICE_NS, key).await.map(drop).map_err(Into::into) });
    let mut figures = Vec::new();
    for (phase, key, call) in
        [("service stat", "small", stat), ("service stat-64k", "big", stat), ("service mounts", "small", mounts)]
    {
        figures.push(measure_repeated(source, &view, phase, key, call, calls, rounds).await?);
    }
    let step: Step<Namespaced> = |v, round, i| {
        Box::pin(async move {
            let key = format!("new-{round}-{i}");
            v.prepare(SERVICE_NS, &key, None, big_labels(), None).await?;
            let started = Instant::now();
            let stat = v.stat(SERVICE_NS, &key).await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(stat.labels.len() == big_labels().len(), "the new snapshot's stat lost labels");
            v.remove(SERVICE_NS, &key).await?;
            Ok(elapsed)
        })
    };
    figures.push(measure_stepped(source, &view, "service stat-64k-new", step, calls, rounds).await?);
    view.remove(SERVICE_NS, "small").await?;
    view.remove(SERVICE_NS, "big").await?;
    // The backend's files of the removed snapshots go before the snapshotter is stopped.
    view.removals_done().await;
    drop(view);
    store.close();
    Ok(figures)
}

/// One empty `spawn_blocking` round trip from a runtime worker, and one empty `block_in_place`.
async fn measure_hop(calls: usize, rounds: usize) -> Result<Vec<Figure>> {
    let mut medians = Vec::new();
    for _ in 0..rounds {
        let median = tokio::spawn(time_async(calls, || async {
            tokio::task::spawn_blocking(|| ()).await?;
            Ok(())
        }))
        .await??;
        medians.push(median);
    }
    let hop = figure("hop", "spawn_blocking", medians, calls);
    // What running the call on the worker itself would cost instead (tokio hands the worker's other tasks
    // to another thread): the alternative to the hop for calls that may block.
    let mut medians = Vec::new();
    for _ in 0..rounds {
        let median = tokio::spawn(time_async(calls, || async {
            tokio::task::block_in_place(|| ());
            Ok(())
        }))
        .await??;
        medians.push(median);
    }
    Ok(vec![hop, figure("hop", "block_in_place", medians, calls)])
}

unsafe extern "C" fn quiet_log(_: *const c_void, _: u32, _: Bytes) {}
unsafe extern "C" fn quiet_event(_: *const c_void, _: Bytes) {}
unsafe extern "C" fn no_publish(_: *const c_void, _: Bytes, _: *mut Buffer) -> i32 {
    abi::code::UNAVAILABLE
}

/// The example's library opened by hand: its instance and stat/mounts through the function table.
struct RawPlugin {
    header: &'static Header,
    instance: *mut c_void,
}

impl RawPlugin {
    fn open(path: &Path, root: &Path) -> Result<Self> {
        // SAFETY: the example library, built from this repository; never closed (the ABI's rule).
        let library: &'static libloading::Library = Box::leak(Box::new(unsafe { libloading::Library::new(path)? }));
        // SAFETY: the ABI's entry type.
        let entry = unsafe { library.get::<abi::EntryFn>(abi::ENTRY_SYMBOL.as_bytes())? };
        // SAFETY: static data of the library.
        let header: &'static Header = unsafe { &*entry() };
        if header.magic != abi::MAGIC || header.abi_major != abi::ABI_MAJOR {
            bail!("{} is not a plugin of this ABI", path.display());
        }
        let host: &'static HostApi = Box::leak(Box::new(HostApi {
            size: std::mem::size_of::<HostApi>(),
            context: std::ptr::null(),
            log: quiet_log,
            event: quiet_event,
            publish: no_publish,
        }));
        let config = serde_json::json!({ "root": root }).to_string();
        let request =
            InitRequest { id: "snapshot.example".into(), config_json: config.into_bytes(), ..Default::default() };
        let bytes = request.encode_to_vec();
        let mut instance = std::ptr::null_mut();
        let mut error = Buffer::empty();
        // SAFETY: the table's create with the ABI's arguments.
        let code = unsafe { ((*header.functions).create)(Bytes::new(&bytes), host, &mut instance, &mut error) };
        // SAFETY: the plugin's buffer, freed by its own function.
        unsafe { error.release() };
        if code != abi::code::OK {
            bail!("creating the example instance: code {code}");
        }
        Ok(Self { header, instance })
    }

    /// Calls method `index` with `request`, decoding the answer as `R`.
    fn call<R: Message + Default>(&self, index: usize, request: &impl Message) -> Result<R> {
        let bytes = request.encode_to_vec();
        // SAFETY: the table is static data with method_count entries.
        let table = unsafe { &*self.header.functions };
        anyhow::ensure!(index < table.method_count as usize, "no method {index}");
        // SAFETY: as above.
        let method = unsafe { *table.methods.add(index) }.context("method not implemented")?;
        let mut out = Buffer::empty();
        // SAFETY: the plugin's method on its instance; the request is lent for the call.
        let code = unsafe { method(self.instance, Bytes::new(&bytes), &mut out) };
        // SAFETY: the plugin filled the buffer; read, then given back.
        let decoded = R::decode(unsafe { out.as_slice() });
        // SAFETY: as above.
        unsafe { out.release() };
        anyhow::ensure!(code == abi::code::OK, "method {index} failed with code {code}");
        Ok(decoded?)
    }
}

/// The bare ABI crossing against the example's own method called directly, on this thread.
fn measure_abi(libs: &Path, scratch: &Path, calls: usize, rounds: usize) -> Result<Vec<Figure>> {
    let root = scratch.join("abi");
    let raw = RawPlugin::open(&libs.join("libberth_example_native_snapshot.so"), &root)?;
    let direct = berth_example_native_snapshot::CopySnapshotter::open(&scratch.join("direct"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (key, labels) in [("small", small_labels()), ("big", big_labels())] {
        let request = pb::PrepareSnapshotRequest {
            snapshotter: "example".into(),
            key: key.into(),
            parent: String::new(),
            labels: labels.clone(),
        };
        raw.call::<pb::PrepareSnapshotResponse>(m::PREPARE, &request)?;
        direct.prepare(key, "", labels).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut figures = Vec::new();
    let (mut through, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let request = pb::RevisionRequest { key: "big".into() };
        through.push(time_sync(calls, || {
            std::hint::black_box(raw.call::<pb::RevisionResponse>(m::REVISION, &request)?.revision);
            Ok(())
        })?);
        plain.push(time_sync(calls, || {
            std::hint::black_box(direct.revision("big").map_err(|e| anyhow::anyhow!("{e}"))?);
            Ok(())
        })?);
    }
    figures.push(figure("abi", "revision", through, calls));
    figures.push(figure("direct", "revision", plain, calls));
    for (phase, key) in [("stat", "small"), ("stat-64k", "big"), ("mounts", "small")] {
        let (mut through, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let request = pb::StatSnapshotRequest { snapshotter: "example".into(), key: key.into() };
            let mounts = pb::MountsRequest { snapshotter: "example".into(), key: key.into() };
            through.push(time_sync(calls, || {
                if phase == "mounts" {
                    raw.call::<pb::MountsResponse>(m::MOUNTS, &mounts)?;
                } else {
                    // Decoded as berthd decodes it, into the map the direct call returns.
                    let info = raw.call::<pb::wire::InfoResponse>(m::STAT, &request)?.info.map(pb::Info::from);
                    std::hint::black_box(info);
                }
                Ok(())
            })?);
            plain.push(time_sync(calls, || {
                if phase == "mounts" {
                    direct.mounts(key).map_err(|e| anyhow::anyhow!("{e}"))?;
                } else {
                    direct.stat(key).map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok(())
            })?);
        }
        figures.push(figure("abi", phase, through, calls));
        figures.push(figure("direct", phase, plain, calls));
    }
    let stat = raw.call::<pb::StatSnapshotResponse>(
        m::STAT,
        &pb::StatSnapshotRequest { snapshotter: "example".into(), key: "big".into() },
    )?;
    eprintln!("plugins: the 64 KiB stat answers with {} bytes", stat.encode_to_vec().len());
    Ok(figures)
}

/// Starts `berthd` on `config` until its socket answers, then stops it; the time to the socket.
/// One start of berthd in `dir` until it listens. `fresh`: from an empty directory (a first start: the
/// metadata store created, wasm components compiled); otherwise a restart, which keeps the root (the store and
/// the compile cache) and starts with a fresh state directory, as after a reboot.
fn start_once(berthd: &Path, dir: &Path, extra: &str, fresh: bool) -> Result<Duration> {
    let _ = std::fs::remove_dir_all(if fresh { dir.to_path_buf() } else { dir.join("state") });
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("berth.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nroot = \"{}\"\nstate = \"{}\"\n{extra}\n[grpc]\naddress = \"{}\"\n",
            dir.join("root").display(),
            dir.join("state").display(),
            socket.display()
        ),
    )?;
    let log = dir.join("berthd.log");
    let started = Instant::now();
    let mut child = Command::new(berthd)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", berthd.display()))?;
    let elapsed = loop {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            bail!("berthd exited during start-up with {status} (config {}): {}", config.display(), last.join(" / "));
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!("berthd did not listen within 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    child.wait()?;
    Ok(elapsed)
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn measure_startup(
    berthd: &Path,
    libs: &Path,
    components: Option<&Path>,
    scratch: &Path,
    starts: usize,
) -> Result<Vec<Figure>> {
    let lib = |name: &str| libs.join(format!("libberth_example_native_{name}.so")).display().to_string();
    let native_tables = format!(
        "[plugins.\"snapshot.example\"]\nsource = \"native\"\npath = \"{}\"\n\
         [plugins.\"runtime.oci\"]\nsource = \"native\"\npath = \"{}\"\n[plugins.\"runtime.oci\".config]\nbinary = \"runc\"\n\
         [plugins.\"monitor.alerts\"]\nsource = \"native\"\npath = \"{}\"\n",
        lib("snapshot"),
        lib("runtime"),
        lib("monitor"),
    );
    let tasks =
        |monitors: &str| format!("[plugins.\"service.tasks\"]\nmonitors = [\"cgroups\", \"restart\"{monitors}]\n");
    let mut configs = vec![("builtin", String::new()), ("native", format!("{native_tables}{}", tasks(", \"alerts\"")))];
    if let Some(components) = components {
        let wasm_tables = wasm_example_tables(components, scratch)?;
        configs.push(("wasm", format!("{wasm_tables}{}", tasks(", \"watch\""))));
        configs.push(("all", format!("{native_tables}{wasm_tables}{}", tasks(", \"alerts\", \"watch\""))));
    }
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    // One first start of each (page cache, the store made, wasm components compiled), reported apart; then
    // restarts, alternating.
    let mut firsts = Vec::new();
    for (label, extra) in &configs {
        firsts.push((*label, start_once(berthd, &scratch.join(format!("start-{label}")), extra, true)?));
    }
    for _ in 0..starts {
        for (label, extra) in &configs {
            let took = start_once(berthd, &scratch.join(format!("start-{label}")), extra, false)?;
            samples.entry(label).or_default().push(took);
        }
    }
    let mut figures = Vec::new();
    for (label, took) in firsts {
        let ns = took.as_nanos() as u64;
        figures.push(Figure {
            target: format!("{label}, first start"),
            phase: "startup".into(),
            median_ns: ns,
            min_ns: ns,
            max_ns: ns,
            calls: 1,
        });
    }
    for (label, times) in samples {
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let ns = |d: Duration| d.as_nanos() as u64;
        figures.push(Figure {
            target: label.into(),
            phase: "startup".into(),
            median_ns: ns(sorted[sorted.len() / 2]),
            min_ns: ns(sorted[0]),
            max_ns: ns(sorted[sorted.len() - 1]),
            calls: sorted.len(),
        });
    }
    Ok(figures)
}

/// The tables of the three wasm examples as the tests load them: `snapshot.layers`, `monitor.watch` and
/// `runtime.function`, each with its granted directory under `scratch`.
fn wasm_example_tables(components: &Path, scratch: &Path) -> Result<String> {
    // berthd wants absolute plugin paths.
    let components = std::fs::canonicalize(components).with_context(|| format!("{}", components.display()))?;
    let component = |name: &str| -> Result<String> {
        let path = components.join(format!("berth_example_wasm_{name}.wasm"));
        if !path.is_file() {
            bail!(
                "{} not found: build the wasm examples (cargo build --manifest-path examples/wasm/Cargo.toml --target wasm32-wasip2 --release)",
                path.display()
            );
        }
        Ok(path.display().to_string())
    };
    let granted = |name: &str| -> Result<String> {
        let dir = scratch.join(format!("wasm-{name}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir.display().to_string())
    };
    let (layers, alerts, files) = (granted("layers")?, granted("alerts")?, granted("files")?);
    Ok(format!(
        "[plugins.\"snapshot.layers\"]\nsource = \"wasm\"\npath = \"{}\"\npreopens = [{{ host = \"{layers}\", guest = \"/layers\" }}]\n\
         [plugins.\"snapshot.layers\".config]\nhost_root = \"{layers}\"\n\
         [plugins.\"monitor.watch\"]\nsource = \"wasm\"\npath = \"{}\"\npreopens = [{{ host = \"{alerts}\", guest = \"/alerts\" }}]\n\
         [plugins.\"runtime.function\"]\nsource = \"wasm\"\npath = \"{}\"\npreopens = [{{ host = \"{files}\", guest = \"/files\", read_only = true }}]\n\
         [plugins.\"runtime.function\".config]\ndir = \"/files\"\n",
        component("snapshot")?,
        component("monitor")?,
        component("function")?,
    ))
}

fn table(figures: &[Figure]) {
    let base: BTreeMap<&str, u64> =
        figures.iter().filter(|f| f.target == "builtin").map(|f| (f.phase.as_str(), f.median_ns)).collect();
    println!("| source | request | median ns/call (rounds' range) | added vs builtin | ratio |");
    println!("|---|---|---|---|---|");
    for f in figures.iter().filter(|f| f.phase != "startup") {
        let (added, ratio) = match (base.get(f.phase.as_str()), f.target.as_str()) {
            (Some(b), "builtin" | "native" | "wasm") => {
                (format!("{:+}", f.median_ns as i64 - *b as i64), format!("{:.2}", f.median_ns as f64 / *b as f64))
            }
            _ => ("".into(), "".into()),
        };
        println!("| {} | {} | {} ({}–{}) | {added} | {ratio} |", f.target, f.phase, f.median_ns, f.min_ns, f.max_ns);
    }
    let abi: BTreeMap<&str, i64> = figures
        .iter()
        .filter(|f| f.target == "abi")
        .filter_map(|f| {
            let direct = figures.iter().find(|d| d.target == "direct" && d.phase == f.phase)?;
            Some((f.phase.as_str(), f.median_ns as i64 - direct.median_ns as i64))
        })
        .collect();
    if !abi.is_empty() {
        println!("\n| the ABI crossing alone (abi − direct) | ns per call |\n|---|---|");
        for (phase, ns) in abi {
            println!("| {phase} | {ns:+} |");
        }
    }
    let startups: Vec<&Figure> = figures.iter().filter(|f| f.phase == "startup").collect();
    if !startups.is_empty() {
        println!("\n| berthd start-up | median ms (range) | runs |\n|---|---|---|");
        for f in startups {
            let ms = |ns: u64| ns as f64 / 1e6;
            println!(
                "| {} | {:.1} ({:.1}–{:.1}) | {} |",
                f.target,
                ms(f.median_ns),
                ms(f.min_ns),
                ms(f.max_ns),
                f.calls
            );
        }
    }
}

pub fn run(options: Options) -> Result<()> {
    let scratch = options.dir.join(format!("berth-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| -> Result<Vec<Figure>> {
        // Two workers, as berthd has on this machine's two cores.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut figures = Vec::new();
        for source in sources(&options.libs) {
            figures.extend(runtime.block_on(measure_source(&source, &scratch, options.calls, options.rounds))?);
        }
        figures.extend(runtime.block_on(measure_hop(options.calls, options.rounds))?);
        drop(runtime);
        figures.extend(measure_abi(&options.libs, &scratch, options.calls, options.rounds)?);
        if let Some(berthd) = &options.berthd {
            figures.extend(measure_startup(
                berthd,
                &options.libs,
                options.components.as_deref(),
                &scratch,
                options.starts,
            )?);
        }
        Ok(figures)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let figures = result?;
    for f in &figures {
        eprintln!("{}", serde_json::to_string(f)?);
    }
    table(&figures);
    Ok(())
}
