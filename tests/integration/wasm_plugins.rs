//! Plugins as wasm components: the snapshot example (examples/wasm/snapshot) loaded through config, through
//! the snapshot conformance suite and under real containers run by ctr; broken components (truncated, not a
//! component, another world, misnamed, a bad config) refused and misbehaving ones (a call that loops, one
//! that allocates past its cap, one that traps: examples/wasm/faulty) contained, while berthd and its other
//! plugins carry on; a replaced file swapped in under load without losing a call; stats answered from berthd's
//! copy while the component's revision (WIT 1.1.0) stays, fresh once it moves or the instances are replaced,
//! and a 1.0.0 component without revisions (examples/wasm/legacy) still served.
//!
//! The components are built apart from this workspace, for wasm32-wasip2 (see
//! [`BUILD`](crate::plugin_fixtures::BUILD)); .ci/test builds them before the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::snapshot::{Labels, SharedSnapshotter, SnapshotError};

use crate::harness::*;
use crate::plugin_fixtures::{
    assert_busybox_runs_on, assert_image_removal_empties, assert_loaded_from, assert_logged_by, plugin, plugin_status,
    plugins_json, sha256_of, wasm_component, wasm_table,
};

fn layers_component() -> PathBuf {
    wasm_component("berth_example_wasm_snapshot")
}

fn faulty_component() -> PathBuf {
    wasm_component("berth_test_wasm_faulty")
}

fn legacy_component() -> PathBuf {
    wasm_component("berth_test_wasm_legacy")
}

/// The table of the layers example keeping its snapshots in `dir` (granted as `/layers`).
fn layers_table(id: &str, path: &Path, dir: &Path, extra: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    format!(
        "[plugins.\"{id}\"]\nsource = \"wasm\"\npath = \"{}\"\npreopens = [{{ host = \"{dir}\", guest = \"/layers\" }}]\n{extra}\n[plugins.\"{id}\".config]\nhost_root = \"{dir}\"\n",
        path.display(),
        dir = dir.display(),
    )
}

/// [`load_alone`] with this file's source.
async fn load_alone(dir: &Path, tables: &str) -> berth_core::registry::Started {
    crate::harness::load_alone(berth_plugin_wasm::source(), dir, tables, false).await
}

fn snapshotter(started: &berth_core::registry::Started, id: &str) -> SharedSnapshotter {
    (*started.get::<SharedSnapshotter>(&id.parse().unwrap()).expect("a wasm snapshot plugin is a SharedSnapshotter"))
        .clone()
}

#[tokio::test]
async fn wasm_snapshot_example_passes_the_snapshot_suite() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-suite").tempdir_in("/tmp").unwrap();
    let layers = dir.path().join("layers");
    let started = load_alone(dir.path(), &layers_table("snapshot.layers", &layers_component(), &layers, "")).await;
    assert_eq!(plugin_status(&started, "snapshot.layers").state, berth_core::registry::PluginState::Loaded);
    let sn = snapshotter(&started, "snapshot.layers");
    assert_eq!(sn.name(), "layers");
    berth_core::testsuite::snapshot::run_all(sn.as_ref(), dir.path()).await;
    // It worked in its granted directory, and its compiled code went into the cache.
    assert!(layers.join("metadata.json").exists());
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("root/wasm-cache")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    drop(sn);
    started.shutdown();

    // Loaded again, it comes from the cache.
    let started = load_alone(dir.path(), &layers_table("snapshot.layers", &layers_component(), &layers, "")).await;
    let berth_core::external::Origin::External(origin) = plugin_status(&started, "snapshot.layers").origin else {
        panic!("a wasm plugin has an external origin")
    };
    assert_eq!(origin.details.get("cache").map(String::as_str), Some("cache hit"), "{origin:?}");
    started.shutdown();
}

