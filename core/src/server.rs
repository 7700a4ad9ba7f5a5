//! berthd's gRPC server: HTTP/2 on its Unix socket, with each connection's streams polled by the
//! connection's own task.
//!
//! Why not tonic's `Server`: hyper's HTTP/2 server there spawns a task per stream. A unary answer's
//! HEADERS, DATA and trailers are then queued by the stream's task while the connection's task, woken
//! by the first of them (often on the other worker), writes what it finds: three writes per answer, and
//! three wake-ups of the client, for every one of the ~40 RPCs of a `ctr run`. Here hyper's executor
//! for streams (`StreamExec`) hands each stream to its connection's `Connection` future, which
//! polls the connection and its streams in turn until neither has more to do, so a ready answer is
//! queued whole before the connection flushes it in one write.
//!
//! The cost is that one connection's handlers share one task: handlers do their blocking work
//! (LMDB commits, files, processes) on blocking threads, so a connection's requests still overlap;
//! separate connections run on separate tasks as before. A handler that panics ends its stream only
//! (the client sees it reset), as a panicking spawned task would.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use futures::{FutureExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use tonic::codegen::http::{Request, Response};
use tower::Service;

/// How many rounds of connection and streams one poll runs before it lets other tasks run.
const ROUNDS_PER_POLL: usize = 32;

/// Serves `service` on `listener` until `stop` completes, then stops accepting, lets every
/// connection finish its requests (HTTP/2 GOAWAY) and returns once all have closed.
pub async fn serve<S, B>(listener: UnixListener, service: S, stop: impl Future<Output = ()>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(());
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, service.clone(), stopping_rx.clone()));
                }
                Err(e) => {
                    // Out of fds, most likely: wait a little rather than spin, and keep serving.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stopping_tx.send(());
    drop(stopping_rx);
    // Each connection holds a receiver until it has closed.
    stopping_tx.closed().await;
}

async fn serve_connection<S, B>(stream: UnixStream, service: S, mut stopping: tokio::sync::watch::Receiver<()>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exec = StreamExec::default();
    let conn = hyper::server::conn::http2::Builder::new(exec.clone())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    let mut connection = Connection::new(conn, exec);
    tokio::select! {
        () = &mut connection => return,
        _ = stopping.changed() => {}
    }
    // GOAWAY: the streams already open finish, no new ones are taken.
    connection.conn.as_mut().graceful_shutdown();
    connection.conn_flag.wake_by_ref();
    connection.await;
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection's streams: queues them for that connection's [`Connection`].
#[derive(Clone, Default)]
struct StreamExec {
    queued: Arc<Mutex<Vec<StreamFuture>>>,
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for StreamExec {
    fn execute(&self, stream: F) {
        let stream = AssertUnwindSafe(stream).catch_unwind().map(|outcome| {
            if outcome.is_err() {
                tracing::error!("a request handler panicked; its stream was reset");
            }
        });
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).push(Box::pin(stream));
    }
}

/// A waker that records that its part (the connection, or the streams) has work, and wakes the task.
#[derive(Default)]
struct Flag {
    set: AtomicBool,
    task: AtomicWaker,
}

impl Flag {
    fn raised() -> Arc<Flag> {
        Arc::new(Flag { set: AtomicBool::new(true), task: AtomicWaker::new() })
    }

    fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One connection and its streams, polled by one task (see the module docs).
struct Connection<C> {
    conn: Pin<Box<C>>,
    exec: StreamExec,
    streams: FuturesUnordered<StreamFuture>,
    conn_flag: Arc<Flag>,
    streams_flag: Arc<Flag>,
    conn_waker: Waker,
    streams_waker: Waker,
}

impl<C> Connection<C> {
    fn new(conn: C, exec: StreamExec) -> Self {
        let (conn_flag, streams_flag) = (Flag::raised(), Flag::raised());
        Connection {
            conn: Box::pin(conn),
            exec,
            streams: FuturesUnordered::new(),
            conn_waker: Waker::from(Arc::clone(&conn_flag)),
            streams_waker: Waker::from(Arc::clone(&streams_flag)),
            conn_flag,
            streams_flag,
        }
    }
}

impl<C, E> Future for Connection<C>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.conn_flag.task.register(cx.waker());
        this.streams_flag.task.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            let mut busy = false;
            if this.conn_flag.take() {
                busy = true;
                if let Poll::Ready(result) = this.conn.as_mut().poll(&mut Context::from_waker(&this.conn_waker)) {
                    if let Err(e) = result {
                        tracing::debug!("serving a connection: {e}");
                    }
                    // hyper is done with the connection: its streams ended or were reset with it.
                    return Poll::Ready(());
                }
            }
            let queued = std::mem::take(&mut *this.exec.queued.lock().unwrap_or_else(|p| p.into_inner()));
            if !queued.is_empty() {
                this.streams.extend(queued);
                this.streams_flag.wake_by_ref();
            }
            if this.streams_flag.take() {
                busy = true;
                let mut streams_cx = Context::from_waker(&this.streams_waker);
                while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(&mut streams_cx) {}
            }
            if !busy {
                return Poll::Pending;
            }
        }
        // Still busy: come back after the other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tonic::body::Body;
    use tonic::codegen::http::{Request, Response, StatusCode};

    use super::serve;

    /// `/panic` panics in the handler, `/slow` answers after 300 ms, anything else at once.
    async fn handler(request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
        match request.uri().path() {
            "/panic" => panic!("handler panic (expected by the test)"),
            "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        Ok(Response::new(Body::empty()))
    }

    async fn client(socket: &std::path::Path) -> hyper::client::conn::http2::SendRequest<Body> {
        let io = TokioIo::new(tokio::net::UnixStream::connect(socket).await.unwrap());
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    /// `serve` on a socket in `dir`, with [`handler`]; stopped by sending on the returned sender.
    fn start(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let socket = dir.join("s.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, tower::service_fn(handler), async {
            let _ = stop_rx.await;
        }));
        (socket, stop_tx, server)
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder().uri(format!("http://berthd{path}")).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_resets_its_stream_and_the_connection_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, stop_tx, server) = start(dir.path());
        let mut sender = client(&socket).await;
        let answer = sender.send_request(get("/panic")).await;
        assert!(answer.is_err(), "a panicking handler must not answer: {answer:?}");
        for _ in 0..3 {
            let answer = sender.send_request(get("/ok")).await.expect("the same connection still serves");
            assert_eq!(answer.status(), StatusCode::OK);
        }
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve returns after stop").unwrap();
    }

    #[tokio::test]
    async fn stopping_lets_open_requests_finish_and_refuses_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, stop_tx, server) = start(dir.path());
        let mut sender = client(&socket).await;
        let slow = tokio::spawn(sender.send_request(get("/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(()).unwrap();
        let answer = slow.await.unwrap().expect("a request open at the stop is answered");
        assert_eq!(answer.status(), StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve returns once it closed").unwrap();
        assert!(tokio::net::UnixStream::connect(&socket).await.is_err(), "no new connections after the stop");
    }
}
