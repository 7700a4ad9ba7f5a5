//! `berth pull` (berthd's own puller, service.pull) against a real Distribution registry on
//! 127.0.0.1: pull and run, inspect, basic auth, the ways a pull fails (missing tag, registry
//! down, bad credentials, a blob whose digest does not match), image indexes, and resuming a
//! download that broke off, through a proxy that cuts the connection in the middle of a layer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::harness::*;
use crate::images_fixture::{self, ImageBuilder, ImageLayout, Registry};

fn registry_with_busybox() -> Registry {
    let registry = Registry::start();
    registry.push(images_fixture::busybox(), "busybox:latest");
    registry
}

/// Names of the images `ctr images ls -q` shows.
fn images(daemon: &Daemon) -> Vec<String> {
    daemon.ctr_ok(&["images", "ls", "-q"]).lines().map(str::to_owned).collect()
}

/// Digests of the blobs namespace default has.
fn content(daemon: &Daemon) -> Vec<String> {
    daemon.ctr_ok(&["content", "ls", "-q"]).lines().map(str::to_owned).collect()
}

fn run_echo(daemon: &Daemon, image: &str, id: &str) -> String {
    let fifo = daemon.fifo_dir();
    daemon.ctr_ok(&["run", "--rm", "--fifo-dir", fifo.to_str().unwrap(), image, id, "sh", "-c", "echo pulled; id -u"])
}

#[test]
fn berth_pull_then_ctr_run_and_inspect() {
    if !requires_root() {
        return;
    }
    let registry = registry_with_busybox();
    let daemon = Daemon::start();
    let reference = registry.reference("busybox:latest");
    let out = daemon.berth(&["pull", &reference]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "berth pull: {stderr}");
    let layout = images_fixture::busybox();
    assert_eq!(stdout.trim(), format!("{reference} {}", layout.manifest_digest()));
    // Progress, one line per status change seen (the stream samples): the layer ends unpacked.
    let layer = layout.manifest()["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = layout.manifest()["layers"][0]["size"].as_u64().unwrap();
    assert!(stderr.contains(&format!("layer-{layer} unpacked {size}/{size}")), "no unpacked layer in:\n{stderr}");
    assert_eq!(images(&daemon), std::slice::from_ref(&reference));
    // The layer is one committed snapshot named by its chain ID; no active snapshot is left over.
    let snapshots = daemon.ctr_ok(&["snapshots", "ls"]);
    assert!(snapshots.contains(&layout.chain_ids()[0]) && !snapshots.contains("Active"), "{snapshots}");
    assert!(daemon.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(), "the pull's lease was not deleted");
    // containerd's labels, which its garbage collector and ctr read.
    let labels = daemon.ctr_ok(&["content", "ls"]);
    assert!(labels.contains(&format!("containerd.io/uncompressed={}", layout.diff_ids()[0])), "{labels}");
    assert!(labels.contains(&format!("containerd.io/gc.ref.content.l.0={layer}")), "{labels}");
    assert!(labels.contains(&format!("containerd.io/gc.ref.snapshot.overlayfs={}", layout.chain_ids()[0])), "{labels}");

    assert_eq!(run_echo(&daemon, &reference, "pulled1"), "pulled\n0\n");

    let inspect: serde_json::Value =
        serde_json::from_str(&daemon.berth_ok(&["images", "inspect", &reference])).unwrap();
    assert_eq!(inspect["Config"], layout.config(), "inspect prints the OCI image config");
    assert_eq!(inspect["Manifest"]["digest"], layout.manifest_digest());

    // Pulling again finds everything there: nothing is fetched or unpacked twice.
    let again = daemon.berth(&["pull", &reference]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("layer-{layer} unpacked")), "{stderr}");
    assert!(!stderr.contains("downloading") && !stderr.contains("unpacking"), "{stderr}");
    assert_eq!(daemon.ctr_ok(&["snapshots", "ls"]), snapshots, "no snapshot was made again");
}

