//! Image fixtures built at test time from what the test setup installs (.ci/run): OCI image layouts
//! of a busybox root filesystem (umoci), oci-archives of them (skopeo), images with extra layers,
//! whiteouts or hand-made hostile layers, and a real registry (Distribution's `docker-registry`)
//! to push them to.
//!
//! ```rust,ignore
//! let archive = images_fixture::busybox_archive(); // localhost/busybox:latest, built once
//! daemon.ctr_ok(&["images", "import", archive.to_str().unwrap()]);
//!
//! let layout = ImageBuilder::on(images_fixture::busybox(), dir.join("img"))
//!     .file("/etc/motd", "hello\n")
//!     .whiteout("/bin/vi")
//!     .build();
//! let registry = Registry::start(); // or Registry::with_auth("u", "p")
//! registry.push(&layout, "busybox:latest");
//! daemon.ctr_ok(&["images", "pull", "--plain-http", &registry.reference("busybox:latest")]);
//! ```
//!
//! Everything needs root (umoci keeps file owners only as root); tests call `requires_root()`
//! first. skopeo run as root keeps its blob-info cache in /var/lib/containers/cache whatever the
//! flags: that cache is only a hint (a missing blob is uploaded anyway), so it is left there.

#![allow(dead_code)] // each test module uses a part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The name `busybox_archive` gives its image, and `ctr run` can use after importing it.
pub const BUSYBOX: &str = "localhost/busybox:latest";

/// An OCI image layout directory with one tagged image in it.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    pub dir: PathBuf,
    pub tag: String,
}

/// A busybox layout built once per test process (tests run in parallel: the first one builds it,
/// the others wait). Do not modify it: `ImageBuilder::on` copies it first.
pub fn busybox() -> &'static ImageLayout {
    static LAYOUT: OnceLock<ImageLayout> = OnceLock::new();
    LAYOUT.get_or_init(|| busybox_image(&fixtures_dir().join("busybox")))
}

/// An oci-archive of `busybox()` named `BUSYBOX`, written once per test process.
pub fn busybox_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let path = fixtures_dir().join("busybox.tar");
        busybox().write_archive(&path, BUSYBOX);
        path
    })
}

/// Builds a one-layer busybox image at `dir` (which must not exist yet): /bin/busybox with one
/// symlink per applet, /etc/passwd and /etc/group for root, empty /proc, /sys, /dev, /tmp and
/// /root, and `/bin/sh` as the command. Uncached: `busybox()` is the cached one.
pub fn busybox_image(dir: &Path) -> ImageLayout {
    let rootfs = tempfile::tempdir().expect("tempdir");
    let root = rootfs.path();
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox missing: install Debian's busybox-static (the test setup in .ci/run does)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let mut builder = ImageBuilder::new(dir);
    builder.insert(root, "/");
    builder.build()
}

/// Builds an image layer by layer with umoci: each call below that adds content is one layer.
pub struct ImageBuilder {
    layout: ImageLayout,
    scratch: tempfile::TempDir,
}

impl ImageBuilder {
    /// An empty image (no layers yet) at `dir`, which must not exist yet.
    pub fn new(dir: &Path) -> ImageBuilder {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let layout = ImageLayout { dir: dir.to_path_buf(), tag: "latest".into() };
        umoci(&["init", "--layout", path_str(dir)]);
        umoci(&["new", "--image", &layout.umoci_image()]);
        ImageBuilder { layout, scratch: tempfile::tempdir().expect("tempdir") }
    }

    /// A copy of `base` at `dir` (which must not exist yet), to add layers on top of.
    pub fn on(base: &ImageLayout, dir: impl AsRef<Path>) -> ImageBuilder {
        let layout = base.copy_to(dir.as_ref());
        ImageBuilder { layout, scratch: tempfile::tempdir().expect("tempdir") }
    }

    /// A layer with the file or directory tree `source` at `target` (an absolute path in the image).
    pub fn insert(&mut self, source: &Path, target: &str) -> &mut Self {
        umoci(&["insert", "--image", &self.layout.umoci_image(), path_str(source), target]);
        self
    }

