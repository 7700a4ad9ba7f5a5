//! Running berthd: directories, plugins, the gRPC server on its unix socket, and a clean stop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tonic::service::RoutesBuilder;

use crate::config::Config;
use crate::registry::{PluginState, Registry, RegistryError};
use crate::services::GrpcService;

/// Why berthd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Plugin start-up failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What berthd was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The setup is unsafe or conflicting (another daemon, a world-writable socket directory).
    #[error("{0}")]
    Refused(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// Creates `dir` with `mode` if it is missing (parents too).
fn ensure_dir(dir: &Path, mode: u32) -> Result<(), DaemonError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting permissions of {}", dir.display())))?;
    }
    Ok(())
}

/// Prepares the socket path: its directory must exist and not be writable by others (someone
/// could swap the socket), and a socket left by a dead berthd is removed, a live one refused.
fn prepare_socket(path: &Path) -> Result<(), DaemonError> {
    let dir = path
        .parent()
        .ok_or_else(|| DaemonError::Refused(format!("socket path {} has no directory", path.display())))?;
    ensure_dir(dir, 0o711)?;
    let meta = std::fs::metadata(dir).map_err(io(format!("checking {}", dir.display())))?;
    if meta.mode() & 0o002 != 0 {
        return Err(DaemonError::Refused(format!(
            "socket directory {} is writable by others (mode {:o}): choose a private directory for grpc.address",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Refused(format!("another daemon is already serving on {}", path.display())));
            }
            std::fs::remove_file(path).map_err(io(format!("removing stale socket {}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("checking {}", path.display()))(e)),
    }
    Ok(())
}

/// Binds the socket with mode 0660 from the start, so there is no moment where others may connect.
fn bind_socket(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<UnixListener, DaemonError> {
    // SAFETY: umask only changes this process's file creation mask; it is restored right after.
    let old = unsafe { libc::umask(0o117) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener.map_err(io(format!("listening on {}", path.display())))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(io(format!("changing owner of {}", path.display())))?;
    }
    Ok(listener)
}

/// Installs the SIGTERM and SIGINT handlers now, and waits for either in the future it returns.
fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = int.recv() => tracing::info!("SIGINT received, stopping"),
        }
    })
}

/// Runs berthd until SIGTERM or SIGINT: starts the plugins, serves gRPC on the configured unix
/// socket, then lets in-flight requests finish, removes the socket and shuts plugins down.
pub async fn run(config: Config, registry: Registry) -> Result<(), DaemonError> {
    // Installed before the socket exists, not when the server first polls the stop future: a
    // signal sent as soon as a client could connect would otherwise kill berthd (the default
    // action) instead of stopping it, leaving the socket and the plugins' state behind.
    let stop = stop_signal()?;
    run_until(config, registry, stop).await
}

/// [`run`] with the stop condition given by the caller (tests, embedding).
pub async fn run_until(
    config: Config,
    registry: Registry,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    ensure_dir(&config.root, 0o700)?;
    ensure_dir(&config.state, 0o711)?;
    let socket: PathBuf = config.grpc.address.clone();
    prepare_socket(&socket)?;

    let config = Arc::new(config);
    let started = registry.start(Arc::clone(&config)).await?;
    {
        let table = started.table.read().expect("plugin table lock");
        let count = |f: fn(&PluginState) -> bool| table.plugins.iter().filter(|p| f(&p.state)).count();
        tracing::info!(
            loaded = count(|s| matches!(s, PluginState::Loaded)),
            skipped = count(|s| matches!(s, PluginState::Skipped(_))),
            failed = count(|s| matches!(s, PluginState::Failed(_))),
            "plugins started"
        );
    }

    let mut routes = RoutesBuilder::default();
    for (id, service) in started.all::<GrpcService>() {
        tracing::debug!(plugin = %id, service = service.name, "serving");
        service.add_to(&mut routes);
    }
    let listener = match bind_socket(&socket, config.grpc.uid, config.grpc.gid) {
        Ok(l) => l,
        Err(e) => {
            started.shutdown();
            return Err(e);
        }
    };
    tracing::info!(address = %socket.display(), "berthd serving");

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        stop.await;
        let _ = stopping_tx.send(());
    };
    let service = tower::Layer::layer(&crate::services::rpclog::RpcLogLayer, routes.routes());
    let server = crate::server::serve(listener, service, graceful);
    let timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let result = tokio::select! {
        () = server => Ok(()),
        _ = async { if stopping_rx.await.is_ok() { tokio::time::sleep(timeout).await } else { std::future::pending().await } } => {
            tracing::warn!(seconds = timeout.as_secs(), "requests still running after the shutdown timeout; stopping anyway");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&socket);
    started.shutdown();
    tracing::info!("berthd stopped");
    result
}
