//! Conversions between the wire messages and berth's own types: the store's records, which mirror
//! containerd's messages field for field (only map types and nested runtime types differ), and the
//! runtime backend's mounts and statuses.

use berth_proto::containerd::services::containers::v1 as containers;
use berth_proto::containerd::services::leases::v1 as leases;
use berth_proto::containerd::services::namespaces::v1 as namespaces;
use berth_proto::containerd::types;
use berth_proto::containerd::v1::types as task;

use crate::mount::Mount;
use crate::runtime;
use crate::store::records::{Container, Lease, LeaseResource, Namespace, Runtime, Sandbox};

impl From<namespaces::Namespace> for Namespace {
    fn from(n: namespaces::Namespace) -> Self {
        Namespace { name: n.name, labels: n.labels.into_iter().collect() }
    }
}

impl From<Namespace> for namespaces::Namespace {
    fn from(n: Namespace) -> Self {
        namespaces::Namespace { name: n.name, labels: n.labels.into_iter().collect() }
    }
}

impl From<containers::Container> for Container {
    fn from(c: containers::Container) -> Self {
        Container {
            id: c.id,
            labels: c.labels.into_iter().collect(),
            image: c.image,
            runtime: c.runtime.map(|r| Runtime { name: r.name, options: r.options }),
            spec: c.spec,
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            created_at: c.created_at,
            updated_at: c.updated_at,
            extensions: c.extensions.into_iter().collect(),
            sandbox: c.sandbox,
        }
    }
}

impl From<Container> for containers::Container {
    fn from(c: Container) -> Self {
        containers::Container {
            id: c.id,
            labels: c.labels.into_iter().collect(),
            image: c.image,
            runtime: c.runtime.map(|r| containers::container::Runtime { name: r.name, options: r.options }),
            spec: c.spec,
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            created_at: c.created_at,
            updated_at: c.updated_at,
            extensions: c.extensions.into_iter().collect(),
            sandbox: c.sandbox,
        }
    }
}

impl From<types::Sandbox> for Sandbox {
    fn from(s: types::Sandbox) -> Self {
        Sandbox {
            id: s.sandbox_id,
            runtime: s.runtime.map(|r| Runtime { name: r.name, options: r.options }),
            spec: s.spec,
            labels: s.labels.into_iter().collect(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            extensions: s.extensions.into_iter().collect(),
            sandboxer: s.sandboxer,
        }
    }
}

impl From<Sandbox> for types::Sandbox {
    fn from(s: Sandbox) -> Self {
        types::Sandbox {
            sandbox_id: s.id,
            runtime: s.runtime.map(|r| types::sandbox::Runtime { name: r.name, options: r.options }),
            spec: s.spec,
            labels: s.labels.into_iter().collect(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            extensions: s.extensions.into_iter().collect(),
            sandboxer: s.sandboxer,
        }
    }
}

impl From<leases::Lease> for Lease {
    fn from(l: leases::Lease) -> Self {
        Lease { id: l.id, created_at: l.created_at, labels: l.labels.into_iter().collect() }
    }
}

impl From<Lease> for leases::Lease {
    fn from(l: Lease) -> Self {
        leases::Lease { id: l.id, created_at: l.created_at, labels: l.labels.into_iter().collect() }
    }
}

impl From<leases::Resource> for LeaseResource {
    fn from(r: leases::Resource) -> Self {
        LeaseResource { id: r.id, kind: r.r#type }
    }
}

impl From<LeaseResource> for leases::Resource {
    fn from(r: LeaseResource) -> Self {
        leases::Resource { id: r.id, r#type: r.kind }
    }
}

impl From<types::Mount> for Mount {
    fn from(m: types::Mount) -> Self {
        Mount { kind: m.r#type, source: m.source, target: m.target, options: m.options }
    }
}

impl From<Mount> for types::Mount {
    fn from(m: Mount) -> Self {
        types::Mount { r#type: m.kind, source: m.source, target: m.target, options: m.options }
    }
}

impl From<runtime::Status> for task::Status {
    fn from(s: runtime::Status) -> Self {
        match s {
            runtime::Status::Created => task::Status::Created,
            runtime::Status::Running => task::Status::Running,
            runtime::Status::Stopped => task::Status::Stopped,
            runtime::Status::Paused => task::Status::Paused,
            runtime::Status::Pausing => task::Status::Pausing,
            runtime::Status::Unknown => task::Status::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_keep_every_field_both_ways() {
        let wire = types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: "".into(),
            options: vec!["lowerdir=/l".into(), "upperdir=/u".into(), "workdir=/w".into()],
        };
        let mount = Mount::from(wire.clone());
        assert_eq!(mount.kind, "overlay");
        assert_eq!(mount.options.len(), 3);
        assert_eq!(types::Mount::from(mount), wire);
    }

    #[test]
    fn statuses_map_to_containerd_values() {
        use runtime::Status as S;
        let pairs =
            [(S::Unknown, 0), (S::Created, 1), (S::Running, 2), (S::Stopped, 3), (S::Paused, 4), (S::Pausing, 5)];
        for (status, wire) in pairs {
            assert_eq!(task::Status::from(status) as i32, wire, "{status:?}");
        }
    }
}
