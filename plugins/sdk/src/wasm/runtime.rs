//! The runtime kind as a wasm component: a function runtime, [`Function`] behind the WIT interface
//! `berth:runtime/function@1.0.0` (`proto/wit/runtime`, world `function-runtime`).
//!
//! berthd keeps the tasks and their containerd lifecycle; the component only runs them. Every process (a
//! task's init, or one exec'd into it) is one fresh instance: [`Function::new`] with the plugin's config, then
//! [`Function::invoke`] once, whose answer is the process's exit status. Its stdin, stdout and stderr (the
//! `std::io` ones) are the process's streams, the FIFOs `ctr run` reads and writes; `std::env::args` and
//! `std::env::vars` are its OCI spec's `process.args` and `process.env`.
//!
//! ```ignore
//! use std::io::{Read, Write};
//! use berth_plugin_sdk::wasm::runtime::{Function, FunctionInit, Invocation};
//!
//! struct Upper;
//!
//! impl Function for Upper {
//!     const NAME: &'static str = "upper";                // [plugins."runtime.upper"]
//!     fn new(_init: FunctionInit) -> berth_plugin_sdk::Result<Self> {
//!         Ok(Upper)
//!     }
//!     fn invoke(&self, _invocation: &Invocation) -> u8 {
//!         let mut text = String::new();
//!         if std::io::stdin().read_to_string(&mut text).is_err() {
//!             return 1;
//!         }
//!         print!("{}", text.to_uppercase());
//!         0
//!     }
//! }
//!
//! berth_plugin_sdk::export_function!(Upper);
//! ```
//!
//! This compiles only for `wasm32-wasip2`; `examples/wasm/function` is a complete one, built by berth's tests.

use crate::host::Level;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../proto/wit/runtime",
        world: "berth:runtime/function-runtime",
        pub_export_macro: true,
        export_macro_name: "__export_function_world",
        default_bindings_module: "berth_plugin_sdk::wasm::runtime::bindings",
    });
}

use bindings::berth::runtime::host;
use bindings::berth::runtime::types as wit;
use bindings::exports::berth::runtime::function::Guest;

/// A function runtime: what runs each process of its tasks.
pub trait Function: Sized + 'static {
    /// The plugin's name: its table is `[plugins."runtime.NAME"]`, and containers pick it through the Tasks
    /// service's `runtime_names`.
    const NAME: &'static str;
    /// Makes the function from the plugin's config; called once per process, in its fresh instance.
    fn new(init: FunctionInit) -> crate::Result<Self>;
    /// Runs one process to its end and returns its exit status. stdin, stdout and stderr are the process's.
    fn invoke(&self, invocation: &Invocation) -> u8;
}

/// What [`Function::new`] gets.
#[derive(Debug, Clone)]
pub struct FunctionInit {
    /// The plugin's id, `runtime.NAME`.
    pub id: String,
    /// Its `config` table, as JSON; read it with [`FunctionInit::config`].
    pub config_json: Vec<u8>,
}

impl FunctionInit {
    /// The config, parsed as [`crate::parse_config`] does (a bad key is reported with its path, which berthd
    /// locates in its config file).
    pub fn config<C: serde::de::DeserializeOwned>(&self) -> crate::Result<C> {
        crate::parse_config(&self.config_json)
    }
}

/// One process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The task's containerd namespace.
    pub namespace: String,
    /// The task (container) id.
    pub id: String,
    /// The exec id of a process exec'd into the task; None for the task's init.
    pub exec_id: Option<String>,
    /// `process.args` of the OCI spec, never empty (`args[0]` is the command).
    pub args: Vec<String>,
    /// `process.env` of the OCI spec.
    pub env: Vec<(String, String)>,
    /// `process.cwd` of the OCI spec.
    pub cwd: String,
}

/// Writes `message` into berthd's log at `level`, tagged with the plugin (the host's `log` import). What a
/// function writes to stderr goes to the process's stderr instead. [`crate::Host::log`] inside a function
/// component comes here too.
pub fn log(level: Level, message: &str) {
    host::log(super::host_level!(level, host::Level), message)
}

/// What [`crate::export_function!`] implements for the plugin's type: the function and its crate's version.
#[doc(hidden)]
pub trait Export {
    type Function: Function;
    const VERSION: &'static str;
}

/// The instance's function, made by `init`: an instance runs one process, so one cell is all there is.
static FUNCTION: super::Instance = super::Instance::new();

impl<E: Export> Guest for E {
    fn describe() -> wit::PluginInfo {
        wit::PluginInfo {
            name: E::Function::NAME.into(),
            version: E::VERSION.into(),
            sdk: crate::abi::SDK_VERSION.into(),
        }
    }

    fn init(id: String, config_json: String) -> Result<(), wit::InitError> {
        let init = FunctionInit { id, config_json: config_json.into_bytes() };
        // Host::log goes to this world's import from `new` on (a function cannot publish events).
        super::init(&FUNCTION, log, None, || E::Function::new(init))
            .map_err(|(message, config_path)| wit::InitError { message, config_path })
    }

    fn invoke(invocation: wit::Invocation) -> u8 {
        use std::io::Write;
        let Some(function) = FUNCTION.get::<E::Function>() else {
            eprintln!("the plugin was not initialised");
            return 127;
        };
        let invocation = Invocation {
            namespace: invocation.namespace,
            id: invocation.id,
            exec_id: (!invocation.exec_id.is_empty()).then_some(invocation.exec_id),
            args: invocation.args,
            env: invocation.env,
            cwd: invocation.cwd,
        };
        let status = function.invoke(&invocation);
        // A component has no exit: what std still buffers (a last line without a newline) is written now.
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        status
    }
}

/// Exports a [`Function`] from a `wasm32-wasip2` `cdylib` as a component of world
/// `berth:runtime/function-runtime` (the kind, its [`Function::NAME`], the crate's version). Use it once, at
/// the crate root.
#[macro_export]
macro_rules! export_function {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __BerthFunctionExport;
        impl $crate::wasm::runtime::Export for __BerthFunctionExport {
            type Function = $ty;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }
        $crate::wasm::runtime::bindings::__export_function_world!(__BerthFunctionExport with_types_in $crate::wasm::runtime::bindings);
    };
}
