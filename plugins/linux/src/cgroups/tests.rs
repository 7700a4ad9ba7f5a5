//! Tests against the real cgroup filesystem (root only; each test makes its own `/berth-test-<test>-<pid>`
//! tree and removes it in `Drop`, also when an assertion fails).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
};
use std::os::unix::process::ExitStatusExt;

use super::*;

/// False (and a note on stderr) when the tests cannot touch cgroups.
fn requires_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root");
        false
    }
}

/// A test cgroup at `/berth-test-<test>-<pid>/c`; dropping it deletes the cgroup and its parent.
struct Guard {
    cg: Cgroup,
    top: String,
}

impl Guard {
    fn top(test: &str) -> String {
        format!("/berth-test-{test}-{}", std::process::id())
    }

    fn create(test: &str, resources: Option<&LinuxResources>) -> Result<Guard> {
        let top = Self::top(test);
        let cg = Cgroup::create(&format!("{top}/c"), resources)?;
        Ok(Guard { cg, top })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.cg.delete() {
            eprintln!("cleanup: {e}");
        }
        cleanup_top(&self.top);
    }
}

fn cleanup_top(top: &str) {
    match Cgroup::open(top) {
        Ok(parent) => {
            if let Err(e) = parent.delete() {
                eprintln!("cleanup: {e}");
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => eprintln!("cleanup: {e}"),
    }
}

/// A child process killed and reaped on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kid {
    /// `sh -c 'read go; <script>'`: the script starts only after [`Kid::release`], so it runs (and forks)
    /// inside the cgroup once the test has added the shell to it.
    fn gated(script: &str) -> Kid {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read go; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        Kid(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn release(&mut self) {
        let mut stdin = self.0.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("release child");
    }

    fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {} still running after {timeout:?}", self.0.id());
            sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// Reads `v1_name` or `v2_name` from wherever `controller` lives for this cgroup.
fn ctl_file(cg: &Cgroup, controller: &str, v1_name: &str, v2_name: &str) -> String {
    let path = match cg.locate(controller).unwrap_or_else(|| panic!("controller {controller} not available")) {
        Loc::V1(d) => d.join(v1_name),
        Loc::V2(d) => d.join(v2_name),
    };
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

fn is_v1(cg: &Cgroup, controller: &str) -> bool {
    matches!(cg.locate(controller), Some(Loc::V1(_)))
}

/// A real block device (`major:minor`) for I/O limits, if the machine has one.
fn block_device() -> Option<(i64, i64)> {
    for entry in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "nbd"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dev = fs::read_to_string(entry.path().join("dev")).ok()?;
        let (maj, min) = dev.trim().split_once(':')?;
        return Some((maj.parse().ok()?, min.parse().ok()?));
    }
    None
}

fn existing_dirs(cg: &Cgroup) -> Vec<PathBuf> {
    cg.dirs().filter(|d| d.exists()).map(Path::to_path_buf).collect()
}

#[test]
fn detection_matches_the_mounts() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstype_at = |mp: &str| {
        mountinfo.lines().rfind(|l| l.split(' ').nth(4) == Some(mp)).and_then(|l| {
            let (_, right) = l.split_once(" - ")?;
            right.split(' ').next().map(str::to_string)
        })
    };
    let expected = match (fstype_at("/sys/fs/cgroup").as_deref(), fstype_at("/sys/fs/cgroup/unified").as_deref()) {
        (Some("cgroup2"), _) => Mode::V2,
        (Some("tmpfs"), Some("cgroup2")) => Mode::Hybrid,
        _ => Mode::V1,
    };
    let got = mode().unwrap();
    eprintln!("cgroup mode: {got}");
    assert_eq!(got, expected);
    assert_eq!(mode().unwrap(), got, "mode is cached");
    // The build machines of this project are hybrid.
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() && Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(got, Mode::Hybrid);
    }
}

#[test]
fn rejects_bad_paths() {
    for bad in ["", "/", "/a/../b", "system.slice:berth:c1"] {
        assert!(matches!(normalize(bad), Err(CgroupError::InvalidPath { .. })), "{bad:?}");
    }
    assert_eq!(normalize("berth//ns/./c1/").unwrap().0, "/berth/ns/c1");
}

#[test]
fn create_applies_limits() {
    if !requires_root() {
        return;
    }
    let mut resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(64i64 << 20)
                .reservation(32i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(16i64).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    if let Some((major, minor)) = block_device() {
        let t = LinuxThrottleDeviceBuilder::default().major(major).minor(minor).rate(1u64 << 20).build().unwrap();
        resources.set_block_io(Some(LinuxBlockIoBuilder::default().throttle_read_bps_device(vec![t]).build().unwrap()));
    }
    if matches!(mode().unwrap(), Mode::V1 | Mode::Hybrid) && Path::new("/sys/fs/cgroup/devices").exists() {
        resources.set_devices(Some(vec![
            LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(3i64)
                .access("rwm")
                .build()
                .unwrap(),
            // A second allow through the same open devices.allow: each write is a rule of its own.
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(5i64)
                .access("rw")
                .build()
                .unwrap(),
        ]));
    }
    let g = Guard::create("limits", Some(&resources)).unwrap();
    let cg = &g.cg;
    assert_eq!(cg.path(), format!("{}/c", g.top));

    assert_eq!(ctl_file(cg, "memory", "memory.limit_in_bytes", "memory.max"), (64u64 << 20).to_string());
    assert_eq!(ctl_file(cg, "memory", "memory.soft_limit_in_bytes", "memory.low"), (32u64 << 20).to_string());
    if is_v1(cg, "memory") {
        if let Some(Loc::V1(d)) = cg.locate("memory")
            && d.join("memory.memsw.limit_in_bytes").exists()
        {
            assert_eq!(
                fs::read_to_string(d.join("memory.memsw.limit_in_bytes")).unwrap().trim(),
                (64u64 << 20).to_string()
            );
        }
    } else if let Some(Loc::V2(d)) = cg.locate("memory")
        && d.join("memory.swap.max").exists()
    {
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap().trim(), "0");
    }
    assert_eq!(ctl_file(cg, "pids", "pids.max", "pids.max"), "16");
    if is_v1(cg, "cpu") {
        assert_eq!(ctl_file(cg, "cpu", "cpu.shares", ""), "512");
        assert_eq!(ctl_file(cg, "cpu", "cpu.cfs_quota_us", ""), "50000");
        assert_eq!(ctl_file(cg, "cpu", "cpu.cfs_period_us", ""), "100000");
    } else {
        assert_eq!(ctl_file(cg, "cpu", "", "cpu.weight"), v2::cpu_weight(512).to_string());
        assert_eq!(ctl_file(cg, "cpu", "", "cpu.max"), "50000 100000");
    }
    assert_eq!(ctl_file(cg, "cpuset", "cpuset.cpus", "cpuset.cpus"), "0");
    assert_eq!(ctl_file(cg, "cpuset", "cpuset.mems", "cpuset.mems"), "0");
    if let Some((major, minor)) = block_device() {
        let got =
            ctl_file(cg, if is_v1(cg, "blkio") { "blkio" } else { "io" }, "blkio.throttle.read_bps_device", "io.max");
        let want = if is_v1(cg, "blkio") {
            format!("{major}:{minor} {}", 1u64 << 20)
        } else {
            format!("{major}:{minor} rbps={}", 1u64 << 20)
        };
        assert!(got.contains(&want), "{got:?} should contain {want:?}");
    }
    if let Some(Loc::V1(d)) = cg.locate("devices")
        && resources.devices().is_some()
    {
        assert_eq!(fs::read_to_string(d.join("devices.list")).unwrap().trim(), "c 1:3 rwm\nc 1:5 rw");
    }

    // hugetlb: a v1 controller, or (hybrid here) one of the unified hierarchy.
    if cg.locate("hugetlb").is_some() && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        let hp = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default().page_size("2MB").limit(4i64 << 20).build().unwrap(),
            ])
            .build()
            .unwrap();
        cg.apply(&hp).unwrap();
        assert_eq!(ctl_file(cg, "hugetlb", "hugetlb.2MB.limit_in_bytes", "hugetlb.2MB.max"), (4u64 << 20).to_string());
        let stats = cg.stats().unwrap();
        let h = stats.hugetlb.iter().find(|h| h.page_size == "2MB").expect("2MB hugetlb stats");
        assert_eq!(h.limit, Some(4 << 20));
    }
}

