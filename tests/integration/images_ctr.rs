//! Images end to end with the real `ctr` against a real berthd: `ctr images import` of oci-archives
//! built at test time, `ctr images pull` from a real registry (with and without basic auth, and
//! the ways a pull fails), `ctr run` and `ctr containers create` on the unpacked layers, images
//! with whiteouts, hostile layers that try to write outside their snapshot, an image with more
//! lowers than one page of overlay mount options holds, and `ctr images rm`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::images_fixture::{self, Attack, BUSYBOX, ImageBuilder, ImageLayout, Registry};

/// Runs `ctr args` and returns (exit code, stdout, stderr).
fn ctr(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = daemon.ctr(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (key, parent, kind) of every snapshot `ctr snapshots ls` shows in namespace default.
fn snapshots(daemon: &Daemon) -> Vec<(String, String, String)> {
    let out = daemon.ctr_ok(&["snapshots", "ls"]);
    out.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<_> = line.split_whitespace().collect();
            match f.as_slice() {
                [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                _ => panic!("unexpected ctr snapshots ls line {line:?}"),
            }
        })
        .collect()
}

/// The committed snapshots, as (key, parent).
fn committed(daemon: &Daemon) -> BTreeSet<(String, String)> {
    snapshots(daemon).into_iter().filter(|(.., kind)| kind == "Committed").map(|(k, p, _)| (k, p)).collect()
}

/// The names `ctr images ls -q` lists.
fn images(daemon: &Daemon) -> Vec<String> {
    daemon.ctr_ok(&["images", "ls", "-q"]).lines().map(str::to_string).collect()
}

/// The committed snapshots unpacking `layout` must make: its chain, each on the one below.
fn chain_snapshots(layout: &ImageLayout) -> BTreeSet<(String, String)> {
    let chain = layout.chain_ids();
    chain
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), if i == 0 { String::new() } else { chain[i - 1].clone() }))
        .collect()
}

fn import(daemon: &Daemon, archive: &Path) -> String {
    daemon.ctr_ok(&["images", "import", archive.to_str().unwrap()])
}

/// `ctr run --rm --fifo-dir DIR image id sh -c script`: (exit code, stdout, stderr).
fn run(daemon: &Daemon, image: &str, id: &str, script: &str) -> (i32, String, String) {
    let fifo = daemon.fifo_dir();
    ctr(daemon, &["run", "--rm", "--fifo-dir", fifo.to_str().unwrap(), image, id, "sh", "-c", script])
}

/// Asserts `ctr run --rm` of `id` left nothing: no container, no snapshot of its own, no mount under
/// the daemon's directories, no task directory.
fn assert_run_left_nothing(daemon: &Daemon, id: &str) {
    let task_dir = daemon.dir.path().join("state/runtime.linux/tasks/default").join(id);
    // The reaper removes its directory right after answering Delete; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while task_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!task_dir.exists(), "task directory {} left behind", task_dir.display());
    let containers = daemon.ctr_ok(&["containers", "ls", "-q"]);
    assert!(!containers.lines().any(|l| l == id), "container {id} left behind:\n{containers}");
    let snaps = snapshots(daemon);
    assert!(snaps.iter().all(|(key, _, kind)| key != id && kind == "Committed"), "snapshots left: {snaps:?}");
    // The backend's snapshot goes after the answer, from the removal queue: give it a moment too.
    let backend = daemon.root().join("snapshot.overlayfs/metadata");
    let records = || {
        let entries = std::fs::read_dir(&backend).unwrap().flatten();
        entries.filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while records() != snaps.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(records(), snaps.len(), "backend snapshots left in {} beside {snaps:?}", backend.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = daemon.dir.path().display().to_string();
    let left: Vec<_> = mounts.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(left.is_empty(), "mounts left under {prefix}:\n{}", left.join("\n"));
}

#[test]
fn import_lists_the_image_and_its_layer_then_images_rm() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let out = import(&daemon, images_fixture::busybox_archive());
    assert!(out.contains(BUSYBOX), "{out}");
    let ls = daemon.ctr_ok(&["images", "ls"]);
    let row = ls.lines().find(|l| l.starts_with(BUSYBOX)).unwrap_or_else(|| panic!("{BUSYBOX} not listed:\n{ls}"));
    assert!(row.contains(&images_fixture::busybox().manifest_digest()), "{row}");
    assert!(row.contains("linux/amd64") || row.contains("linux/"), "{row}");
    assert_eq!(committed(&daemon), chain_snapshots(images_fixture::busybox()));
    let info = daemon.ctr_ok(&["snapshots", "info", &images_fixture::busybox().chain_ids()[0]]);
    assert!(info.contains("Committed"), "{info}");

    // Importing again changes nothing.
    import(&daemon, images_fixture::busybox_archive());
    assert_eq!(images(&daemon), [BUSYBOX]);
    assert_eq!(committed(&daemon), chain_snapshots(images_fixture::busybox()));

    daemon.ctr_ok(&["images", "rm", BUSYBOX]);
    assert!(images(&daemon).is_empty());
    // As containerd's ctr does: a warning, not a failure.
    let (code, _, err) = ctr(&daemon, &["images", "rm", BUSYBOX]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("image not found"), "{err}");
    // A removed image cannot be run.
    let (code, _, err) = run(&daemon, BUSYBOX, "gone", "true");
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn run_rm_prints_output_returns_the_exit_code_and_leaves_nothing() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    import(&daemon, images_fixture::busybox_archive());
    let (code, out, err) = run(&daemon, BUSYBOX, "t1", "echo hi from $(cat /etc/passwd | cut -d: -f1)");
    assert_eq!((code, out.as_str()), (0, "hi from root\n"), "{err}");
    assert_run_left_nothing(&daemon, "t1");

    let (code, out, err) = run(&daemon, BUSYBOX, "t2", "echo failing; exit 7");
    assert_eq!((code, out.as_str()), (7, "failing\n"), "{err}");
    assert_run_left_nothing(&daemon, "t2");

    // The container writes to its own snapshot: the next one starts from the image again.
    let (code, _, err) = run(&daemon, BUSYBOX, "t3", "echo x > /root/scribble && rm /bin/vi");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&daemon, BUSYBOX, "t4", "ls /root; test -e /bin/vi && echo vi");
    assert_eq!((code, out.as_str()), (0, "vi\n"), "{err}");
    assert_run_left_nothing(&daemon, "t4");
    assert_eq!(committed(&daemon), chain_snapshots(images_fixture::busybox()));
}