#[tokio::test]
async fn wasm_faults_fail_one_call_and_the_next_gets_a_fresh_instance() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-faults").tempdir_in("/tmp").unwrap();
    let options = "call_timeout = \"300ms\"\nmemory_limit = \"16MiB\"";
    let started = load_alone(dir.path(), &wasm_table("snapshot.faulty", &faulty_component(), options, "")).await;
    let sn = snapshotter(&started, "snapshot.faulty");
    let calls = |sn: SharedSnapshotter| async move {
        let info = sn.stat("calls").await.expect("stat calls");
        info.labels["calls"].parse::<u32>().unwrap()
    };
    assert_eq!(calls(sn.clone()).await, 1);
    assert_eq!(calls(sn.clone()).await, 2, "a healthy instance serves the next call");
    assert!(matches!(sn.stat("nothing").await, Err(SnapshotError::NotFound(_))));

    let last_error = || plugin_status(&started, "snapshot.faulty").last_error.unwrap_or_default();
    for (key, want) in [
        ("loop", "plugin snapshot.faulty: call stat exceeded its time limit of 300ms"),
        ("alloc", "plugin snapshot.faulty: call stat exceeded its memory limit of 16 MiB"),
        ("trap", "plugin snapshot.faulty: call stat trapped: wasm trap: wasm `unreachable` instruction executed"),
    ] {
        let started_at = std::time::Instant::now();
        let e = sn.stat(key).await.expect_err(key).to_string();
        assert!(e.contains(want), "{key}: expected {want:?}, got {e:?}");
        assert!(started_at.elapsed() < Duration::from_secs(5), "{key}: the call was stopped");
        assert!(last_error().contains(want), "{key}: last error {:?}", last_error());
        // The instance that failed is gone: the next call is served by a fresh one.
        assert_eq!(calls(sn.clone()).await, 1, "after {key}");
    }
    assert_eq!(plugin_status(&started, "snapshot.faulty").state, berth_core::registry::PluginState::Loaded);
    drop(sn);
    started.shutdown();
}

#[tokio::test]
async fn wasm_init_failures_refuse_the_plugin_with_located_config_errors() {
    for (config, want) in [
        (
            "fail_int = true",
            "key plugins.\"snapshot.faulty\".config.fail_int: unknown field `fail_int`, expected `fail_init`",
        ),
        ("fail_init = true", "key plugins.\"snapshot.faulty\".config.fail_init: asked to fail"),
    ] {
        let dir = tempfile::Builder::new().prefix("berth-wasm-init").tempdir_in("/tmp").unwrap();
        let started = load_alone(dir.path(), &wasm_table("snapshot.faulty", &faulty_component(), "", config)).await;
        let status = plugin_status(&started, "snapshot.faulty");
        let berth_core::registry::PluginState::Failed(e) = &status.state else {
            panic!("{config}: the plugin must be refused, got {:?}", status.state)
        };
        assert!(e.starts_with("test.toml:") && e.contains(want), "{config}: {e}");
        started.shutdown();
    }
}

#[test]
fn wasm_snapshot_example_runs_containers_through_ctr() {
    if !requires_root() {
        return;
    }
    let wasm = layers_component();
    let layers = tempfile::Builder::new().prefix("berth-wasm-layers").tempdir_in("/tmp").unwrap();
    let daemon = Daemon::start_with(&layers_table("snapshot.layers", &wasm, layers.path(), ""));
    let row = assert_loaded_from(&daemon, "snapshot", "layers", "wasm", &wasm);
    let exports = &row["exports"];
    assert_eq!(exports["berth.version"], "1.0.0");
    assert_eq!(exports["berth.world"], "berth:snapshot/snapshot-plugin@1.1.0");
    assert!(exports["berth.wasmtime"].as_str().unwrap_or_default().starts_with("48."), "{exports:#}");

    // The image unpacked into the component's snapshots, and containers run on them.
    let script = "echo written > /tmp/f && cat /tmp/f && ls /bin/busybox && exit 3";
    assert_busybox_runs_on(&daemon, "layers", "wasm-layers", script, (3, "written\n/bin/busybox\n"));
    assert!(layers.path().join("metadata.json").exists());
    // Its log line (the host's log import) is in berthd's log, tagged with the plugin.
    assert_logged_by(&daemon, "snapshot.layers", &["layers in /layers"]);
    assert_image_removal_empties(&daemon, "layers");
    let left: Vec<_> = std::fs::read_dir(layers.path().join("snapshots")).unwrap().flatten().collect();
    assert!(left.is_empty(), "snapshot directories left: {left:?}");
}

