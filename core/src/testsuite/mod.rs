//! Conformance suites, one per backend kind, that every backend's tests run (built-in, native library and
//! wasm alike). Compiled with the `testsuite` feature, which only tests enable.

pub mod monitor;
pub mod runtime;
pub mod snapshot;
