use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};

use super::*;
use crate::content::Digest;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A layer built entry by entry.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// Appends an entry whose name is written as is: the Builder refuses `..` and `/` names.
    fn raw(mut self, mut h: Header, name: &str, link: Option<&str>, data: &[u8]) -> Tar {
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.raw(Tar::header(EntryType::Regular, 0o644), name, None, data)
    }

    fn dir(self, name: &str) -> Tar {
        self.raw(Tar::header(EntryType::Directory, 0o755), name, None, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Tar {
        self.raw(Tar::header(EntryType::Symlink, 0o777), name, Some(target), b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Tar {
        self.raw(Tar::header(EntryType::Link, 0o644), name, Some(target), b"")
    }

    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn apply_to(layer: &[u8], target: &Path, whiteouts: Whiteouts) -> Result<Applied, DiffError> {
    apply(layer, "", target, whiteouts)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn applies_files_dirs_links_devices_owners_modes_times_xattrs() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Tar::header(EntryType::Directory, 0o1777);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_500_000_000);
    b.append_data(&mut h, "tmp", std::io::empty()).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..]), ("mtime", b"1600000000.25")]).unwrap();
    let mut h = Tar::header(EntryType::Regular, 0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(5);
    b.append_data(&mut h, "bin/su", &b"hello"[..]).unwrap();
    let mut h = Tar::header(EntryType::Symlink, 0o777);
    b.append_link(&mut h, "bin/sh", "su").unwrap();
    let mut h = Tar::header(EntryType::Link, 0o644);
    b.append_link(&mut h, "bin/su2", "bin/su").unwrap();
    let mut h = Tar::header(EntryType::Char, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
    let mut h = Tar::header(EntryType::Block, 0o660);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    b.append_data(&mut h, "dev/loop0", std::io::empty()).unwrap();
    let mut h = Tar::header(EntryType::Fifo, 0o600);
    b.append_data(&mut h, "run/fifo", std::io::empty()).unwrap();
    let layer = b.into_inner().unwrap();

    let dir = tempdir();
    let applied = apply_to(&layer, dir.path(), Whiteouts::Delete).unwrap();
    assert_eq!(applied.digest, Digest::sha256_of(&layer));
    assert_eq!(applied.size, layer.len() as u64);

    let root = dir.path();
    let tmp = fs::symlink_metadata(root.join("tmp")).unwrap();
    assert!(tmp.is_dir());
    assert_eq!(tmp.mode() & 0o7777, 0o1777, "sticky bit");
    assert_eq!(tmp.mtime(), 1_500_000_000);
    let su = fs::symlink_metadata(root.join("bin/su")).unwrap();
    assert_eq!(fs::read(root.join("bin/su")).unwrap(), b"hello");
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept after chown");
    assert_eq!((su.mtime(), su.mtime_nsec()), (1_600_000_000, 250_000_000), "PAX mtime");
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("su"));
    let su2 = fs::symlink_metadata(root.join("bin/su2")).unwrap();
    assert_eq!(su2.ino(), su.ino(), "hard link shares the inode");
    let xattrs = super::fs::llistxattrs(&root.join("bin/su")).unwrap();
    assert_eq!(xattrs, vec![("user.color".to_owned(), b"blue".to_vec())]);
    let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o777, 0o600);
    if is_root() {
        assert_eq!((tmp.uid(), tmp.gid()), (1000, 1001));
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
        let lo = fs::symlink_metadata(root.join("dev/loop0")).unwrap();
        assert!(lo.file_type().is_block_device());
        assert_eq!(lo.mode() & 0o777, 0o660);
    }
}

#[test]
fn gzip_and_zstd_give_the_diff_id_of_the_tar() {
    let layer = Tar::new().dir("etc").file("etc/hostname", b"berth\n").done();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let zst = ruzstd::encoding::compress_to_vec(&layer[..], ruzstd::encoding::CompressionLevel::Fastest);
    let want = Digest::sha256_of(&layer);
    for (media_type, blob) in [
        (MEDIA_TYPE_TAR, &layer),
        (MEDIA_TYPE_TAR_GZIP, &gz),
        (MEDIA_TYPE_TAR_ZSTD, &zst),
        ("", &gz),
        ("", &zst),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", &gz),
    ] {
        let dir = tempdir();
        let applied = apply(&blob[..], media_type, dir.path(), Whiteouts::Delete).unwrap();
        assert_eq!(applied, Applied { digest: want.clone(), size: layer.len() as u64 }, "{media_type:?}");
        assert_eq!(fs::read(dir.path().join("etc/hostname")).unwrap(), b"berth\n");
    }
    // A type that says gzip over a plain tar, and a type berth does not know.
    let dir = tempdir();
    let e = apply(&layer[..], MEDIA_TYPE_TAR_GZIP, dir.path(), Whiteouts::Delete).unwrap_err();
    assert!(e.to_string().contains("magic bytes"), "{e}");
    let e = apply(&layer[..], "application/vnd.oci.image.layer.v1.tar+lz4", dir.path(), Whiteouts::Delete).unwrap_err();
    assert!(matches!(e, DiffError::MediaType(_)), "{e}");
}