#[test]
fn wasm_broken_plugins_are_refused_or_contained_and_berthd_carries_on() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-broken").tempdir_in("/tmp").unwrap();
    let dir = dir.path();
    let whole = std::fs::read(layers_component()).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let truncated = file("truncated.wasm", &whole[..whole.len() / 2]);
    let script = file("script.wasm", b"#!/bin/sh\necho I am a script\n");
    // The smallest core module and the smallest component: valid wasm, neither a berth plugin.
    let module = file("module.wasm", b"\0asm\x01\0\0\0");
    let empty = file("empty.wasm", b"\0asm\x0d\0\x01\0");

    let faulty = faulty_component();
    let mut tables = String::new();
    tables += &wasm_table("snapshot.truncated", &truncated, "", "");
    tables += &wasm_table("snapshot.script", &script, "", "");
    tables += &wasm_table("snapshot.module", &module, "", "");
    tables += &wasm_table("snapshot.empty", &empty, "", "");
    tables += &wasm_table("snapshot.missing", &dir.join("nowhere.wasm"), "", "");
    tables += &wasm_table("snapshot.misnamed", &faulty, "", "");
    tables += &wasm_table("snapshot.faulty", &faulty, "call_timeout = \"300ms\"\nmemory_limit = \"16MiB\"", "");
    let daemon = Daemon::start_with(&tables);
    let plugins = plugins_json(&daemon);
    let snapshot = |name: &str| plugin(&plugins, "snapshot", name);
    let expect = |name: &str, want: &str| {
        let e = snapshot(name)["init_err"]["message"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(want), "snapshot.{name}: expected an error with {want:?}, got {e:?}");
    };
    expect("truncated", "is not a valid wasm component");
    expect("script", "is not a wasm component: it is not a wasm file");
    expect("module", "is not a wasm component: it is a core wasm module, not a component");
    expect("empty", "the component does not export berth:snapshot/snapshotter@1.1.0 (its exports: none)");
    expect("missing", "cannot read");
    expect("misnamed", "plugin is named \"faulty\", but its table is [plugins.\"snapshot.misnamed\"]");
    // Refused components still show where they came from.
    assert_eq!(snapshot("truncated")["exports"]["berth.sha256"], sha256_of(&truncated));
    assert!(snapshot("faulty")["init_err"].is_null(), "{:#}", snapshot("faulty"));

    // A call that loops, allocates past the cap or traps fails with what it hit; berthd and the plugin go on.
    for (key, want) in [
        ("loop-1", "plugin snapshot.faulty: call prepare exceeded its time limit of 300ms"),
        ("alloc-1", "plugin snapshot.faulty: call prepare exceeded its memory limit of 16 MiB"),
        ("trap-1", "plugin snapshot.faulty: call prepare trapped"),
    ] {
        let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "faulty", "prepare", key]), key);
        assert!(e.contains(want), "{key}: expected {want:?}, got {e}");
        // The next call is answered, by a fresh instance.
        let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "faulty", "prepare", "fine"]), "a plain prepare");
        assert!(e.contains("faulty makes no snapshots"), "after {key}: {e}");
    }
    let plugins = plugins_json(&daemon);
    let faulty_row = plugin(&plugins, "snapshot", "faulty");
    let last = faulty_row["exports"]["berth.last_error"].as_str().unwrap_or_default();
    assert!(last.contains("call prepare trapped"), "{faulty_row:#}");
    // What the component wrote to stderr (its panic message) is in berthd's log, tagged with the plugin.
    assert_logged_by(&daemon, "snapshot.faulty", &["asked to trap", "berth_plugin"]);
    // Mounts of host paths it was not granted are refused, not handed to a container.
    let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "faulty", "prepare", "escape-1"]), "an escaping mount");
    assert!(
        e.contains("plugin snapshot.faulty: prepare returned a bind mount of /etc, which is not inside a directory granted to it for writing"),
        "{e}"
    );

    // The built-in plugins keep working.
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "prepare", "wasm-still-fine"]);
    daemon.ctr_ok(&["snapshots", "--snapshotter", "native", "rm", "wasm-still-fine"]);
    daemon.ctr_ok(&["namespaces", "create", "wasm-after-faults"]);
}

/// `bytes` with a custom section appended: the same component, another file (another hash).
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"berth-test";
    let payload = [&[name.len() as u8][..], name, tag.as_bytes()].concat();
    let mut out = bytes.to_vec();
    out.push(0);
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        out.push(if size > 0 { byte | 0x80 } else { byte });
        if size == 0 {
            break;
        }
    }
    out.extend_from_slice(&payload);
    out
}

