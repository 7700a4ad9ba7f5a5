//! The garbage collector's pass over the records: mark what is reachable from the roots and
//! remove every content and snapshot record that is not, and every expired lease, in one write
//! transaction (see `crate::gc` for the whole collection and why it is safe against writers).
//!
//! The rules are containerd's (`metadata/gc.go`), per namespace:
//!
//! * roots: each image's target digest; each container's snapshot (`snapshotter`/`snapshot_key`);
//!   every resource of a lease that has not expired (`content`, `ingests`, `snapshots/<name>`);
//!   content and snapshots labelled `containerd.io/gc.root`; ingests that are leased or still
//!   fresh; and the label references of images, containers and sandboxes;
//! * references: content and snapshot labels `containerd.io/gc.ref.content[.<name>|/<name>]` =
//!   digest and `containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]` = key; a snapshot's
//!   parent; an ingest's expected digest;
//! * a lease labelled `containerd.io/gc.expire` with an RFC 3339 time in the past has expired:
//!   it holds nothing and is removed with its resources (an unparsable time is ignored: the
//!   lease holds, as in containerd). A lease labelled `containerd.io/gc.flat` holds its
//!   resources flat: their label references are not followed (snapshot parents still are).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::RwTxn;
use heed::types::DecodeIgnore;

use super::content::{CONTENT_RESOURCE, INGEST_RESOURCE};
use super::records::LeaseResource;
use super::tables::{
    MAX_KEY_SIZE, Tables, lease_resource_key, namespace_prefix, object_key, snapshot_key, split_lease_resource,
};
use super::{MetadataStore, internal};
use crate::error::Result;

/// Label that makes content or a snapshot a root.
pub const LABEL_ROOT: &str = "containerd.io/gc.root";
/// Label prefix of content references.
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label prefix of snapshot references: `containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`.
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Lease label: an RFC 3339 time after which the lease holds nothing.
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
/// Lease label: the lease's resources are held without what their labels reference.
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";

/// An ingest of the content store as the collector sees it (ingests are files, not records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestRef {
    /// Its namespace.
    pub namespace: String,
    /// The client's ref.
    pub reference: String,
    /// The digest it is expected to become, if known: a live ingest keeps that blob's record.
    pub expected: Option<String>,
    /// Written recently enough to be kept without a lease.
    pub fresh: bool,
}

/// What the record pass removed, and what the file pass has left to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Content records removed, as (namespace, digest).
    pub content: Vec<(String, String)>,
    /// Snapshot records removed, as (namespace, snapshotter, key, backend key).
    pub snapshots: Vec<(String, String, String, String)>,
    /// Expired leases removed, as (namespace, id).
    pub leases: Vec<(String, String)>,
    /// Ingests no live lease holds that are not fresh, as (namespace, ref): to be aborted.
    pub stale_ingests: Vec<(String, String)>,
    /// Content records kept.
    pub content_kept: usize,
    /// Snapshot records kept.
    pub snapshots_kept: usize,
}

/// A node of the reference graph, named by its record's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    /// `<namespace>/<digest>` in `content`.
    Content(String),
    /// (`<namespace>/<snapshotter>/<key>` in `snapshots`, namespace, snapshotter).
    Snapshot(String, String, String),
}

/// The mark: which records are reachable, and the work list.
#[derive(Default)]
struct Mark {
    content: HashSet<String>,
    snapshots: HashSet<String>,
    /// Nodes whose references were (or are queued to be) followed.
    expanded: HashSet<Node>,
    /// Nodes reached flat, whose parents (snapshots only) were queued.
    flat: HashSet<Node>,
    queue: Vec<(Node, bool)>,
}

impl Mark {
    fn reach(&mut self, node: Node, flat: bool) {
        match &node {
            Node::Content(key) => self.content.insert(key.clone()),
            Node::Snapshot(key, ..) => self.snapshots.insert(key.clone()),
        };
        let first = if flat { self.flat.insert(node.clone()) } else { self.expanded.insert(node.clone()) };
        if first {
            self.queue.push((node, flat));
        }
    }