fn lower_layer() -> Vec<u8> {
    Tar::new()
        .dir("a")
        .file("a/x", b"x")
        .file("a/y", b"y")
        .dir("b")
        .file("b/z", b"z")
        .dir("d")
        .file("d/old", b"old")
        .dir("d/sub")
        .file("d/sub/deep", b"deep")
        .done()
}

fn whiteout_layer() -> Vec<u8> {
    Tar::new()
        .file("a/.wh.x", b"")
        .file(".wh.b", b"")
        .dir("d")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .file("a/new", b"new")
        .file("a/.wh.new", b"") // hides lower layers only: stays
        .done()
}

#[test]
fn whiteouts_delete_on_a_full_tree() {
    let dir = tempdir();
    let root = dir.path();
    apply_to(&lower_layer(), root, Whiteouts::Delete).unwrap();
    apply_to(&whiteout_layer(), root, Whiteouts::Delete).unwrap();
    assert!(!root.join("a/x").exists());
    assert!(root.join("a/y").exists());
    assert!(root.join("a/new").exists());
    assert!(!root.join("b").exists());
    let mut d: Vec<_> = fs::read_dir(root.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    d.sort();
    assert_eq!(d, vec!["new"], "opaque d keeps only what the layer put in it");
    assert!(!root.join("a/.wh.x").exists() && !root.join(".wh.b").exists());
}

#[test]
fn whiteouts_as_overlay_whiteouts_in_an_upperdir() {
    if !is_root() {
        eprintln!("skipped: overlay whiteouts need root (mknod, trusted xattrs)");
        return;
    }
    let dir = tempdir();
    let upper = dir.path();
    apply_to(&whiteout_layer(), upper, Whiteouts::Overlay).unwrap();
    for hidden in ["a/x", "b"] {
        let m = fs::symlink_metadata(upper.join(hidden)).unwrap();
        assert!(m.file_type().is_char_device(), "{hidden}");
        assert_eq!(m.rdev(), 0, "{hidden}: device 0/0");
    }
    let x = super::fs::llistxattrs(&upper.join("d")).unwrap();
    assert!(x.contains(&("trusted.overlay.opaque".to_owned(), b"y".to_vec())), "{x:?}");
    assert!(upper.join("d/new").exists());
    assert!(!upper.join("d/.wh..wh..opq").exists());
}

/// Nothing but `root` in `outside`, and no /evil or /etc/evil on the host.
fn nothing_outside(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["root"], "something was written next to the target");
    for host in ["/evil", "/etc/evil", "/abs/evil"] {
        assert!(!Path::new(host).exists(), "{host} was written");
    }
}

fn escape(layer: Vec<u8>) -> (tempfile::TempDir, PathBuf, Result<Applied, DiffError>) {
    let outside = tempdir();
    let root = outside.path().join("root");
    fs::create_dir(&root).unwrap();
    let result = apply_to(&layer, &root, Whiteouts::Delete);
    nothing_outside(outside.path());
    (outside, root, result)
}

#[test]
fn parent_dir_names_are_refused() {
    for name in ["../evil", "a/../../evil", "/../evil", "./a/../../evil"] {
        let (_outside, _root, result) = escape(Tar::new().file(name, b"evil").done());
        let e = result.unwrap_err();
        assert!(matches!(e, DiffError::Refused { .. }), "{name}: {e}");
        assert!(e.to_string().contains(&format!("{name:?}")), "error names the entry: {e}");
    }
}