#[test]
fn missing_tag_registry_down_and_unknown_snapshotter_are_clear_errors() {
    if !requires_root() {
        return;
    }
    let mut registry = registry_with_busybox();
    let daemon = Daemon::start();
    let missing = registry.reference("busybox:nope");
    let e = fails(daemon.berth(&["pull", &missing]), "pull of a missing tag");
    assert!(e.contains(&missing) && e.contains("not found"), "{e}");
    let e = fails(daemon.berth(&["pull", "--snapshotter", "zfs", &registry.reference("busybox:latest")]), "pull");
    assert!(e.contains("snapshotter \"zfs\""), "{e}");
    let e = fails(daemon.berth(&["pull", "Not A Reference"]), "a bad reference");
    assert!(e.contains("image reference"), "{e}");
    registry.stop();
    let e = fails(daemon.berth(&["pull", &registry.reference("busybox:latest")]), "pull from a stopped registry");
    assert!(e.contains(&format!("registry {} is unreachable", registry.addr)), "{e}");
    assert!(images(&daemon).is_empty() && content(&daemon).is_empty(), "a failed pull recorded something");
    assert!(daemon.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(), "a failed pull left its lease");
}

#[test]
fn basic_auth_right_wrong_and_missing_credentials() {
    if !requires_root() {
        return;
    }
    let registry = Registry::with_auth("berth", "s3cret");
    registry.push(images_fixture::busybox(), "busybox:latest");
    let daemon = Daemon::start();
    let reference = registry.reference("busybox:latest");
    for (args, what) in [
        (vec!["pull", "--user", "berth:wrong", reference.as_str()], "wrong password"),
        (vec!["pull", reference.as_str()], "no credentials"),
    ] {
        let e = fails(daemon.berth(&args), what);
        assert!(e.contains(&format!("registry {} refused", registry.addr)) && e.contains("credentials"), "{what}: {e}");
    }
    assert!(images(&daemon).is_empty() && content(&daemon).is_empty());
    daemon.berth_ok(&["pull", "--user", "berth:s3cret", &reference]);
    assert_eq!(run_echo(&daemon, &reference, "authed"), "pulled\n0\n");
}

