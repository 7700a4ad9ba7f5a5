//! `berth oci` driven by what drives runc: containerd 1.6's own runc shim (containerd-shim-runc-v2), told by
//! `ctr run --runc-binary` to call berth instead of runc. Every verb the shim uses goes through `berth oci`
//! with runc's flags (`--root`, `--log`, `--log-format json`, `create --bundle --pid-file [--console-socket]`,
//! `start`, `state`, `ps --format json`, `exec --process --detach --pid-file`, `pause`, `resume`, `kill`,
//! `delete [--force]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A containerd on temporary directories (CRI off), whose tasks run under `berth oci`.
struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

/// The namespace the test works in: containerd's runc root for it, /run/containerd/runc/<ns>, is then ours.
const NS: &str = "berth-oci-test";

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("berth-oci").tempdir_in("/tmp").unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{1}\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd) must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The runc-compatible binary the shim calls: berth oci, logging its arguments.
        let wrapper = dir.path().join("berth-runc");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\necho \"$@\" >> {}/calls.log\nexec {BERTH} oci \"$@\"\n", dir.path().display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Containerd { dir, socket, child }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new(ctr_path()).arg("-a").arg(&self.socket).arg("-n").arg(NS).args(args).output().unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        ok(self.ctr(args), &format!("ctr {}", args.join(" ")))
    }

    fn run_args<'a>(&'a self, wrapper: &'a str, fifo: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--runc-binary", wrapper, "--fifo-dir", fifo];
        args.extend_from_slice(extra);
        args
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(NS));
        // The namespace's parent cgroups (runc leaves them too); empty by now.
        for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(ctl.path().join(NS));
        }
    }
}

fn busybox(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    root
}

#[test]
fn containerd_runc_shim_drives_berth_oci() {
    if !requires_root() {
        return;
    }
    let cd = Containerd::start();
    let rootfs = busybox(cd.dir.path());
    let fifo = cd.dir.path().join("fifo");
    std::fs::create_dir_all(&fifo).unwrap();
    let wrapper = cd.dir.path().join("berth-runc");
    let (rootfs, fifo, wrapper) = (rootfs.to_str().unwrap(), fifo.to_str().unwrap(), wrapper.to_str().unwrap());

    // run --rm: create, start, wait, delete; output and exit code come through.
    let out = cd.ctr(&cd.run_args(
        wrapper,
        fifo,
        &["--rm", "--rootfs", rootfs, "o1", "/bin/sh", "-c", "echo via-berth; exit 3"],
    ));
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", cd.calls());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-berth");
    let calls = cd.calls();
    assert!(calls.contains("--log-format json create --bundle") && calls.contains("--pid-file"), "{calls}");

    // A detached task: ps, exec, pause, resume, kill, delete.
    cd.ctr_ok(&cd.run_args(wrapper, fifo, &["-d", "--rootfs", rootfs, "o2", "/bin/sleep", "1000"]));
    let ps = cd.ctr_ok(&["tasks", "ps", "o2"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    let exec = cd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "--fifo-dir",
        fifo,
        "o2",
        "/bin/sh",
        "-c",
        "echo exec-ok; exit 6",
    ]);
    assert_eq!(exec.status.code(), Some(6), "{exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "exec-ok");
    cd.ctr_ok(&["tasks", "pause", "o2"]);
    let ls = cd.ctr_ok(&["tasks", "ls"]);
    assert!(ls.contains("PAUSED"), "{ls}");
    cd.ctr_ok(&["tasks", "resume", "o2"]);
    cd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "o2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cd.ctr_ok(&["tasks", "ls"]).contains("STOPPED") {
        assert!(Instant::now() < deadline, "o2 did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    cd.ctr_ok(&["tasks", "rm", "o2"]);
    cd.ctr_ok(&["containers", "rm", "o2"]);
    let calls = cd.calls();
    for verb in ["start o2", "ps --format json o2", "exec --process", "pause o2", "resume o2", "kill o2 9", "delete o2"]
    {
        assert!(calls.contains(verb), "the shim did not call `{verb}`:\n{calls}");
    }

    // A terminal: the shim passes --console-socket and gets the pty master from berth.
    let cmd = format!(
        "{} -a {} -n {NS} run -t --rm --runc-binary {wrapper} --fifo-dir {fifo} --rootfs {rootfs} o3 /bin/sh -c 'tty; exit 2'",
        ctr_path().display(),
        cd.socket.display()
    );
    let out = Command::new("script").args(["-eqc", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dev/pts/0"), "{out:?}");
    assert!(cd.calls().contains("--console-socket"), "{}", cd.calls());

    // Nothing is left: berth's state under the shim's --root, cgroups of the tasks.
    let root = Path::new("/run/containerd/runc").join(NS);
    let left: Vec<_> = std::fs::read_dir(&root).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "berth oci state left: {left:?}");
    for id in ["o1", "o2", "o3"] {
        for ctl in ["memory", "pids", "cpu", "freezer"] {
            let cg = Path::new("/sys/fs/cgroup").join(ctl).join(NS).join(id);
            assert!(!cg.exists(), "{} left", cg.display());
        }
    }
}