#[test]
fn absolute_names_are_rooted_at_the_layer_root() {
    for name in ["/abs/evil", "/evil", "//evil2"] {
        let (_outside, root, result) = escape(Tar::new().dir("/").dir("/abs").file(name, b"inside").done());
        result.unwrap();
        assert_eq!(fs::read(root.join(name.trim_start_matches('/'))).unwrap(), b"inside", "{name}");
    }
    // A hard link to an absolute name links inside the root too.
    let (_outside, root, result) = escape(Tar::new().file("a", b"x").hardlink("b", "/a").done());
    result.unwrap();
    assert_eq!(fs::read(root.join("b")).unwrap(), b"x");
}

#[test]
fn symlinks_out_of_the_root_are_followed_inside_it() {
    // link -> /, then link/etc/evil: written as <root>/etc/evil.
    let (_outside, root, result) = escape(Tar::new().symlink("link", "/").file("link/etc/evil", b"evil").done());
    result.unwrap();
    assert_eq!(fs::read(root.join("etc/evil")).unwrap(), b"evil");
    // up -> ../../, then up/evil: <root>/evil.
    let (_outside, root, result) = escape(Tar::new().symlink("up", "../../").file("up/evil", b"evil").done());
    result.unwrap();
    assert_eq!(fs::read(root.join("evil")).unwrap(), b"evil");
    // A symlink in a deeper parent, to an absolute path outside.
    let (_outside, root, result) =
        escape(Tar::new().dir("etc").dir("d").symlink("d/l", "/etc").file("d/l/evil", b"e").done());
    result.unwrap();
    assert!(root.join("etc/evil").exists());
    // The same where <root>/etc is missing: it is made inside the root, as containerd makes the
    // parents it resolves, and the file lands there.
    let (outside, root, result) = escape(Tar::new().dir("d").symlink("d/l", "/etc").file("d/l/evil", b"e").done());
    result.unwrap();
    assert_eq!(fs::read(root.join("etc/evil")).unwrap(), b"e");
    nothing_outside(outside.path());
    // A chain of links, one relative with `..` past the root, still ends inside it.
    let (outside, root, result) =
        escape(Tar::new().symlink("a", "b/c").symlink("b", "../../../x").file("a/deep", b"d").done());
    result.unwrap();
    assert_eq!(fs::read(root.join("x/c/deep")).unwrap(), b"d");
    nothing_outside(outside.path());
    // A loop is an error naming the entry, not a hang.
    let (_outside, _root, result) = escape(Tar::new().symlink("p", "q").symlink("q", "p").file("p/f", b"").done());
    let e = result.unwrap_err();
    assert!(e.to_string().contains("\"p/f\""), "{e}");
}

#[test]
fn parents_made_in_an_upper_directory_take_the_lower_layers_attributes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempdir();
    let (lower_top, lower_bottom, upper) = (dir.path().join("l1"), dir.path().join("l2"), dir.path().join("up"));
    for d in [&lower_top, &lower_bottom, &upper] {
        fs::create_dir(d).unwrap();
    }
    // tmp only in the bottom layer: sticky, another owner, a user xattr and an overlay one.
    let tmp = lower_bottom.join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::lchown(&tmp, Some(1000), Some(1001)).unwrap();
    let set = |p: &Path, k: &str, v: &[u8]| {
        let (p, k) = (std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap(), std::ffi::CString::new(k).unwrap());
        assert_eq!(unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
    };
    set(&tmp, "user.team", b"a");
    set(&tmp, "trusted.overlay.opaque", b"y");
    let then = libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 0 };
    let c = std::ffi::CString::new(tmp.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [then, then].as_ptr(), 0) }, 0);
    // lib is a file in the top layer, a directory below it: replaced, so nothing is copied.
    fs::write(lower_top.join("lib"), b"").unwrap();
    fs::create_dir(lower_bottom.join("lib")).unwrap();
    fs::set_permissions(lower_bottom.join("lib"), fs::Permissions::from_mode(0o700)).unwrap();

    let layer = Tar::new().file("tmp/x", b"x").file("lib/y", b"y").file("new/z", b"z").done();
    apply_over(&layer[..], "", &upper, Whiteouts::Overlay, &[lower_top.clone(), lower_bottom.clone()]).unwrap();
    let made = fs::metadata(upper.join("tmp")).unwrap();
    assert_eq!((made.mode() & 0o7777, made.uid(), made.gid()), (0o1777, 1000, 1001));
    assert_eq!(made.mtime(), 1_500_000_000, "the lower directory's times, kept after its file was written");
    let xattrs = super::fs::llistxattrs(&upper.join("tmp")).unwrap();
    assert_eq!(xattrs, [("user.team".to_string(), b"a".to_vec())], "trusted.* stays overlayfs's own");
    assert_eq!(fs::metadata(upper.join("lib")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(upper.join("new")).unwrap().mode() & 0o7777, 0o755);
}