    fn content(&mut self, ns: &str, digest: &str, flat: bool) {
        if !digest.is_empty() {
            self.reach(Node::Content(object_key(ns, digest)), flat);
        }
    }

    fn snapshot(&mut self, ns: &str, snapshotter: &str, key: &str, flat: bool) {
        if !snapshotter.is_empty() && !key.is_empty() {
            let node = Node::Snapshot(snapshot_key(ns, snapshotter, key), ns.to_owned(), snapshotter.to_owned());
            self.reach(node, flat);
        }
    }

    /// Reaches what `labels` (of an object in `ns`) reference.
    fn labels(&mut self, ns: &str, labels: &BTreeMap<String, String>) {
        for (key, value) in labels {
            if let Some(rest) = key.strip_prefix(LABEL_REF_CONTENT) {
                // `gc.ref.content`, or named `gc.ref.content.<name>` / `gc.ref.content/<name>`.
                if rest.is_empty() || rest.starts_with('.') || rest.starts_with('/') {
                    self.content(ns, value, false);
                }
            } else if let Some(rest) = key.strip_prefix(LABEL_REF_SNAPSHOT) {
                let snapshotter = rest.split_once('/').map_or(rest, |(s, _)| s);
                self.snapshot(ns, snapshotter, value, false);
            }
        }
    }
}

/// The namespace part of a `<namespace>/...` key.
fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(ns, _)| ns)
}

/// Whether a lease with these labels has expired at `now`. An unparsable time is ignored (the
/// lease holds), as containerd does.
fn expired(ns: &str, id: &str, labels: &BTreeMap<String, String>, now: SystemTime) -> bool {
    let Some(value) = labels.get(LABEL_EXPIRE) else { return false };
    match parse_rfc3339(value) {
        Some(at) => now > at,
        None => {
            tracing::info!(namespace = ns, lease = id, value = %value, "ignoring an invalid {LABEL_EXPIRE} label");
            false
        }
    }
}

/// Parses an RFC 3339 time as Go's `time.RFC3339` layout does: `YYYY-MM-DDTHH:MM:SS`, optional
/// fractional seconds, then `Z` or `±HH:MM`.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut at = 19;
    let mut nanos = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        let frac = &text[start..end.min(start + 9)];
        nanos = frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32);
        at = end;
    }
    let offset = match &b[at..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' { minutes * 60 } else { -minutes * 60 }
        }
        _ => return None,
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let since_epoch = |s: i64| Duration::new(s.unsigned_abs(), 0);
    let whole = if seconds >= 0 {
        UNIX_EPOCH.checked_add(since_epoch(seconds))?
    } else {
        UNIX_EPOCH.checked_sub(since_epoch(seconds))?
    };
    whole.checked_add(Duration::from_nanos(nanos as u64))
}

/// Removes every key of `keys` from `table`.
fn delete_all<V>(
    txn: &mut RwTxn<'_>,
    table: heed::Database<heed::types::Str, V>,
    keys: &[String],
    what: &str,
) -> Result<()> {
    for key in keys {
        table
            .remap_data_type::<DecodeIgnore>()
            .delete(txn, key)
            .map_err(internal(format!("removing {what} {key:?}")))?;
    }
    Ok(())
}

