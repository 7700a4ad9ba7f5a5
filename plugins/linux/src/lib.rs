//! berth's built-in Linux OCI runtime.
//!
//! Split by role, as youki is: [`cgroups`] (v1, hybrid and v2 resource control), [`seccomp`]
//! (OCI seccomp profiles compiled to BPF in pure Rust) and [`container`] (the container process:
//! namespaces, root filesystem, process attributes, and the create/start/kill/delete verbs), and
//! [`reaper`] (the small process beside each of berthd's tasks). Two plugins: `runtime.linux` ([`registration`])
//! and the `monitor.cgroups` task monitor ([`monitor::registration`]).

pub mod cgroups;
pub mod container;
pub mod monitor;
pub mod reaper;
pub mod runtime;
pub mod seccomp;

pub use runtime::registration;
