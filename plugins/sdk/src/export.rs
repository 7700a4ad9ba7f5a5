//! The glue the export macros expand to: every exported function decodes its request, calls the plugin
//! inside `catch_unwind` (a panic unwinding out of `extern "C"` aborts the process) and hands back an owned
//! buffer with this library's free function. Not for direct use.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use crate::abi::{Buffer, Bytes, HostApi, code};
use crate::error::{Error, Result};
use crate::host::{Host, Init};
use crate::proto::{InitRequest, Message, PluginError};

/// What `export_snapshot!`, `export_runtime!` and `export_monitor!` expand to for a `cdylib`: the entry
/// symbol, the header of kind `$kind` (the module of the kind's trait `$trait`) and its function table.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_native {
    ($ty:ty, $kind:ident, $trait:ident, $methods:ident) => {
        /// The berth plugin entry point.
        #[unsafe(no_mangle)]
        pub extern "C" fn berth_plugin_entry() -> *const $crate::abi::Header {
            static METHODS: [Option<$crate::abi::MethodFn>; $crate::abi::$methods::COUNT] =
                $crate::$kind::__methods::<$ty>();
            static TABLE: $crate::abi::FunctionTable = $crate::abi::FunctionTable {
                create: $crate::$kind::__create::<$ty>,
                destroy: $crate::__private::destroy::<$ty>,
                method_count: $crate::abi::$methods::COUNT as u32,
                methods: METHODS.as_ptr(),
            };
            static HEADER: $crate::abi::Header = $crate::abi::Header::new(
                stringify!($kind),
                <$ty as $crate::$kind::$trait>::NAME,
                env!("CARGO_PKG_VERSION"),
                &TABLE,
            );
            &HEADER
        }
    };
}

/// The message of a caught panic.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("plugin panicked: {text}")
}

/// Writes `error` into `out` and returns its code.
///
/// # Safety
/// `out` must be null or point to a writable [`Buffer`].
unsafe fn fail(out: *mut Buffer, error: Error) -> i32 {
    let code = if error.code == code::OK { code::INTERNAL } else { error.code };
    let message = PluginError { code, message: error.message, config_path: error.config_path };
    if !out.is_null() {
        // SAFETY: the caller's contract.
        unsafe { out.write(Buffer::from_vec(message.encode_to_vec())) };
    }
    code
}

/// Makes an instance with `make`; see [`crate::abi::CreateFn`].
///
/// # Safety
/// As [`crate::abi::CreateFn`] requires of its caller.
pub unsafe fn create<T: Send + Sync + 'static>(
    request: Bytes,
    host: *const HostApi,
    instance: *mut *mut c_void,
    error: *mut Buffer,
    make: fn(Init) -> Result<T>,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host lends the request for this call.
        let request = InitRequest::decode(unsafe { request.as_slice() })
            .map_err(|e| Error::invalid_argument(format!("decoding the init request: {e}")))?;
        let init = Init {
            id: request.id,
            config_json: request.config_json,
            root_dir: PathBuf::from(request.root_dir),
            state_dir: PathBuf::from(request.state_dir),
            // SAFETY: the host keeps its table alive as long as the instance.
            host: unsafe { Host::from_raw(host) },
        };
        make(init)
    }));
    match result {
        Ok(Ok(value)) => {
            // SAFETY: the host passes a writable pointer.
            unsafe { instance.write(Box::into_raw(Box::new(value)) as *mut c_void) };
            code::OK
        }
        // SAFETY: the host passes a writable buffer.
        Ok(Err(e)) => unsafe { fail(error, e) },
        // SAFETY: as above.
        Err(panic) => unsafe { fail(error, Error::new(code::PANICKED, panic_message(panic))) },
    }
}

/// Drops an instance made by `create`.
///
/// # Safety
/// `instance` must come from `create` with the same `T` and not be used afterwards.
pub unsafe extern "C" fn destroy<T>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let boxed = unsafe { Box::from_raw(instance as *mut T) };
    // A panicking Drop must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

/// Runs one method; see [`crate::abi::MethodFn`].
///
/// # Safety
/// `instance` must come from [`create`] with the same `T`; `request` and `response` as
/// [`crate::abi::MethodFn`] requires.
pub unsafe fn call<T, Req, Resp>(
    instance: *mut c_void,
    request: Bytes,
    response: *mut Buffer,
    method: impl FnOnce(&T, Req) -> Result<Resp>,
) -> i32
where
    Req: Message + Default,
    Resp: Message,
{
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the instance lives until destroy, which the host calls only after every call returned.
        let this = unsafe { &*(instance as *const T) };
        // SAFETY: the host lends the request for this call.
        let request = Req::decode(unsafe { request.as_slice() })
            .map_err(|e| Error::invalid_argument(format!("decoding the request: {e}")))?;
        method(this, request)
    }));
    match result {
        Ok(Ok(message)) => {
            // Into this thread's spare buffer, grown to the answer's length at most once.
            let mut bytes = crate::abi::spare_vec();
            bytes.reserve(message.encoded_len());
            // `encode` would compute the length again; a Vec grows as needed anyway.
            message.encode_raw(&mut bytes);
            // SAFETY: the host passes a writable buffer.
            unsafe { response.write(Buffer::from_vec(bytes)) };
            code::OK
        }
        // SAFETY: as above.
        Ok(Err(e)) => unsafe { fail(response, e) },
        // SAFETY: as above.
        Err(panic) => unsafe { fail(response, Error::new(code::PANICKED, panic_message(panic))) },
    }
}

/// What each kind's module exports for its trait `$trait`: `__create::<T>`, one `extern "C"` function per
/// method and `__methods::<T>`, their table by [`crate::abi`]`::$methods` index. A method is
/// `INDEX => name(Request) |this, request| body`: its function decodes `Request`, runs `body` and encodes
/// the message it returns.
macro_rules! methods {
    ($trait:ident, $methods:ident; $($index:ident => $name:ident($req:ty) |$this:ident, $r:ident| $body:expr),* $(,)?) => {
        #[doc(hidden)]
        pub unsafe extern "C" fn __create<T: $trait>(
            request: crate::abi::Bytes,
            host: *const crate::abi::HostApi,
            instance: *mut *mut std::ffi::c_void,
            error: *mut crate::abi::Buffer,
        ) -> i32 {
            // SAFETY: forwarded from the host's call.
            unsafe { crate::export::create(request, host, instance, error, T::new) }
        }

        $(
            unsafe extern "C" fn $name<T: $trait>(
                i: *mut std::ffi::c_void,
                request: crate::abi::Bytes,
                response: *mut crate::abi::Buffer,
            ) -> i32 {
                // SAFETY: forwarded from the host's call.
                unsafe { crate::export::call(i, request, response, |$this: &T, $r: $req| $body) }
            }
        )*

        #[doc = concat!("The method table of `T`, by [`crate::abi::", stringify!($methods), "`] index.")]
        #[doc(hidden)]
        pub const fn __methods<T: $trait>() -> [Option<crate::abi::MethodFn>; crate::abi::$methods::COUNT] {
            use crate::abi::$methods as m;
            let mut table: [Option<crate::abi::MethodFn>; m::COUNT] = [None; m::COUNT];
            $(table[m::$index] = Some($name::<T>);)*
            table
        }
    };
}
pub(crate) use methods;
