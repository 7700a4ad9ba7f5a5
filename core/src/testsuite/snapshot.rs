//! The conformance suite of the snapshot kind, on the model of containerd's `snapshots/testsuite`: what every
//! `snapshot.*` backend must do the same way. A backend's tests call [`run_all`] with a fresh, empty backend
//! and a scratch directory for the suite's mount points.
//!
//! The checks of metadata (kinds, parents, labels, duplicates, removal rules, walk) run anywhere. The checks
//! of contents mount what the backend returns (with mount(2), as the runtime would) and write through the
//! mounts, so they need root; without it they are skipped with a message. Whatever the suite mounts is
//! unmounted when the check ends, also when it fails. At the end the backend must be empty again.
//!
//! Each check panics with a message naming the check and what differed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::filters::FilterSet;
use crate::mount::Mount;
use crate::snapshot::{Info, Kind, Labels, SharedLabels, SnapshotError, Snapshotter};

/// How many committed layers the chain check stacks: an overlay backend mounts that many lowers.
pub const CHAIN_LENGTH: usize = 12;

/// Asserts that a call failed with the given [`SnapshotError`] variant.
macro_rules! assert_err {
    ($result:expr, $variant:ident, $($what:tt)+) => {
        match $result {
            Err(SnapshotError::$variant(_)) => {}
            Err(e) => panic!("{}: expected {}, got {e:?}", format!($($what)+), stringify!($variant)),
            Ok(v) => panic!("{}: expected {}, got Ok({v:?})", format!($($what)+), stringify!($variant)),
        }
    };
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The same, as an [`Info`] holds them.
fn shared(pairs: &[(&str, &str)]) -> SharedLabels {
    Arc::new(labels(pairs))
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Runs every check, in order, on an empty backend; `scratch` is a directory the suite may fill (it removes
/// what it made there).
pub async fn run_all(snapshotter: &dyn Snapshotter, scratch: &Path) {
    assert!(!snapshotter.name().is_empty(), "name: a backend has a name");
    let before = snapshotter.walk(&|_| true).await.expect("walk");
    assert!(before.is_empty(), "run_all needs an empty backend, found {} snapshots", before.len());

    unknown_keys(snapshotter).await;
    kinds_and_parents(snapshotter).await;
    update_labels(snapshotter).await;
    stat_follows_every_change(snapshotter).await;
    duplicates(snapshotter).await;
    refused_commits_and_parents(snapshotter).await;
    remove_rules(snapshotter).await;
    walk_and_filters(snapshotter).await;
    cleanup_keeps_snapshots(snapshotter).await;
    if is_root() {
        let scratch = scratch.join("snapshot-suite");
        fs::create_dir_all(&scratch).expect("creating the scratch directory");
        layers_stack_and_hide(snapshotter, &scratch).await;
        views_are_read_only(snapshotter, &scratch).await;
        usage_grows_with_data(snapshotter, &scratch).await;
        long_chain(snapshotter, &scratch).await;
        fs::remove_dir_all(&scratch).expect("removing the scratch directory");
    } else {
        eprintln!(
            "snapshot suite ({}): skipping the checks that mount snapshots and write through them: they need root",
            snapshotter.name()
        );
    }

    let left: Vec<String> = snapshotter.walk(&|_| true).await.expect("walk").into_iter().map(|i| i.name).collect();
    assert!(left.is_empty(), "the suite removes every snapshot it made, left: {left:?}");
    snapshotter.cleanup().await.expect("cleanup at the end");
}

/// Every call on a key that does not exist is NotFound, and so is a missing parent.
async fn unknown_keys(sn: &dyn Snapshotter) {
    let key = "suite-no-such-key";
    assert_err!(sn.stat(key).await, NotFound, "unknown: stat");
    assert_err!(sn.mounts(key).await, NotFound, "unknown: mounts");
    assert_err!(sn.usage(key).await, NotFound, "unknown: usage");
    assert_err!(sn.remove(key).await, NotFound, "unknown: remove");
    assert_err!(sn.commit("suite-unknown-c", key, Labels::new()).await, NotFound, "unknown: commit");
    let info = Info {
        kind: Kind::Active,
        name: key.into(),
        parent: None,
        labels: Default::default(),
        created: SystemTime::now(),
        updated: SystemTime::now(),
    };
    assert_err!(sn.update(info, &[]).await, NotFound, "unknown: update");
    assert_err!(sn.prepare("suite-unknown-a", Some(key), Labels::new()).await, NotFound, "unknown: prepare on parent");
    assert_err!(sn.view("suite-unknown-v", Some(key), Labels::new()).await, NotFound, "unknown: view on parent");
    assert_err!(sn.stat("suite-unknown-a").await, NotFound, "unknown: a failed prepare makes nothing");
    assert_err!(sn.prepare("", None, Labels::new()).await, InvalidArgument, "unknown: prepare of an empty key");
}

/// The snapshots containerd's suite builds on: c1 ← c2 ← a1, a2, c2 ← v1, v2 (each prefixed).
async fn base_set(sn: &dyn Snapshotter, p: &str) {
    let k = |n: &str| format!("{p}-{n}");
    let l = labels(&[("containerd.io/gc.root", "suite")]);
    sn.prepare(&k("c1-a"), None, l.clone()).await.expect("prepare c1-a");
    sn.commit(&k("c1"), &k("c1-a"), l.clone()).await.expect("commit c1");
    sn.prepare(&k("c2-a"), Some(&k("c1")), l.clone()).await.expect("prepare c2-a");
    sn.commit(&k("c2"), &k("c2-a"), l.clone()).await.expect("commit c2");
    sn.prepare(&k("a1"), Some(&k("c2")), l.clone()).await.expect("prepare a1");
    sn.prepare(&k("a2"), None, l.clone()).await.expect("prepare a2");
    sn.view(&k("v1"), Some(&k("c2")), l.clone()).await.expect("view v1");
    sn.view(&k("v2"), None, l).await.expect("view v2");
}

/// The base set as (name, kind, parent).
fn base_cases(p: &str) -> Vec<(String, Kind, Option<String>)> {
    let k = |n: &str| format!("{p}-{n}");
    vec![
        (k("c1"), Kind::Committed, None),
        (k("c2"), Kind::Committed, Some(k("c1"))),
        (k("a1"), Kind::Active, Some(k("c2"))),
        (k("a2"), Kind::Active, None),
        (k("v1"), Kind::View, Some(k("c2"))),
        (k("v2"), Kind::View, None),
    ]
}

async fn remove_base_set(sn: &dyn Snapshotter, p: &str) {
    for n in ["v2", "v1", "a2", "a1", "c2", "c1"] {
        sn.remove(&format!("{p}-{n}")).await.unwrap_or_else(|e| panic!("removing {p}-{n}: {e}"));
    }
}

/// Stat reports kind, name, parent and times; a committed key replaces the active one.
async fn kinds_and_parents(sn: &dyn Snapshotter) {
    let p = "suite-kinds";
    let t1 = SystemTime::now();
    base_set(sn, p).await;
    let t2 = SystemTime::now();
    for (name, kind, parent) in base_cases(p) {
        let info = sn.stat(&name).await.unwrap_or_else(|e| panic!("kinds: stat {name}: {e}"));
        assert_eq!(info.name, name, "kinds: name of {name}");
        assert_eq!(info.kind, kind, "kinds: kind of {name}");
        assert_eq!(info.parent, parent, "kinds: parent of {name}");
        assert!(info.created >= t1 && info.created <= t2, "kinds: created time of {name} outside the calls");
        assert_eq!(info.created, info.updated, "kinds: a new snapshot's updated time is its created time");
        assert_eq!(*info.labels, labels(&[("containerd.io/gc.root", "suite")]), "kinds: labels of {name}");
    }
    for gone in ["c1-a", "c2-a"] {
        assert_err!(sn.stat(&format!("{p}-{gone}")).await, NotFound, "kinds: the active key {gone} after commit");
    }
    // Transitivity: the parent's parent is reached through stat.
    let a1 = sn.stat(&format!("{p}-a1")).await.expect("stat a1");
    let c2 = sn.stat(a1.parent.as_deref().expect("a1 has a parent")).await.expect("stat a1's parent");
    let c1 = sn.stat(c2.parent.as_deref().expect("c2 has a parent")).await.expect("stat c2's parent");
    assert_eq!(c1.parent, None, "kinds: the chain ends at c1");
    // Mounts of active and view snapshots are what prepare and view gave; committed ones have none.
    let m = sn.prepare(&format!("{p}-a3"), Some(&format!("{p}-c2")), Labels::new()).await.expect("prepare a3");
    assert!(!m.is_empty(), "kinds: prepare returns mounts");
    assert_eq!(sn.mounts(&format!("{p}-a3")).await.expect("mounts a3"), m, "kinds: mounts of an active snapshot");
    let m = sn.view(&format!("{p}-v3"), Some(&format!("{p}-c2")), Labels::new()).await.expect("view v3");
    assert!(!m.is_empty(), "kinds: view returns mounts");
    assert_eq!(sn.mounts(&format!("{p}-v3")).await.expect("mounts v3"), m, "kinds: mounts of a view");
    assert_err!(sn.mounts(&format!("{p}-c2")).await, FailedPrecondition, "kinds: mounts of a committed snapshot");
    sn.remove(&format!("{p}-a3")).await.expect("remove a3");
    sn.remove(&format!("{p}-v3")).await.expect("remove v3");
    remove_base_set(sn, p).await;
}

/// Update changes labels only, by whole map or by `labels.KEY`, and moves the updated time only.
async fn update_labels(sn: &dyn Snapshotter) {
    let p = "suite-update";
    base_set(sn, p).await;
    for (name, kind, parent) in base_cases(p) {
        let mut info = sn.stat(&name).await.expect("stat");
        let created = info.created;
        let all = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), ("containerd.io/gc.root", "keep")]);
        info.parent = Some("suite-does-not-exist".into());
        info.labels = Arc::new(all.clone());
        let u1 = SystemTime::now();
        let info = sn.update(info, &[]).await.unwrap_or_else(|e| panic!("update: {name}: {e}"));
        let u2 = SystemTime::now();
        assert_eq!(info.created, created, "update: created time of {name} changed");
        assert!(info.updated >= u1 && info.updated <= u2, "update: updated time of {name} outside the call");
        assert_eq!(
            (info.kind, &info.name, &info.parent),
            (kind, &name, &parent),
            "update: {name} changed more than labels"
        );
        assert_eq!(*info.labels, all, "update: labels of {name} after replacing them");
        assert_eq!(*sn.stat(&name).await.expect("stat").labels, all, "update: stat must see the new labels of {name}");

        let request = Info { labels: shared(&[("l1", "updated"), ("l4", "v4")]), ..info };
        let info = sn.update(request, &["labels.l1".into(), "labels.l2".into()]).await.expect("update paths");
        let want = labels(&[("l1", "updated"), ("l3", "v3"), ("containerd.io/gc.root", "keep")]);
        assert_eq!(
            *info.labels, want,
            "update: labels.l1 sets, labels.l2 absent from the request removes, l4 untouched"
        );

        let request = Info { labels: shared(&[("l4", "v4")]), ..info };
        let info = sn.update(request, &["labels".into()]).await.expect("update labels");
        assert_eq!(*info.labels, labels(&[("l4", "v4")]), "update: the labels path replaces every label of {name}");

        let request = Info { parent: Some("suite-does-not-exist".into()), ..info };
        assert_err!(sn.update(request, &["parent".into()]).await, InvalidArgument, "update: parent of {name}");
        assert_eq!(sn.stat(&name).await.expect("stat").parent, parent, "update: a refused update changed {name}");
    }
    remove_base_set(sn, p).await;
}