#[test]
fn lifecycle_freeze_kill_delete() {
    if !requires_root() {
        return;
    }
    let g = Guard::create("lifecycle", None).unwrap();
    let cg = &g.cg;
    let mut kid = Kid(Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap());
    cg.add_process(kid.pid()).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![kid.pid()]);
    for dir in cg.dirs() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l.trim() == kid.pid().to_string()), "pid missing in {}", dir.display());
    }
    if mode().unwrap() == Mode::Hybrid {
        assert!(cg.unified.is_some(), "hybrid also joins the unified hierarchy");
    }

    assert!(!cg.is_frozen().unwrap());
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    match cg.freezer().unwrap() {
        Loc::V1(d) => assert_eq!(fs::read_to_string(d.join("freezer.state")).unwrap().trim(), "FROZEN"),
        Loc::V2(d) => assert!(fs::read_to_string(d.join("cgroup.events")).unwrap().contains("frozen 1")),
    }
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());

    // A paused cgroup can be killed: kill_all thaws after SIGKILL.
    cg.freeze().unwrap();
    cg.kill_all(libc::SIGKILL).unwrap();
    let status = kid.wait_timeout(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!cg.is_frozen().unwrap());

    cg.delete().unwrap();
    assert!(existing_dirs(cg).is_empty(), "left behind: {:?}", existing_dirs(cg));
    assert!(cg.pids().unwrap().is_empty());
    // Deleting again (a cgroup that does not exist) is fine.
    cg.delete().unwrap();
    assert!(Cgroup::open(cg.path()).unwrap_err().is_not_found());
}