/// Whether the root filesystem of task `id` (namespace default) is mounted on the host.
fn rootfs_mounted(daemon: &Daemon, id: &str) -> bool {
    let rootfs = daemon.dir.path().join("state/runtime.linux/tasks/default").join(id).join("rootfs");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = rootfs.display().to_string();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(rootfs.as_str()))
}

/// The STATUS column of `ctr tasks ls` for `id`.
fn task_status(daemon: &Daemon, id: &str) -> String {
    let ls = daemon.ctr_ok(&["tasks", "ls"]);
    let row = ls.lines().find(|l| l.split_whitespace().next() == Some(id));
    row.and_then(|l| l.split_whitespace().nth(2)).unwrap_or_default().to_string()
}

#[test]
fn a_stopped_tasks_root_filesystem_is_unmounted_before_delete_unless_init_shared_a_pid_namespace() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    import(&daemon, images_fixture::busybox_archive());
    let fifo = daemon.fifo_dir();
    let fifo = fifo.to_str().unwrap();

    // Running: mounted. Once init has exited (its PID namespace, and with it the container, is gone) the
    // reaper unmounts before anyone asks for Delete; Delete then still cleans up everything.
    daemon.ctr_ok(&["run", "-d", "--fifo-dir", fifo, BUSYBOX, "own", "sleep", "60"]);
    assert_eq!(task_status(&daemon, "own"), "RUNNING");
    assert!(rootfs_mounted(&daemon, "own"), "a running task's root filesystem is not mounted");
    daemon.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "own"]);
    eventually("task own stopped", 10, || task_status(&daemon, "own") == "STOPPED");
    eventually("root filesystem of the stopped task unmounted", 10, || !rootfs_mounted(&daemon, "own"));
    let (code, out, err) = ctr(&daemon, &["tasks", "rm", "own"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("exit code 137"), "ctr tasks rm should warn of the exit status 137: {err}");
    daemon.ctr_ok(&["containers", "rm", "own"]);
    assert_run_left_nothing(&daemon, "own");

    // In the host's PID namespace, init's exit does not end the container's other processes: its root
    // filesystem stays until Delete.
    let host_pid_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    daemon.ctr_ok(&["run", "-d", "--fifo-dir", fifo, "--with-ns", &host_pid_ns, BUSYBOX, "shared", "true"]);
    eventually("task shared stopped", 10, || task_status(&daemon, "shared") == "STOPPED");
    std::thread::sleep(Duration::from_millis(200));
    assert!(rootfs_mounted(&daemon, "shared"), "unmounted before Delete though init shared the host's PID namespace");
    daemon.ctr_ok(&["tasks", "rm", "shared"]);
    daemon.ctr_ok(&["containers", "rm", "shared"]);
    assert_run_left_nothing(&daemon, "shared");
}