/// Stats `key` three times: the answers agree (a backend that keeps stat answers gives its copy from the
/// second on).
async fn stat_repeated(sn: &dyn Snapshotter, key: &str, what: &str) -> Info {
    let first = sn.stat(key).await.unwrap_or_else(|e| panic!("fresh: stat {key} {what}: {e}"));
    for _ in 0..2 {
        let again = sn.stat(key).await.unwrap_or_else(|e| panic!("fresh: stat {key} again {what}: {e}"));
        assert_eq!(again, first, "fresh: a repeated stat of {key} {what} answered differently");
    }
    first
}

/// Stat shows every change of a snapshot stat'ed just before it, so a backend that keeps stat answers (the
/// plugin sources keep them under the plugin's revision of the snapshot) never answers from a stale copy:
/// each way of updating labels, a remove and a new snapshot of the same key (active, view, committed), a
/// commit.
async fn stat_follows_every_change(sn: &dyn Snapshotter) {
    let k = |n: &str| format!("suite-fresh-{n}");
    let (a, c) = (k("a"), k("c"));
    // Many labels: what keeping a stat answer is for.
    let many: Labels = (0..64).map(|i| (format!("suite.label-{i:02}"), format!("{i}-{}", "x".repeat(100)))).collect();
    sn.prepare(&a, None, many.clone()).await.expect("prepare a");
    assert_eq!(*stat_repeated(sn, &a, "after prepare").await.labels, many, "fresh: labels of a new snapshot");

    let mut info = stat_repeated(sn, &a, "before updates").await;
    Arc::make_mut(&mut info.labels).insert("suite.label-00".into(), "changed".into());
    Arc::make_mut(&mut info.labels).remove("suite.label-01");
    sn.update(info.clone(), &["labels.suite.label-00".into(), "labels.suite.label-01".into()]).await.expect("update");
    let mut want = many.clone();
    want.insert("suite.label-00".into(), "changed".into());
    want.remove("suite.label-01");
    assert_eq!(
        *stat_repeated(sn, &a, "after labels.KEY updates").await.labels,
        want,
        "fresh: labels.KEY set and removed"
    );
    let request = Info { labels: shared(&[("one", "1")]), ..info.clone() };
    sn.update(request, &[]).await.expect("update all");
    assert_eq!(
        stat_repeated(sn, &a, "after replacing the labels").await.labels,
        shared(&[("one", "1")]),
        "fresh: no paths"
    );
    let request = Info { labels: shared(&[("two", "2")]), ..info.clone() };
    sn.update(request, &["labels".into()]).await.expect("update labels");
    assert_eq!(
        stat_repeated(sn, &a, "after the labels path").await.labels,
        shared(&[("two", "2")]),
        "fresh: labels path"
    );
    let request = Info { labels: shared(&[("three", "3")]), ..info };
    assert_err!(sn.update(request, &["kind".into()]).await, InvalidArgument, "fresh: an update of the kind");
    assert_eq!(stat_repeated(sn, &a, "after a refused update").await.labels, shared(&[("two", "2")]), "fresh: refused");

    // The same key again, with other labels and of each kind.
    sn.remove(&a).await.expect("remove a");
    assert_err!(sn.stat(&a).await, NotFound, "fresh: stat of a removed snapshot");
    sn.prepare(&a, None, labels(&[("again", "active")])).await.expect("prepare a again");
    let again = stat_repeated(sn, &a, "made again").await;
    assert_eq!((again.kind, again.labels), (Kind::Active, shared(&[("again", "active")])), "fresh: a made again");
    sn.remove(&a).await.expect("remove a");
    sn.view(&a, None, labels(&[("again", "view")])).await.expect("view a");
    let again = stat_repeated(sn, &a, "made again as a view").await;
    assert_eq!((again.kind, again.labels), (Kind::View, shared(&[("again", "view")])), "fresh: a as a view");
    sn.remove(&a).await.expect("remove the view a");

    // Commit: the active key is gone, the name is the committed snapshot; a name committed again is the new one.
    for round in ["first", "second"] {
        sn.prepare(&a, None, many.clone()).await.expect("prepare a to commit");
        stat_repeated(sn, &a, "before commit").await;
        sn.commit(&c, &a, labels(&[("committed", round)])).await.expect("commit");
        assert_err!(sn.stat(&a).await, NotFound, "fresh: the active key after commit ({round})");
        let committed = stat_repeated(sn, &c, "after commit").await;
        assert_eq!(
            (committed.kind, committed.labels),
            (Kind::Committed, shared(&[("committed", round)])),
            "fresh: the committed snapshot ({round})"
        );
        sn.remove(&c).await.expect("remove c");
    }
    // A committed name made again as an active snapshot.
    sn.prepare(&c, None, labels(&[("was", "committed")])).await.expect("prepare c");
    let active = stat_repeated(sn, &c, "active after being committed").await;
    assert_eq!((active.kind, active.labels), (Kind::Active, shared(&[("was", "committed")])), "fresh: c active again");
    sn.remove(&c).await.expect("remove c");
}