#[test]
fn delete_kills_what_is_left_and_child_cgroups() {
    if !requires_root() {
        return;
    }
    let g = Guard::create("delete", None).unwrap();
    let mut kid = Kid(Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap());
    g.cg.add_process(kid.pid()).unwrap();
    // A child cgroup made by "the container".
    let sub = Cgroup::create(&format!("{}/sub", g.cg.path()), None).unwrap();
    let mut kid2 = Kid(Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap());
    sub.add_process(kid2.pid()).unwrap();
    assert_eq!(g.cg.pids().unwrap().len(), 2);

    // The processes are our children, so reap them while delete() waits for the cgroup to empty.
    let reaper = std::thread::spawn(move || {
        let a = kid.wait_timeout(Duration::from_secs(5));
        let b = kid2.wait_timeout(Duration::from_secs(5));
        (a.signal(), b.signal())
    });
    g.cg.delete().unwrap();
    assert_eq!(reaper.join().unwrap(), (Some(libc::SIGKILL), Some(libc::SIGKILL)));
    assert!(existing_dirs(&g.cg).is_empty());
    assert!(existing_dirs(&sub).is_empty());
}

#[test]
fn apply_updates_a_live_cgroup() {
    if !requires_root() {
        return;
    }
    let initial = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).swap(64i64 << 20).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(10i64).build().unwrap())
        .build()
        .unwrap();
    let g = Guard::create("update", Some(&initial)).unwrap();
    let cg = &g.cg;
    let kid = Kid(Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().unwrap());
    cg.add_process(kid.pid()).unwrap();

    // Shrinking memory+swap (limit first on v1) and then growing it again (memsw first) both work.
    for mib in [32i64, 128] {
        let update = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(mib << 20).swap(mib << 20).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(mib).build().unwrap())
            .cpu(LinuxCpuBuilder::default().shares(256u64).quota(20_000i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&update).unwrap();
        assert_eq!(ctl_file(cg, "memory", "memory.limit_in_bytes", "memory.max"), (mib << 20).to_string());
        assert_eq!(ctl_file(cg, "pids", "pids.max", "pids.max"), mib.to_string());
    }
    if is_v1(cg, "cpu") {
        assert_eq!(ctl_file(cg, "cpu", "cpu.shares", ""), "256");
        assert_eq!(ctl_file(cg, "cpu", "cpu.cfs_quota_us", ""), "20000");
    } else {
        assert!(ctl_file(cg, "cpu", "", "cpu.max").starts_with("20000 "));
    }
    // Unlimited again.
    let unlimited = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-1i64).swap(-1i64).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&unlimited).unwrap();
    assert_eq!(ctl_file(cg, "pids", "pids.max", "pids.max"), "max");
    assert_eq!(cg.stats().unwrap().memory.limit, None);
    assert_eq!(cg.pids().unwrap(), vec![kid.pid()]);
}

#[test]
fn pids_limit_is_enforced() {
    if !requires_root() {
        return;
    }
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(3i64).build().unwrap())
        .build()
        .unwrap();
    let g = Guard::create("pids", Some(&r)).unwrap();
    let mut kid = Kid::gated("for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait");
    g.cg.add_process(kid.pid()).unwrap();
    kid.release();
    let status = kid.wait_timeout(Duration::from_secs(20));
    let stderr = kid.stderr();
    let failed_fork = stderr.to_lowercase().contains("fork") || stderr.contains("Resource temporarily unavailable");
    assert!(failed_fork || !status.success(), "forks should fail: status {status:?}, stderr {stderr:?}");
    assert!(failed_fork, "stderr {stderr:?}");
}

