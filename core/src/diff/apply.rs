//! Applying a layer onto a directory.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::fs::{self, Root};
use super::{DiffError, OPAQUE_WHITEOUT, WHITEOUT_PREFIX, io_error};
use crate::content::Digest;

/// How OCI whiteouts are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// The target is an overlayfs upperdir: a whiteout becomes a 0/0 character device, an opaque
    /// directory gets `trusted.overlay.opaque=y`, and the lower layers are left alone.
    Overlay,
    /// The target is the whole tree (native snapshots, bind mounts): what a whiteout names is
    /// deleted, and an opaque directory loses whatever this layer did not put in it.
    Delete,
}

/// The layer as applied: its uncompressed tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The sha256 of the uncompressed stream: the layer's diff ID.
    pub digest: Digest,
    /// The size of the uncompressed stream.
    pub size: u64,
}

/// Hashes and counts what is read through it.
struct Hashing<'p, R> {
    inner: R,
    hasher: Sha256,
    progress: &'p Progress,
}

/// How far the uncompressed stream has been read; shared with the entry loop, which cannot reach the
/// reader while the archive borrows it.
#[derive(Default)]
struct Progress {
    count: Cell<u64>,
    eof: Cell<bool>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.count.set(self.progress.count.get() + n as u64);
        if n == 0 && !buf.is_empty() {
            self.progress.eof.set(true);
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// What the media type says of the compression; None if it does not say (an unknown type is
/// refused, one that says nothing, such as an empty one, is left to the magic bytes).
fn media_compression(media_type: &str) -> Result<Option<Compression>, DiffError> {
    let known = |suffix: &str| match suffix {
        "" | "tar" => Ok(Some(Compression::None)),
        "tar+gzip" | "tar.gzip" | "tar+gz" => Ok(Some(Compression::Gzip)),
        "tar+zstd" | "tar.zstd" => Ok(Some(Compression::Zstd)),
        _ => Err(DiffError::MediaType(media_type.to_owned())),
    };
    match media_type {
        "" => Ok(None),
        t if t.starts_with("application/vnd.oci.image.layer.") => {
            // v1.tar, v1.tar+gzip, nondistributable.v1.tar+gzip...
            let suffix = t.rsplit_once("v1.").map(|(_, s)| s).unwrap_or_default();
            known(suffix)
        }
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Some(Compression::Gzip)),
        "application/vnd.docker.image.rootfs.diff.tar" => Ok(Some(Compression::None)),
        _ => Err(DiffError::MediaType(media_type.to_owned())),
    }
}

fn decompress<'a, R: Read + 'a>(layer: R, media_type: &str) -> Result<Box<dyn Read + 'a>, DiffError> {
    let declared = media_compression(media_type)?;
    let mut reader = BufReader::with_capacity(1 << 16, layer);
    let head = reader.fill_buf().map_err(io_error("reading the layer"))?;
    let found = if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    // The bytes decide (a layer's media type is often only approximate, e.g. a docker
    // "tar.gzip" holding a plain tar); but a compressed type over bytes that are not compressed
    // that way is worth a clear error rather than a tar parse failure.
    if let Some(declared) = declared
        && declared != Compression::None
        && declared != found
    {
        return Err(DiffError::Format(format!(
            "media type {media_type:?} says {declared:?} compression, but the blob does not start with its magic bytes"
        )));
    }
    Ok(match found {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| DiffError::Format(format!("reading the zstd frame: {e}")))?,
        ),
    })
}

/// The name of an entry inside the target: `./`, empty components and a leading `/` dropped (an
/// absolute name is rooted at the layer's root, as tar and containerd read it: umoci writes `/`
/// for the root itself); `..` refused.
fn clean(raw: &[u8], what: &str) -> Result<PathBuf, String> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return Err(format!("{what} has a path prefix")),
            Component::ParentDir => return Err(format!("{what} has a `..` component")),
        }
    }
    Ok(out)
}

fn timespec(secs: i64, nanos: i64) -> libc::timespec {
    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as _ }
}

/// A PAX time, `secs[.frac]`.
fn pax_time(value: &[u8]) -> Option<libc::timespec> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = digits.parse().ok()?;
    Some(timespec(secs, nanos))
}