/// A key is unique across kinds: prepare, view and commit onto a taken key are AlreadyExists.
async fn duplicates(sn: &dyn Snapshotter) {
    let p = "suite-dup";
    base_set(sn, p).await;
    let k = |n: &str| format!("{p}-{n}");
    for taken in ["c1", "a2", "v2"] {
        assert_err!(sn.prepare(&k(taken), None, Labels::new()).await, AlreadyExists, "duplicates: prepare {taken}");
        assert_err!(sn.view(&k(taken), Some(&k("c1")), Labels::new()).await, AlreadyExists, "duplicates: view {taken}");
    }
    assert_err!(sn.commit(&k("c2"), &k("a2"), Labels::new()).await, AlreadyExists, "duplicates: commit onto c2");
    assert_err!(sn.commit(&k("a1"), &k("a2"), Labels::new()).await, AlreadyExists, "duplicates: commit onto a1");
    assert_eq!(sn.stat(&k("a2")).await.expect("stat a2").kind, Kind::Active, "duplicates: a refused commit keeps a2");
    remove_base_set(sn, p).await;
}

/// Only active snapshots commit; only committed ones are parents.
async fn refused_commits_and_parents(sn: &dyn Snapshotter) {
    let p = "suite-refuse";
    base_set(sn, p).await;
    let k = |n: &str| format!("{p}-{n}");
    assert_err!(sn.commit(&k("x"), &k("v1"), Labels::new()).await, FailedPrecondition, "refuse: commit of a view");
    assert_err!(sn.commit(&k("x"), &k("c2"), Labels::new()).await, FailedPrecondition, "refuse: commit of a committed");
    assert_err!(sn.stat(&k("x")).await, NotFound, "refuse: a refused commit makes nothing");
    for parent in ["a1", "v1"] {
        assert_err!(
            sn.prepare(&k("x"), Some(&k(parent)), Labels::new()).await,
            InvalidArgument,
            "refuse: prepare on {parent}, which is not committed"
        );
        assert_err!(
            sn.view(&k("x"), Some(&k(parent)), Labels::new()).await,
            InvalidArgument,
            "refuse: view on {parent}"
        );
    }
    assert_err!(sn.stat(&k("x")).await, NotFound, "refuse: a refused prepare makes nothing");
    remove_base_set(sn, p).await;
}