#[test]
fn oom_kill_is_reported() {
    if !requires_root() {
        return;
    }
    let r = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(16i64 << 20).swap(16i64 << 20).build().unwrap())
        .build()
        .unwrap();
    let g = Guard::create("oom", Some(&r)).unwrap();
    let mut watcher = g.cg.oom_watcher().unwrap();
    assert_eq!(watcher.check().unwrap(), 0);
    let mut kid = Kid::gated("x=a; while true; do x=$x$x; done");
    g.cg.add_process(kid.pid()).unwrap();
    kid.release();
    let status = kid.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "status {status:?}");

    let mut fds = [PollFd::new(watcher.fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(ready, 1, "oom watcher fd did not become readable");
    // One process was killed: one kill, however many times the kernel signalled the condition. Kernels
    // without a v1 kill count report the wake-up.
    let mut kills = watcher.check().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while watcher.pending() && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(10));
        kills += watcher.recount().unwrap();
    }
    assert_eq!(kills, 1);
    assert!(!watcher.pending());
    // Later signals of the same condition add no kill.
    sleep(Duration::from_millis(50));
    assert_eq!(watcher.check().unwrap() + watcher.recount().unwrap(), 0);
    let stats = g.cg.stats().unwrap();
    assert!(stats.memory.failcnt > 0 || stats.memory.oom_kills > 0, "{:?}", stats.memory);
}

#[test]
fn stats_show_usage() {
    if !requires_root() {
        return;
    }
    let r = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
        .build()
        .unwrap();
    let g = Guard::create("stats", Some(&r)).unwrap();
    let mut kid = Kid::gated("x=a; i=0; while [ $i -lt 20 ]; do x=$x$x; i=$((i+1)); done; while :; do :; done");
    g.cg.add_process(kid.pid()).unwrap();
    kid.release();
    sleep(Duration::from_millis(600));
    let s = g.cg.stats().unwrap();
    assert!(s.memory.usage > 0, "{:?}", s.memory);
    assert_eq!(s.memory.limit, Some(64 << 20));
    assert!(!s.memory.raw.is_empty());
    assert!(s.cpu.usage_total_ns > 0, "{:?}", s.cpu);
    assert!(s.cpu.usage_user_ns + s.cpu.usage_kernel_ns > 0, "{:?}", s.cpu);
    if is_v1(&g.cg, "cpuacct") {
        assert!(!s.cpu.per_cpu_ns.is_empty());
    }
    assert_eq!(s.pids.current, 1);
    assert_eq!(s.pids.limit, Some(32));
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["memory"]["usage"].as_u64().unwrap() > 0);
    g.cg.kill_all(libc::SIGKILL).unwrap();
    assert_eq!(kid.wait_timeout(Duration::from_secs(5)).signal(), Some(libc::SIGKILL));
}

#[test]
fn bad_input_is_reported() {
    if !requires_root() {
        return;
    }
    // An invalid cpuset fails, names the file, and leaves nothing behind.
    let top = Guard::top("badcpuset");
    let r =
        LinuxResourcesBuilder::default().cpu(LinuxCpuBuilder::default().cpus("999").build().unwrap()).build().unwrap();
    let err = Cgroup::create(&format!("{top}/c"), Some(&r)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cpuset.cpus") && msg.contains("\"999\""), "{msg}");
    assert!(Cgroup::open(&top).unwrap_err().is_not_found(), "rolled back");

    let g = Guard::create("badinput", None).unwrap();
    // Creating an existing cgroup is an error and does not remove it.
    let err = Cgroup::create(g.cg.path(), None).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(g.cg.dirs().all(Path::is_dir));
    // ...unless reuse is asked for.
    let again = Cgroup::create_or_reuse(g.cg.path(), None).unwrap();
    assert_eq!(again.path(), g.cg.path());
    // The kernel's refusal names file and value.
    let r =
        LinuxResourcesBuilder::default().cpu(LinuxCpuBuilder::default().cpus("999").build().unwrap()).build().unwrap();
    let msg = g.cg.apply(&r).unwrap_err().to_string();
    assert!(msg.starts_with("cgroups: writing \"999\" to ") && msg.contains("/cpuset.cpus: "), "{msg}");
    // Unified resources need pure v2.
    let mut unified = std::collections::HashMap::new();
    unified.insert("memory.high".to_string(), "max".to_string());
    let r = LinuxResourcesBuilder::default().unified(unified).build().unwrap();
    match mode().unwrap() {
        Mode::V2 => g.cg.apply(&r).unwrap(),
        _ => assert!(g.cg.apply(&r).unwrap_err().to_string().contains("\"memory.high\"")),
    }
    let bad_swap = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(32i64 << 20).swap(16i64 << 20).build().unwrap())
        .build()
        .unwrap();
    let has_swap_accounting = match g.cg.locate("memory") {
        Some(Loc::V1(d)) => d.join("memory.memsw.limit_in_bytes").exists(),
        _ => true,
    };
    if has_swap_accounting {
        assert!(g.cg.apply(&bad_swap).unwrap_err().to_string().contains("memory.swap"));
    }

    // Deleting a cgroup that does not exist is fine.
    let ghost = Guard::create("ghost", None).unwrap();
    ghost.cg.delete().unwrap();
    ghost.cg.delete().unwrap();
}