    /// A layer with one regular file at `target` (an absolute path in the image), mode 0644.
    pub fn file(&mut self, target: &str, contents: impl AsRef<[u8]>) -> &mut Self {
        let source = self.scratch.path().join("file");
        std::fs::write(&source, contents).unwrap();
        self.insert(&source, target)
    }

    /// A layer with a whiteout that deletes `target` (an absolute path in the image).
    pub fn whiteout(&mut self, target: &str) -> &mut Self {
        umoci(&["insert", "--image", &self.layout.umoci_image(), "--whiteout", target]);
        self
    }

    /// A layer made of the raw, uncompressed tar `tar`, exactly as given (umoci would clean up
    /// hostile names): see `ImageLayout::append_tar_layer`.
    pub fn raw_layer(&mut self, tar: &[u8]) -> &mut Self {
        self.layout.append_tar_layer(tar);
        self
    }

    /// Sets the image's command (the default of `busybox_image` is `/bin/sh`).
    pub fn cmd(&mut self, cmd: &str) -> &mut Self {
        umoci(&["config", "--image", &self.layout.umoci_image(), "--config.cmd", cmd]);
        self
    }

    /// Finishes the image: `/bin/sh` as command unless `cmd` set one, unreferenced blobs removed.
    pub fn build(&mut self) -> ImageLayout {
        if self.layout.config()["config"]["Cmd"].is_null() {
            self.cmd("/bin/sh");
        }
        umoci(&["gc", "--layout", path_str(&self.layout.dir)]);
        self.layout.clone()
    }
}

impl ImageLayout {
    /// `oci:DIR:TAG`, the skopeo reference of this image.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }

    fn umoci_image(&self) -> String {
        format!("{}:{}", self.dir.display(), self.tag)
    }

    /// Writes an oci-archive of this image at `path` whose image is named `name` (as
    /// `ctr images import` names it), e.g. `localhost/busybox:latest`.
    pub fn write_archive(&self, path: &Path, name: &str) {
        let _ = std::fs::remove_file(path);
        skopeo(&["copy", &self.oci_ref(), &format!("oci-archive:{}:{name}", path.display())], &[]);
    }

    /// A copy of the whole layout at `dir` (which must not exist yet).
    pub fn copy_to(&self, dir: &Path) -> ImageLayout {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let status = Command::new("cp").arg("-a").arg(&self.dir).arg(dir).status().expect("cp");
        assert!(status.success(), "cp -a {} {}", self.dir.display(), dir.display());
        ImageLayout { dir: dir.to_path_buf(), tag: self.tag.clone() }
    }

    /// The blob `digest` (`sha256:...`).
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(self.dir.join("blobs/sha256").join(hex)).expect("reading blob")
    }

    /// The index.json entry of the tag.
    fn index_entry(&self) -> serde_json::Value {
        let index: serde_json::Value = json_file(&self.dir.join("index.json"));
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == self.tag.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("tag {} not in {}", self.tag, self.dir.display()))
    }

    /// The image manifest's digest (`sha256:...`).
    pub fn manifest_digest(&self) -> String {
        self.index_entry()["digest"].as_str().unwrap().to_string()
    }

    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&self.blob(&self.manifest_digest())).unwrap()
    }

    pub fn config(&self) -> serde_json::Value {
        let manifest = self.manifest();
        serde_json::from_slice(&self.blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()
    }

    /// The uncompressed digests of the layers, bottom first (the config's rootfs.diff_ids).
    pub fn diff_ids(&self) -> Vec<String> {
        let config = self.config();
        config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect()
    }

    /// The chain IDs of the layers, bottom first: the keys of the committed snapshots unpacking
    /// the image makes (`ctr snapshots ls`), the last one being the parent of a container's snapshot.
    pub fn chain_ids(&self) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        for diff_id in self.diff_ids() {
            let next = match chain.last() {
                None => diff_id,
                Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
            };
            chain.push(next);
        }
        chain
    }

    /// Adds the uncompressed tar `tar` as the top layer, written as is (gzip-compressed), with new
    /// config, manifest and index.json: the way to get entries into an image that no tool would
    /// write (see `hostile_layer`).
    pub fn append_tar_layer(&self, tar: &[u8]) {
        let diff_id = sha256_digest(tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = self.write_blob(&layer);

        let mut config = self.config();
        config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(diff_id.into());
        if let Some(history) = config["history"].as_array_mut() {
            history.push(serde_json::json!({"created_by": "images_fixture::append_tar_layer"}));
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = self.write_blob(&config);

        let mut manifest = self.manifest();
        manifest["config"]["digest"] = config_digest.into();
        manifest["config"]["size"] = config.len().into();
        manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }));
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = self.write_blob(&manifest);

        let index_path = self.dir.join("index.json");
        let mut index: serde_json::Value = json_file(&index_path);
        for entry in index["manifests"].as_array_mut().unwrap() {
            if entry["annotations"]["org.opencontainers.image.ref.name"] == self.tag.as_str() {
                entry["digest"] = manifest_digest.clone().into();
                entry["size"] = manifest.len().into();
            }
        }
        std::fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    fn write_blob(&self, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&digest["sha256:".len()..]), data).unwrap();
        digest
    }
}