/// containerd's checkRemove and checkRemoveIntermediateSnapshot: snapshots with children stay, keys are
/// reusable once removed, a committed snapshot can be removed and its name committed again.
async fn remove_rules(sn: &dyn Snapshotter) {
    let k = |n: &str| format!("suite-rm-{n}");
    let none = Labels::new;
    sn.prepare(&k("base-a"), None, none()).await.expect("prepare base-a");
    sn.commit(&k("base"), &k("base-a"), none()).await.expect("commit base");
    sn.prepare(&k("inter-a"), Some(&k("base")), none()).await.expect("prepare inter-a");
    sn.commit(&k("inter"), &k("inter-a"), none()).await.expect("commit inter");
    sn.prepare(&k("top"), Some(&k("inter")), none()).await.expect("prepare top");
    assert_err!(sn.remove(&k("inter")).await, FailedPrecondition, "remove: an intermediate layer with a child");
    assert_err!(sn.remove(&k("base")).await, FailedPrecondition, "remove: the base of a chain");
    sn.stat(&k("inter")).await.expect("remove: a refused removal keeps the snapshot");
    sn.remove(&k("top")).await.expect("remove: the active top");
    sn.remove(&k("inter")).await.expect("remove: inter once its child is gone");
    sn.remove(&k("base")).await.expect("remove: base once its child is gone");

    sn.prepare(&k("a"), None, none()).await.expect("prepare a");
    sn.commit(&k("committed-1"), &k("a"), none()).await.expect("commit committed-1");
    sn.prepare(&k("reuse-1"), Some(&k("committed-1")), none()).await.expect("prepare reuse-1");
    sn.remove(&k("reuse-1")).await.expect("remove: an active snapshot");
    sn.view(&k("reuse-1"), Some(&k("committed-1")), none()).await.expect("remove: a removed key is free for a view");
    sn.remove(&k("reuse-1")).await.expect("remove: a view");
    sn.prepare(&k("reuse-1"), None, none()).await.expect("remove: a removed key is free for prepare");
    sn.remove(&k("committed-1")).await.expect("remove: a committed snapshot without children");
    sn.commit(&k("committed-1"), &k("reuse-1"), none()).await.expect("remove: a removed name is free for commit");
    assert_err!(sn.stat(&k("reuse-1")).await, NotFound, "remove: the committed key");
    sn.remove(&k("committed-1")).await.expect("remove committed-1");
    assert_err!(sn.remove(&k("committed-1")).await, NotFound, "remove: a second removal");
}

