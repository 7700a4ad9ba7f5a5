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
//! Polling streams in the connection's task is not enough on its own: h2 gives a stream send capacity
//! only when the connection is polled, so HEADERS, DATA and trailers still reach the socket in separate
//! writes as the connection and the stream take turns. So hyper writes into `BufferedIo`, which
//! only queues, and the `Connection` future writes the queue out once, when connection and streams
//! are both idle: an answer's HEADERS, DATA and trailers, and a PING acknowledgement read with its
//! request, leave in one `write`. (gRPC-Go's clients send a PING after nearly every answer; one that
//! arrives on its own is acknowledged at once.)
//!
//! The cost is that one connection's handlers share one task: handlers do their blocking work
//! (LMDB commits, files, processes) on blocking threads, so a connection's requests still overlap;
//! separate connections run on separate tasks as before. A handler that panics ends its stream only
//! (the client sees it reset), as a panicking spawned task would.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
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
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tonic::codegen::http::{Request, Response};
use tower::Service;

/// How many rounds of connection and streams one poll runs before it lets other tasks run.
const ROUNDS_PER_POLL: usize = 32;

/// Above this many queued bytes a write goes to the socket at once (large Content reads), so the
/// queue stays small and the client gets data while more is made.
const QUEUE_LIMIT: usize = 64 * 1024;

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
    let socket = Arc::new(Socket { stream, out: Mutex::new(Outgoing::default()) });
    let conn = hyper::server::conn::http2::Builder::new(exec.clone())
        .timer(TokioTimer::new())
        .serve_connection(BufferedIo(Arc::clone(&socket)), TowerToHyperService::new(service));
    let mut connection = Connection::new(conn, exec, socket);
    tokio::select! {
        () = &mut connection => return,
        _ = stopping.changed() => {}
    }
    // GOAWAY: the streams already open finish, no new ones are taken.
    connection.conn.as_mut().graceful_shutdown();
    connection.conn_flag.wake_by_ref();
    connection.await;
}

/// One connection's socket and the bytes hyper has written that have not gone to it yet.
struct Socket {
    stream: UnixStream,
    out: Mutex<Outgoing>,
}

#[derive(Default)]
struct Outgoing {
    queue: Vec<u8>,
    /// A write that failed while `Connection` drained the queue, handed to hyper on its next write.
    failed: Option<io::Error>,
    /// hyper got `Pending` from a write because the queue was full; `Connection` wakes it once the
    /// queue has gone out (the socket keeps one waker, and `Connection` registers its own).
    hyper_waiting: bool,
}