/// The ways a hostile layer tries to write outside the directory it is applied to. Each makes one
/// layer (`hostile_layer`): an applier that refuses an entry stops at it, so one attack a layer
/// tests each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A file named `../../…/ESCAPE/dotdot`: enough `..` to reach the host's / from any snapshot.
    DotDot,
    /// A file named `/ESCAPE/absolute` (tar and containerd root it at the layer root).
    AbsoluteName,
    /// A symlink `abs-link -> /ESCAPE`, then a file `abs-link/through-abs-link`.
    AbsoluteSymlink,
    /// A symlink `rel-link -> ../../…/ESCAPE`, then a file `rel-link/through-rel-link`.
    RelativeSymlink,
    /// Hard links `shadow -> /etc/shadow` and `shadow-up -> ../../…/etc/shadow`.
    HardLinkOut,
    /// A directory `dir` then a symlink replacing it `dir -> /ESCAPE`, then `dir/through-replaced`.
    ReplacedDirectory,
}

impl Attack {
    pub const ALL: [Attack; 6] = [
        Attack::DotDot,
        Attack::AbsoluteName,
        Attack::AbsoluteSymlink,
        Attack::RelativeSymlink,
        Attack::HardLinkOut,
        Attack::ReplacedDirectory,
    ];

    /// A short lowercase name, usable in image names.
    pub fn name(self) -> &'static str {
        match self {
            Attack::DotDot => "dotdot",
            Attack::AbsoluteName => "absolute",
            Attack::AbsoluteSymlink => "abs-symlink",
            Attack::RelativeSymlink => "rel-symlink",
            Attack::HardLinkOut => "hardlink",
            Attack::ReplacedDirectory => "replaced-dir",
        }
    }
}

/// `..` components enough to climb from any snapshot directory to /.
const UP: &str = "../../../../../../../../../../../../../../../../../../../../";