#[test]
fn containers_create_makes_an_active_snapshot_on_the_layer_and_rm_removes_it() {
    if !requires_root() {
        return;
    }
    let daemon = Daemon::start();
    import(&daemon, images_fixture::busybox_archive());
    let layer = images_fixture::busybox().chain_ids()[0].clone();
    daemon.ctr_ok(&["containers", "create", BUSYBOX, "c1"]);
    let snaps = snapshots(&daemon);
    assert!(snaps.contains(&("c1".into(), layer.clone(), "Active".into())), "{snaps:?}");
    let info: serde_json::Value = serde_json::from_str(&daemon.ctr_ok(&["containers", "info", "c1"])).unwrap();
    assert_eq!(info["SnapshotKey"], "c1", "{info}");
    assert_eq!(info["Image"], BUSYBOX, "{info}");
    // The image's layer cannot go while the container's snapshot sits on it.
    let err = fails(daemon.ctr(&["snapshots", "rm", &layer]), "removing a parent");
    assert!(err.contains("parent of other snapshots"), "{err}");

    daemon.ctr_ok(&["containers", "rm", "c1"]);
    assert_eq!(snapshots(&daemon), [(layer, String::new(), "Committed".to_string())]);
    assert!(daemon.ctr_ok(&["containers", "ls", "-q"]).trim().is_empty());
}

#[test]
fn pull_from_a_registry_then_run() {
    if !requires_root() {
        return;
    }
    let registry = Registry::start();
    registry.push(images_fixture::busybox(), "busybox:latest");
    let daemon = Daemon::start();
    let reference = registry.reference("busybox:latest");
    let out = daemon.ctr_ok(&["images", "pull", "--plain-http", &reference]);
    assert!(out.contains("done"), "{out}");
    assert_eq!(images(&daemon), std::slice::from_ref(&reference));
    assert_eq!(committed(&daemon), chain_snapshots(images_fixture::busybox()));
    let (code, out, err) = run(&daemon, &reference, "p1", "echo pulled; exit 4");
    assert_eq!((code, out.as_str()), (4, "pulled\n"), "{err}");
    assert_run_left_nothing(&daemon, "p1");

    // Pulling again is a no-op; removing the image keeps what runs of it do not need.
    daemon.ctr_ok(&["images", "pull", "--plain-http", &reference]);
    assert_eq!(images(&daemon), std::slice::from_ref(&reference));
    daemon.ctr_ok(&["images", "rm", &reference]);
    assert!(images(&daemon).is_empty());
}