/// Walk lists every snapshot once with the info stat gives, and selects by filters.
async fn walk_and_filters(sn: &dyn Snapshotter) {
    let p = "suite-walk";
    base_set(sn, p).await;
    let mut info = sn.stat(&format!("{p}-c2")).await.expect("stat");
    Arc::make_mut(&mut info.labels).insert("suite.role".into(), "tagged".into());
    sn.update(info, &["labels.suite.role".into()]).await.expect("update");
    let walked: BTreeMap<String, Info> =
        sn.walk(&|_| true).await.expect("walk").into_iter().map(|i| (i.name.clone(), i)).collect();
    assert_eq!(walked.len(), base_cases(p).len(), "walk: every snapshot once: {:?}", walked.keys());
    for (name, _, _) in base_cases(p) {
        let stat = sn.stat(&name).await.expect("stat");
        assert_eq!(walked.get(&name), Some(&stat), "walk: {name} as stat gives it");
    }
    let names = |infos: Vec<Info>| {
        let mut names: Vec<String> = infos.into_iter().map(|i| i.name).collect();
        names.sort();
        names
    };
    let committed = names(sn.walk(&|i| i.kind == Kind::Committed).await.expect("walk"));
    assert_eq!(committed, [format!("{p}-c1"), format!("{p}-c2")], "walk: a predicate selects");
    let filters = FilterSet::parse_all(&[r#"labels."suite.role"==tagged"#, "kind==view,parent"]).unwrap();
    let selected = names(sn.walk(&|i| filters.matches(i)).await.expect("walk"));
    assert_eq!(selected, [format!("{p}-c2"), format!("{p}-v1")], "walk: containerd filters select");
    remove_base_set(sn, p).await;
}

/// Cleanup removes only what no snapshot owns.
async fn cleanup_keeps_snapshots(sn: &dyn Snapshotter) {
    let p = "suite-cleanup";
    base_set(sn, p).await;
    sn.cleanup().await.expect("cleanup");
    for (name, kind, _) in base_cases(p) {
        assert_eq!(sn.stat(&name).await.expect("cleanup: snapshot gone").kind, kind, "cleanup: {name}");
    }
    remove_base_set(sn, p).await;
}

// ---- contents: mounting and comparing trees ----

/// What a mount point saw mounted, unmounted (deepest first) and removed on drop, also when a check panics.
struct Mounted {
    dir: PathBuf,
    points: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for point in self.points.iter().rev() {
            let c = CString::new(point.as_os_str().as_bytes()).expect("path without NUL");
            // SAFETY: umount2 with a valid path; a lazy unmount if something holds it busy.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Mounts `mounts` in order onto a new directory `dir`, as the runtime mounts a root filesystem.
fn mount_all(mounts: &[Mount], dir: &Path) -> Mounted {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating mount point {}: {e}", dir.display()));
    let mut mounted = Mounted { dir: dir.to_owned(), points: Vec::new() };
    for m in mounts {
        let point = dir.join(m.target.trim_start_matches('/'));
        let (flags, data) = crate::mount::flags_and_data(&m.kind, &m.options);
        let cstr = |s: &str| CString::new(s).expect("mount argument without NUL");
        let (source, target, kind, data) = (
            cstr(&m.source),
            CString::new(point.as_os_str().as_bytes()).expect("path without NUL"),
            cstr(&m.kind),
            cstr(&data),
        );
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(source.as_ptr(), target.as_ptr(), kind.as_ptr(), flags, data.as_ptr() as *const libc::c_void)
        };
        if rc != 0 {
            panic!("mounting {m:?} on {}: {}", point.display(), std::io::Error::last_os_error());
        }
        mounted.points.push(point.clone());
        // A bind mount ignores MS_RDONLY until it is remounted.
        if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
            let flags = flags | libc::MS_REMOUNT;
            // SAFETY: as above; a remount takes no source or type.
            let rc =
                unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
            if rc != 0 {
                panic!("remounting {} read-only: {}", point.display(), std::io::Error::last_os_error());
            }
        }
    }
    mounted
}

/// A change to a tree, applied the same way to a snapshot's mount and to a plain directory.
#[derive(Debug, Clone)]
enum Op {
    /// Write a file (creating or replacing its contents) and set its mode.
    File(String, Vec<u8>, u32),
    /// Create a directory with a mode.
    Dir(String, u32),
    /// `Symlink(target, path)`.
    Symlink(String, String),
    /// `Link(existing, new)`: a hard link.
    Link(String, String),
    /// Remove a file or a whole directory.
    Remove(String),
    /// `Rename(from, to)`.
    Rename(String, String),
    /// Set owner and group (without following symlinks).
    Chown(String, u32, u32),
    /// Set the mode.
    Chmod(String, u32),
}

fn file(path: &str, content: &str, mode: u32) -> Op {
    Op::File(path.into(), content.as_bytes().to_vec(), mode)
}

fn dir(path: &str, mode: u32) -> Op {
    Op::Dir(path.into(), mode)
}

fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        let p = |rel: &str| root.join(rel);
        let result = match op {
            Op::File(path, content, mode) => fs::write(p(path), content)
                .and_then(|()| fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))),
            Op::Dir(path, mode) => {
                fs::create_dir(p(path)).and_then(|()| fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)))
            }
            Op::Symlink(target, path) => std::os::unix::fs::symlink(target, p(path)),
            Op::Link(existing, path) => fs::hard_link(p(existing), p(path)),
            Op::Remove(path) => match fs::symlink_metadata(p(path)) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(p(path)),
                _ => fs::remove_file(p(path)),
            },
            Op::Rename(from, to) => fs::rename(p(from), p(to)),
            Op::Chown(path, uid, gid) => std::os::unix::fs::lchown(p(path), Some(*uid), Some(*gid)),
            Op::Chmod(path, mode) => fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)),
        };
        result.unwrap_or_else(|e| panic!("applying {op:?} in {}: {e}", root.display()));
    }
}

