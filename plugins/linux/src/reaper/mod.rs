//! The per-task reaper: the small process that stays beside each container.
//!
//! berthd is multi-threaded, so it never forks a container itself. It keeps one single-threaded `berth-reaper
//! spawner` ready ([`spawner`]), which forks the reaper daemon of each task on request; without it, berthd
//! starts `berth-reaper create <task dir>` (fork + exec), which forks the daemon the same way. The daemon
//! creates the container with the runtime library in-process, keeps its exit status, pumps the streams that
//! need pumping and answers berthd on `<task dir>/reaper.sock` ([`protocol`]). The reaper does not depend on berthd: kill berthd with `kill -9`,
//! and the tasks keep running; the next berthd finds each reaper by its socket.
//!
//! ```text
//! <state>/runtime.linux/
//!   oci/<namespace>/<id>/state.json   the runtime library's state (runc layout)
//!   tasks/<namespace>/<id>/
//!     config.json   the OCI spec (the bundle)      task.json    what to create (streams, rootfs mounts)
//!     rootfs/       mount point when mounts are given
//!     reaper.sock   requests                        reaper.pid   the reaper's pid
//!     exit.json     init's exit, written when it happens (read if the reaper is gone)
//!     reaper.log    what the reaper, the runtime library and hooks printed
//! ```

pub mod protocol;
mod rootfs;
pub mod server;
pub mod spawner;
mod stdio;

pub use server::main;
