//! Serving a router on a listener, with the connection limit `axum::serve` lacks: a client
//! must send a whole request head within `server.header_read_timeout`, on a new connection and
//! between requests on a kept-alive one, or the connection is closed (slow-loris; an idle
//! keep-alive connection is closed after the same time). Both listeners speak HTTP/1.1 only,
//! so that no connection is ever waiting outside that timer (HTTP/2 prior knowledge would be
//! read before any timer runs, and an idle HTTP/2 connection has none).
//!
//! When the [`CancellationToken`] fires, [`serve`] stops accepting, lets every request in
//! flight finish (each is bounded by `server.request_timeout` on the webhook listener), closes
//! idle connections and returns.

use std::io;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `cancel` fires and the connections have finished.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    cancel: CancellationToken,
) {
    // Each connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (all_closed, open) = watch::channel(());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            header_read_timeout,
            cancel.clone(),
            open.clone(),
        ));
    }
    drop(open);
    drop(listener);
    all_closed.closed().await;
}

/// Serves one connection; on shutdown, finishes the request in flight and closes.
async fn connection(
    stream: TcpStream,
    router: Router,
    header_read_timeout: Duration,
    cancel: CancellationToken,
    _open: watch::Receiver<()>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        router.clone().oneshot(request.map(Body::new))
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // A header-read timeout, a client that went away, a malformed request.
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                break;
            }
            () = cancel.cancelled(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// Errors of one accepted connection are the client's; others (no file descriptors left) are
/// logged, and accepting pauses for a second so that connections can close meanwhile.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