/// What a tree comparison looks at for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32, uid: u32, gid: u32 },
    File { mode: u32, uid: u32, gid: u32, content: Vec<u8> },
    Symlink { target: PathBuf, uid: u32, gid: u32 },
    Other { mode: u32, rdev: u64 },
}

/// Every entry under `root` (not `root` itself), by relative path.
fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let (mode, uid, gid) = (m.mode() & 0o7777, m.uid(), m.gid());
            let node = if m.is_dir() {
                walk(root, &path, out);
                Node::Dir { mode, uid, gid }
            } else if m.is_file() {
                let content = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                Node::File { mode, uid, gid, content }
            } else if m.file_type().is_symlink() {
                Node::Symlink { target: fs::read_link(&path).expect("readlink"), uid, gid }
            } else {
                Node::Other { mode: m.mode(), rdev: m.rdev() }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Compares the tree at `actual` with what `layers` make of an empty directory.
fn assert_tree(what: &str, actual: &Path, layers: &[&[Op]], scratch: &Path) {
    let expected_dir = scratch.join("expected");
    let _ = fs::remove_dir_all(&expected_dir);
    fs::create_dir(&expected_dir).expect("creating the expected tree");
    for ops in layers {
        apply(&expected_dir, ops);
    }
    let expected = read_tree(&expected_dir);
    fs::remove_dir_all(&expected_dir).expect("removing the expected tree");
    let got = read_tree(actual);
    if got != expected {
        let keys: std::collections::BTreeSet<&String> = got.keys().chain(expected.keys()).collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| got.get(*k) != expected.get(*k))
            .map(|k| format!("{k}: expected {:?}, got {:?}", expected.get(k), got.get(k)))
            .collect();
        panic!("{what}: the tree differs:\n  {}", diff.join("\n  "));
    }
}

/// Prepares `key` on `parent`, mounts it, applies `ops` through the mount, unmounts and commits it as `name`.
async fn layer(sn: &dyn Snapshotter, scratch: &Path, key: &str, parent: Option<&str>, ops: &[Op], name: &str) {
    let mounts = sn.prepare(key, parent, Labels::new()).await.unwrap_or_else(|e| panic!("prepare {key}: {e}"));
    {
        let mounted = mount_all(&mounts, &scratch.join(key));
        apply(&mounted.dir, ops);
    }
    sn.commit(name, key, Labels::new()).await.unwrap_or_else(|e| panic!("commit {key} as {name}: {e}"));
}

