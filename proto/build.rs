//! Compiles berth's .proto files with protox (pure Rust), so a build needs only cargo: no protoc.

use std::path::{Path, PathBuf};

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            proto_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "proto") {
            out.push(path);
        }
    }
}

fn main() {
    // Read at run time, not with env!(): worktrees sharing a target directory can share one build
    // script binary, and a path compiled into it would be the other worktree's.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for top in ["containerd", "berth", "google"] {
        let dir = root.join(top);
        if dir.exists() {
            proto_files(&dir, &mut files);
        }
    }
    println!("cargo:rerun-if-changed=containerd");
    println!("cargo:rerun-if-changed=berth");
    println!("cargo:rerun-if-changed=google");

    let descriptors = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("{e:?}"));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .include_file("berth_api.rs")
        .compile_fds(descriptors)
        .expect("generating Rust code from berth's .proto files");
}
