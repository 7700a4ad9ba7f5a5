//! berth-reaper: the process berthd's `runtime.linux` plugin starts beside each task (see
//! `berth_plugin_linux::reaper`). It is kept small and single-threaded: no async runtime, so it may fork.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(berth_plugin_linux::reaper::main(&args));
}