/// The uncompressed tar of `attack` aimed at the host directory `escape` (absolute, e.g. a
/// temporary directory that the test then checks stays empty). Every file written says
/// `escaped\n`. Names are written into the headers raw: the tar crate refuses `..` itself.
pub fn hostile_layer(attack: Attack, escape: &Path) -> Vec<u8> {
    assert!(escape.is_absolute(), "escape must be absolute: {}", escape.display());
    let escape = escape.to_str().unwrap();
    let rel_escape = format!("{UP}{}", escape.trim_start_matches('/'));
    let mut tar = tar::Builder::new(Vec::new());
    let file = |tar: &mut tar::Builder<Vec<u8>>, name: &str| raw_entry(tar, name, tar::EntryType::Regular, "");
    match attack {
        Attack::DotDot => file(&mut tar, &format!("{rel_escape}/dotdot")),
        Attack::AbsoluteName => file(&mut tar, &format!("{escape}/absolute")),
        Attack::AbsoluteSymlink => {
            raw_entry(&mut tar, "abs-link", tar::EntryType::Symlink, escape);
            file(&mut tar, "abs-link/through-abs-link");
        }
        Attack::RelativeSymlink => {
            raw_entry(&mut tar, "rel-link", tar::EntryType::Symlink, &rel_escape);
            file(&mut tar, "rel-link/through-rel-link");
        }
        Attack::HardLinkOut => {
            raw_entry(&mut tar, "shadow", tar::EntryType::Link, "/etc/shadow");
            raw_entry(&mut tar, "shadow-up", tar::EntryType::Link, &format!("{UP}etc/shadow"));
        }
        Attack::ReplacedDirectory => {
            raw_entry(&mut tar, "dir/", tar::EntryType::Directory, "");
            raw_entry(&mut tar, "dir", tar::EntryType::Symlink, escape);
            file(&mut tar, "dir/through-replaced");
        }
    }
    tar.into_inner().unwrap()
}

/// The contents of /etc/shadow in `hostile_image`s, which in-root hard links get.
pub const IMAGE_SHADOW: &str = "image shadow\n";

impl Attack {
    /// Where, in the image, an applier that keeps everything inside its root (as containerd's
    /// does) puts what the layer writes, with the contents each file then has. The directory
    /// `escape` and /etc/shadow exist in a `hostile_image`, so each of these resolves.
    pub fn lands_inside(self, escape: &Path) -> Vec<(PathBuf, &'static str)> {
        let at = |name: &str| (escape.join(name), "escaped\n");
        match self {
            Attack::DotDot => vec![at("dotdot")],
            Attack::AbsoluteName => vec![at("absolute")],
            Attack::AbsoluteSymlink => vec![at("through-abs-link")],
            Attack::RelativeSymlink => vec![at("through-rel-link")],
            Attack::HardLinkOut => vec![("/shadow".into(), IMAGE_SHADOW), ("/shadow-up".into(), IMAGE_SHADOW)],
            Attack::ReplacedDirectory => vec![at("through-replaced")],
        }
    }
}

/// `busybox()`, then a layer with the directory `escape` and an /etc/shadow of the image's own
/// (`IMAGE_SHADOW`) so that what the attack aims at also exists inside, then
/// `hostile_layer(attack, escape)`, at `dir`.
pub fn hostile_image(attack: Attack, escape: &Path, dir: &Path) -> ImageLayout {
    let tree = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tree.path().join(escape.strip_prefix("/").unwrap())).unwrap();
    std::fs::create_dir_all(tree.path().join("etc")).unwrap();
    std::fs::write(tree.path().join("etc/shadow"), IMAGE_SHADOW).unwrap();
    ImageBuilder::on(busybox(), dir).insert(tree.path(), "/").raw_layer(&hostile_layer(attack, escape)).build()
}

