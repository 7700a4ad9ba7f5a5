//! When collections run: the `gc.scheduler` plugin, containerd's `io.containerd.gc.v1.scheduler`
//! with the same settings, plus a periodic collection and an ingest expiry of berth's.
//!
//! A collection runs
//!
//! * at start-up: before berthd serves when `startup_delay` is 0 (the default, so no client can
//!   race it), else that long after start-up;
//! * on request ([`GcScheduler::collect`]: Images.Delete and Leases.Delete with `sync`),
//!   `schedule_delay` after the request; the caller gets the outcome of the first collection that
//!   *started* after its request, so it includes whatever the caller committed before asking;
//! * `schedule_delay` after `deletion_threshold` deletions since the last collection;
//! * after `mutation_threshold` writes since the last collection;
//! * every `periodic_interval`, changes or not: leases expire and ingests go stale with the
//!   clock, not with writes.
//!
//! Automatic ones (all but start-up and requests) keep to `pause_threshold`: after collections
//! that held writers up for `p` on average, the next waits at least `p / pause_threshold - p`
//! after the last ended, as containerd's scheduler does. A failed collection is retried no
//! sooner than a second later, then two, up to a minute.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Collector, Stats};
use crate::content::BlobStore;
use crate::error::{Error, Result};
use crate::plugin::{InitError, Instance, PluginKind, Registration, Requirement};
use crate::services::store_id;
use crate::snapshot::SharedSnapshotter;
use crate::store::{Activity, MetadataStore};

/// `[plugins."gc.scheduler"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Most of real time automatic collections may hold writers up, 0 to 0.5; 0: no limit.
    #[serde(deserialize_with = "pause_threshold")]
    pub pause_threshold: f64,
    /// Deletions since the last collection that start one; 0: deletions alone never do.
    pub deletion_threshold: u64,
    /// Writes since the last collection that start one; 0: writes alone never do.
    pub mutation_threshold: u64,
    /// How long after a request or a reached threshold the collection starts.
    #[serde(deserialize_with = "duration")]
    pub schedule_delay: Duration,
    /// How long after start-up the first collection runs; 0: during start-up, before serving.
    #[serde(deserialize_with = "duration")]
    pub startup_delay: Duration,
    /// Longest time between two collections; 0: only the triggers above start one.
    #[serde(deserialize_with = "duration")]
    pub periodic_interval: Duration,
    /// Ingests no lease holds are aborted once not written to for this long.
    #[serde(deserialize_with = "duration")]
    pub ingest_expiry: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::ZERO,
            periodic_interval: Duration::from_secs(600),
            ingest_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

fn pause_threshold<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(0.0..=0.5).contains(&value) {
        return Err(serde::de::Error::custom(format!("pause_threshold must be between 0 and 0.5, got {value}")));
    }
    Ok(value)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses a duration as Go's `time.ParseDuration` (and so containerd's config) writes them:
/// numbers with units, `300ms`, `1.5h`, `2h45m`; units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
/// A bare `0` is zero.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why} (write e.g. \"100ms\", \"30s\", \"10m\", \"24h\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("expected a number"));
        }
        let value: f64 = number.parse().map_err(|_| bad("expected a number"))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad("too long"))
}

/// The outcome of the last collection, for callers waiting on one.
#[derive(Clone, Debug)]
struct Round {
    /// Collections finished (0: none yet).
    finished: u64,
    result: Result<Stats>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Collections started.
    started: u64,
    /// When the oldest request not yet served came in.
    requested_at: Option<Instant>,
}

struct Shared {
    collector: Collector,
    config: GcConfig,
    pending: Mutex<Pending>,
    wake: Notify,
    done: watch::Sender<Round>,
    stop: watch::Sender<bool>,
}

/// The running scheduler, as the `gc.scheduler` plugin exports it. Clones share it.
#[derive(Clone)]
pub struct GcScheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GcScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcScheduler").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