#[test]
fn a_symlink_is_replaced_not_written_through() {
    let outside = tempdir();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"intact").unwrap();
    let root = outside.path().join("root");
    fs::create_dir(&root).unwrap();
    let layer = Tar::new().symlink("f", victim.to_str().unwrap()).file("f", b"evil").done();
    apply_to(&layer, &root, Whiteouts::Delete).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"intact");
    assert_eq!(fs::read(root.join("f")).unwrap(), b"evil");
    assert!(fs::symlink_metadata(root.join("f")).unwrap().is_file());
    // A whiteout of a symlink removes the symlink, not what it points to.
    let layer = Tar::new().symlink("g", victim.to_str().unwrap()).done();
    apply_to(&layer, &root, Whiteouts::Delete).unwrap();
    apply_to(&Tar::new().file(".wh.g", b"").done(), &root, Whiteouts::Delete).unwrap();
    assert!(victim.exists() && !root.join("g").exists());
}

#[test]
fn hard_links_out_of_the_root_are_refused() {
    for target in ["../outside", "a/../../outside", "/../outside"] {
        let (_outside, _root, result) = escape(Tar::new().hardlink("pw", target).done());
        let e = result.unwrap_err();
        assert!(matches!(e, DiffError::Refused { .. }), "{target}: {e}");
        assert!(e.to_string().contains("\"pw\""), "error names the entry: {e}");
    }
    // An absolute target is inside the root, where there is no etc/passwd.
    let (_outside, _root, result) = escape(Tar::new().hardlink("pw", "/etc/passwd").done());
    let e = result.unwrap_err();
    assert!(e.to_string().contains("\"pw\""), "{e}");
    // Through a symlink to /: resolved inside the root, where there is no etc/passwd.
    let (_outside, _root, result) = escape(Tar::new().symlink("l", "/").hardlink("pw", "l/etc/passwd").done());
    let e = result.unwrap_err();
    assert!(e.to_string().contains("\"pw\""), "{e}");
}

/// Every entry under `root` but the root: type, mode, owner, mtime (seconds), contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(root.join(rel)).unwrap() {
            let rel = rel.join(entry.unwrap().file_name());
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path).unwrap();
            let what = if m.is_file() {
                format!("file {:?}", fs::read(&path).unwrap())
            } else if m.is_symlink() {
                format!("symlink {:?}", fs::read_link(&path).unwrap())
            } else {
                format!("{:?}", m.file_type())
            };
            let mode = m.permissions().mode();
            out.insert(rel.clone(), format!("{what} mode {mode:o} {}:{} mtime {}", m.uid(), m.gid(), m.mtime()));
            if m.is_dir() {
                walk(root, &rel, out);
            }
        }
    }
    walk(root, Path::new(""), &mut out);
    out
}

fn cp(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

#[test]
fn diff_round_trip() {
    let work = tempdir();
    let (a, changed, copy) = (work.path().join("a"), work.path().join("changed"), work.path().join("copy"));
    fs::create_dir(&a).unwrap();
    let base = Tar::new()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0")
        .file("etc/hosts", b"127.0.0.1")
        .file("etc/motd", b"hi")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/libc.so", b"ELF")
        .symlink("lib", "usr/lib")
        .done();
    apply_to(&base, &a, Whiteouts::Delete).unwrap();
    cp(&a, &changed);

    fs::write(changed.join("etc/passwd"), b"root:x:0:0\nberth:x:1000:1000").unwrap();
    fs::remove_file(changed.join("etc/motd")).unwrap();
    fs::remove_dir_all(changed.join("usr/lib")).unwrap();
    fs::create_dir(changed.join("srv")).unwrap();
    fs::write(changed.join("srv/index.html"), b"<p>").unwrap();
    fs::hard_link(changed.join("srv/index.html"), changed.join("srv/index.htm")).unwrap();
    fs::set_permissions(changed.join("etc/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/usr/lib64", changed.join("lib64")).unwrap();
    fs::remove_file(changed.join("lib")).unwrap();
    fs::create_dir(changed.join("lib")).unwrap();

    let mut out = Vec::new();
    let layer = write_layer(Some(&a), &changed, &mut out, LayerCompression::Gzip, None).unwrap();
    assert_eq!(layer.digest, Digest::sha256_of(&out));
    assert_eq!(layer.size, out.len() as u64);

    // The layer holds whiteouts for what went away and nothing of what stayed.
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&out[..]), &mut tar_bytes).unwrap();
    assert_eq!(layer.diff_id, Digest::sha256_of(&tar_bytes));
    let names: Vec<String> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string().trim_end_matches('/').to_owned())
        .collect();
    for want in ["etc/.wh.motd", "usr/.wh.lib", "etc/passwd", "srv/index.html", "lib64", "lib"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n == "etc/motd" || n == "usr/lib/libc.so"), "{names:?}");

    cp(&a, &copy);
    let applied = apply(&out[..], MEDIA_TYPE_TAR_GZIP, &copy, Whiteouts::Delete).unwrap();
    assert_eq!(applied.digest, layer.diff_id);
    assert_eq!(snapshot(&copy), snapshot(&changed));
    let (i1, i2) =
        (fs::metadata(copy.join("srv/index.html")).unwrap(), fs::metadata(copy.join("srv/index.htm")).unwrap());
    assert_eq!(i1.ino(), i2.ino(), "hard link kept");

    // No lower: the whole tree, uncompressed; applied onto an empty dir it gives the same tree.
    let mut plain = Vec::new();
    let full = write_layer(None, &changed, &mut plain, LayerCompression::None, None).unwrap();
    assert_eq!(full.digest, full.diff_id);
    let empty = work.path().join("empty");
    fs::create_dir(&empty).unwrap();
    apply(&plain[..], MEDIA_TYPE_TAR, &empty, Whiteouts::Delete).unwrap();
    assert_eq!(snapshot(&empty), snapshot(&changed));
}