/// What an entry's PAX records add to its header.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: Option<libc::timespec>,
    atime: Option<libc::timespec>,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn pax<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Pax> {
    let mut pax = Pax::default();
    let Some(exts) = entry.pax_extensions()? else { return Ok(pax) };
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        let value = ext.value_bytes();
        let number = || std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        match key {
            "mtime" => pax.mtime = pax_time(value),
            "atime" => pax.atime = pax_time(value),
            "uid" => pax.uid = number(),
            "gid" => pax.gid = number(),
            k if k.starts_with("SCHILY.xattr.") => {
                pax.xattrs.push((k["SCHILY.xattr.".len()..].to_owned(), value.to_vec()));
            }
            _ => {}
        }
    }
    Ok(pax)
}

struct Applier {
    root: Root,
    whiteouts: Whiteouts,
    /// Paths this layer wrote (and their parents): an opaque directory keeps them.
    written: HashSet<PathBuf>,
    /// Directories whose times are set last, since adding to a directory changes its mtime.
    dir_times: Vec<(PathBuf, libc::timespec, libc::timespec)>,
    is_root: bool,
    /// The layers under the target (an overlay's lower directories, top first): a parent
    /// directory made in the target takes the attributes of the one they have.
    parents: Vec<Root>,
}

/// Applies `layer` (of `media_type`; empty to go by the bytes alone) onto directory `target`,
/// writing whiteouts as `whiteouts` says. Returns the uncompressed stream's digest and size.
pub fn apply(layer: impl Read, media_type: &str, target: &Path, whiteouts: Whiteouts) -> Result<Applied, DiffError> {
    apply_over(layer, media_type, target, whiteouts, &[])
}