/// The `gc.scheduler` plugin: collects the metadata store, the content store's blobs under
/// `<root>/content` and every loaded snapshot backend.
pub fn registration() -> Registration {
    Registration::new::<GcConfig, _, _>(PluginKind::Gc, "scheduler", |ctx| {
        let config = ctx.config::<GcConfig>();
        let store = ctx.get::<MetadataStore>(&store_id());
        let backends = ctx.get_all::<SharedSnapshotter>(PluginKind::Snapshot);
        let root = ctx.daemon_config().root.join("content");
        async move {
            let store = (*store.ok_or_else(|| InitError::Failed("metadata store not loaded".into()))?).clone();
            // The content and diff services open the same files; blob files are removed only here.
            let blobs = tokio::task::spawn_blocking(move || BlobStore::open(&root))
                .await
                .map_err(|e| InitError::Failed(format!("opening the content store: {e}")))?
                .map_err(|e| InitError::Failed(e.to_string()))?;
            let snapshotters = backends.into_iter().map(|(_, b)| (*b).clone()).collect();
            let collector = Collector::new(store.clone(), blobs, snapshotters, config.ingest_expiry);
            let scheduler = GcScheduler::start(collector, (*config).clone(), store.activity()).await;
            let stopping = scheduler.clone();
            Ok(Instance::new(scheduler).on_shutdown(move || stopping.stop()))
        }
    })
    .requires(Requirement::Plugin(store_id()))
    .requires(Requirement::Kind(PluginKind::Snapshot))
    .describe("garbage collector: removes content, snapshots and leases nothing holds, as containerd's")
}

impl GcScheduler {
    /// Starts scheduling collections by `collector` as `config` says, counting the store's
    /// `activity`. With no `startup_delay` the start-up collection runs before this returns.
    pub async fn start(collector: Collector, config: GcConfig, activity: watch::Receiver<Activity>) -> GcScheduler {
        let (done, _) =
            watch::channel(Round { finished: 0, result: Err(Error::Unavailable("no collection yet".into())) });
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            collector,
            config,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            done,
            stop,
        });
        let mut state = Loop::new(activity);
        if shared.config.startup_delay.is_zero() {
            state.run(&shared).await;
        } else {
            state.startup = Some(Instant::now() + shared.config.startup_delay);
        }
        let looping = shared.clone();
        let stopped = shared.stop.subscribe();
        tokio::spawn(async move { state.until_stopped(&looping, stopped).await });
        GcScheduler { shared }
    }

    /// Asks for a collection and waits for the first one that starts after this call (so it
    /// sees everything committed before it), returning what it did. Unavailable once the
    /// scheduler has stopped.
    pub async fn collect(&self) -> Result<Stats> {
        let mut done = self.shared.done.subscribe();
        let target = {
            let mut pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.requested_at.get_or_insert_with(Instant::now);
            pending.started + 1
        };
        self.shared.wake.notify_one();
        loop {
            {
                let round = done.borrow_and_update();
                if round.finished >= target {
                    return round.result.clone();
                }
            }
            if done.changed().await.is_err() {
                return Err(Error::Unavailable("the garbage collector stopped".into()));
            }
        }
    }

    /// Stops scheduling; waiting callers get Unavailable. A collection under way finishes.
    pub fn stop(&self) {
        let _ = self.shared.stop.send(true);
    }
}

/// The scheduler task's state.
struct Loop {
    activity: watch::Receiver<Activity>,
    /// The activity counts when the last collection started.
    base: Activity,
    /// When a threshold was found reached (None: not reached since the last collection).
    threshold_at: Option<Instant>,
    startup: Option<Instant>,
    /// When the last collection ended.
    last_end: Instant,
    collections: u32,
    pause_total: Duration,
    failures: u32,
}

impl Loop {
    fn new(mut activity: watch::Receiver<Activity>) -> Loop {
        let base = *activity.borrow_and_update();
        Loop {
            activity,
            base,
            threshold_at: None,
            startup: None,
            last_end: Instant::now(),
            collections: 0,
            pause_total: Duration::ZERO,
            failures: 0,
        }
    }

    /// The earliest an automatic collection may start: the pause threshold's spacing, or the
    /// back-off after failures.
    fn earliest(&self, config: &GcConfig) -> Instant {
        let mut wait = Duration::ZERO;
        if config.pause_threshold > 0.0 && self.collections > 0 {
            let average = self.pause_total.as_secs_f64() / f64::from(self.collections);
            wait = Duration::from_secs_f64(average / config.pause_threshold - average);
        }
        if self.failures > 0 {
            wait = wait.max(Duration::from_secs(1 << self.failures.min(6)).min(Duration::from_secs(60)));
        }
        self.last_end + wait
    }

