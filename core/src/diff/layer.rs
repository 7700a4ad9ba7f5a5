//! Making a layer from the difference of two trees, as containerd's walking differ does: what
//! `upper` adds or changes, and a `.wh.` whiteout for what it removes from `lower`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::fs::llistxattrs;
use super::{DiffError, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD, WHITEOUT_PREFIX, io_error};
use crate::content::Digest;

/// How a layer made by [`write_layer`] is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar stream.
    None,
    /// gzip, the default.
    Gzip,
    /// zstd, at ruzstd's "fastest" level (about zstd's level 1; its better levels are not implemented).
    Zstd,
}

impl LayerCompression {
    /// The compression a layer media type asks for; empty means gzip, as in containerd.
    pub fn from_media_type(media_type: &str) -> Result<LayerCompression, DiffError> {
        match media_type {
            "" | MEDIA_TYPE_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Ok(LayerCompression::Gzip)
            }
            MEDIA_TYPE_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerCompression::None),
            MEDIA_TYPE_TAR_ZSTD => Ok(LayerCompression::Zstd),
            other => Err(DiffError::MediaType(other.to_owned())),
        }
    }
}

/// A layer as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The digest of the bytes written (compressed).
    pub digest: Digest,
    /// How many bytes were written.
    pub size: u64,
    /// The digest of the uncompressed tar stream.
    pub diff_id: Digest,
}

/// Hashes and counts what is written through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes to `out` the layer that turns `lower` (None: an empty tree) into `upper`, compressed
/// as `compression` says, with no timestamp later than `source_date_epoch` (seconds) if given.
pub fn write_layer<W: Write>(
    lower: Option<&Path>,
    upper: &Path,
    out: W,
    compression: LayerCompression,
    source_date_epoch: Option<i64>,
) -> Result<Layer, DiffError> {
    let mut compressed = Hashing { inner: out, hasher: Sha256::new(), count: 0 };
    let diff_id = match compression {
        LayerCompression::None => walk(lower, upper, &mut compressed, source_date_epoch)?.1,
        LayerCompression::Gzip => {
            let gzip = flate2::write::GzEncoder::new(&mut compressed, flate2::Compression::default());
            let (gzip, diff_id) = walk(lower, upper, gzip, source_date_epoch)?;
            gzip.finish().map_err(io_error("finishing the gzip stream"))?;
            diff_id
        }
        LayerCompression::Zstd => zstd_layer(lower, upper, &mut compressed, source_date_epoch)?,
    };
    compressed.flush().map_err(io_error("writing the layer"))?;
    Ok(Layer { digest: Digest::from_sha256(&compressed.hasher), size: compressed.count, diff_id })
}

/// The zstd layer into `out`; returns the tar stream's digest. ruzstd's encoder pulls from a reader, so the
/// tar stream is made on a thread of its own and piped in. The encoder panics on an I/O error (ruzstd 0.8), so
/// both of its ends are wrapped to keep the first error instead, reported once the encoder is done.
fn zstd_layer<W: Write>(
    lower: Option<&Path>,
    upper: &Path,
    out: &mut W,
    epoch: Option<i64>,
) -> Result<Digest, DiffError> {
    let (reader, writer) = io::pipe().map_err(io_error("making a pipe for the zstd encoder"))?;
    std::thread::scope(|scope| {
        // Dropping the writer at the end of the walk is the encoder's end of input.
        let walker = scope.spawn(move || walk(lower, upper, writer, epoch).map(|(_, diff_id)| diff_id));
        let mut source = KeepError { inner: reader, error: None };
        let mut drain = KeepError { inner: out, error: None };
        ruzstd::encoding::compress(&mut source, &mut drain, ruzstd::encoding::CompressionLevel::Fastest);
        // A walker still writing (the encoder stopped reading) gets EPIPE and ends.
        drop(source.inner);
        let diff_id = walker.join().map_err(|_| DiffError::Format("the tar stream's thread panicked".into()))??;
        if let Some(e) = drain.error.or(source.error) {
            return Err(io_error("compressing the layer with zstd")(e));
        }
        Ok(diff_id)
    })
}

