//! Records the target triple and the compiler this SDK is built for and with: the plugin header carries them,
//! and the host, which links its own copy of this crate, compares them with its own.

fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BERTH_SDK_TARGET={target}");
    println!("cargo:rustc-env=BERTH_SDK_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
