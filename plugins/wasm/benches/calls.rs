//! What a call into a wasm plugin costs against the built-in backend, and what loading one costs:
//!
//! ```sh
//! cargo build --manifest-path examples/wasm/Cargo.toml --target wasm32-wasip2 --release --locked
//! cargo bench -p berth-plugin-wasm --bench calls
//! ```
//!
//! Each case is `stat` of one snapshot through the core `Snapshotter` trait, as berthd's services call it
//! (an `await` that hops to a blocking thread for the plugin): `snapshot.native` (built in) against the wasm
//! example `snapshot.layers` (which also checks its metadata file's identity through WASI on every call) and
//! `snapshot.faulty` (answering from memory: the boundary alone). "small" is a snapshot without labels,
//! "64 KiB" one whose labels make its answer 64 KiB. Components with revisions (WIT 1.1.0) are asked for the
//! revision first and a repeated stat is answered from the adapter's copy (a hit); "changed" cases update
//! the snapshot before each stat (not timed), and the adapter keeps the update's answer under the revision
//! it reads after it, so the stat is a hit too; "new" is the first stat of a snapshot just made (prepare
//! and commit not timed), where nothing is kept and the whole answer is lifted out (a miss).
//! `snapshot.legacy` (a 1.0.0 component, without revisions) is the bare call without the revision call.
//! Figures are medians of per-call times in µs (p10 and p90 in parentheses). Loading is a registry starting
//! just the plugin: compiling, then from the cache.
//!
//! `cargo test` runs this target without `--bench`: it then only says how to run it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::config::Config;
use berth_core::registry::{Registry, Started};
use berth_core::snapshot::{Info, Labels, SharedSnapshotter};

const CALLS: usize = 5000;
/// Per round of a "changed" case, whose untimed updates (a metadata file written and synced, for the
/// example) take far longer than the stats.
const CHANGED_CALLS: usize = 400;
const ROUNDS: usize = 5;

fn component(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/wasm/target/wasm32-wasip2/release/{name}.wasm"))
}

async fn start(dir: &Path, tables: &str) -> Started {
    let mut registry = Registry::new();
    registry.register(berth_plugin_snapshot_native::registration()).unwrap();
    registry.add_source(berth_plugin_wasm::source()).unwrap();
    let text = format!(
        "version = 1\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\naddress = \"{dir}/s.sock\"\n{tables}\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        dir = dir.display(),
    );
    let config = Config::parse("bench.toml", &text, &registry).expect("config");
    registry.start(Arc::new(config)).await.expect("start")
}

fn snapshotter(started: &Started, id: &str) -> SharedSnapshotter {
    (*started.get::<SharedSnapshotter>(&id.parse().unwrap()).unwrap_or_else(|| panic!("{id} did not load"))).clone()
}

/// (median, p10, p90) of `CALLS` stats of `key`, in µs, after a warm-up.
async fn time_stats(sn: &SharedSnapshotter, key: &str) -> (f64, f64, f64) {
    time(sn, key, CALLS, false).await
}

/// (median, p10, p90) of `calls` stats of `key`, in µs, after a warm-up; with `changed`, each after an
/// update of one label (not timed).
async fn time(sn: &SharedSnapshotter, key: &str, calls: usize, changed: bool) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + calls / 20 {
        if changed {
            let info = Info {
                labels: Arc::new([("bench.changed".to_string(), i.to_string())].into()),
                ..sn.stat(key).await.expect("stat")
            };
            sn.update(info, &["labels.bench.changed".to_string()]).await.expect("update");
        }
        let t = Instant::now();
        let info = sn.stat(key).await.expect("stat");
        let elapsed = t.elapsed();
        if changed {
            assert_eq!(info.labels["bench.changed"], i.to_string(), "the stat after an update is fresh");
        }
        // The first twentieth warms up.
        if i >= calls / 20 {
            times.push(elapsed);
        }
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(times[calls / 2]), us(times[calls / 10]), us(times[calls * 9 / 10]))
}