/// One tar entry with `name` (and `link` for links) copied into the header byte for byte.
fn raw_entry(tar: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
    let data: &[u8] = if kind == tar::EntryType::Regular { b"escaped\n" } else { b"" };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    let old = header.as_old_mut();
    assert!(name.len() < old.name.len() && link.len() < old.linkname.len(), "name too long for a plain header");
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// A Distribution registry (`docker-registry serve`) on 127.0.0.1 and a free port, storing in a
/// temporary directory, with basic auth if made by `with_auth`. Killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: tempfile::TempDir,
    creds: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    /// A registry that anyone may pull from and push to.
    pub fn start() -> Registry {
        Self::launch(None, None)
    }

    /// A registry that needs `user` and `password` (bcrypt htpasswd file) for everything.
    pub fn with_auth(user: &str, password: &str) -> Registry {
        Self::launch(Some((user.to_string(), password.to_string())), None)
    }

    /// A registry that takes only bearer tokens of `tokens` (Distribution's token auth: a 401 with
    /// a Bearer challenge naming the token service, which hands out tokens for the basic
    /// credentials it was made with).
    pub fn with_token_auth(tokens: &TokenServer) -> Registry {
        let creds = Some((tokens.user.clone(), tokens.password.clone()));
        let auth = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            tokens.addr,
            tokens.cert.display()
        );
        Self::launch(creds, Some(auth))
    }

    fn launch(creds: Option<(String, String)>, token_auth: Option<String>) -> Registry {
        let dir = tempfile::Builder::new().prefix("berth-registry").tempdir_in("/tmp").expect("tempdir");
        let auth = match &creds {
            _ if token_auth.is_some() => token_auth.unwrap_or_default(),
            None => String::new(),
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("running htpasswd: install Debian's apache2-utils (the test setup in .ci/run does)");
                assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", file.display())
            }
        };
        // The port is free when asked, but another process may take it before the registry
        // binds it: try again with another one when the registry exits.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning docker-registry: install Debian's docker-registry (the test setup in .ci/run does)");
            let deadline = Instant::now() + Duration::from_secs(20);
            let up = loop {
                if http_status(&addr, "/v2/").is_some_and(|s| s == 200 || s == 401) {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(Instant::now() < deadline, "docker-registry did not answer within 20 s");
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                return Registry { addr, dir, creds, child: Some(child) };
            }
            let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
            eprintln!("docker-registry exited during start-up, trying another port:\n{log}");
        }
        panic!("docker-registry kept exiting at start-up");
    }

    /// `127.0.0.1:PORT/NAME:TAG`, as `ctr images pull` takes it.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// Pushes `layout` as `name_tag` (e.g. `busybox:latest`) with skopeo, with the credentials
    /// of `with_auth` if any.
    pub fn push(&self, layout: &ImageLayout, name_tag: &str) {
        let dest = format!("docker://{}", self.reference(name_tag));
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        if let Some(creds) = &creds {
            args.extend(["--dest-creds", creds]);
        }
        let oci = layout.oci_ref();
        args.extend([oci.as_str(), dest.as_str()]);
        skopeo(&args, &[]);
    }

    /// Kills the registry now (what a pull then meets is a refused connection).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET path` on `addr`, or None when nothing answers.
const TOKEN_SERVICE: &str = "berth-test";
const TOKEN_ISSUER: &str = "berth-test-issuer";

/// A registry token service (Distribution's token auth, as Docker Hub's auth.docker.io is) on
/// 127.0.0.1: `GET /token?service=..&scope=repository:NAME:pull,push` with the basic credentials
/// it was made with answers `{"token": JWT}`, an RS256 JWT signed with a key whose self-signed
/// certificate the registry trusts (`x5c` header), granting the scope's actions on NAME. Wrong
/// or missing credentials get a 401. Counts the tokens it issued.
pub struct TokenServer {
    pub addr: String,
    pub user: String,
    pub password: String,
    cert: PathBuf,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> TokenServer {
        let dir = tempfile::Builder::new().prefix("berth-tokens").tempdir_in("/tmp").expect("tempdir");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=berth-test-tokens"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("running openssl");
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().unwrap();
        assert!(der.status.success());
        let x5c = base64_std(&der.stdout);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let expected = format!("Basic {}", base64_std(format!("{user}:{password}").as_bytes()));
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).into_owned();
                let authorized = request
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == expected);
                let scope = request
                    .split_whitespace()
                    .nth(1)
                    .and_then(|target| target.split_once('?'))
                    .and_then(|(_, query)| query.split('&').find_map(|kv| kv.strip_prefix("scope=")))
                    .map(|s| s.replace("%3A", ":").replace("%2C", ",").replace("%2F", "/"));
                let response = match (authorized, scope) {
                    (true, Some(scope)) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let token = sign_token(&key, &x5c, &scope);
                        let body = format!("{{\"token\":\"{token}\",\"access_token\":\"{token}\",\"expires_in\":300}}");
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        TokenServer { addr, user: user.into(), password: password.into(), cert, issued, _dir: dir }
    }

    /// How many tokens it has handed out.
    pub fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An RS256 JWT for `scope` (`repository:NAME:ACTIONS`), signed by openssl with `key`.