#[test]
fn pull_with_credentials_and_with_wrong_ones() {
    if !requires_root() {
        return;
    }
    let registry = Registry::with_auth("alice", "s3cret");
    registry.push(images_fixture::busybox(), "busybox:latest");
    let reference = registry.reference("busybox:latest");
    let daemon = Daemon::start();

    for (what, user) in
        [("no credentials", None), ("a wrong password", Some("alice:wrong")), ("a wrong user", Some("bob:s3cret"))]
    {
        let mut args = vec!["images", "pull", "--plain-http"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.push(&reference);
        let (code, out, err) = ctr(&daemon, &args);
        assert_ne!(code, 0, "pull with {what} succeeded:\n{out}");
        assert!(err.contains("401") || err.to_lowercase().contains("unauthorized"), "pull with {what}: {err}");
        assert!(images(&daemon).is_empty(), "pull with {what} recorded an image");
        assert!(snapshots(&daemon).is_empty(), "pull with {what} unpacked something");
        let content = daemon.ctr_ok(&["content", "ls", "-q"]);
        assert!(content.trim().is_empty(), "pull with {what} stored content:\n{content}");
    }

    daemon.ctr_ok(&["images", "pull", "--plain-http", "--user", "alice:s3cret", &reference]);
    assert_eq!(images(&daemon), std::slice::from_ref(&reference));
    let (code, out, err) = run(&daemon, &reference, "a1", "echo authed");
    assert_eq!((code, out.as_str()), (0, "authed\n"), "{err}");
    assert_run_left_nothing(&daemon, "a1");
}

#[test]
fn pull_of_a_missing_tag_or_from_a_stopped_registry_fails() {
    if !requires_root() {
        return;
    }
    let mut registry = Registry::start();
    registry.push(images_fixture::busybox(), "busybox:latest");
    let daemon = Daemon::start();

    let missing = registry.reference("busybox:nope");
    let (code, _, err) = ctr(&daemon, &["images", "pull", "--plain-http", &missing]);
    assert_ne!(code, 0);
    assert!(err.contains("busybox:nope") && err.contains("not found"), "{err}");
    let other = registry.reference("nothing-here:latest");
    let (code, _, err) = ctr(&daemon, &["images", "pull", "--plain-http", &other]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing-here:latest") && err.contains("not found"), "{err}");

    let reference = registry.reference("busybox:latest");
    registry.stop();
    let (code, _, err) = ctr(&daemon, &["images", "pull", "--plain-http", &reference]);
    assert_ne!(code, 0);
    assert!(err.contains(&registry.addr) && err.contains("connection refused"), "{err}");
    assert!(images(&daemon).is_empty());
    assert!(snapshots(&daemon).is_empty());
}

#[test]
fn whiteouts_delete_files_of_lower_layers() {
    if !requires_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("keep"), "kept\n").unwrap();
    std::fs::write(tree.join("sub/gone"), "x\n").unwrap();
    let layout = ImageBuilder::on(images_fixture::busybox(), dir.path().join("layered"))
        .file("/etc/motd", "second layer\n")
        .insert(&tree, "/data")
        .whiteout("/bin/vi")
        .whiteout("/etc/motd")
        .whiteout("/data/sub")
        .build();
    assert_eq!(layout.chain_ids().len(), 6);
    let archive = dir.path().join("layered.tar");
    layout.write_archive(&archive, "localhost/layered:latest");

    let daemon = Daemon::start();
    import(&daemon, &archive);
    assert_eq!(committed(&daemon), chain_snapshots(&layout));
    let script = "cat /data/keep; for f in /bin/vi /etc/motd /data/sub /data/sub/gone; do \
                  test -e $f && echo still there: $f; done; test -e /bin/sh && echo sh";
    let (code, out, err) = run(&daemon, "localhost/layered:latest", "w1", script);
    assert_eq!((code, out.as_str()), (0, "kept\nsh\n"), "{err}");
    assert_run_left_nothing(&daemon, "w1");
}

/// What a host path that a hostile layer aims at looks like: to compare before and after.
fn host_state(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.ino(), m.nlink()))
}

#[test]
fn hostile_layers_write_nothing_outside_their_snapshot() {
    if !requires_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start();
    import(&daemon, images_fixture::busybox_archive());
    let shadow = host_state(Path::new("/etc/shadow"));
    let mut outcomes = Vec::new();
    for attack in Attack::ALL {
        // A directory of the host, made empty, that the layer aims at.
        let escape = dir.path().join(format!("escape-{}", attack.name()));
        std::fs::create_dir(&escape).unwrap();
        let layout = images_fixture::hostile_image(attack, &escape, &dir.path().join(attack.name()));
        let archive = dir.path().join(format!("{}.tar", attack.name()));
        let name = format!("localhost/hostile-{}:latest", attack.name());
        layout.write_archive(&archive, &name);

        let (code, _, err) = ctr(&daemon, &["images", "import", archive.to_str().unwrap()]);
        let left: Vec<PathBuf> = std::fs::read_dir(&escape).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "{attack:?} wrote outside its snapshot: {left:?}");
        assert_eq!(host_state(Path::new("/etc/shadow")), shadow, "{attack:?} linked to the host's /etc/shadow");
        // Nothing at the host paths the names aim at either, had they been read from elsewhere.
        for name in ["dotdot", "absolute", "through-abs-link", "through-rel-link", "through-replaced"] {
            assert!(!Path::new("/").join(name).exists(), "{attack:?} wrote /{name}");
        }
        let top = layout.chain_ids().last().unwrap().clone();
        let unpacked = committed(&daemon).iter().any(|(key, _)| *key == top);
        if code == 0 && unpacked {
            // Accepted: what the layer wrote must be inside the container's root, and only there.
            let inside = attack.lands_inside(&escape);
            let script: Vec<String> = inside.iter().map(|(path, _)| format!("cat {}", path.display())).collect();
            let (code, out, err) = run(&daemon, &name, &format!("h-{}", attack.name()), &script.join(" && "));
            let want: String = inside.iter().map(|(_, contents)| *contents).collect();
            assert_eq!((code, out.as_str()), (0, want.as_str()), "{attack:?}: {err}");
            outcomes.push(format!("{attack:?}: unpacked, kept inside at {inside:?}"));
        } else {
            assert_ne!(code, 0, "{attack:?}: import succeeded without unpacking the layer");
            assert!(!images(&daemon).contains(&name) || !unpacked, "{attack:?}");
            outcomes.push(format!("{attack:?}: refused: {}", err.lines().last().unwrap_or("").trim()));
        }
        let left: Vec<PathBuf> = std::fs::read_dir(&escape).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "{attack:?} wrote outside its snapshot when run: {left:?}");
    }
    eprintln!("{}", outcomes.join("\n"));
    // The layer below them stays usable.
    let (code, out, err) = run(&daemon, BUSYBOX, "after", "echo ok");
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    assert_run_left_nothing(&daemon, "after");
}

