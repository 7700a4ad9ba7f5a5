//! A debug log line per RPC with its method, status and duration (target `berth_core::rpc`), so
//! `RUST_LOG=berth_core::rpc=debug` shows where a client's time goes. Costs one level check per
//! call when debug logging is off.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

/// The layer berthd's server is built with.
#[derive(Clone, Copy, Default)]
pub struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;
    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

/// See [`RpcLogLayer`].
#[derive(Clone)]
pub struct RpcLog<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for RpcLog<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !tracing::enabled!(target: "berth_core::rpc", tracing::Level::DEBUG) {
            return Box::pin(self.inner.call(request));
        }
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let status = response
                .as_ref()
                .ok()
                .and_then(|r| r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned));
            tracing::debug!(
                target: "berth_core::rpc",
                %method,
                status = status.as_deref().unwrap_or("0"),
                micros = started.elapsed().as_micros() as u64,
                "rpc"
            );
            response
        })
    }
}