/// The mark and sweep, in the writer's transaction.
fn mark_and_sweep(
    txn: &mut RwTxn<'_>,
    tables: &Tables<'static>,
    now: SystemTime,
    ingests: &[IngestRef],
) -> Result<Swept> {
    let reading = |what: &str| internal(format!("garbage collection: reading {what}"));
    let mut mark = Mark::default();
    let mut swept = Swept::default();

    // Leases: the live ones hold their resources, the expired ones go.
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    let mut expired_keys = Vec::new();
    for entry in tables.leases.iter(txn).map_err(reading("leases"))? {
        let (key, lease) = entry.map_err(reading("leases"))?;
        let ns = namespace_of(key);
        let id = &key[ns.len() + 1..];
        if expired(ns, id, &lease.labels, now) {
            expired_keys.push(key.to_owned());
            swept.leases.push((ns.to_owned(), id.to_owned()));
        } else {
            live.insert(key.to_owned(), lease.labels.contains_key(LABEL_FLAT));
        }
    }
    let mut leased_ingests = HashSet::new();
    let mut dead_resources = Vec::new();
    let resources = tables.lease_resources.remap_data_type::<DecodeIgnore>();
    for entry in resources.iter(txn).map_err(reading("lease resources"))? {
        let (key, ()) = entry.map_err(reading("lease resources"))?;
        let ns = namespace_of(key);
        let Some((lease, rest)) = key[ns.len() + 1..].split_once('\0') else { continue };
        let lease_key = object_key(ns, lease);
        let Some(&flat) = live.get(&lease_key) else {
            if expired_keys.contains(&lease_key) {
                dead_resources.push(key.to_owned());
            }
            continue;
        };
        let Some(resource) = split_lease_resource(rest) else { continue };
        match resource.kind.as_str() {
            CONTENT_RESOURCE => mark.content(ns, &resource.id, flat),
            INGEST_RESOURCE => {
                leased_ingests.insert((ns.to_owned(), resource.id));
            }
            kind => {
                if let Some(snapshotter) = kind.strip_prefix("snapshots/") {
                    mark.snapshot(ns, snapshotter, &resource.id, flat);
                }
            }
        }
    }

    // Ingests: leased or fresh ones keep the blob they are expected to become.
    for ingest in ingests {
        let leased = leased_ingests.contains(&(ingest.namespace.clone(), ingest.reference.clone()));
        if leased || ingest.fresh {
            if let Some(expected) = &ingest.expected {
                mark.content(&ingest.namespace, expected, false);
            }
        } else {
            swept.stale_ingests.push((ingest.namespace.clone(), ingest.reference.clone()));
        }
    }

    for entry in tables.images.iter(txn).map_err(reading("images"))? {
        let (key, image) = entry.map_err(reading("images"))?;
        let ns = namespace_of(key);
        if let Some(target) = &image.target {
            mark.content(ns, &target.digest, false);
        }
        mark.labels(ns, &image.labels);
    }
    for entry in tables.containers.iter(txn).map_err(reading("containers"))? {
        let (key, container) = entry.map_err(reading("containers"))?;
        let ns = namespace_of(key);
        mark.snapshot(ns, &container.snapshotter, &container.snapshot_key, false);
        mark.labels(ns, &container.labels);
    }
    for entry in tables.sandboxes.iter(txn).map_err(reading("sandboxes"))? {
        let (key, sandbox) = entry.map_err(reading("sandboxes"))?;
        mark.labels(namespace_of(key), &sandbox.labels);
    }
    for entry in tables.content.iter(txn).map_err(reading("content"))? {
        let (key, info) = entry.map_err(reading("content"))?;
        if info.labels.contains_key(LABEL_ROOT) {
            mark.reach(Node::Content(key.to_owned()), false);
        }
    }
    for entry in tables.snapshots.iter(txn).map_err(reading("snapshots"))? {
        let (key, record) = entry.map_err(reading("snapshots"))?;
        if record.labels.contains_key(LABEL_ROOT) {
            let ns = namespace_of(key);
            let rest = &key[ns.len() + 1..];
            let snapshotter = namespace_of(rest);
            mark.snapshot(ns, snapshotter, &rest[snapshotter.len() + 1..], false);
        }
    }

    // Follow references until nothing new is reached. Edges to records that do not exist are
    // dead ends, as in containerd.
    while let Some((node, flat)) = mark.queue.pop() {
        match &node {
            Node::Content(key) => {
                if flat {
                    continue;
                }
                if let Some(info) = tables.content.get(txn, key).map_err(reading("content"))? {
                    mark.labels(namespace_of(key), &info.labels);
                }
            }
            Node::Snapshot(key, ns, snapshotter) => {
                let Some(record) = tables.snapshots.get(txn, key).map_err(reading("snapshots"))? else { continue };
                mark.snapshot(ns, snapshotter, &record.parent, flat);
                if !flat {
                    mark.labels(ns, &record.labels);
                }
            }
        }
    }

    // Sweep.
    let mut content_keys = Vec::new();
    for entry in tables.content.remap_data_type::<DecodeIgnore>().iter(txn).map_err(reading("content"))? {
        let (key, ()) = entry.map_err(reading("content"))?;
        if mark.content.contains(key) {
            swept.content_kept += 1;
        } else {
            let ns = namespace_of(key);
            swept.content.push((ns.to_owned(), key[ns.len() + 1..].to_owned()));
            content_keys.push(key.to_owned());
        }
    }
    let mut snapshot_keys = Vec::new();
    for entry in tables.snapshots.iter(txn).map_err(reading("snapshots"))? {
        let (key, record) = entry.map_err(reading("snapshots"))?;
        if mark.snapshots.contains(key) {
            swept.snapshots_kept += 1;
        } else {
            let ns = namespace_of(key);
            let rest = &key[ns.len() + 1..];
            let snapshotter = namespace_of(rest);
            let name = &rest[snapshotter.len() + 1..];
            swept.snapshots.push((ns.to_owned(), snapshotter.to_owned(), name.to_owned(), record.backend_key));
            snapshot_keys.push(key.to_owned());
        }
    }
    delete_all(txn, tables.content, &content_keys, "content record")?;
    delete_all(txn, tables.snapshots, &snapshot_keys, "snapshot record")?;
    delete_all(txn, tables.leases, &expired_keys, "expired lease")?;
    delete_all(txn, tables.lease_resources, &dead_resources, "resource of an expired lease")?;
    Ok(swept)
}

