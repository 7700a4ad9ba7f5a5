//! What the tests of external plugins (native libraries and wasm components, of every kind) share: where the
//! built plugins are, their config tables, what berthd says about a loaded one, and a container run on a
//! snapshot plugin.

use std::path::{Path, PathBuf};

use crate::harness::*;
use crate::images_fixture::{self, BUSYBOX};

/// The command that builds the wasm components the tests load.
pub(crate) const BUILD: &str =
    "cargo build --manifest-path examples/wasm/Cargo.toml --target wasm32-wasip2 --release --locked";

/// The wasm component of crate `name` (with underscores), as [`BUILD`] made it.
pub(crate) fn wasm_component(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the wasm components first, from the repository root: {BUILD}",
        path.display()
    );
    path.canonicalize().unwrap()
}

/// The table of wasm plugin `id` from `path`, with the loader's `options` and the plugin's own `config`.
pub(crate) fn wasm_table(id: &str, path: &Path, options: &str, config: &str) -> String {
    format!(
        "[plugins.\"{id}\"]\nsource = \"wasm\"\npath = \"{}\"\n{options}\n[plugins.\"{id}\".config]\n{config}\n",
        path.display()
    )
}

pub(crate) fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The registry's row of plugin `id`.
pub(crate) fn plugin_status(started: &berth_core::registry::Started, id: &str) -> berth_core::registry::PluginStatus {
    let table = started.table.read().unwrap();
    table.plugins.iter().find(|p| p.id.to_string() == id).expect(id).clone()
}

/// Why the registry refused plugin `id`; panics if it did not.
pub(crate) fn refusal(started: &berth_core::registry::Started, id: &str) -> String {
    match plugin_status(started, id).state {
        berth_core::registry::PluginState::Failed(e) => e,
        other => panic!("{id} must be refused, it is {other:?}"),
    }
}

/// `berth plugins ls --format json`, as JSON.
pub(crate) fn plugins_json(daemon: &Daemon) -> Vec<serde_json::Value> {
    serde_json::from_str(&daemon.berth_ok(&["--format", "json", "plugins", "ls"])).unwrap()
}

pub(crate) fn plugin<'a>(plugins: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    plugins
        .iter()
        .find(|p| p["id"] == name && p["exports"]["berth.kind"] == kind)
        .unwrap_or_else(|| panic!("no plugin {kind}.{name} in {plugins:#?}"))
}

/// Asserts plugin `kind.name` of berthd loaded from `path` as a `source` (native, wasm) plugin, as
/// `berth plugins ls` shows it in JSON (source, path, content hash, no init error) and in its table (the
/// same, the hash cut to 12 digits, status ok); returns the JSON row for what the plugin's own test checks.
pub(crate) fn assert_loaded_from(
    daemon: &Daemon,
    kind: &str,
    name: &str,
    source: &str,
    path: &Path,
) -> serde_json::Value {
    let plugins = plugins_json(daemon);
    let row = plugin(&plugins, kind, name).clone();
    assert!(row["init_err"].is_null(), "{row:#}");
    let exports = &row["exports"];
    assert_eq!(exports["berth.source"], source);
    assert_eq!(exports["berth.path"], path.display().to_string());
    let sha256 = sha256_of(path);
    assert_eq!(exports["berth.sha256"], sha256);
    let table = daemon.berth_ok(&["plugins", "ls"]);
    let line = table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([kind, name]))
        .unwrap_or_else(|| panic!("no {kind} {name} in:\n{table}"));
    let shown = format!("{source} {} sha256:{}", path.display(), &sha256[..12]);
    assert!(line.contains(&shown) && line.trim_end().ends_with("ok"), "{line}");
    row
}

/// Asserts berthd's log has a line with all of `needles` (what a plugin logged or wrote to stderr) tagged with
/// plugin `id`.
pub(crate) fn assert_logged_by(daemon: &Daemon, id: &str, needles: &[&str]) {
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{log}"));
    assert!(line.contains(id), "{line}");
}

/// Imports the busybox image into `snapshotter` and runs `script` on it as container `id` (`ctr run --rm`):
/// asserts the image's layers were committed there, that the run ended with `want` (exit code, stdout), and
/// that the container's snapshot went with it while the image's layer stays.
pub(crate) fn assert_busybox_runs_on(daemon: &Daemon, snapshotter: &str, id: &str, script: &str, want: (i32, &str)) {
    let archive = images_fixture::busybox_archive();
    daemon.ctr_ok(&["images", "import", "--snapshotter", snapshotter, archive.to_str().unwrap()]);
    let snapshots = daemon.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    let chain = images_fixture::busybox().chain_ids();
    assert!(snapshots.contains(&chain[0]) && snapshots.contains("Committed"), "{snapshots}");
    let fifo = daemon.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let out =
        daemon.ctr(&["run", "--rm", "--snapshotter", snapshotter, "--fifo-dir", fifo, BUSYBOX, id, "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(want.0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), want.1);
    let snapshots = daemon.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert!(!snapshots.contains(id) && snapshots.contains(&chain[0]), "{snapshots}");
}

/// Removes the busybox image and asserts the collector (`--sync`) removed its layers from `snapshotter` too.
pub(crate) fn assert_image_removal_empties(daemon: &Daemon, snapshotter: &str) {
    daemon.ctr_ok(&["images", "rm", "--sync", BUSYBOX]);
    let snapshots = daemon.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert_eq!(snapshots.lines().count(), 1, "the collector removes the layers from the plugin too:\n{snapshots}");
}
