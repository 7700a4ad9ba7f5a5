//! The container's root filesystem, set up by init inside its new mount namespace: propagation, the spec's
//! mounts, devices, pivot_root, then (after pivot) masked and readonly paths and a readonly root.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::sys;

/// A mount's options, split into flags, propagation changes and data for the filesystem.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    pub propagation: Vec<libc::c_ulong>,
    pub data: Vec<String>,
    pub bind: bool,
}

const FLAGS: &[(&str, bool, libc::c_ulong)] = &[
    ("defaults", false, 0),
    ("ro", false, libc::MS_RDONLY),
    ("rw", true, libc::MS_RDONLY),
    ("suid", true, libc::MS_NOSUID),
    ("nosuid", false, libc::MS_NOSUID),
    ("dev", true, libc::MS_NODEV),
    ("nodev", false, libc::MS_NODEV),
    ("exec", true, libc::MS_NOEXEC),
    ("noexec", false, libc::MS_NOEXEC),
    ("sync", false, libc::MS_SYNCHRONOUS),
    ("async", true, libc::MS_SYNCHRONOUS),
    ("dirsync", false, libc::MS_DIRSYNC),
    ("remount", false, libc::MS_REMOUNT),
    ("mand", false, libc::MS_MANDLOCK),
    ("nomand", true, libc::MS_MANDLOCK),
    ("atime", true, libc::MS_NOATIME),
    ("noatime", false, libc::MS_NOATIME),
    ("diratime", true, libc::MS_NODIRATIME),
    ("nodiratime", false, libc::MS_NODIRATIME),
    ("bind", false, libc::MS_BIND),
    ("rbind", false, libc::MS_BIND | libc::MS_REC),
    ("relatime", false, libc::MS_RELATIME),
    ("norelatime", true, libc::MS_RELATIME),
    ("strictatime", false, libc::MS_STRICTATIME),
    ("nostrictatime", true, libc::MS_STRICTATIME),
    ("lazytime", false, libc::MS_LAZYTIME),
    ("nolazytime", true, libc::MS_LAZYTIME),
    ("silent", false, libc::MS_SILENT),
    ("loud", true, libc::MS_SILENT),
];

const PROPAGATION: &[(&str, libc::c_ulong)] = &[
    ("private", libc::MS_PRIVATE),
    ("rprivate", libc::MS_PRIVATE | libc::MS_REC),
    ("shared", libc::MS_SHARED),
    ("rshared", libc::MS_SHARED | libc::MS_REC),
    ("slave", libc::MS_SLAVE),
    ("rslave", libc::MS_SLAVE | libc::MS_REC),
    ("unbindable", libc::MS_UNBINDABLE),
    ("runbindable", libc::MS_UNBINDABLE | libc::MS_REC),
];

/// Options listed by `features` (mountOptions).
pub fn known_options() -> Vec<&'static str> {
    FLAGS.iter().map(|f| f.0).chain(PROPAGATION.iter().map(|p| p.0)).chain(["tmpcopyup"]).collect()
}

pub fn propagation_flag(name: &str) -> Option<libc::c_ulong> {
    PROPAGATION.iter().find(|p| p.0 == name).map(|p| p.1)
}

impl MountOptions {
    pub fn parse(m: &Mount) -> Result<MountOptions, String> {
        let mut o = MountOptions { bind: m.typ().as_deref() == Some("bind"), ..Default::default() };
        for opt in m.options().iter().flatten() {
            if opt.is_empty() {
                return Err("empty option".into());
            }
            if let Some((_, clear, flag)) = FLAGS.iter().find(|f| f.0 == opt) {
                if *clear {
                    o.flags &= !flag;
                } else {
                    o.flags |= flag;
                }
                if flag & libc::MS_BIND != 0 {
                    o.bind = true;
                }
            } else if let Some(p) = propagation_flag(opt) {
                o.propagation.push(p);
            } else if opt == "tmpcopyup" {
                tracing::debug!("mount option tmpcopyup is not supported, ignored");
            } else if matches!(opt.as_str(), "idmap" | "ridmap")
                || (opt.starts_with('r') && FLAGS.iter().any(|f| f.0 == &opt[1..] && !f.1 && opt != "rbind"))
                    && !opt.contains('=')
            {
                return Err(format!("option {opt:?} is not supported"));
            } else {
                o.data.push(opt.clone());
            }
        }
        if o.bind {
            o.flags |= libc::MS_BIND;
            if let Some(d) = o.data.first() {
                return Err(format!("unknown option {d:?} for a bind mount"));
            }
        }
        Ok(o)
    }
}

