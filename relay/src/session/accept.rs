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
use crate::link::{DoorError, H3Door, Incoming, Link, Opened, Receiver, Sender};
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

/// Serves one incoming connection, QUIC or the TCP fallback, until it
/// ends. One deadline covers the handshake, the stream and authentication.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    incoming: Incoming,
    ticket: Ticket,
    conn_id: u64,
    drain: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + shared.limits.auth_timeout;
    let established = match incoming {
        Incoming::Quic(i, h3) => quic(i, h3, deadline).await,
        Incoming::Tcp(tcp, from, door) => match door.open(tcp, from, deadline).await {
            Ok(Opened::Session(link, send, recv)) => {
                Some((OpenConnection::new(link.transport()), link, send, recv))
            }
            // Plain HTTP: no session.
            Ok(Opened::Served) => None,
            Ok(Opened::Transfer(link, send, recv)) => {
                super::transfer::serve(shared, link, (send, recv), ticket, deadline).await;
                return;
            }
            Err(e) => {
                door_failed(e);
                None
            }
        },
    };
    let Some((open, link, send, recv)) = established else {
        return;
    };
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

/// The QUIC handshake and the device's control stream, by `deadline`.
async fn quic(
    incoming: quinn::Incoming,
    h3: Option<Arc<dyn H3Door>>,
    deadline: tokio::time::Instant,
) -> Option<(OpenConnection, Link, Sender, Receiver)> {
    let conn = handshake(deadline, "QUIC", incoming).await?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(crate::tls::H3_ALPN) {
        // A browser: HTTP/3, then WebTransport.
        let Some(door) = h3 else {
            conn.close(quinn::VarInt::from_u32(0x0101), b"no WebTransport here");
            return None;
        };
        return match door.open_h3(conn, deadline).await {
            Ok(Opened::Session(link, send, recv)) => {
                Some((OpenConnection::new(link.transport()), link, send, recv))
            }
            Ok(_) => None,
            Err(e) => {
                door_failed(e);
                None
            }
        };
    }
    let mut open = OpenConnection::new("quic");
    match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok((send, recv))) => Some((
            open,
            Link::Quic(conn),
            Sender::Quic(send),
            Receiver::Quic(recv),
        )),
        _ => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::AuthTimeout as u32),
                b"no stream opened in time",
            );
            metrics::counter!(m::AUTH, "outcome" => "auth_timeout").increment(1);
            open.reason = code_label(ErrorCode::AuthTimeout);
            None
        }
    }
}

/// Counts and logs a connection that did not get through its door.
fn door_failed(e: DoorError) {
    let reason = match e {
        DoorError::Failed(why) => {
            debug!(error = %why, "web handshake failed");
            "error"
        }
        DoorError::TimedOut => {
            debug!("web handshake timed out");
            "timeout"
        }
    };
    metrics::counter!(m::HANDSHAKE_FAILURES, "reason" => reason).increment(1);
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