/// Layers of `many_layers`: with berthd's snapshot paths (~60 bytes each under /tmp) their
/// lowerdir option is about twice the 4096 bytes mount(2) takes.
const MANY: usize = 120;

/// busybox then `MANY - 1` layers adding one file each, `/layers/<n>` saying `n`, the last one
/// also deleting /bin/vi; built once per test process.
fn many_layers() -> &'static (ImageLayout, PathBuf) {
    static IMAGE: std::sync::OnceLock<(ImageLayout, PathBuf)> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = images_fixture::fixtures_dir().join("many");
        let mut builder = ImageBuilder::on(images_fixture::busybox(), dir.join("layout"));
        for n in 1..MANY - 1 {
            builder.file(&format!("/layers/{n:03}"), format!("{n}\n"));
        }
        builder.whiteout("/bin/vi");
        let layout = builder.build();
        assert_eq!(layout.chain_ids().len(), MANY);
        let archive = dir.join("many.tar");
        layout.write_archive(&archive, "localhost/many:latest");
        (layout, archive)
    })
}

#[test]
fn an_image_of_many_layers_runs_beyond_the_mount_options_page() {
    if !requires_root() {
        return;
    }
    let (layout, archive) = many_layers();
    let daemon = Daemon::start();
    import(&daemon, archive);
    let (got, want) = (committed(&daemon), chain_snapshots(layout));
    assert!(
        got == want,
        "unpacked {} snapshots, not the image's {} layers: {:?}",
        got.len(),
        want.len(),
        got.symmetric_difference(&want).take(4).collect::<Vec<_>>()
    );
    let script = "ls /layers | wc -l; cat /layers/001 /layers/118; test -e /bin/vi || echo no vi";
    let (code, out, err) = run(&daemon, "localhost/many:latest", "m1", script);
    assert_eq!((code, out.as_str()), (0, format!("{}\n1\n118\nno vi\n", MANY - 2).as_str()), "{err}");
    assert_run_left_nothing(&daemon, "m1");

    // ctr mounting the Snapshots service's mounts itself: past a page of options it makes the
    // lowers relative to their common directory too, from a thread of its own. Its lease is named
    // after the (absolute) target, as containerd allows.
    let mnt = tempfile::tempdir().unwrap();
    let target = mnt.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let target_arg = target.to_str().unwrap();
    daemon.ctr_ok(&["images", "mount", "localhost/many:latest", target_arg]);
    let seen = (std::fs::read_to_string(target.join("layers/118")), target.join("bin/vi").exists());
    daemon.ctr_ok(&["images", "unmount", "--rm", target_arg]);
    assert_eq!((seen.0.unwrap().as_str(), seen.1), ("118\n", false));
    let snaps = snapshots(&daemon);
    assert!(snaps.iter().all(|(_, _, kind)| kind == "Committed"), "snapshots left: {snaps:?}");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(target_arg), "mount left");
    assert!(daemon.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(), "ctr's lease left");

    // The Diff service mounts 120 lowers too (berthd is multi-threaded: from a thread that
    // unshares its working directory): the difference of a new active snapshot from its parent.
    let top = layout.chain_ids().last().unwrap().clone();
    daemon.ctr_ok(&["snapshots", "prepare", "many-top", &top]);
    // ctr writes the layer itself to stdout: an (empty) gzip-compressed tar.
    let diff = daemon.ctr(&["snapshots", "diff", "many-top"]);
    assert!(diff.status.success(), "ctr snapshots diff: {}", String::from_utf8_lossy(&diff.stderr));
    assert_eq!(diff.stdout.get(..2), Some(&[0x1f, 0x8b][..]), "not a gzip layer");
    daemon.ctr_ok(&["snapshots", "rm", "many-top"]);
}
