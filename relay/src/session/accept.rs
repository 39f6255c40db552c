//! A device connection's way in: the QUIC handshake and its control
//! stream, or the TCP fallback's TLS and WebSocket upgrade, all within the
//! authentication deadline; then the session runs the same on either
//! (`driver`).

use std::sync::Arc;

use herold_proto::v1::ErrorCode;
use tokio::sync::watch;
use tracing::debug;

use super::driver::run_session;
use crate::admission::Ticket;
use crate::link::{Link, Receiver, Sender};
use crate::metrics::{self as m, code_label};
use crate::node::Shared;

/// The handshake `accepting` of a `transport` connection, by `deadline`;
/// `None` (counted and logged) when it failed or took too long.
async fn handshake<T, E: std::fmt::Display>(
    deadline: tokio::time::Instant,
    transport: &str,
    accepting: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, accepting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            debug!(error = %e, "{transport} handshake failed");
            metrics::counter!(m::HANDSHAKE_FAILURES, "reason" => "error").increment(1);
            None
        }
        Err(_) => {
            debug!("{transport} handshake timed out");
            metrics::counter!(m::HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
            None
        }
    }
}

/// Serves one incoming connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    ticket: Ticket,
    conn_id: u64,
    drain: watch::Receiver<bool>,
) {
    // One deadline covers the TLS handshake, the stream and authentication.
    let deadline = tokio::time::Instant::now() + shared.limits.auth_timeout;
    let Some(conn) = handshake(deadline, "QUIC", incoming).await else {
        return;
    };
    let open = OpenConnection::new("quic");
    let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::AuthTimeout as u32),
                b"no stream opened in time",
            );
            metrics::counter!(m::AUTH, "outcome" => "auth_timeout").increment(1);
            let mut open = open;
            open.reason = code_label(ErrorCode::AuthTimeout);
            return;
        }
    };
    let streams = (Sender::Quic(send), Receiver::Quic(recv));
    run_session(
        shared,
        Link::Quic(conn),
        streams,
        ticket,
        conn_id,
        drain,
        deadline,
        open,
    )
    .await;
}

/// Serves one connection of the TCP fallback until it ends: TLS, the
/// WebSocket upgrade, then the session as on QUIC.
pub(crate) async fn serve_ws(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    ticket: Ticket,
    conn_id: u64,
    drain: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + shared.limits.auth_timeout;
    // A message holds at most a frame and its length prefix.
    let max_message = shared.limits.max_frame_bytes as usize + 16;
    let idle = shared.limits.idle_timeout;
    let accepting = crate::link::accept_ws(tcp, &tls, max_message, idle);
    let Some((link, send, recv)) = handshake(deadline, "TCP fallback", accepting).await else {
        return;
    };
    let open = OpenConnection::new(link.transport());
    run_session(
        shared,
        link,
        (send, recv),
        ticket,
        conn_id,
        drain,
        deadline,
        open,
    )
    .await;
}

/// An open connection in the metrics: counted open when created, closed
/// with its `reason` when dropped (whichever way the session ends).
pub(super) struct OpenConnection {
    pub(super) reason: String,
}

impl OpenConnection {
    fn new(transport: &'static str) -> Self {
        metrics::counter!(m::CONNECTIONS_OPENED, "transport" => transport).increment(1);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Self {
            reason: "closed".into(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        let reason = std::mem::take(&mut self.reason);
        debug!(%reason, "connection closed");
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    }
}
