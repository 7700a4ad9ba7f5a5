//! berthd's side of `reaper.sock`: one connection per request, async, with a deadline on everything but Wait
//! and the event stream.

use std::path::PathBuf;
use std::time::Duration;

use berth_core::Error;
use berth_core::runtime::RuntimeError;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::reaper::protocol::{ErrorKind, Event, MAX_FRAME, ReaperError, Reply, Request};

/// How long an ordinary request may take (Delete waits for init to die and for hooks: longer).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct ReaperClient {
    pub socket: PathBuf,
    /// `task "ID"`, for messages.
    pub what: String,
}

pub fn map_error(what: &str, e: ReaperError) -> RuntimeError {
    match e.kind {
        ErrorKind::NotFound => RuntimeError::DoesNotExist(e.message),
        ErrorKind::AlreadyExists => RuntimeError::AlreadyExists(e.message),
        ErrorKind::Exited => RuntimeError::ProcessAlreadyExited(e.message),
        ErrorKind::FailedPrecondition => {
            RuntimeError::Other(Error::FailedPrecondition(format!("{what}: {}", e.message)))
        }
        ErrorKind::InvalidArgument => RuntimeError::Other(Error::InvalidArgument(format!("{what}: {}", e.message))),
        ErrorKind::Internal => RuntimeError::Other(Error::Internal(format!("{what}: {}", e.message))),
    }
}

async fn write_frame(conn: &mut UnixStream, value: &impl serde::Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    conn.write_all(&buf).await
}

/// Reads one frame; None at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(conn: &mut UnixStream) -> std::io::Result<Option<T>> {
    let len = match conn.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl ReaperClient {
    fn unavailable(&self, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Other(Error::Unavailable(format!("{}: its reaper is not answering: {e}", self.what)))
    }

    pub async fn connect(&self) -> Result<UnixStream, RuntimeError> {
        UnixStream::connect(&self.socket).await.map_err(|e| self.unavailable(e))
    }

    async fn exchange(&self, request: &Request) -> Result<serde_json::Value, RuntimeError> {
        let mut conn = self.connect().await?;
        write_frame(&mut conn, request).await.map_err(|e| self.unavailable(e))?;
        match read_frame::<Reply>(&mut conn).await {
            Ok(Some(Reply::Ok(v))) => Ok(v),
            Ok(Some(Reply::Error(e))) => Err(map_error(&self.what, e)),
            Ok(None) => Err(self.unavailable("it closed the connection")),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// One request with the usual deadline, its answer decoded as `T`.
    pub async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, RuntimeError> {
        let limit = if matches!(request, Request::Delete { .. }) { DELETE_TIMEOUT } else { CALL_TIMEOUT };
        let value = tokio::time::timeout(limit, self.exchange(&request))
            .await
            .map_err(|_| self.unavailable(format!("no answer within {} s", limit.as_secs())))??;
        serde_json::from_value(value)
            .map_err(|e| RuntimeError::Other(Error::Internal(format!("{}: bad reply: {e}", self.what))))
    }

    /// A request that may take as long as the process runs (Wait).
    pub async fn call_unbounded<T: DeserializeOwned>(&self, request: Request) -> Result<T, RuntimeError> {
        let value = self.exchange(&request).await?;
        serde_json::from_value(value)
            .map_err(|e| RuntimeError::Other(Error::Internal(format!("{}: bad reply: {e}", self.what))))
    }

    /// Opens the event stream; the exits that already happened come first.
    pub async fn subscribe(&self) -> Result<UnixStream, RuntimeError> {
        let mut conn = tokio::time::timeout(CALL_TIMEOUT, self.connect())
            .await
            .map_err(|_| self.unavailable("connect timed out"))??;
        write_frame(&mut conn, &Request::Subscribe).await.map_err(|e| self.unavailable(e))?;
        match read_frame::<Reply>(&mut conn).await {
            Ok(Some(Reply::Ok(_))) => Ok(conn),
            Ok(Some(Reply::Error(e))) => Err(map_error(&self.what, e)),
            Ok(None) => Err(self.unavailable("it closed the connection")),
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

/// The next event of a stream from [`ReaperClient::subscribe`]; None when the reaper is gone.
pub async fn next_event(conn: &mut UnixStream) -> Option<Event> {
    read_frame::<Event>(conn).await.ok().flatten()
}