/// Resolves `unsafe_path` inside `root` like a chroot would: symlinks (absolute or relative) and `..` never leave
/// root. Missing components are kept as they are.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = unsafe_path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(&resolved).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::other(format!("too many symlinks resolving {}", unsafe_path.display())));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(target.components().rev().map(|c| PathBuf::from(c.as_os_str())));
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved))
}

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Sets the propagation of / (rootfsPropagation, private by default), then bind-mounts rootfs onto itself so that
/// it is a mount point. Like runc, the propagation is applied to all of / and not just to rootfs: making / private
/// first would cut every mount from its host peer, and `rslave` (host mounts show up in the container's binds,
/// CRI's HostToContainer) or `rshared` (Bidirectional) could never work.
pub fn prepare(rootfs: &Path, propagation: Option<&str>) -> io::Result<()> {
    let flag = match propagation {
        Some(p) => propagation_flag(p)
            .ok_or_else(|| io::Error::other(format!("linux.rootfsPropagation: unknown value {p:?}")))?,
        None => libc::MS_PRIVATE | libc::MS_REC,
    };
    sys::mount(None, Path::new("/"), None, flag, None).map_err(ctx("setting the propagation of /"))?;
    // pivot_root refuses a shared parent of the new root, and a shared parent would propagate the rootfs bind
    // (and every mount under it) to the host: make that one mount private, as runc does.
    if let Some((parent, true)) = parent_mount(rootfs) {
        sys::mount(None, &parent, None, libc::MS_PRIVATE, None)
            .map_err(ctx(format!("making {} private", parent.display())))?;
    }
    sys::mount(Some(rootfs), rootfs, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(ctx(format!("bind-mounting rootfs {}", rootfs.display())))?;
    Ok(())
}

/// After pivot_root: the new / gets rootfsPropagation too (the rootfs bind was private until then), as in runc.
pub fn set_root_propagation(propagation: Option<&str>) -> io::Result<()> {
    match propagation.and_then(propagation_flag) {
        Some(flag) => sys::mount(None, Path::new("/"), None, flag, None).map_err(ctx("setting rootfsPropagation")),
        None => Ok(()),
    }
}

/// The mount point of the mount that holds `path`, and whether that mount is shared.
fn parent_mount(path: &Path) -> Option<(PathBuf, bool)> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(PathBuf, bool)> = None;
    for line in text.lines() {
        let Some((left, _)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        let mp = PathBuf::from(unescape_mountinfo(mp));
        // The longest mount point wins; of stacked mounts, the last listed (the top one).
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len()) {
            let shared = fields.iter().skip(6).any(|f| f.starts_with("shared:"));
            best = Some((mp, shared));
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Flags of an existing mount that the kernel locks in a user namespace and a bind remount must keep.
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = sys::cstring(path) else { return 0 };
    // SAFETY: plain data out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    // ST_* values equal the MS_* ones for these.
    st.f_flag as libc::c_ulong
        & (libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC
            | libc::MS_NOATIME
            | libc::MS_NODIRATIME
            | libc::MS_RELATIME
            | libc::MS_RDONLY)
}

/// Remounts a bind mount with `flags`, keeping the locked flags of the underlying mount when the kernel insists.
pub fn remount_bind(dest: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let base = libc::MS_BIND | libc::MS_REMOUNT | (flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT));
    match sys::mount(None, dest, None, base, None) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sys::mount(None, dest, None, base | (locked_flags(dest) & !libc::MS_RDONLY), None)
        }
        r => r,
    }
}

fn create_mount_point(dest: &Path, file: bool) -> io::Result<()> {
    if file {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        if fs::symlink_metadata(dest).is_err() {
            fs::File::create(dest)?;
        }
        Ok(())
    } else {
        fs::create_dir_all(dest)
    }
}