fn sign_token(key: &Path, x5c: &str, scope: &str) -> String {
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "berth", "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let signing_input = format!(
        "{}.{}",
        base64_url(&serde_json::to_vec(&header).unwrap()),
        base64_url(&serde_json::to_vec(&claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign");
    format!("{signing_input}.{}", base64_url(&out.stdout))
}

/// Standard base64 with padding (HTTP basic credentials, JWT certificates).
pub fn base64_std(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_url(data: &[u8]) -> String {
    base64_std(data).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // Distribution answers a GET of an OCI manifest only to a client that accepts one.
    let accept = "application/vnd.oci.image.manifest.v1+json";
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A directory for this test process's cached fixtures (put more there), under /tmp. Directories
/// of test processes that are gone are removed first, so runs do not pile up.
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const PREFIX: &str = "berth-test-images-";
        for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = PathBuf::from(format!("/tmp/{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn umoci(args: &[&str]) {
    let out = Command::new("umoci")
        .args(args)
        .output()
        .expect("running umoci: install Debian's umoci (the test setup in .ci/run does)");
    assert!(out.status.success(), "umoci {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs skopeo without a trust policy and with its temporary files and registry configuration in
/// a temporary directory of its own (not the host's /etc/containers).
fn skopeo(args: &[&str], env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registries = tmp.path().join("registries.conf");
    std::fs::write(&registries, "unqualified-search-registries = []\n").unwrap();
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("--tmpdir")
        .arg(tmp.path())
        .arg("--registries.d")
        .arg(tmp.path())
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .env("REGISTRY_AUTH_FILE", tmp.path().join("auth.json"))
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo: install Debian's skopeo (the test setup in .ci/run does)");
    assert!(out.status.success(), "skopeo {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// `sha256:HEX` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::requires_root;

    #[test]
    fn fixtures_build_images_archives_and_a_registry_that_takes_them() {
        if !requires_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = busybox();
        assert_eq!(base.diff_ids().len(), 1);
        assert_eq!(base.chain_ids(), base.diff_ids(), "one layer: its chain ID is its diff ID");
        assert_eq!(base.config()["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        let archive = busybox_archive();
        let listing = Command::new("tar").arg("tf").arg(archive).output().unwrap();
        assert!(String::from_utf8_lossy(&listing.stdout).contains("index.json"));

        let layered =
            ImageBuilder::on(base, dir.path().join("layered")).file("/etc/motd", "hi\n").whiteout("/bin/vi").build();
        let chain = layered.chain_ids();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0], base.chain_ids()[0]);
        assert_eq!(chain[2], sha256_digest(format!("{} {}", chain[1], layered.diff_ids()[2]).as_bytes()));

        let escape = dir.path().join("escape");
        let hostile = hostile_image(Attack::DotDot, &escape, &dir.path().join("hostile"));
        let layers = hostile.manifest()["layers"].as_array().unwrap().clone();
        assert_eq!(layers.len(), 3);
        let blob = hostile.blob(layers[2]["digest"].as_str().unwrap());
        let mut gz = flate2::read::GzDecoder::new(&blob[..]);
        let mut tar = Vec::new();
        gz.read_to_end(&mut tar).unwrap();
        assert_eq!(sha256_digest(&tar), hostile.diff_ids()[2]);
        assert!(tar.windows(9).any(|w| w == b"../../../"), "the name is kept raw");

        let registry = Registry::with_auth("u", "p");
        registry.push(&layered, "busybox:latest");
        assert_eq!(http_status(&registry.addr, "/v2/busybox/tags/list"), Some(401));
        let open = Registry::start();
        open.push(base, "busybox:1");
        assert_eq!(http_status(&open.addr, "/v2/busybox/manifests/1"), Some(200), "{}", open.log_text());
        assert_eq!(http_status(&open.addr, "/v2/busybox/manifests/2"), Some(404));
    }
}