/// containerd's checkSnapshotterBasic with its layer checks: a child sees its parent's files (owners and
/// modes kept), its changes (new, replaced, moved, chmod'ed, deleted files and directories, a directory
/// deleted and made again) hide the parent's, and a view of the result shows the merged tree.
async fn layers_stack_and_hide(sn: &dyn Snapshotter, scratch: &Path) {
    let l1 = [
        file("foo", "foo\n", 0o644),
        dir("a", 0o755),
        dir("a/b", 0o755),
        dir("a/b/c", 0o700),
        file("a/b/c/deep", "deep\n", 0o600),
        Op::Symlink("foo".into(), "link".into()),
        Op::Symlink("/etc/absolute".into(), "dangling".into()),
        dir("d", 0o755),
        file("d/old", "old\n", 0o644),
        dir("dir2", 0o711),
        file("dir2/f2", "moved\n", 0o644),
        file("owned", "owned\n", 0o640),
        Op::Chown("owned".into(), 1000, 2000),
        dir("private", 0o700),
        Op::Chown("private".into(), 123, 456),
        Op::Chown("link".into(), 7, 8),
        file("exe", "#!/bin/sh\n", 0o755),
        file("setuid", "s\n", 0o755),
        Op::Chmod("setuid".into(), 0o4755),
        file("empty", "", 0o644),
    ];
    let l2 = [
        file("bar", "bar\n", 0o644),
        file("foo", "bar\n", 0o644),
        Op::Remove("a/b".into()),
        Op::Remove("d".into()),
        dir("d", 0o750),
        file("d/new", "new\n", 0o644),
        dir("dir3", 0o755),
        Op::Rename("dir2/f2".into(), "dir3/f2".into()),
        Op::Chmod("exe".into(), 0o700),
        Op::Chown("empty".into(), 5, 6),
        Op::Remove("link".into()),
        file("private/inside", "in\n", 0o600),
    ];
    let k = |n: &str| format!("suite-layers-{n}");

    let mounts = sn.prepare(&k("base-a"), None, Labels::new()).await.expect("layers: prepare base-a");
    assert!(!mounts.is_empty(), "layers: prepare returns mounts");
    {
        let mounted = mount_all(&mounts, &scratch.join("base-a"));
        assert_tree("layers: a new snapshot without parent", &mounted.dir, &[], scratch);
        apply(&mounted.dir, &l1);
        assert_tree("layers: the first layer as written", &mounted.dir, &[&l1], scratch);
    }
    sn.commit(&k("base"), &k("base-a"), Labels::new()).await.expect("layers: commit base");
    let base = sn.stat(&k("base")).await.expect("stat base");
    assert_eq!((base.kind, base.parent.as_deref()), (Kind::Committed, None), "layers: base");

    let mounts = sn.prepare(&k("next-a"), Some(&k("base")), Labels::new()).await.expect("layers: prepare next-a");
    {
        let mounted = mount_all(&mounts, &scratch.join("next-a"));
        assert_tree("layers: a child shows its parent's files", &mounted.dir, &[&l1], scratch);
        apply(&mounted.dir, &l2);
        assert_tree("layers: the child after its changes", &mounted.dir, &[&l1, &l2], scratch);
        let next = sn.stat(&k("next-a")).await.expect("stat next-a");
        assert_eq!((next.kind, next.parent), (Kind::Active, Some(k("base"))), "layers: the child");
    }
    sn.commit(&k("next"), &k("next-a"), Labels::new()).await.expect("layers: commit next");
    assert_eq!(sn.stat(&k("next")).await.expect("stat").parent, Some(k("base")), "layers: parent after commit");

    for (view, parent, layers) in
        [("view-base", k("base"), vec![&l1[..]]), ("view-next", k("next"), vec![&l1[..], &l2[..]])]
    {
        let mounts = sn.view(&k(view), Some(&parent), Labels::new()).await.expect("layers: view");
        let mounted = mount_all(&mounts, &scratch.join(view));
        assert_tree(&format!("layers: {view}"), &mounted.dir, &layers, scratch);
    }
    // A second child of base does not see the first child's changes.
    let mounts = sn.prepare(&k("other-a"), Some(&k("base")), Labels::new()).await.expect("layers: prepare other-a");
    {
        let mounted = mount_all(&mounts, &scratch.join("other-a"));
        assert_tree("layers: a sibling", &mounted.dir, &[&l1], scratch);
    }
    for key in ["other-a", "view-next", "view-base"] {
        sn.remove(&k(key)).await.unwrap_or_else(|e| panic!("layers: remove {key}: {e}"));
    }
    assert_err!(sn.remove(&k("base")).await, FailedPrecondition, "layers: remove of a parent");
    sn.remove(&k("next")).await.expect("layers: remove next");
    sn.remove(&k("base")).await.expect("layers: remove base");
}