/// Mounts one spec mount under rootfs.
pub fn mount_one(rootfs: &Path, bundle: &Path, m: &Mount, in_userns: bool, new_cgroupns: bool) -> io::Result<()> {
    let opts = MountOptions::parse(m).map_err(io::Error::other)?;
    let dest = secure_join(rootfs, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("");
    let data = opts.data.join(",");
    let what = format!(
        "mounting {} on {}",
        m.source().as_deref().unwrap_or(Path::new(typ)).display(),
        m.destination().display()
    );
    if opts.bind {
        let source = m.source().as_ref().map(|s| bundle.join(s)).unwrap_or_default();
        let meta = fs::metadata(&source).map_err(ctx(format!("{what}: source")))?;
        create_mount_point(&dest, !meta.is_dir()).map_err(ctx(format!("{what}: creating mount point")))?;
        sys::mount(Some(&source), &dest, None, opts.flags & (libc::MS_BIND | libc::MS_REC), None)
            .map_err(ctx(&what))?;
        if opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT) != 0 {
            remount_bind(&dest, opts.flags).map_err(ctx(format!("{what}: remount")))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        create_mount_point(&dest, false).map_err(ctx(format!("{what}: creating mount point")))?;
        mount_cgroups(&dest, opts.flags, new_cgroupns).map_err(ctx(&what))?;
    } else {
        create_mount_point(&dest, false).map_err(ctx(format!("{what}: creating mount point")))?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let fstype = if typ.is_empty() { None } else { Some(typ) };
        match sys::mount(Some(&source), &dest, fstype, opts.flags, Some(&data)) {
            // sysfs needs a network namespace owned by our user namespace; fall back to the host's, like runc.
            Err(e) if typ == "sysfs" && in_userns && e.raw_os_error() == Some(libc::EPERM) => {
                sys::mount(Some(Path::new("/sys")), &dest, None, libc::MS_BIND | libc::MS_REC, None)
                    .map_err(ctx(&what))?;
                remount_bind(&dest, opts.flags | libc::MS_RDONLY).map_err(ctx(&what))?;
            }
            r => r.map_err(ctx(&what))?,
        }
    }
    for p in &opts.propagation {
        sys::mount(None, &dest, None, *p, None).map_err(ctx(format!("{what}: propagation")))?;
    }
    Ok(())
}

/// A cgroup hierarchy of the host, from mountinfo.
struct Hierarchy {
    mountpoint: PathBuf,
    root: String,
    v2: bool,
    options: String,
}

fn host_hierarchies() -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mp), Some(fstype), Some(opts)) = (l.get(3), l.get(4), r.first(), r.get(2)) else {
            continue;
        };
        if !mp.starts_with("/sys/fs/cgroup") || !matches!(*fstype, "cgroup" | "cgroup2") {
            continue;
        }
        let options = opts.split(',').filter(|o| !matches!(*o, "rw" | "ro")).collect::<Vec<_>>().join(",");
        out.push(Hierarchy {
            mountpoint: PathBuf::from(mp),
            root: root.to_string(),
            v2: *fstype == "cgroup2",
            options,
        });
    }
    out
}

/// Our cgroup path in the hierarchy with `options` (v1 controllers) or in cgroup2, from /proc/self/cgroup.
fn own_cgroup(h: &Hierarchy) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if h.v2 {
            controllers.is_empty()
        } else {
            !controllers.is_empty() && controllers.split(',').all(|c| h.options.split(',').any(|o| o == c))
        };
        if matches {
            return Some(path.to_string());
        }
    }
    None
}