impl Socket {
    fn outgoing(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the queue out; `Pending` (with `cx` woken when the socket takes more) if it is full.
    fn poll_drain(&self, out: &mut Outgoing, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = out.failed.take() {
            return Poll::Ready(Err(e));
        }
        while !out.queue.is_empty() {
            match self.stream.try_write(&out.queue) {
                Ok(n) => {
                    out.queue.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.stream.poll_write_ready(cx)?.is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.queue.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's side of a [`Socket`]: reads go straight to the socket, writes are queued for
/// `Connection` to write out (see the module docs).
struct BufferedIo(Arc<Socket>);

impl hyper::rt::Read for BufferedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            if stream.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            // SAFETY: read(2) only stores into the unfilled part, and only the bytes it reports
            // stored are marked filled below.
            let unfilled = unsafe { buf.as_mut() };
            let read = stream.try_io(Interest::READABLE, || {
                // SAFETY: the pointer and length describe `unfilled`, which outlives the call.
                let n = unsafe { libc::read(stream.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match read {
                Ok(n) => {
                    // SAFETY: read(2) initialised the first n bytes.
                    unsafe { buf.advance(n) };
                    return Poll::Ready(Ok(()));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Write for BufferedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.0;
        let mut out = socket.outgoing();
        if let Some(e) = out.failed.take() {
            return Poll::Ready(Err(e));
        }
        if out.queue.len() >= QUEUE_LIMIT {
            if let Poll::Ready(Err(e)) = socket.poll_drain(&mut out, cx) {
                return Poll::Ready(Err(e));
            }
            if out.queue.len() >= QUEUE_LIMIT {
                out.hyper_waiting = true;
                return Poll::Pending;
            }
        }
        let mut taken = 0;
        for buf in bufs {
            out.queue.extend_from_slice(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // `Connection` writes the queue out when it goes idle, which is right after this poll.
        match self.0.outgoing().failed.take() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.0;
        std::task::ready!(socket.poll_drain(&mut socket.outgoing(), cx))?;
        // SAFETY: shutdown(2) on the fd the stream owns; the fd stays open.
        if unsafe { libc::shutdown(socket.stream.as_raw_fd(), libc::SHUT_WR) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotConnected {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
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
    socket: Arc<Socket>,
    /// hyper has finished with the connection; what it wrote last is still being written out.
    closing: bool,
}

impl<C> Connection<C> {
    fn new(conn: C, exec: StreamExec, socket: Arc<Socket>) -> Self {
        let (conn_flag, streams_flag) = (Flag::raised(), Flag::raised());
        Connection {
            conn: Box::pin(conn),
            exec,
            streams: FuturesUnordered::new(),
            conn_waker: Waker::from(Arc::clone(&conn_flag)),
            streams_waker: Waker::from(Arc::clone(&streams_flag)),
            conn_flag,
            streams_flag,
            socket,
            closing: false,
        }
    }

    /// Writes out what hyper queued. A failed write is kept for hyper, which is woken to see it.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut out = self.socket.outgoing();
        match self.socket.poll_drain(&mut out, cx) {
            Poll::Ready(Err(e)) => {
                out.failed = Some(e);
                out.hyper_waiting = false;
                drop(out);
                self.conn_flag.wake_by_ref();
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => {
                if std::mem::take(&mut out.hyper_waiting) {
                    drop(out);
                    self.conn_flag.wake_by_ref();
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
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
        if this.closing {
            return this.poll_drain(cx);
        }
        this.conn_flag.task.register(cx.waker());
        this.streams_flag.task.register(cx.waker());
        // Woken because the socket takes more: write out what is queued, and let hyper go on.
        let _ = this.poll_drain(cx);
        for _ in 0..ROUNDS_PER_POLL {
            let mut busy = false;
            if this.conn_flag.take() {
                busy = true;
                if let Poll::Ready(result) = this.conn.as_mut().poll(&mut Context::from_waker(&this.conn_waker)) {
                    if let Err(e) = result {
                        tracing::debug!("serving a connection: {e}");
                    }
                    // hyper is done with the connection: its streams ended or were reset with it.
                    // A write error is moot now; what is left only has to reach the socket.
                    this.closing = true;
                    return this.poll_drain(cx);
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
                // Idle: everything this poll made leaves together.
                let _ = this.poll_drain(cx);
                return Poll::Pending;
            }
        }
        // Still busy: send what is ready, and come back after the other tasks had their turn.
        let _ = this.poll_drain(cx);
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

    /// Bytes of the `/big` answer: far more than the socket buffer and [`super::QUEUE_LIMIT`].
    const BIG: usize = 8 << 20;

    fn big_answer() -> bytes::Bytes {
        (0..BIG).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
    }

    /// `/panic` panics in the handler, `/slow` answers after 300 ms, `/big` answers [`BIG`] bytes,
    /// anything else answers nothing at once.
    async fn handler(request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
        match request.uri().path() {
            "/panic" => panic!("handler panic (expected by the test)"),
            "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            "/big" => return Ok(Response::new(Body::new(http_body_util::Full::new(big_answer())))),
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
    async fn large_answers_to_a_slow_reader_arrive_whole() {
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().unwrap();
        let (socket, stop_tx, server) = start(dir.path());
        let sender = client(&socket).await;
        let answers: Vec<_> = (0..3).map(|_| tokio::spawn(sender.clone().send_request(get("/big")))).collect();
        // The client reads nothing for a while: the socket fills and the server's writes wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expected = big_answer();
        for answer in answers {
            let answer = answer.await.unwrap().expect("a big answer");
            let body = tokio::time::timeout(Duration::from_secs(20), answer.into_body().collect())
                .await
                .expect("the whole answer arrives")
                .unwrap()
                .to_bytes();
            assert_eq!(body.len(), BIG);
            assert!(body == expected, "the answer's bytes arrive intact and in order");
        }
        let mut sender = sender;
        let answer = sender.send_request(get("/ok")).await.expect("the connection still serves");
        assert_eq!(answer.status(), StatusCode::OK);
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