/// Writing through a view fails, with or without a parent, on one layer or several.
async fn views_are_read_only(sn: &dyn Snapshotter, scratch: &Path) {
    let k = |n: &str| format!("suite-ro-{n}");
    layer(sn, scratch, &k("one-a"), None, &[file("f", "1\n", 0o644)], &k("one")).await;
    layer(sn, scratch, &k("two-a"), Some(&k("one")), &[file("g", "2\n", 0o644)], &k("two")).await;
    for (view, parent) in [("v0", None), ("v1", Some(k("one"))), ("v2", Some(k("two")))] {
        let mounts = sn.view(&k(view), parent.as_deref(), Labels::new()).await.expect("view");
        let mounted = mount_all(&mounts, &scratch.join(k(view)));
        let write = fs::File::create(mounted.dir.join("testfile")).and_then(|mut f| f.write_all(b"x"));
        assert!(write.is_err(), "read-only: writing into view {view} (parent {parent:?}) must fail");
        if parent.is_some() {
            let change = fs::write(mounted.dir.join("f"), b"changed");
            assert!(change.is_err(), "read-only: changing a file of view {view} must fail");
        }
        drop(mounted);
        sn.remove(&k(view)).await.expect("remove view");
    }
    sn.remove(&k("two")).await.expect("remove two");
    sn.remove(&k("one")).await.expect("remove one");
}

/// Usage counts what is written into a snapshot: bytes and inodes.
async fn usage_grows_with_data(sn: &dyn Snapshotter, scratch: &Path) {
    let key = "suite-usage-a";
    let mounts = sn.prepare(key, None, Labels::new()).await.expect("usage: prepare");
    let empty = sn.usage(key).await.expect("usage: of an empty snapshot");
    assert!(empty.inodes <= 1, "usage: an empty snapshot has at most its root directory, got {empty:?}");
    const SIZE: u64 = 1 << 20;
    {
        let mounted = mount_all(&mounts, &scratch.join(key));
        let mut f = fs::File::create(mounted.dir.join("data")).expect("create");
        f.write_all(&vec![0xa5; SIZE as usize]).expect("write");
        f.sync_all().expect("sync");
        fs::create_dir(mounted.dir.join("dir")).expect("mkdir");
        fs::write(mounted.dir.join("dir/small"), b"small").expect("write");
    }
    let used = sn.usage(key).await.expect("usage: after writing");
    assert!(used.size >= empty.size + SIZE, "usage: {SIZE} bytes written, usage went from {empty:?} to {used:?}");
    assert_eq!(used.inodes, empty.inodes + 3, "usage: a file, a directory and a file added: {empty:?} → {used:?}");
    sn.commit("suite-usage", key, Labels::new()).await.expect("usage: commit");
    let committed = sn.usage("suite-usage").await.expect("usage: of the committed snapshot");
    assert!(committed.size >= SIZE && committed.inodes == used.inodes, "usage: after commit {committed:?}");
    sn.remove("suite-usage").await.expect("usage: remove");
}

/// A chain of [`CHAIN_LENGTH`] committed layers, each adding, replacing and deleting files of the layers
/// below: a view of the top and an active snapshot on it (the most lowers an overlay gets here) show the
/// merged result.
async fn long_chain(sn: &dyn Snapshotter, scratch: &Path) {
    let layer_ops = |i: usize| {
        let mut ops = vec![
            file(&format!("keep-{i}"), &format!("{i}\n"), 0o644),
            file(&format!("drop-{i}"), &format!("{i}\n"), 0o644),
            file("top", &format!("{i}\n"), 0o644),
            Op::Link(format!("keep-{i}"), format!("link-{i}")),
        ];
        if i == 0 {
            ops.push(dir("dirs", 0o755));
        } else {
            ops.push(Op::Remove(format!("drop-{}", i - 1)));
        }
        ops.push(dir(&format!("dirs/{i}"), 0o755));
        ops
    };
    let all: Vec<Vec<Op>> = (0..CHAIN_LENGTH).map(layer_ops).collect();
    let name = |i: usize| format!("suite-chain-{i}");
    for (i, ops) in all.iter().enumerate() {
        let parent = (i > 0).then(|| name(i - 1));
        layer(sn, scratch, &format!("suite-chain-{i}-a"), parent.as_deref(), ops, &name(i)).await;
    }
    let layers: Vec<&[Op]> = all.iter().map(Vec::as_slice).collect();
    let top = name(CHAIN_LENGTH - 1);
    {
        let mounts = sn.view("suite-chain-view", Some(&top), Labels::new()).await.expect("chain: view");
        let mounted = mount_all(&mounts, &scratch.join("suite-chain-view"));
        assert_tree("chain: a view of the top layer", &mounted.dir, &layers, scratch);
    }
    {
        let mounts = sn.prepare("suite-chain-rw", Some(&top), Labels::new()).await.expect("chain: prepare");
        let mounted = mount_all(&mounts, &scratch.join("suite-chain-rw"));
        let more = [file("top", "rw\n", 0o600), Op::Remove("keep-0".into()), dir("dirs/new", 0o700)];
        apply(&mounted.dir, &more);
        let mut with_more = layers.clone();
        with_more.push(&more);
        assert_tree("chain: an active snapshot on the top layer", &mounted.dir, &with_more, scratch);
    }
    sn.remove("suite-chain-rw").await.expect("chain: remove rw");
    sn.remove("suite-chain-view").await.expect("chain: remove view");
    for i in (0..CHAIN_LENGTH).rev() {
        sn.remove(&name(i)).await.unwrap_or_else(|e| panic!("chain: remove layer {i}: {e}"));
    }
}