/// The spec's `cgroup` mount. With a cgroup namespace, fresh cgroup mounts show the container's cgroup as their
/// root; without one, the host hierarchies' container directories are bind-mounted. Hybrid hosts get a tmpfs
/// with one directory per hierarchy (and `unified` for cgroup2), as they look on the host.
fn mount_cgroups(dest: &Path, flags: libc::c_ulong, new_cgroupns: bool) -> io::Result<()> {
    let hierarchies = host_hierarchies();
    let flags = flags | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let only_v2 =
        hierarchies.len() == 1 && hierarchies[0].v2 && hierarchies[0].mountpoint == Path::new("/sys/fs/cgroup");
    let mount_one = |h: &Hierarchy, target: &Path| -> io::Result<()> {
        if new_cgroupns {
            let (fstype, data) = if h.v2 { ("cgroup2", String::new()) } else { ("cgroup", h.options.clone()) };
            sys::mount(Some(Path::new(fstype)), target, Some(fstype), flags, Some(&data))
        } else {
            let own = own_cgroup(h).unwrap_or_else(|| "/".into());
            let sub = own.strip_prefix(h.root.trim_end_matches('/')).unwrap_or(&own).trim_start_matches('/');
            sys::mount(Some(&h.mountpoint.join(sub)), target, None, libc::MS_BIND | libc::MS_REC, None)?;
            remount_bind(target, flags)
        }
    };
    if only_v2 {
        return mount_one(&hierarchies[0], dest);
    }
    sys::mount(Some(Path::new("tmpfs")), dest, Some("tmpfs"), flags & !libc::MS_RDONLY, Some("mode=755"))?;
    for h in &hierarchies {
        let Ok(rel) = h.mountpoint.strip_prefix("/sys/fs/cgroup") else { continue };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(rel);
        fs::create_dir_all(&target)?;
        mount_one(h, &target)?;
    }
    if flags & libc::MS_RDONLY != 0 {
        sys::mount(None, dest, None, libc::MS_REMOUNT | flags, Some("mode=755"))?;
    }
    Ok(())
}

/// True if a spec mount provides /dev by bind-mounting the host's (then devices are not created).
pub fn binds_dev(mounts: &[Mount]) -> bool {
    mounts.iter().any(|m| m.destination() == Path::new("/dev") && MountOptions::parse(m).is_ok_and(|o| o.bind))
}

struct Device {
    path: PathBuf,
    kind: libc::mode_t,
    major: i64,
    minor: i64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn default_devices() -> Vec<Device> {
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
        .into_iter()
        .map(|(name, major, minor)| Device {
            path: PathBuf::from("/dev").join(name),
            kind: libc::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect()
}

fn spec_device(d: &LinuxDevice) -> Device {
    let kind = match d.typ() {
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        _ => libc::S_IFCHR,
    };
    Device {
        path: d.path().clone(),
        kind,
        major: d.major(),
        minor: d.minor(),
        mode: d.file_mode().unwrap_or(0o666),
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    }
}

/// Creates /dev nodes: the defaults, then the spec's. In a user namespace mknod is not allowed, so the host's
/// nodes are bind-mounted instead (as runc does).
pub fn create_devices(rootfs: &Path, devices: &[LinuxDevice], in_userns: bool) -> io::Result<()> {
    let mut all = default_devices();
    for d in devices {
        all.retain(|x| x.path != *d.path());
        all.push(spec_device(d));
    }
    for d in &all {
        let dest = secure_join(rootfs, &d.path)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let what = format!("creating device {}", d.path.display());
        if in_userns {
            create_mount_point(&dest, true).map_err(ctx(&what))?;
            sys::mount(Some(&d.path), &dest, None, libc::MS_BIND, None).map_err(ctx(&what))?;
            continue;
        }
        match fs::remove_file(&dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx(&what)(e)),
        }
        let dev = libc::makedev(d.major as u32, d.minor as u32);
        sys::mknod(&dest, d.kind | (d.mode & 0o7777), dev).map_err(ctx(&what))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(d.mode & 0o7777)).map_err(ctx(&what))?;
        sys::lchown(&dest, d.uid, d.gid).map_err(ctx(&what))?;
    }
    Ok(())
}

/// The standard /dev symlinks, and /dev/ptmx → pts/ptmx so that ptys come from the container's devpts.
pub fn create_dev_symlinks(rootfs: &Path) -> io::Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    if !dev.is_dir() {
        return Ok(());
    }
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match symlink(target, dev.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(ctx(format!("creating /dev/{name}"))(e)),
            _ => {}
        }
    }
    if dev.join("pts").is_dir() {
        let ptmx = dev.join("ptmx");
        if fs::symlink_metadata(&ptmx).is_ok_and(|m| !m.file_type().is_symlink() || m.file_type().is_char_device()) {
            fs::remove_file(&ptmx).map_err(ctx("removing /dev/ptmx"))?;
        }
        match symlink("pts/ptmx", &ptmx) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(ctx("creating /dev/ptmx")(e)),
            _ => {}
        }
    }
    Ok(())
}