/// A reader or writer that never fails: the first error is kept, and then reads end and writes are dropped.
struct KeepError<T> {
    inner: T,
    error: Option<io::Error>,
}

impl<R: io::Read> io::Read for KeepError<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Ok(0);
        }
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

impl<W: Write> Write for KeepError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_none()
            && let Err(e) = self.inner.write_all(buf)
        {
            self.error = Some(e);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.error.is_none()
            && let Err(e) = self.inner.flush()
        {
            self.error = Some(e);
        }
        Ok(())
    }
}

/// Writes the tar stream into `sink`; returns it and the stream's digest.
fn walk<S: Write>(lower: Option<&Path>, upper: &Path, sink: S, epoch: Option<i64>) -> Result<(S, Digest), DiffError> {
    let tar_stream = Hashing { inner: sink, hasher: Sha256::new(), count: 0 };
    let mut walker = Walker { builder: tar::Builder::new(tar_stream), lower, upper, epoch, links: HashMap::new() };
    walker.dir(Path::new(""), true)?;
    let tar_stream = walker.builder.into_inner().map_err(io_error("finishing the tar stream"))?;
    let digest = Digest::from_sha256(&tar_stream.hasher);
    Ok((tar_stream.inner, digest))
}

struct Walker<'a, W: Write> {
    builder: tar::Builder<W>,
    lower: Option<&'a Path>,
    upper: &'a Path,
    epoch: Option<i64>,
    /// Inodes (dev, ino) of files with several links already in the layer, and their name.
    links: HashMap<(u64, u64), PathBuf>,
}

fn names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort();
    Ok(names)
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut ba)?;
        if n == 0 {
            return Ok(b.read(&mut bb)? == 0);
        }
        b.read_exact(&mut bb[..n]).map_err(|_| io::Error::other("shorter"))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