/// (median, p10, p90) of `calls` first stats of snapshots just committed with 64 KiB of labels, in µs; the
/// prepare, commit and remove around each are not timed.
async fn time_new(sn: &SharedSnapshotter, calls: usize) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + calls / 20 {
        let (active, name) = (format!("new-{i}-a"), format!("new-{i}"));
        sn.prepare(&active, None, Labels::new()).await.expect("prepare");
        sn.commit(&name, &active, big_labels()).await.expect("commit");
        let t = Instant::now();
        let info = sn.stat(&name).await.expect("stat");
        let elapsed = t.elapsed();
        assert_eq!(info.labels.len(), big_labels().len(), "the new snapshot's stat lost labels");
        sn.remove(&name).await.expect("remove");
        if i >= calls / 20 {
            times.push(elapsed);
        }
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(times[calls / 2]), us(times[calls / 10]), us(times[calls * 9 / 10]))
}

fn big_labels() -> Labels {
    (0..64).map(|i| (format!("bench.label.{i:02}"), "x".repeat(1024 - 14))).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("the wasm plugin benchmark runs with: cargo bench -p berth-plugin-wasm --bench calls");
        return;
    }
    let (layers, faulty, legacy) = (
        component("berth_example_wasm_snapshot"),
        component("berth_test_wasm_faulty"),
        component("berth_test_wasm_legacy"),
    );
    for c in [&layers, &faulty, &legacy] {
        assert!(
            c.exists(),
            "{} is missing: cargo build --manifest-path examples/wasm/Cargo.toml --target wasm32-wasip2 --release --locked",
            c.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("berth-wasm-bench").tempdir_in("/var/tmp").unwrap();
    let layers_dir = dir.path().join("layers");
    std::fs::create_dir_all(&layers_dir).unwrap();
    let tables = format!(
        "[plugins.\"snapshot.native\"]\nroot_path = \"{native}\"\n\
         [plugins.\"snapshot.layers\"]\nsource = \"wasm\"\npath = \"{layers}\"\npreopens = [{{ host = \"{dir}\", guest = \"/layers\" }}]\n\
         [plugins.\"snapshot.layers\".config]\nhost_root = \"{dir}\"\n\
         [plugins.\"snapshot.faulty\"]\nsource = \"wasm\"\npath = \"{faulty}\"\n\
         [plugins.\"snapshot.legacy\"]\nsource = \"wasm\"\npath = \"{legacy}\"\n",
        native = dir.path().join("native").display(),
        layers = layers.display(),
        faulty = faulty.display(),
        legacy = legacy.display(),
        dir = layers_dir.display(),
    );
    let started = start(dir.path(), &tables).await;
    let (native, wasm, bare, old) = (
        snapshotter(&started, "snapshot.native"),
        snapshotter(&started, "snapshot.layers"),
        snapshotter(&started, "snapshot.faulty"),
        snapshotter(&started, "snapshot.legacy"),
    );
    for sn in [&native, &wasm] {
        sn.prepare("small-a", None, Labels::new()).await.unwrap();
        sn.commit("small", "small-a", Labels::new()).await.unwrap();
        sn.prepare("big-a", None, Labels::new()).await.unwrap();
        sn.commit("big", "big-a", big_labels()).await.unwrap();
    }
    let med = |r: &[(f64, f64, f64)]| {
        (
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().map(|x| x.1).collect()),
            median(r.iter().map(|x| x.2).collect()),
        )
    };
    let cell = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} µs ({lo:.1}–{hi:.1})");

    // Repeated stats: through the components with revisions, hits.
    println!(
        "| case | built-in `snapshot.native` | wasm `snapshot.layers` | added | wasm bare (`snapshot.faulty`) | added |"
    );
    println!("|---|---|---|---|---|---|");
    let mut natives = Vec::new();
    // faulty's stat("calls") has no revision (every stat changes it): revision call and whole stat.
    for (case, key, bare_key) in [("stat, small", "small", "calls"), ("stat, 64 KiB answer", "big", "big")] {
        let mut rows: [Vec<(f64, f64, f64)>; 3] = Default::default();
        for _ in 0..ROUNDS {
            rows[0].push(time_stats(&native, key).await);
            rows[1].push(time_stats(&wasm, key).await);
            rows[2].push(time_stats(&bare, bare_key).await);
        }
        let (n, w, b) = (med(&rows[0]), med(&rows[1]), med(&rows[2]));
        natives.push(n);
        println!("| {case} | {} | {} | {:.1} µs | {} | {:.1} µs |", cell(n), cell(w), w.0 - n.0, cell(b), b.0 - n.0);
    }

    // Misses, and the bare call of a component without revisions.
    println!();
    println!("| case | wasm | added over built-in |");
    println!("|---|---|---|");
    let big_native = natives[1].0;
    let small_native = natives[0].0;
    let cases: [(&str, &SharedSnapshotter, &str, usize, bool, f64); 4] = [
        ("64 KiB answer changed before each stat, `snapshot.faulty`", &bare, "big", CHANGED_CALLS, true, big_native),
        ("64 KiB answer changed before each stat, `snapshot.layers`", &wasm, "big", CHANGED_CALLS, true, big_native),
        ("small, `snapshot.layers` changed before each stat", &wasm, "small", CHANGED_CALLS, true, small_native),
        ("bare call without revisions, `snapshot.legacy` (1.0.0)", &old, "calls", CALLS, false, small_native),
    ];
    for (case, sn, key, calls, changed, base) in cases {
        let mut rows = Vec::new();
        for _ in 0..ROUNDS {
            rows.push(time(sn, key, calls, changed).await);
        }
        let r = med(&rows);
        println!("| {case} | {} | {:.1} µs |", cell(r), r.0 - base);
    }
    let (mut new_native, mut new_wasm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        new_native.push(time_new(&native, CHANGED_CALLS).await);
        new_wasm.push(time_new(&wasm, CHANGED_CALLS).await);
    }
    let (n, w) = (med(&new_native), med(&new_wasm));
    println!(
        "| 64 KiB answer, first stat of a snapshot just made, `snapshot.layers` (built-in: {}) | {} | {:.1} µs |",
        cell(n),
        cell(w),
        w.0 - n.0
    );
    for sn in [&native, &wasm] {
        sn.remove("small").await.unwrap();
        sn.remove("big").await.unwrap();
    }
    drop((native, wasm, bare, old));
    started.shutdown();

    // Loading: a registry with just the wasm plugin, compiled (empty cache), then from the cache.
    let mut loads: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        let dir = tempfile::Builder::new().prefix("berth-wasm-load").tempdir_in("/var/tmp").unwrap();
        let table = format!("[plugins.\"snapshot.faulty\"]\nsource = \"wasm\"\npath = \"{}\"\n", faulty.display());
        for (i, what) in ["compiled", "cache hit"].iter().enumerate() {
            let t = Instant::now();
            let started = start(dir.path(), &table).await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let row = started
                .table
                .read()
                .unwrap()
                .plugins
                .iter()
                .find(|p| p.id.to_string() == "snapshot.faulty")
                .cloned()
                .unwrap();
            let berth_core::external::Origin::External(origin) = row.origin else { unreachable!() };
            let cache = origin.details.get("cache").cloned().unwrap_or_default();
            assert!(cache.starts_with(if i == 0 { "compiled" } else { "cache hit" }), "round {round} {what}: {cache}");
            loads[i].push(ms);
            started.shutdown();
        }
    }
    let size = std::fs::metadata(&faulty).unwrap().len();
    println!();
    println!("| load of `snapshot.faulty` ({} KiB) | median of {ROUNDS} |", size / 1024);
    println!("|---|---|");
    println!("| compiled (empty cache) | {:.1} ms |", median(loads[0].clone()));
    println!("| from the cache | {:.1} ms |", median(loads[1].clone()));
}
