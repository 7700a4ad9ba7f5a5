//! berth's end-to-end tests: a real berthd on temporary directories, driven by the
//! `containerd-client` crate, the real `ctr` (Debian package `containerd`) and the `berth` CLI.
//!
//! One test binary with a module per area, as the style guide asks. Tests that need root call
//! `requires_root()` first.

mod harness;
mod images_fixture;
mod monitor_fixtures;
mod plugin_fixtures;

mod cli;
mod config;
mod containerd_client;
mod content;
mod ctr;
mod diff;
mod events;
mod gc;
mod images_ctr;
mod lifecycle;
mod monitors;
mod native_monitors;
mod native_plugins;
mod oci;
mod persistence;
mod pull;
mod runtime_conformance;
mod snapshots_images;
mod tasks;
mod tasks_cli;
mod wasm_monitors;
mod wasm_plugins;
mod wasm_runtime;
