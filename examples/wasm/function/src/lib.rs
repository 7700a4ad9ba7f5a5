//! A function runtime as a wasm component: `runtime.function`. Each task is one command, picked by the first
//! of its args (`ctr run --runtime io.containerd.function.v1 --rootfs DIR ID COMMAND ARGS...`), that reads the
//! task's stdin and writes its stdout and stderr; its answer is the task's exit status:
//!
//! | command | does | exit |
//! | --- | --- | --- |
//! | `echo WORDS...` | prints the words | 0 |
//! | `wc` | counts stdin: `LINES WORDS BYTES` | 0 |
//! | `sha256` | the sha256 of stdin, in hex | 0 |
//! | `cat PATH...` | prints files (relative paths are inside `dir` of the config; `/` is the task's root filesystem), or stdin without a path | 0, 1 when one cannot be read |
//! | `env` | prints the environment, sorted, and the working directory as `PWD=` | 0 |
//! | `exit CODE` | nothing | CODE |
//! | `spin` | loops until killed | - |
//! | `sleep SECONDS` | sleeps | 0 |
//! | `abort` | panics (the task traps: 134) | - |
//! | `grow` | allocates until its memory limit ends it (137) | - |
//! | anything else | says so on stderr | 127 |
//!
//! ```toml
//! [plugins."runtime.function"]
//! source = "wasm"
//! path = "/usr/lib/berth/berth_example_wasm_function.wasm"
//! preopens = [{ host = "/srv/files", guest = "/files", read_only = true }]
//! [plugins."runtime.function".config]
//! dir = "/files"              # where `cat` resolves relative paths (default /files)
//! [plugins."service.tasks".runtime_names]
//! "io.containerd.function.v1" = "function"
//! ```

use std::io::{Read, Write};

use berth_plugin_sdk::Level;
use berth_plugin_sdk::wasm::runtime::{Function, FunctionInit, Invocation};
use sha2::Digest;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Where `cat` resolves relative paths.
    dir: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { dir: "/files".into() }
    }
}

/// The runtime: its config.
pub struct Commands {
    config: Config,
}

impl Function for Commands {
    const NAME: &'static str = "function";

    fn new(init: FunctionInit) -> berth_plugin_sdk::Result<Self> {
        let config: Config = init.config()?;
        if !config.dir.starts_with('/') {
            let mut e = berth_plugin_sdk::Error::invalid_argument(format!("{:?} must be an absolute path", config.dir));
            e.config_path = vec!["dir".into()];
            return Err(e);
        }
        Ok(Self { config })
    }

    fn invoke(&self, invocation: &Invocation) -> u8 {
        let args: Vec<&str> = invocation.args.iter().map(String::as_str).collect();
        match self.run(invocation, &args) {
            Ok(code) => code,
            Err(message) => {
                let line = format!("{}: {message}", args.first().copied().unwrap_or("function"));
                eprintln!("{line}");
                // Also into berthd's log, tagged with the plugin (the host's log import).
                berth_plugin_sdk::wasm::runtime::log(Level::Warn, &format!("task {:?}: {line}", invocation.id));
                1
            }
        }
    }
}

impl Commands {
    fn run(&self, invocation: &Invocation, args: &[&str]) -> Result<u8, String> {
        let mut out = std::io::stdout().lock();
        let write = |out: &mut std::io::StdoutLock, text: &[u8]| out.write_all(text).map_err(|e| e.to_string());
        match args {
            ["echo", words @ ..] => write(&mut out, format!("{}\n", words.join(" ")).as_bytes())?,
            ["wc"] => {
                let input = stdin()?;
                let lines = input.iter().filter(|b| **b == b'\n').count();
                let words = input.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count();
                write(&mut out, format!("{lines} {words} {}\n", input.len()).as_bytes())?;
            }
            ["sha256"] => {
                let digest = sha2::Sha256::digest(stdin()?);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                write(&mut out, format!("{hex}\n").as_bytes())?;
            }
            ["cat"] => write(&mut out, &stdin()?)?,
            ["cat", paths @ ..] => {
                let mut failed = false;
                for path in paths {
                    let full = if path.starts_with('/') {
                        path.to_string()
                    } else {
                        format!("{}/{path}", self.config.dir.trim_end_matches('/'))
                    };
                    match std::fs::read(&full) {
                        Ok(bytes) => write(&mut out, &bytes)?,
                        Err(e) => {
                            eprintln!("cat: {full}: {e}");
                            failed = true;
                        }
                    }
                }
                return Ok(u8::from(failed));
            }
            ["env"] => {
                let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}\n")).collect();
                vars.sort();
                vars.push(format!("PWD={}\n", invocation.cwd));
                write(&mut out, vars.concat().as_bytes())?;
            }
            ["exit", code] => return code.parse().map_err(|_| format!("{code:?} is not an exit status (0-255)")),
            ["spin"] => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ["sleep", seconds] => {
                let seconds: u64 = seconds.parse().map_err(|_| format!("{seconds:?} is not a number of seconds"))?;
                std::thread::sleep(std::time::Duration::from_secs(seconds));
            }
            ["abort"] => panic!("asked to abort"),
            ["grow"] => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&held);
                }
            }
            [command, ..] => {
                eprintln!("{command}: unknown command (echo, wc, sha256, cat, env, exit, spin, sleep, abort, grow)");
                return Ok(127);
            }
            [] => return Err("no command".into()),
        }
        out.flush().map_err(|e| e.to_string())?;
        Ok(0)
    }
}

fn stdin() -> Result<Vec<u8>, String> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| format!("reading stdin: {e}"))?;
    Ok(input)
}

berth_plugin_sdk::export_function!(Commands);