    /// When the next collection is due, if any is.
    fn next(&mut self, shared: &Shared) -> Option<Instant> {
        let config = &shared.config;
        let now = Instant::now();
        let activity = *self.activity.borrow_and_update();
        let deletions = activity.deletions.saturating_sub(self.base.deletions);
        let mutations = activity.mutations.saturating_sub(self.base.mutations);
        let reached = (config.deletion_threshold > 0 && deletions >= config.deletion_threshold)
            || (config.mutation_threshold > 0 && mutations >= config.mutation_threshold);
        if reached && self.threshold_at.is_none() {
            self.threshold_at = Some(now);
        }
        let earliest = self.earliest(config);
        let requested = shared.pending.lock().unwrap_or_else(PoisonError::into_inner).requested_at;
        let candidates = [
            requested.map(|at| at + config.schedule_delay),
            self.startup,
            self.threshold_at.map(|at| (at + config.schedule_delay).max(earliest)),
            (!config.periodic_interval.is_zero()).then(|| (self.last_end + config.periodic_interval).max(earliest)),
        ];
        candidates.into_iter().flatten().min()
    }

    async fn until_stopped(mut self, shared: &Shared, mut stopped: watch::Receiver<bool>) {
        loop {
            if *stopped.borrow_and_update() {
                break;
            }
            let next = self.next(shared);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => self.run(shared).await,
                () = shared.wake.notified() => {}
                changed = self.activity.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = stopped.changed() => {}
            }
        }
        shared.done.send_modify(|round| {
            round.finished = u64::MAX;
            round.result = Err(Error::Unavailable("the garbage collector stopped".into()));
        });
    }

    /// Runs one collection and tells the callers waiting for it.
    async fn run(&mut self, shared: &Shared) {
        let number = {
            let mut pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.started += 1;
            pending.requested_at = None;
            pending.started
        };
        // Deletions from here on count towards the next collection.
        self.base = *self.activity.borrow_and_update();
        self.threshold_at = None;
        self.startup = None;
        let result = shared.collector.collect().await;
        self.last_end = Instant::now();
        match &result {
            Ok(stats) => {
                self.collections = self.collections.saturating_add(1);
                self.pause_total += stats.pause;
                self.failures = 0;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::error!(error = %e, "garbage collection failed");
            }
        }
        shared.done.send_modify(|round| {
            round.finished = number;
            round.result = result;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Fixture, fixture};
    use super::*;
    use crate::content::Digest;
    use crate::store::{Descriptor, Image};

    /// No automatic trigger at all: only start-up and requests.
    fn quiet() -> GcConfig {
        GcConfig { mutation_threshold: 0, periodic_interval: Duration::ZERO, ..GcConfig::default() }
    }

    async fn start(f: Fixture, config: GcConfig) -> (Fixture, GcScheduler) {
        let Fixture { dir, store, content, backend, snapshots, collector } = f;
        let scheduler = GcScheduler::start(collector, config, store.activity()).await;
        // The fixture's collector now belongs to the scheduler; give the fixture a spare one.
        let spare = Collector::new(
            store.clone(),
            BlobStore::open(&dir.path().join("content")).unwrap(),
            vec![],
            Duration::from_secs(3600),
        );
        (Fixture { dir, store, content, backend, snapshots, collector: spare }, scheduler)
    }

    /// Waits (event-driven; the bound only keeps a broken scheduler from hanging the test) until
    /// `n` collections have finished.
    async fn finished(scheduler: &GcScheduler, n: u64) {
        let mut done = scheduler.shared.done.subscribe();
        let wait = done.wait_for(|round| round.finished >= n);
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("collections ran").unwrap();
    }

    async fn image(f: &Fixture, name: &str, target: &Digest) {
        let target = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: target.to_string(),
            size: 1,
            annotations: Default::default(),
        };
        f.store
            .create_image("default", Image { name: name.into(), target: Some(target), ..Default::default() })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn startup_collection_runs_before_start_returns() {
        let f = fixture();
        let stray = f.put("default", b"left from last time", &[], None).await;
        let (f, scheduler) = start(f, quiet()).await;
        assert!(!f.has("default", &stray) && !f.blob_file(&stray).exists());
        assert_eq!(scheduler.shared.done.borrow().finished, 1);

        // A delayed start-up collection runs in the background instead.
        let f = fixture();
        let stray = f.put("default", b"left from last time", &[], None).await;
        let config = GcConfig { startup_delay: Duration::from_millis(1), ..quiet() };
        let (f, scheduler) = start(f, config).await;
        finished(&scheduler, 1).await;
        assert!(!f.has("default", &stray));
    }

    #[tokio::test]
    async fn a_requested_collection_includes_what_was_committed_before_the_request() {
        let (f, scheduler) = start(fixture(), quiet()).await;
        let manifest = f.put("default", b"manifest", &[], None).await;
        image(&f, "img", &manifest).await;
        // A collection is under way and stuck before its file pass (a writer holds the guard) ...
        let guard = f.store.guard_against_sweep().await;
        let first = tokio::spawn({
            let scheduler = scheduler.clone();
            async move { scheduler.collect().await }
        });
        while scheduler.shared.pending.lock().unwrap().started < 2 {
            tokio::task::yield_now().await;
        }
        // ... when the image goes and a second caller asks: that caller must get a later one.
        f.store.delete_image("default", "img").await.unwrap();
        let second = tokio::spawn({
            let scheduler = scheduler.clone();
            async move { scheduler.collect().await }
        });
        drop(guard);
        first.await.unwrap().unwrap();
        let stats = second.await.unwrap().unwrap();
        assert!(!f.has("default", &manifest) && !f.blob_file(&manifest).exists(), "{stats:?}");
        assert!(scheduler.shared.done.borrow().finished >= 3);
    }

    #[tokio::test]
    async fn deletions_and_writes_past_their_thresholds_start_a_collection() {
        let config = GcConfig { deletion_threshold: 2, pause_threshold: 0.0, ..quiet() };
        let (f, scheduler) = start(fixture(), config).await;
        let manifest = f.put("default", b"m", &[], None).await;
        image(&f, "a", &manifest).await;
        image(&f, "b", &manifest).await;
        f.store.delete_image("default", "a").await.unwrap();
        assert_eq!(scheduler.shared.pending.lock().unwrap().started, 1, "one deletion is not enough");
        f.store.delete_image("default", "b").await.unwrap();
        finished(&scheduler, 2).await;
        assert!(!f.has("default", &manifest));

        let config = GcConfig { mutation_threshold: 3, pause_threshold: 0.0, ..quiet() };
        let (f, scheduler) = start(fixture(), config).await;
        for data in [&b"one"[..], b"two", b"three"] {
            f.put("default", data, &[], None).await;
        }
        finished(&scheduler, 2).await;
        assert!(f.store.list_content("default", &|_| true).unwrap().is_empty());
    }

    #[tokio::test]
    async fn periodic_collections_run_without_changes() {
        let config = GcConfig { periodic_interval: Duration::from_millis(5), pause_threshold: 0.0, ..quiet() };
        let (_f, scheduler) = start(fixture(), config).await;
        finished(&scheduler, 4).await;
    }

    #[tokio::test]
    async fn stopped_scheduler_answers_unavailable() {
        let (_f, scheduler) = start(fixture(), quiet()).await;
        scheduler.stop();
        let err = scheduler.collect().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn pause_threshold_spaces_automatic_collections() {
        let (_tx, rx) = watch::channel(Activity::default());
        let mut state = Loop::new(rx);
        let config = GcConfig::default();
        assert_eq!(state.earliest(&config), state.last_end, "no collection yet: no spacing");
        state.collections = 2;
        state.pause_total = Duration::from_millis(20);
        // 10 ms on average at 2%: 490 ms between the end of one and the start of the next.
        assert_eq!(state.earliest(&config) - state.last_end, Duration::from_millis(490));
        let unlimited = GcConfig { pause_threshold: 0.0, ..config.clone() };
        assert_eq!(state.earliest(&unlimited), state.last_end);
        state.failures = 3;
        assert_eq!(state.earliest(&unlimited) - state.last_end, Duration::from_secs(8));
        state.failures = 30;
        assert_eq!(state.earliest(&unlimited) - state.last_end, Duration::from_secs(60));
    }

    #[test]
    fn durations_as_go_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(ms(100)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("2h45m"), Ok(Duration::from_secs(2 * 3600 + 45 * 60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("10µs"), Ok(Duration::from_micros(10)));
        for bad in ["", "5", "ms", "1x", "-1s", "1..2s", "1s2"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.starts_with(&format!("invalid duration {bad:?}")), "{err}");
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let parse = |text: &str| -> std::result::Result<GcConfig, String> {
            toml::from_str::<GcConfig>(text).map_err(|e| e.message().to_string())
        };
        assert_eq!(parse("").unwrap(), GcConfig::default());
        let config = parse("pause_threshold = 0.1\nschedule_delay = \"5ms\"\nperiodic_interval = \"0s\"").unwrap();
        assert_eq!((config.pause_threshold, config.schedule_delay), (0.1, Duration::from_millis(5)));
        assert!(config.periodic_interval.is_zero());
        assert!(parse("pause_threshold = 0.7").unwrap_err().contains("between 0 and 0.5"));
        assert!(parse("startup_delay = \"soon\"").unwrap_err().contains("invalid duration \"soon\""));
        assert!(parse("startup_delay = 100").is_err());
        assert!(parse("deletion_threshold = -1").is_err());
        assert!(parse("sync = true").unwrap_err().contains("unknown field"));
    }
}