/// pivot_root into rootfs and detach the old root. Uses runc's fd trick (pivot_root(".", ".")) so no directory
/// for the old root is needed in the container. Falls back to MS_MOVE + chroot when pivot_root fails with EINVAL,
/// which it does on ramfs/initramfs roots (runc PR#710).
pub fn pivot(rootfs: &Path) -> io::Result<()> {
    let old = sys::open(Path::new("/"), libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    let new = sys::open(rootfs, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    use std::os::fd::AsRawFd;
    sys::fchdir(new.as_raw_fd())?;
    match sys::pivot_root(Path::new("."), Path::new(".")) {
        Ok(()) => {
            sys::fchdir(old.as_raw_fd())?;
            // The old root may be shared with the host: make it slave before unmounting so the unmount stays here.
            sys::mount(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None)
                .map_err(ctx("making old root slave"))?;
            sys::umount2(Path::new("."), libc::MNT_DETACH).map_err(ctx("unmounting old root"))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("pivot_root failed with EINVAL, falling back to chroot");
            sys::mount(Some(Path::new(".")), Path::new("/"), None, libc::MS_MOVE, None)
                .map_err(ctx("moving rootfs to /"))?;
            sys::chroot(Path::new(".")).map_err(ctx("chroot"))?;
        }
        Err(e) => return Err(ctx("pivot_root")(e)),
    }
    std::env::set_current_dir("/")
}

/// Hides `paths`: /dev/null over files, an empty read-only tmpfs over directories. Missing paths are skipped.
pub fn mask_paths(paths: &[String]) -> io::Result<()> {
    for p in paths {
        let path = Path::new(p);
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx(format!("masking {p}"))(e)),
        };
        let r = if meta.is_dir() {
            sys::mount(Some(Path::new("tmpfs")), path, Some("tmpfs"), libc::MS_RDONLY, None)
        } else {
            sys::mount(Some(Path::new("/dev/null")), path, None, libc::MS_BIND, None)
        };
        r.map_err(ctx(format!("masking {p}")))?;
    }
    Ok(())
}

/// Makes `paths` read-only with a bind mount onto themselves. Missing paths are skipped.
pub fn readonly_paths(paths: &[String]) -> io::Result<()> {
    for p in paths {
        let path = Path::new(p);
        match sys::mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r.map_err(ctx(format!("making {p} read-only")))?,
        }
        remount_bind(path, libc::MS_RDONLY | libc::MS_REC).map_err(ctx(format!("making {p} read-only")))?;
    }
    Ok(())
}

/// Remounts / read-only (after pivot_root).
pub fn readonly_root() -> io::Result<()> {
    remount_bind(Path::new("/"), libc::MS_RDONLY).map_err(ctx("remounting / read-only"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn opts(typ: &str, o: &[&str]) -> Result<MountOptions, String> {
        let m = MountBuilder::default()
            .destination("/x")
            .typ(typ)
            .options(o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        MountOptions::parse(&m)
    }

    #[test]
    fn mount_options() {
        let o = opts("tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]).unwrap();
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        let o = opts("bind", &["rbind", "ro", "rprivate"]).unwrap();
        assert!(o.bind);
        assert_eq!(o.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(o.propagation, [libc::MS_PRIVATE | libc::MS_REC]);
        assert!(opts("none", &["bind", "nosuidd"]).unwrap_err().contains("nosuidd"));
        assert!(opts("tmpfs", &[""]).is_err());
        assert!(opts("none", &["rbind", "idmap"]).is_err());
    }

    #[test]
    fn secure_join_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("a/abs")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        assert_eq!(secure_join(root, Path::new("/a/abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(secure_join(root, Path::new("/a/b/up/x")).unwrap(), root.join("x"));
        assert_eq!(secure_join(root, Path::new("../../x")).unwrap(), root.join("x"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c\\011"), "/a b\\c\t");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }
}