/// [`apply`] onto the upper directory `target` of an overlay whose lower directories are
/// `parents` (top first): a directory the layer needs but does not list (`etc` for `etc/x`) is
/// made in `target` with the attributes it has in the topmost parent that has it, as
/// containerd's overlay applier does, so that it does not hide the lower one's mode and owner.
pub fn apply_over(
    layer: impl Read,
    media_type: &str,
    target: &Path,
    whiteouts: Whiteouts,
    parents: &[PathBuf],
) -> Result<Applied, DiffError> {
    let root = Root::open(target).map_err(io_error(format!("opening the target {}", target.display())))?;
    let parents = parents
        .iter()
        .map(|p| Root::open(p).map_err(io_error(format!("opening the lower directory {}", p.display()))))
        .collect::<Result<Vec<_>, _>>()?;
    let progress = Progress::default();
    let mut hashing = Hashing { inner: decompress(layer, media_type)?, hasher: Sha256::new(), progress: &progress };
    let mut applier = Applier {
        root,
        whiteouts,
        written: HashSet::new(),
        dir_times: Vec::new(),
        is_root: unsafe { libc::geteuid() } == 0,
        parents,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(io_error("reading the tar stream"))?;
        // Where the last entry's data ended in the stream.
        let mut complete_at = 0;
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                // Some writers (umoci 0.4) end the stream right after the last entry's data, without
                // its padding and the end-of-archive blocks. Go's archive/tar, so containerd, reads
                // that as the end, and nothing is lost; a stream cut anywhere else is an error.
                Err(_) if progress.eof.get() && progress.count.get() == complete_at => break,
                Err(e) => return Err(io_error("reading the tar stream")(e)),
            };
            applier.entry(&mut entry)?;
            complete_at = progress.count.get();
        }
    }
    // The digest covers the whole stream, the end-of-archive blocks and padding included.
    io::copy(&mut hashing, &mut io::sink()).map_err(io_error("reading the end of the tar stream"))?;
    applier.finish()?;
    Ok(Applied { digest: Digest::from_sha256(&hashing.hasher), size: progress.count.get() })
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), DiffError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let refuse = |why: String| DiffError::Refused { entry: name.clone(), why };
        let rel = clean(&raw, "the name").map_err(refuse)?;
        let (parent, base) = fs::split(&rel);
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root itself: its owner and mode are the snapshot's
        }
        let failed = |context: &str| {
            let (entry, context) = (name.clone(), context.to_owned());
            move |source| DiffError::Entry { entry, context, source }
        };
        let base_bytes = base.as_bytes();
        if base_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&name, parent, base_bytes, entry);
        }

        let mut made = Vec::new();
        let dir = self.make_parents(parent, &mut made).map_err(failed("making its parent directories"))?;
        let dirfd = dir.as_raw_fd();
        let existing = fs::lstatat(dirfd, base).map_err(failed("looking at what is there"))?;
        let keep_dir = kind == EntryType::Directory && existing.as_ref().is_some_and(fs::is_dir);
        if existing.is_some() && !keep_dir {
            fs::remove_all_at(dirfd, base).map_err(failed("removing what was there"))?;
        }

        let header = entry.header().clone();
        let mode = header.mode().map_err(failed("reading its mode"))? & 0o7777;
        let dev = || -> Result<libc::dev_t, DiffError> {
            let major = header.device_major().map_err(failed("reading its device number"))?.unwrap_or(0);
            let minor = header.device_minor().map_err(failed("reading its device number"))?.unwrap_or(0);
            Ok(libc::makedev(major, minor))
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = fs::create_file(dirfd, base).map_err(failed("creating the file"))?;
                let size = header.size().map_err(failed("reading its size"))?;
                let written = io::copy(entry, &mut file).map_err(failed("writing the file"))?;
                if written != size {
                    return Err(refuse(format!("the stream ends {} bytes into its {size} bytes of data", written)));
                }
            }
            EntryType::Directory => {
                if !keep_dir {
                    fs::mkdirat(dirfd, base, 0o700).map_err(failed("making the directory"))?;
                }
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("a symlink without a target".into()))?;
                fs::symlinkat(&target, dirfd, base).map_err(failed("making the symlink"))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("a hard link without a target".into()))?;
                let target = clean(&target, "the hard link's target").map_err(refuse)?;
                let (src_parent, src_base) = fs::split(&target);
                if target.as_os_str().is_empty() {
                    return Err(refuse("a hard link to the root".into()));
                }
                let src = self.root.open_dir(src_parent).map_err(failed("opening the hard link target's directory"))?;
                fs::linkat(src.as_raw_fd(), src_base, dirfd, base).map_err(failed("making the hard link"))?;
                self.wrote(&rel, made);
                // A hard link shares its target's inode: its metadata is the target's.
                return Ok(());
            }
            EntryType::Char => {
                fs::mknodat(dirfd, base, libc::S_IFCHR | mode, dev()?).map_err(failed("making the device node"))?
            }
            EntryType::Block => {
                fs::mknodat(dirfd, base, libc::S_IFBLK | mode, dev()?).map_err(failed("making the device node"))?
            }
            EntryType::Fifo => fs::mknodat(dirfd, base, libc::S_IFIFO | mode, 0).map_err(failed("making the fifo"))?,
            other => return Err(refuse(format!("unsupported entry type {:?}", other.as_byte() as char))),
        }
        self.wrote(&rel, made);

        let pax = pax(entry).map_err(failed("reading its PAX records"))?;
        let uid = pax.uid.map_or_else(|| header.uid().map(|u| u as u32), Ok).map_err(failed("reading its uid"))?;
        let gid = pax.gid.map_or_else(|| header.gid().map(|g| g as u32), Ok).map_err(failed("reading its gid"))?;
        match fs::chownat(dirfd, base, uid, gid) {
            // Without root, files are the applier's: as tar does for a user.
            Err(e) if !self.is_root && e.raw_os_error() == Some(libc::EPERM) => {}
            other => other.map_err(failed(&format!("setting its owner to {uid}:{gid}")))?,
        }
        for (key, value) in &pax.xattrs {
            match fs::lsetxattr(dirfd, base, key, value) {
                // A filesystem without xattrs (or that namespace): as containerd, go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                    tracing::warn!(entry = %name, xattr = %key, "xattr not supported by the target filesystem");
                }
                other => other.map_err(failed(&format!("setting xattr {key}")))?,
            }
        }
        if kind != EntryType::Symlink {
            // After chown, which clears setuid and setgid.
            fs::chmodat(dirfd, base, mode).map_err(failed("setting its mode"))?;
        }
        let mtime = pax.mtime.unwrap_or_else(|| timespec(header.mtime().unwrap_or(0) as i64, 0));
        let atime = pax.atime.unwrap_or(mtime);
        if kind == EntryType::Directory {
            self.dir_times.push((rel, atime, mtime));
        } else {
            fs::utimesat(dirfd, base, atime, mtime).map_err(failed("setting its times"))?;
        }
        Ok(())
    }

    /// Directory `parent`, made where missing (see [`Root::mkdir_all`]); what was made is added
    /// to `made` and given the attributes of the same directory in the topmost lower layer.
    fn make_parents(&mut self, parent: &Path, made: &mut Vec<PathBuf>) -> io::Result<std::os::fd::OwnedFd> {
        let first = made.len();
        let dir = self.root.mkdir_all(parent, &mut |p: &Path| made.push(p.to_owned()))?;
        let mut times = Vec::new();
        for rel in &made[first..] {
            for lower in &self.parents {
                match lower.open_dir(rel) {
                    Ok(from) => {
                        let to = self.root.open_dir(rel)?;
                        let (atime, mtime) = fs::copy_dir_info(&from, &to)?;
                        times.push((rel.clone(), atime, mtime));
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    // Replaced by a file there: nothing to copy.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.dir_times.extend(times);
        Ok(dir)
    }

    fn wrote(&mut self, rel: &Path, made: Vec<PathBuf>) {
        self.written.extend(made);
        let mut p = Some(rel);
        while let Some(path) = p.filter(|p| !p.as_os_str().is_empty()) {
            if !self.written.insert(path.to_owned()) {
                break;
            }
            p = path.parent();
        }
    }

    fn whiteout<R: Read>(
        &mut self,
        name: &str,
        parent: &Path,
        base: &[u8],
        entry: &tar::Entry<R>,
    ) -> Result<(), DiffError> {
        let failed = |context: &str| {
            let (entry, context) = (name.to_owned(), context.to_owned());
            move |source| DiffError::Entry { entry, context, source }
        };
        let opaque = base == OPAQUE_WHITEOUT.as_bytes();
        if !opaque && base.starts_with(b".wh..wh.") {
            return Ok(()); // aufs metadata (.wh..wh.plnk...), meaningless here
        }
        let victim = OsStr::from_bytes(&base[WHITEOUT_PREFIX.len()..]);
        match (self.whiteouts, opaque) {
            (Whiteouts::Overlay, true) => {
                let mut made = Vec::new();
                let dir = self.make_parents(parent, &mut made).map_err(failed("making the opaque directory"))?;
                self.written.extend(made);
                // Through the fd's magic link: the xattr goes on the directory itself.
                fs::lsetxattr(dir.as_raw_fd(), OsStr::new("."), "trusted.overlay.opaque", b"y")
                    .map_err(failed("setting trusted.overlay.opaque"))?;
            }
            (Whiteouts::Overlay, false) => {
                let mut made = Vec::new();
                let dir = self.make_parents(parent, &mut made).map_err(failed("making its parent directories"))?;
                self.written.extend(made);
                let dirfd = dir.as_raw_fd();
                fs::remove_all_at(dirfd, victim).map_err(failed("removing what was there"))?;
                fs::mknodat(dirfd, victim, libc::S_IFCHR, libc::makedev(0, 0))
                    .map_err(failed("making the overlay whiteout"))?;
                let header = entry.header();
                let (uid, gid) = (header.uid().unwrap_or(0) as u32, header.gid().unwrap_or(0) as u32);
                match fs::chownat(dirfd, victim, uid, gid) {
                    Err(e) if !self.is_root && e.raw_os_error() == Some(libc::EPERM) => {}
                    other => other.map_err(failed("setting the whiteout's owner"))?,
                }
            }
            (Whiteouts::Delete, true) => {
                let dir = match self.root.open_dir(parent) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    other => other.map_err(failed("opening the opaque directory"))?,
                };
                for child in fs::list(dir.as_raw_fd()).map_err(failed("listing the opaque directory"))? {
                    if !self.written.contains(&parent.join(&child)) {
                        fs::remove_all_at(dir.as_raw_fd(), &child).map_err(failed("emptying the opaque directory"))?;
                    }
                }
            }
            (Whiteouts::Delete, false) => {
                // Whiteouts hide the lower layers only: what this layer wrote stays.
                if self.written.contains(&parent.join(victim)) {
                    return Ok(());
                }
                let dir = match self.root.open_dir(parent) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    other => other.map_err(failed("opening its directory"))?,
                };
                fs::remove_all_at(dir.as_raw_fd(), victim).map_err(failed("removing what it hides"))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), DiffError> {
        for (rel, atime, mtime) in self.dir_times.drain(..).rev() {
            let failed = |source| DiffError::Entry {
                entry: rel.display().to_string(),
                context: "setting the directory's times".into(),
                source,
            };
            let (parent, base) = fs::split(&rel);
            let dir = self.root.open_dir(parent).map_err(failed)?;
            // The directory may have been replaced since by a later entry of another type.
            match fs::lstatat(dir.as_raw_fd(), base).map_err(failed)? {
                Some(st) if fs::is_dir(&st) => fs::utimesat(dir.as_raw_fd(), base, atime, mtime).map_err(failed)?,
                _ => {}
            }
        }
        Ok(())
    }
}
