//! Reading and writing cgroup interface files, with the path and value in every error.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::error::{CgroupError, Result};

/// Writes `value` to a cgroup file in one `write(2)`, as the kernel parses each write as one command.
///
/// The file is opened without `O_CREAT`: a missing interface file (unsupported controller or kernel
/// feature) is an error rather than a stray file, which matters on hybrid hosts where /sys/fs/cgroup is
/// a tmpfs.
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    OpenFile::new(path).write(value)
}

/// A cgroup file written several times in a row (a device list's rules): opened at the first write and
/// kept, so each further command costs one `write(2)` instead of an `open(2)`, `write(2)` and `close(2)`.
pub(crate) struct OpenFile<'a> {
    path: &'a Path,
    file: Option<fs::File>,
}

impl<'a> OpenFile<'a> {
    pub(crate) fn new(path: &'a Path) -> OpenFile<'a> {
        OpenFile { path, file: None }
    }

    /// Writes `value` in one `write(2)`: one command. Opens without `O_CREAT`, as [`write`] says.
    pub(crate) fn write(&mut self, value: &str) -> Result<()> {
        tracing::trace!(path = %self.path.display(), value, "cgroups: write");
        let res = (|| -> io::Result<()> {
            let file = match &mut self.file {
                Some(file) => file,
                None => self.file.insert(OpenOptions::new().write(true).open(self.path)?),
            };
            let n = file.write(value.as_bytes())?;
            if n != value.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write ({n} of {} bytes)", value.len()),
                ));
            }
            Ok(())
        })();
        res.map_err(|err| CgroupError::Write { path: self.path.to_path_buf(), value: value.to_string(), err })
    }
}

/// Reads a whole cgroup file.
pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|err| CgroupError::Read { path: path.to_path_buf(), err })
}

/// Reads a file, `Ok(None)` when it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(CgroupError::Read { path: path.to_path_buf(), err }),
    }
}

/// Reads a file holding one unsigned number, `Ok(None)` when it does not exist. `max` reads as `u64::MAX`.
pub(crate) fn read_u64_opt(path: &Path) -> Result<Option<u64>> {
    match read_opt(path)? {
        None => Ok(None),
        Some(s) => parse_u64(path, s.trim()).map(Some),
    }
}

/// Parses a number the way cgroup files print them (`max` meaning unlimited, negative v1 `-1` too).
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64> {
    if s == "max" || s == "-1" {
        return Ok(u64::MAX);
    }
    s.parse::<u64>()
        .map_err(|_| CgroupError::Parse { path: path.to_path_buf(), reason: format!("{s:?} is not a number") })
}

/// Parses flat-keyed files (`memory.stat`, `cpu.stat`, `memory.events`, `memory.oom_control`): `key value` lines.
pub(crate) fn parse_flat_keyed(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let key = it.next()?;
            let val = it.next()?.parse::<u64>().ok()?;
            Some((key, val))
        })
        .collect()
}

/// Looks one key up in a flat-keyed file's text.
pub(crate) fn flat_keyed_get(text: &str, key: &str) -> Option<u64> {
    parse_flat_keyed(text).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Reads the pids listed in a `cgroup.procs` file; a missing file gives an empty list.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let Some(text) = read_opt(path)? else { return Ok(Vec::new()) };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .map_err(|_| CgroupError::Parse { path: path.to_path_buf(), reason: format!("{l:?} is not a pid") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let text = "cache 10\nrss 20\nbad\nname x\n";
        assert_eq!(parse_flat_keyed(text), vec![("cache", 10), ("rss", 20)]);
        assert_eq!(flat_keyed_get(text, "rss"), Some(20));
        assert_eq!(flat_keyed_get(text, "none"), None);
    }

    #[test]
    fn numbers() {
        let p = Path::new("/x");
        assert_eq!(parse_u64(p, "max").unwrap(), u64::MAX);
        assert_eq!(parse_u64(p, "12").unwrap(), 12);
        assert!(parse_u64(p, "1a").unwrap_err().to_string().contains("/x"));
    }

    #[test]
    fn write_error_names_file_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing").join("pids.max");
        let msg = write(&p, "max").unwrap_err().to_string();
        assert_eq!(msg, format!("cgroups: writing \"max\" to {}: No such file or directory", p.display()));
    }
}