impl<W: Write> Walker<'_, W> {
    fn failed(rel: &Path, context: &str) -> impl FnOnce(io::Error) -> DiffError {
        let (entry, context) = (rel.display().to_string(), context.to_owned());
        move |source| DiffError::Entry { entry, context, source }
    }

    /// Compares directory `rel` of both trees; `lower_has` is false where the lower tree has no
    /// directory there (everything under it is new).
    fn dir(&mut self, rel: &Path, lower_has: bool) -> Result<(), DiffError> {
        let upper_dir = self.upper.join(rel);
        let upper_names = names(&upper_dir).map_err(Self::failed(rel, "listing the upper directory"))?;
        let lower_dir = self.lower.filter(|_| lower_has).map(|l| l.join(rel));
        let lower_names = match &lower_dir {
            Some(dir) => names(dir).map_err(Self::failed(rel, "listing the lower directory"))?,
            None => Vec::new(),
        };
        // Whiteouts first, sorted, then the upper entries, sorted: deterministic output.
        for name in lower_names.iter().filter(|n| upper_names.binary_search(n).is_err()) {
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            self.whiteout(&rel.join(wh))?;
        }
        for name in &upper_names {
            let child = rel.join(name);
            let upath = self.upper.join(&child);
            let Some(um) = lstat(&upath).map_err(Self::failed(&child, "reading the upper entry"))? else { continue };
            let lm = match &lower_dir {
                Some(dir) => lstat(&dir.join(name)).map_err(Self::failed(&child, "reading the lower entry"))?,
                None => None,
            };
            let same_kind = lm.as_ref().is_some_and(|lm| lm.file_type() == um.file_type());
            let changed = match &lm {
                Some(lm) if same_kind => self.changed(&child, lm, &um)?,
                _ => true,
            };
            if changed {
                self.add(&child, &upath, &um)?;
            }
            if um.is_dir() {
                self.dir(&child, same_kind)?;
            }
        }
        Ok(())
    }

    fn changed(&self, rel: &Path, lm: &Metadata, um: &Metadata) -> Result<bool, DiffError> {
        if lm.mode() != um.mode()
            || lm.uid() != um.uid()
            || lm.gid() != um.gid()
            || lm.rdev() != um.rdev()
            || (!um.is_dir() && lm.size() != um.size())
            || lm.mtime() != um.mtime()
            || lm.mtime_nsec() != um.mtime_nsec()
        {
            return Ok(true);
        }
        let lower = self.lower.expect("a lower entry").join(rel);
        let upper = self.upper.join(rel);
        let lx = llistxattrs(&lower).map_err(Self::failed(rel, "reading the lower xattrs"))?;
        let ux = llistxattrs(&upper).map_err(Self::failed(rel, "reading the upper xattrs"))?;
        if lx != ux {
            return Ok(true);
        }
        if um.file_type().is_symlink() {
            let l = std::fs::read_link(&lower).map_err(Self::failed(rel, "reading the lower symlink"))?;
            let u = std::fs::read_link(&upper).map_err(Self::failed(rel, "reading the upper symlink"))?;
            return Ok(l != u);
        }
        // Times of whole seconds may hide a change (a filesystem or a copy without nanoseconds):
        // compare the bytes then, as containerd does.
        if um.is_file() && um.mtime_nsec() == 0 {
            return Ok(!same_contents(&lower, &upper).map_err(Self::failed(rel, "comparing the contents"))?);
        }
        Ok(false)
    }

    fn mtime(&self, m: &Metadata) -> u64 {
        let t = m.mtime();
        let t = self.epoch.map_or(t, |e| t.min(e));
        t.max(0) as u64
    }

    fn whiteout(&mut self, rel: &Path) -> Result<(), DiffError> {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        // As containerd 2: whiteouts are dated 1970, whatever the epoch.
        header.set_mtime(0);
        self.builder.append_data(&mut header, rel, io::empty()).map_err(Self::failed(rel, "writing the whiteout"))
    }

    fn add(&mut self, rel: &Path, path: &Path, m: &Metadata) -> Result<(), DiffError> {
        let xattrs = llistxattrs(path).map_err(Self::failed(rel, "reading its xattrs"))?;
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> =
                xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice())).collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(Self::failed(rel, "writing its xattrs"))?;
        }
        let mut header = Header::new_gnu();
        header.set_mode(m.mode() & 0o7777);
        header.set_uid(m.uid() as u64);
        header.set_gid(m.gid() as u64);
        header.set_mtime(self.mtime(m));
        header.set_size(0);
        let ft = m.file_type();
        let result = if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    header.set_entry_type(EntryType::Link);
                    return self
                        .builder
                        .append_link(&mut header, rel, &first)
                        .map_err(Self::failed(rel, "writing the hard link"));
                }
                self.links.insert(key, rel.to_owned());
            }
            header.set_entry_type(EntryType::Regular);
            header.set_size(m.size());
            let file = File::open(path).map_err(Self::failed(rel, "opening the file"))?;
            self.builder.append_data(&mut header, rel, file)
        } else if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.builder.append_data(&mut header, rel, io::empty())
        } else if ft.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            let target = std::fs::read_link(path).map_err(Self::failed(rel, "reading the symlink"))?;
            self.builder.append_link(&mut header, rel, target)
        } else if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() { EntryType::Char } else { EntryType::Block });
            let rdev = m.rdev();
            header.set_device_major(libc::major(rdev)).map_err(Self::failed(rel, "writing its device number"))?;
            header.set_device_minor(libc::minor(rdev)).map_err(Self::failed(rel, "writing its device number"))?;
            self.builder.append_data(&mut header, rel, io::empty())
        } else if ft.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            self.builder.append_data(&mut header, rel, io::empty())
        } else {
            // Sockets: tar has no type for them, and containerd leaves them out too.
            tracing::debug!(path = %rel.display(), "socket left out of the layer");
            return Ok(());
        };
        result.map_err(Self::failed(rel, "writing the entry"))?;
        Ok(())
    }
}