// Multi-threaded, as berthd is: calls then run on their worker turned blocking (block_in_place).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wasm_hot_reload_under_load_loses_no_call() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-reload").tempdir_in("/tmp").unwrap();
    let layers = dir.path().join("layers");
    let path = dir.path().join("layers.wasm");
    let original = std::fs::read(layers_component()).unwrap();
    std::fs::write(&path, &original).unwrap();
    let started = load_alone(dir.path(), &layers_table("snapshot.layers", &path, &layers, "instances = 2")).await;
    let sn = snapshotter(&started, "snapshot.layers");
    sn.prepare("base-a", None, Labels::new()).await.unwrap();
    sn.commit("base", "base-a", Labels::new()).await.unwrap();

    // Callers stat the snapshot as fast as they can while the file is replaced.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (sn, stop) = (sn.clone(), Arc::clone(&stop));
        callers.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let info = sn.stat("base").await.unwrap_or_else(|e| panic!("call {calls} failed: {e}"));
                assert_eq!(info.name, "base");
                calls += 1;
            }
            calls
        }));
    }
    let origin = || match plugin_status(&started, "snapshot.layers").origin {
        berth_core::external::Origin::External(o) => o,
        _ => panic!("a wasm plugin has an external origin"),
    };
    let mut last = original.clone();
    for round in 1..=4 {
        let next = with_custom_section(&original, &format!("round {round}"));
        // Written beside, then renamed over: the watcher never sees half a file.
        let tmp = dir.path().join("layers.wasm.tmp");
        std::fs::write(&tmp, &next).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let want = sha256_of(&path);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while origin().sha256.as_deref() != Some(&want) {
            assert!(std::time::Instant::now() < deadline, "round {round}: the new file was not loaded: {:?}", origin());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(origin().details.get("generation").map(String::as_str), Some(&*(round + 1).to_string()));
        last = next;
    }
    // A broken replacement leaves the last good one serving, with the reason as the last error.
    std::fs::write(dir.path().join("broken.tmp"), &last[..last.len() / 3]).unwrap();
    std::fs::rename(dir.path().join("broken.tmp"), &path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !plugin_status(&started, "snapshot.layers")
        .last_error
        .unwrap_or_default()
        .contains("the previous version keeps serving")
    {
        assert!(std::time::Instant::now() < deadline, "the broken file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin().details.get("generation").map(String::as_str), Some("5"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        total += caller.await.expect("no call failed");
    }
    assert!(total > 100, "only {total} calls were made");
    assert_eq!(sn.stat("base").await.unwrap().name, "base");
    sn.remove("base").await.unwrap();
    drop(sn);
    started.shutdown();
}

#[test]
fn wasm_plugins_reload_on_request() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-reload-cli").tempdir_in("/tmp").unwrap();
    let path = dir.path().join("faulty.wasm");
    let original = std::fs::read(faulty_component()).unwrap();
    std::fs::write(&path, &original).unwrap();
    let daemon = Daemon::start_with(&wasm_table("snapshot.faulty", &path, "watch = false", ""));
    let sha = |daemon: &Daemon| {
        let plugins = plugins_json(daemon);
        plugin(&plugins, "snapshot", "faulty")["exports"]["berth.sha256"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(sha(&daemon), sha256_of(&path));

    // Not watched: a new file serves only once asked for.
    std::fs::write(&path, with_custom_section(&original, "next")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(sha(&daemon), sha256_of(&path));
    let out = daemon.berth_ok(&["plugins", "reload", "snapshot.faulty"]);
    assert_eq!(out, format!("snapshot.faulty reloaded: version 0.1.0, sha256:{}\n", sha256_of(&path)));
    assert_eq!(sha(&daemon), sha256_of(&path));
    let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "faulty", "prepare", "fine"]), "a plain prepare");
    assert!(e.contains("faulty makes no snapshots"), "{e}");

    // A broken file is refused with its reason; the previous one keeps serving.
    let serving = sha256_of(&path);
    std::fs::write(&path, b"\0asm\x0d\0\x01\0").unwrap();
    let e =
        fails(daemon.berth(&["plugins", "reload", "snapshot.faulty"]), "reloading a component that exports nothing");
    assert!(e.contains("the component does not export berth:snapshot/snapshotter@1.1.0"), "{e}");
    assert!(e.contains("the previous version keeps serving"), "{e}");
    assert_eq!(sha(&daemon), serving);
    let e = fails(daemon.ctr(&["snapshots", "--snapshotter", "faulty", "prepare", "fine"]), "a plain prepare");
    assert!(e.contains("faulty makes no snapshots"), "{e}");

    // Built-in plugins and unknown ones say why not.
    let e = fails(daemon.berth(&["plugins", "reload", "snapshot.native"]), "reloading a built-in plugin");
    assert!(e.contains("plugin snapshot.native cannot be reloaded"), "{e}");
    let e = fails(daemon.berth(&["plugins", "reload", "snapshot.nowhere"]), "reloading an unknown plugin");
    assert!(e.contains("plugin snapshot.nowhere") && e.contains("not found"), "{e}");
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn wasm_stats_through_revisions_follow_every_change_across_instances() {
    // Two registries on one directory of the example: two adapters, each with its own cache, and the
    // component's instances in each; what one changes the other must see at once.
    let dir = tempfile::Builder::new().prefix("berth-wasm-revisions").tempdir_in("/tmp").unwrap();
    let layers = dir.path().join("layers");
    let (one_dir, other_dir) = (dir.path().join("one"), dir.path().join("other"));
    let table = layers_table("snapshot.layers", &layers_component(), &layers, "instances = 2");
    let one = load_alone(&one_dir, &table).await;
    let other = load_alone(&other_dir, &table).await;
    let (a, b) = (snapshotter(&one, "snapshot.layers"), snapshotter(&other, "snapshot.layers"));
    let labels_of = |sn: &SharedSnapshotter, key: &'static str| {
        let sn = sn.clone();
        async move { sn.stat(key).await.map(|i| Arc::unwrap_or_clone(i.labels)) }
    };

    a.prepare("work", None, labels(&[("v", "1")])).await.unwrap();
    for _ in 0..3 {
        assert_eq!(labels_of(&b, "work").await.unwrap(), labels(&[("v", "1")]));
        assert_eq!(labels_of(&a, "work").await.unwrap(), labels(&[("v", "1")]));
    }
    // An update through one is seen by both, whose copies were kept under the old revision.
    b.update(
        berth_core::snapshot::Info { labels: Arc::new(labels(&[("v", "2")])), ..b.stat("work").await.unwrap() },
        &[],
    )
    .await
    .unwrap();
    assert_eq!(labels_of(&a, "work").await.unwrap(), labels(&[("v", "2")]));
    assert_eq!(labels_of(&b, "work").await.unwrap(), labels(&[("v", "2")]));

    // A commit: the key is gone and the name is new, in both.
    a.commit("done", "work", labels(&[("c", "1")])).await.unwrap();
    assert!(matches!(b.stat("work").await, Err(SnapshotError::NotFound(_))));
    assert_eq!(labels_of(&b, "done").await.unwrap(), labels(&[("c", "1")]));
    assert_eq!(labels_of(&a, "done").await.unwrap(), labels(&[("c", "1")]));

    // Removed and made again under the same name, with other labels: no copy of the old one answers.
    b.remove("done").await.unwrap();
    assert!(matches!(a.stat("done").await, Err(SnapshotError::NotFound(_))));
    b.prepare("work", None, Labels::new()).await.unwrap();
    b.commit("done", "work", labels(&[("c", "2")])).await.unwrap();
    assert_eq!(labels_of(&a, "done").await.unwrap(), labels(&[("c", "2")]));
    assert_eq!(labels_of(&b, "done").await.unwrap(), labels(&[("c", "2")]));
    // The kind moved too (active "work" was committed): the whole answer, not just the labels.
    assert_eq!(a.stat("done").await.unwrap().kind, berth_core::snapshot::Kind::Committed);

    a.remove("done").await.unwrap();
    drop((a, b));
    one.shutdown();
    other.shutdown();
}

#[tokio::test]
async fn wasm_repeated_stats_come_from_the_cache_until_the_instances_change() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-stat-cache").tempdir_in("/tmp").unwrap();
    let path = dir.path().join("faulty.wasm");
    let original = std::fs::read(faulty_component()).unwrap();
    std::fs::write(&path, &original).unwrap();
    // Every instance starts its revisions at 7, as a guest that keeps them per instance would: only berthd
    // forgetting its copies when an instance is replaced keeps the answers right.
    let started = load_alone(dir.path(), &wasm_table("snapshot.faulty", &path, "", "revision_base = 7")).await;
    let sn = snapshotter(&started, "snapshot.faulty");
    let calls = || {
        let sn = sn.clone();
        async move { sn.stat("calls").await.expect("stat calls").labels["calls"].parse::<u32>().unwrap() }
    };
    let instance = || {
        let sn = sn.clone();
        async move { sn.stat("big").await.expect("stat big").labels["faulty.instance"].clone() }
    };

    // The guest counts its stat calls: three stats of big reach it once.
    assert_eq!(calls().await, 1);
    let first = instance().await;
    let big = sn.stat("big").await.unwrap();
    assert_eq!(big.labels.len(), 65);
    let again = sn.stat("big").await.unwrap();
    assert!(Arc::ptr_eq(&again.labels, &big.labels), "a kept answer's labels are shared, not copied");
    assert_eq!(instance().await, first);
    assert_eq!(calls().await, 3, "the second and third stats of big were answered from berthd's copy");

    // A trap replaces the instance: the new one has big as it starts, at revision 7 again, but it is
    // another instance's big.
    assert!(sn.stat("trap").await.is_err());
    let after_trap = instance().await;
    assert_ne!(after_trap, first, "a fresh instance answered, not the copy kept from the one that trapped");
    assert_eq!(instance().await, after_trap);

    // A reload (a new file, watched) makes new instances too.
    let tmp = dir.path().join("faulty.wasm.tmp");
    std::fs::write(&tmp, with_custom_section(&original, "next")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // The row shows the new file as soon as it is read, before the swap: the new instances answer once
    // berthd forgot the copy kept under revision 7, or never.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after_reload = loop {
        let answer = instance().await;
        if answer != after_trap {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "the reloaded plugin's instances never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(after_reload, first);
    let berth_core::external::Origin::External(origin) = plugin_status(&started, "snapshot.faulty").origin else {
        panic!("a wasm plugin has an external origin")
    };
    assert_eq!(origin.sha256.as_deref(), Some(&*sha256_of(&path)));
    assert_eq!(instance().await, after_reload);
    assert_eq!(calls().await, 2, "the reloaded instance served big once, then this");

    // An update moves the revision, and its answer is kept under the new one: the stats after it are that
    // answer, not fetched again.
    let update = berth_core::snapshot::Info { labels: Arc::new(labels(&[("only", "this")])), ..big };
    let returned = sn.update(update, &[]).await.unwrap();
    assert_eq!(*returned.labels, labels(&[("only", "this")]));
    for _ in 0..2 {
        let after = sn.stat("big").await.unwrap();
        assert_eq!(*after.labels, labels(&[("only", "this")]));
        assert!(Arc::ptr_eq(&after.labels, &returned.labels), "the update's answer is kept, its labels shared");
    }
    assert_eq!(calls().await, 3, "no fetch after the update");
    // A trap replaces the instance, and its lineage's copies go: big is the fresh instance's again.
    assert!(sn.stat("trap").await.is_err());
    assert_eq!(sn.stat("big").await.unwrap().labels.len(), 65, "not the update kept from the old instance");
    drop(sn);
    started.shutdown();
}

#[tokio::test]
async fn wasm_component_of_the_world_before_revisions_is_still_served() {
    let dir = tempfile::Builder::new().prefix("berth-wasm-legacy").tempdir_in("/tmp").unwrap();
    let legacy = legacy_component();
    let started = load_alone(dir.path(), &wasm_table("snapshot.legacy", &legacy, "", "")).await;
    let status = plugin_status(&started, "snapshot.legacy");
    assert_eq!(status.state, berth_core::registry::PluginState::Loaded, "{status:?}");
    let sn = snapshotter(&started, "snapshot.legacy");
    // Without revisions every stat is fetched whole: the guest sees each one.
    for n in 1..=3 {
        assert_eq!(sn.stat("calls").await.unwrap().labels["calls"], n.to_string());
    }
    assert!(matches!(sn.stat("nothing").await, Err(SnapshotError::NotFound(k)) if k == "nothing"));
    let e = sn.prepare("p", None, Labels::new()).await.unwrap_err().to_string();
    assert!(e.contains("legacy makes no snapshots"), "{e}");
    drop(sn);
    started.shutdown();
}