impl MetadataStore {
    /// The record pass of a garbage collection at time `now`, given the content store's ingests:
    /// marks and sweeps in one write transaction, so no write can slip between the two.
    pub async fn collect_records(&self, now: SystemTime, ingests: Vec<IngestRef>) -> Result<Swept> {
        // Not `self.write`: the collector's own write does not count as a mutation.
        self.inner.writer.write(move |txn, tables| mark_and_sweep(txn, tables, now, &ingests)).await
    }

    /// Every digest some namespace has a content record of.
    pub fn content_in_use(&self) -> Result<HashSet<String>> {
        let rtxn = self.read_txn()?;
        let reading = || internal("garbage collection: listing content records");
        let table = self.tables().content.remap_data_type::<DecodeIgnore>();
        let mut digests = HashSet::new();
        for entry in table.iter(&rtxn).map_err(reading())? {
            let (key, ()) = entry.map_err(reading())?;
            digests.insert(key[namespace_of(key).len() + 1..].to_owned());
        }
        Ok(digests)
    }

    /// The backend keys of every record of snapshotter `snapshotter`, in every namespace.
    pub fn snapshots_in_use(&self, snapshotter: &str) -> Result<HashSet<String>> {
        let rtxn = self.read_txn()?;
        let reading = || internal("garbage collection: listing snapshot records");
        let mut keys = HashSet::new();
        for entry in self.tables().snapshots.iter(&rtxn).map_err(reading())? {
            let (key, record) = entry.map_err(reading())?;
            let rest = &key[namespace_of(key).len() + 1..];
            if namespace_of(rest) == snapshotter {
                keys.insert(record.backend_key);
            }
        }
        Ok(keys)
    }

    /// Whether a lease of namespace `ns` that has not expired at `now` holds ingest `reference`.
    pub fn ingest_leased(&self, ns: &str, reference: &str, now: SystemTime) -> Result<bool> {
        let rtxn = self.read_txn()?;
        let tables = self.tables();
        let reading = || internal("garbage collection: reading leases");
        let prefix = namespace_prefix(ns);
        for entry in tables.leases.prefix_iter(&rtxn, &prefix).map_err(reading())? {
            let (key, lease) = entry.map_err(reading())?;
            let id = &key[prefix.len()..];
            if expired(ns, id, &lease.labels, now) {
                continue;
            }
            let resource = LeaseResource { id: reference.to_owned(), kind: INGEST_RESOURCE.into() };
            let resource_key = lease_resource_key(ns, id, &resource);
            if resource_key.len() > MAX_KEY_SIZE {
                continue;
            }
            let held = tables.lease_resources.get(&rtxn, &resource_key).map_err(reading())?;
            if held.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
