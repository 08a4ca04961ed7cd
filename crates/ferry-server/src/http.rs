//! Serving connections: hyper's HTTP/1 server with the timeouts a server facing untrusted clients needs, which
//! `axum::serve` leaves off (it sets no timer, so hyper's header timeout never runs).
//!
//! A connection must send a request's whole head within `HEADER_READ_TIMEOUT` of the server starting to wait for
//! one, and hyper starts waiting at once on a new connection and again after each answer on a kept-alive one. So the
//! same deadline closes half-sent requests (slowloris) and idle connections alike; clients of this workspace
//! (`ferry-client`) drop pooled connections sooner, so they never reuse one the server is closing. Handlers are not
//! timed here: long polls and followed logs bound themselves.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::Service;

use crate::tls::Listener;

/// How long a client may take to send a request's head, counted from the connection's start or the previous answer.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most header lines a request may have (hyper's default is 100).
const HEADERS_MAX: usize = 64;

/// Accepts and serves connections until `stopping` turns true, then waits up to `grace` for the requests in flight.
pub(crate) async fn serve(mut listener: Listener, app: Router, mut stopping: watch::Receiver<bool>, grace: Duration) {
    let mut make_service: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        app.into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_headers(HEADERS_MAX);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, addr) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        // Adds `ConnectInfo<SocketAddr>` to each request; never fails.
        let Ok(service) = make_service.call(addr).await;
        let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(client = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    // No new connections; the ones open finish their requests (long polls and followed logs get the grace).
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::info!("closing requests still open after the shutdown grace");
    }
}