/// The registry's own file of blob `digest`.
fn registry_blob(registry: &Registry, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[test]
fn a_blob_whose_digest_does_not_match_is_refused_and_never_committed() {
    if !requires_root() {
        return;
    }
    let registry = registry_with_busybox();
    let layout = images_fixture::busybox();
    let layer = layout.manifest()["layers"][0]["digest"].as_str().unwrap().to_owned();
    // Same size, one byte changed: only the digest can tell.
    let path = registry_blob(&registry, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let daemon = Daemon::start();
    let e = fails(daemon.berth(&["pull", &registry.reference("busybox:latest")]), "pull of a corrupted layer");
    assert!(e.contains(&layer) && e.contains("digest"), "{e}");
    assert!(!content(&daemon).contains(&layer), "the corrupted layer was committed");
    assert!(images(&daemon).is_empty());
    // Its ingest is gone too: the next pull must not resume from bad bytes.
    assert!(daemon.ctr_ok(&["content", "active"]).lines().nth(1).is_none(), "an ingest of the bad blob stayed");
    let snapshots = daemon.ctr_ok(&["snapshots", "ls"]);
    assert_eq!(snapshots.lines().count(), 1, "a snapshot was left: {snapshots}");
}

#[test]
fn an_index_resolves_to_the_host_platform() {
    if !requires_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (layout, index_digest) = index_of_busybox(&dir.path().join("index"));
    let registry = Registry::start();
    push_all(&layout, &registry.reference("multi:1"));
    let daemon = Daemon::start();
    let reference = registry.reference("multi:1");
    let out = daemon.berth_ok(&["pull", &reference]);
    assert_eq!(out.trim(), format!("{reference} {index_digest}"), "the image's target is the index");
    assert_eq!(run_echo(&daemon, &reference, "multi1"), "pulled\n0\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&daemon.berth_ok(&["images", "inspect", &reference])).unwrap();
    assert_eq!(inspect["Manifest"]["digest"], images_fixture::busybox().manifest_digest(), "the amd64 manifest");

    let e = fails(daemon.berth(&["pull", "--platform", "linux/s390x", &reference]), "a platform the index lacks");
    assert!(e.contains("no manifest for platform linux/s390x") && e.contains("linux/amd64"), "{e}");
}

/// A copy of busybox's layout whose tag names an index of busybox's manifest (for this host)
/// and of a twin manifest that claims the other common architecture (the same blobs: the pull
/// must not pick it). Returns the layout and the index's digest.
fn index_of_busybox(dir: &std::path::Path) -> (ImageLayout, String) {
    let layout = images_fixture::busybox().copy_to(dir);
    let manifest = layout.manifest_digest();
    let manifest_size = layout.blob(&manifest).len();
    let mut twin = layout.manifest();
    twin["annotations"] = serde_json::json!({"berth.test": "twin"});
    let twin = serde_json::to_vec(&twin).unwrap();
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other_arch = if host_arch == "amd64" { "arm64" } else { "amd64" };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put_blob(&layout, &twin),
             "size": twin.len(), "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
             "platform": {"os": "linux", "architecture": host_arch}},
        ]
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = put_blob(&layout, &index);
    let index_path = layout.dir.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for entry in top["manifests"].as_array_mut().unwrap() {
        entry["digest"] = index_digest.clone().into();
        entry["size"] = index.len().into();
        entry["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    }
    std::fs::write(index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    (layout, index_digest)
}

fn put_blob(layout: &ImageLayout, data: &[u8]) -> String {
    let digest = images_fixture::sha256_digest(data);
    std::fs::write(layout.dir.join("blobs/sha256").join(&digest["sha256:".len()..]), data).unwrap();
    digest
}

/// Pushes the index and every manifest it lists (`skopeo copy --all`), skopeo kept off the host's
/// configuration as the fixture's pushes are.
fn push_all(layout: &ImageLayout, reference: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let registries = tmp.path().join("registries.conf");
    std::fs::write(&registries, "unqualified-search-registries = []\n").unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "--tmpdir"])
        .arg(tmp.path())
        .arg("--registries.d")
        .arg(tmp.path())
        .args(["copy", "--all", "--dest-tls-verify=false", &layout.oci_ref(), &format!("docker://{reference}")])
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .env("REGISTRY_AUTH_FILE", tmp.path().join("auth.json"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy --all: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TCP proxy in front of the registry that records every request head it forwards and, while
/// armed, cuts the first response to a GET of `cut_blob` after `cut_after` bytes.
struct CuttingProxy {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    armed: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: &str, cut_blob: &str, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(AtomicBool::new(true));
        let (upstream, cut_blob) = (upstream.to_owned(), cut_blob.to_owned());
        let cut_after = cut_after.min(u64::MAX - 1);
        let (recorded, arm) = (requests.clone(), armed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                // u64::MAX: no cut on this connection (yet).
                let budget = Arc::new(AtomicU64::new(u64::MAX));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (recorded, arm, cut_blob, budget2) =
                    (recorded.clone(), arm.clone(), cut_blob.clone(), budget.clone());
                std::thread::spawn(move || {
                    pipe_requests(client, server, &recorded, &arm, &cut_blob, &budget, cut_after)
                });
                std::thread::spawn(move || pipe_responses(s2, c2, &budget2));
            }
        });
        CuttingProxy { addr, requests, armed }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn pipe_requests(
    mut from: TcpStream,
    mut to: TcpStream,
    recorded: &Mutex<Vec<String>>,
    armed: &AtomicBool,
    cut_blob: &str,
    budget: &AtomicU64,
    cut_after: u64,
) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("GET ") {
            if text.contains(&format!("/blobs/{cut_blob}")) && armed.swap(false, Ordering::SeqCst) {
                budget.store(cut_after, Ordering::SeqCst);
            }
            recorded.lock().unwrap().push(text);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn pipe_responses(mut from: TcpStream, mut to: TcpStream, budget: &AtomicU64) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::SeqCst);
        if left != u64::MAX && (n as u64) >= left {
            // The cut: what fits in the budget, then both sides closed.
            let _ = to.write_all(&buf[..left as usize]);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if left != u64::MAX {
            budget.store(left - n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A layer of `size` incompressible bytes on busybox, so that a cut lands in the middle of it.
fn big_layer_image(dir: &std::path::Path, size: usize) -> ImageLayout {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    ImageBuilder::on(images_fixture::busybox(), dir).file("/big.bin", &data).build()
}

#[test]
fn a_download_that_breaks_off_resumes_where_it_stopped() {
    if !requires_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = big_layer_image(&dir.path().join("big"), 6 << 20);
    let registry = Registry::start();
    registry.push(&layout, "big:1");
    let layers = layout.manifest()["layers"].as_array().unwrap().clone();
    let big = layers.last().unwrap()["digest"].as_str().unwrap().to_owned();

    // Within one pull: the cut download is retried with a range request for the rest.
    let proxy = CuttingProxy::start(&registry.addr, &big, 2 << 20);
    let daemon = Daemon::start();
    let reference = format!("{}/big:1", proxy.addr);
    daemon.berth_ok(&["pull", &reference]);
    let ranged: Vec<_> = proxy.requests().into_iter().filter(|r| r.contains(&format!("/blobs/{big}"))).collect();
    assert_eq!(ranged.len(), 2, "one cut request and one resumed: {ranged:#?}");
    let range = ranged[1].lines().find(|l| l.to_ascii_lowercase().starts_with("range:")).unwrap_or_default();
    let from: u64 = range.split('=').nth(1).and_then(|r| r.trim().trim_end_matches('-').parse().ok()).unwrap_or(0);
    assert!(from > 0 && from <= 2 << 20, "the retry asked for the rest, not all of it: {range:?}");
    let fifo = daemon.fifo_dir();
    let sum = daemon.ctr_ok(&[
        "run",
        "--rm",
        "--fifo-dir",
        fifo.to_str().unwrap(),
        &reference,
        "sum1",
        "wc",
        "-c",
        "/big.bin",
    ]);
    assert_eq!(sum.split_whitespace().next(), Some((6u64 << 20).to_string().as_str()));

    // Across pulls: with no retries, the pull fails and leaves its ingest; the next resumes it.
    let proxy = CuttingProxy::start(&registry.addr, &big, 2 << 20);
    let daemon = Daemon::start_with("[plugins.\"service.pull\"]\nretries = 0\n");
    let reference = format!("{}/big:1", proxy.addr);
    let e = fails(daemon.berth(&["pull", &reference]), "a pull whose layer is cut with no retries");
    assert!(e.contains(&big), "{e}");
    let active = daemon.ctr_ok(&["content", "active"]);
    assert!(active.contains(&format!("layer-{big}")), "the cut layer's ingest is kept: {active}");
    assert!(!proxy.armed.load(Ordering::SeqCst));
    daemon.berth_ok(&["pull", &reference]);
    let ranged: Vec<_> = proxy.requests().into_iter().filter(|r| r.contains(&format!("/blobs/{big}"))).collect();
    assert_eq!(ranged.len(), 2, "{ranged:#?}");
    assert!(ranged[1].to_ascii_lowercase().contains("range: bytes="), "the second pull resumed: {:?}", ranged[1]);
    assert!(daemon.ctr_ok(&["content", "active"]).lines().nth(1).is_none(), "the ingest is committed now");
    let sum = daemon.ctr_ok(&[
        "run",
        "--rm",
        "--fifo-dir",
        daemon.fifo_dir().to_str().unwrap(),
        &reference,
        "sum2",
        "wc",
        "-c",
        "/big.bin",
    ]);
    assert_eq!(sum.split_whitespace().next(), Some((6u64 << 20).to_string().as_str()));
}

#[test]
fn on_a_terminal_progress_is_bars_redrawn_in_place() {
    if !requires_root() {
        return;
    }
    let registry = registry_with_busybox();
    let daemon = Daemon::start();
    let reference = registry.reference("busybox:latest");
    // script(1) gives berth a pseudo-terminal; its output is what a user would see.
    let command = format!("{} --address {} pull {reference}", BERTH, daemon.socket.display());
    let out = std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let full_bar = format!("[{}]", "=".repeat(30));
    assert!(text.contains("\x1b[2K") && text.contains(&full_bar), "no bars: {text:?}");
    assert!(text.lines().any(|l| l.contains("layer-sha256:") && l.contains("unpacked") && l.contains("MB")), "{text}");
    assert!(text.contains(&format!("{reference} sha256:")), "{text}");
}

#[test]
fn layers_are_fetched_in_layer_order() {
    if !requires_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut builder = ImageBuilder::on(images_fixture::busybox(), dir.path().join("layers"));
    for i in 0..4 {
        builder.file(&format!("/layer{i}"), format!("{i}\n"));
    }
    let layout = builder.build();
    let registry = Registry::start();
    registry.push(&layout, "layers:1");
    // One download at a time: the order the registry serves them is the order they were asked for.
    let daemon = Daemon::start_with("[plugins.\"service.pull\"]\nmax_concurrent_downloads = 1\n");
    let before = registry.log_text().len();
    daemon.berth_ok(&["pull", &registry.reference("layers:1")]);
    let log = registry.log_text();
    let layers: Vec<String> = layout.manifest()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let fetched: Vec<&String> = log[before..]
        .lines()
        .filter(|l| l.contains("GET /v2/layers/blobs/"))
        .filter_map(|l| layers.iter().find(|d| l.contains(d.as_str())))
        .collect();
    assert_eq!(fetched, layers.iter().collect::<Vec<_>>(), "blob requests out of layer order:\n{log}");
    let fifo = daemon.fifo_dir();
    let out = daemon.ctr_ok(&[
        "run",
        "--rm",
        "--fifo-dir",
        fifo.to_str().unwrap(),
        &registry.reference("layers:1"),
        "l1",
        "cat",
        "/layer0",
        "/layer3",
    ]);
    assert_eq!(out, "0\n3\n");
}

/// A token from `tokens` for `scope`, asked for as a client of the token service would.
fn token_for(tokens: &images_fixture::TokenServer, scope: &str) -> String {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(&tokens.addr).unwrap();
    let basic = images_fixture::base64_std(format!("{}:{}", tokens.user, tokens.password).as_bytes());
    write!(stream, "GET /token?service=berth-test&scope={scope} HTTP/1.0\r\nAuthorization: Basic {basic}\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if line == "\r\n" {
            break;
        }
        line.clear();
    }
    reader.read_to_string(&mut body).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["token"].as_str().unwrap().to_owned()
}

#[test]
fn bearer_tokens_from_the_registrys_token_service() {
    if !requires_root() {
        return;
    }
    let tokens = images_fixture::TokenServer::start("berth", "t0ken");
    let registry = Registry::with_token_auth(&tokens);
    registry.push(images_fixture::busybox(), "busybox:latest");
    let daemon = Daemon::start();
    let reference = registry.reference("busybox:latest");

    // No credentials, or wrong ones: the token service refuses, and the pull says so.
    for (args, what) in [
        (vec!["pull", reference.as_str()], "no credentials"),
        (vec!["pull", "--user", "berth:wrong", reference.as_str()], "a wrong password"),
    ] {
        let e = fails(daemon.berth(&args), what);
        assert!(e.contains(&registry.addr) && (e.contains("credentials") || e.contains("authenticat")), "{what}: {e}");
    }
    assert!(images(&daemon).is_empty());

    // Basic credentials: oci-client follows the Bearer challenge to the token service.
    let issued = tokens.issued();
    daemon.berth_ok(&["pull", "--user", "berth:t0ken", &reference]);
    assert!(tokens.issued() > issued, "no token was asked for");
    assert_eq!(run_echo(&daemon, &reference, "bearer1"), "pulled\n0\n");

    // A bearer token handed over as is (`--token`), into a fresh daemon.
    let daemon = Daemon::start();
    let token = token_for(&tokens, "repository:busybox:pull");
    daemon.berth_ok(&["pull", "--token", &token, &reference]);
    assert_eq!(run_echo(&daemon, &reference, "bearer2"), "pulled\n0\n");
    let e = fails(daemon.berth(&["pull", "--token", "not-a-token", &reference]), "a bad token");
    assert!(e.contains(&registry.addr), "{e}");
}