#[test]
fn a_stream_ending_right_after_the_last_data_is_read_but_a_cut_one_is_not() {
    // umoci 0.4 writes layers like this: the last file's data, then nothing (no padding, no end blocks).
    let full = Tar::new().dir("etc").file("etc/passwd", b"root:x:0:0::/:/bin/sh\n").done();
    let data_end = 2 * 512 + 22;
    let dir = tempdir();
    let applied = apply_to(&full[..data_end], dir.path(), Whiteouts::Delete).unwrap();
    assert_eq!(fs::read(dir.path().join("etc/passwd")).unwrap(), b"root:x:0:0::/:/bin/sh\n");
    assert_eq!(applied.size, data_end as u64);
    // Cut inside the data, or inside the padding: an error naming the entry, or the stream.
    for cut in [data_end - 1, 2 * 512, data_end + 1] {
        let dir = tempdir();
        let e = apply_to(&full[..cut], dir.path(), Whiteouts::Delete).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("etc/passwd") || msg.contains("tar stream"), "cut at {cut}: {msg}");
    }
}

#[test]
fn a_zstd_layer_applies_to_the_same_tree_and_its_diff_id_is_the_tars() {
    let work = tempdir();
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/passwd"), b"root:x:0:0\n".repeat(500)).unwrap();
    fs::write(tree.join("big"), (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    std::os::unix::fs::symlink("etc/passwd", tree.join("link")).unwrap();

    let mut zstd = Vec::new();
    let layer =
        write_layer(None, &tree, &mut zstd, LayerCompression::from_media_type(MEDIA_TYPE_TAR_ZSTD).unwrap(), None)
            .unwrap();
    assert_eq!(&zstd[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    assert_eq!((layer.digest.clone(), layer.size), (Digest::sha256_of(&zstd), zstd.len() as u64));
    let mut plain = Vec::new();
    let tar = write_layer(None, &tree, &mut plain, LayerCompression::None, None).unwrap();
    assert_eq!(layer.diff_id, tar.digest, "the diff ID is the uncompressed tar's digest");
    assert!(zstd.len() < plain.len() / 2, "compressed: {} of {} bytes", zstd.len(), plain.len());

    let copy = work.path().join("copy");
    fs::create_dir(&copy).unwrap();
    let applied = apply(&zstd[..], MEDIA_TYPE_TAR_ZSTD, &copy, Whiteouts::Delete).unwrap();
    assert_eq!(applied.digest, layer.diff_id);
    assert_eq!(snapshot(&copy), snapshot(&tree));
}

#[test]
fn a_zstd_layer_that_cannot_be_written_is_an_error_not_a_panic() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let work = tempdir();
    fs::write(work.path().join("file"), b"data").unwrap();
    let e = write_layer(None, work.path(), Full, LayerCompression::Zstd, None).unwrap_err();
    assert!(e.to_string().contains("zstd"), "{e}");
}
