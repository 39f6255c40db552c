//! The local connection registry: which device is connected to this relay,
//! and the queue through which deliveries reach its session.

use std::sync::Arc;

use dashmap::DashMap;
use herold_proto::v1::ErrorCode;
use herold_router::Delivery;
use tokio::sync::{mpsc, watch};

use crate::metrics as m;

/// Something for a session to send to its device.
#[derive(Debug, Clone)]
pub(crate) enum Push {
    /// A live delivery.
    /// One delivery from the node inbox, shared by all its recipient
    /// sessions (its frame is the complete framed `Deliver`).
    Deliver(Arc<Delivery>),
    /// Deliveries may have been lost: resync every conversation from storage.
    Resync,
}

/// Why a session is told to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kick {
    pub code: ErrorCode,
    pub message: String,
}

/// A connected device's session, as the registry sees it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    /// Tells apart two connections of the same device (a reconnect racing
    /// the old connection's cleanup).
    pub conn_id: u64,
    pub push: mpsc::Sender<Push>,
    pub kick: watch::Sender<Option<Kick>>,
    /// To cut off a session that cannot even take an error frame.
    pub conn: crate::link::Link,
    /// Set when the registry cut the session off as a slow consumer, so
    /// the session reports why it ended.
    pub slow: Arc<std::sync::atomic::AtomicBool>,
}

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    Queued,
    NotConnected,
    /// The device's queue was full: it was disconnected and will resync.
    SlowConsumer,
}

/// device id -> session. DashMap shards the lock so fan-outs to different
/// devices do not contend.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: DashMap<String, SessionHandle>,
}

impl Registry {
    /// Registers a session; a previous session of the same device is told it
    /// was replaced.
    pub fn insert(&self, device_id: String, handle: SessionHandle) {
        let old = self.sessions.insert(device_id, handle);
        if old.is_none() {
            metrics::gauge!(m::SESSIONS).increment(1.0);
        }
        if let Some(old) = old {
            kick(
                &old,
                Kick {
                    code: ErrorCode::Replaced,
                    message: "this device connected again; this connection is replaced".into(),
                },
            );
        }
    }

    /// Removes the device's session if it is still `conn_id`.
    pub fn remove(&self, device_id: &str, conn_id: u64) -> bool {
        let removed = self
            .sessions
            .remove_if(device_id, |_, h| h.conn_id == conn_id)
            .is_some();
        if removed {
            metrics::gauge!(m::SESSIONS).decrement(1.0);
        }
        removed
    }

    /// Queues a push without waiting; a full queue disconnects the device
    /// (it resyncs from storage on reconnect) instead of blocking the fan-out.
    pub fn push(&self, device_id: &str, push: Push) -> PushOutcome {
        let Some(h) = self.sessions.get(device_id) else {
            return PushOutcome::NotConnected;
        };
        let depth = h.push.max_capacity() - h.push.capacity();
        m::hot().device_queue_depth.record(depth as f64);
        match h.push.try_send(push) {
            Ok(()) => PushOutcome::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => PushOutcome::NotConnected,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(m::SLOW_CONSUMERS).increment(1);
                h.slow.store(true, std::sync::atomic::Ordering::Release);
                h.conn.close(
                    ErrorCode::SlowConsumer as u32,
                    "slow consumer: reconnect and sync",
                );
                PushOutcome::SlowConsumer
            }
        }
    }

    /// Ids of the connected devices.
    pub fn device_ids(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
    }

    /// Ends the device's session with an error, if connected.
    pub fn kick(&self, device_id: &str, why: Kick) -> bool {
        match self.sessions.get(device_id) {
            Some(h) => {
                kick(&h, why);
                true
            }
            None => false,
        }
    }

    /// Connected devices.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }
}

fn kick(h: &SessionHandle, why: Kick) {
    let code = why.code;
    h.kick.send_replace(Some(why));
    // If the session is stuck writing to a peer that does not read, the
    // error frame cannot get through: cut the connection after a grace time.
    let conn = h.conn.clone();
    tokio::spawn(async move {
        let closed = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
        if closed.is_err() {
            conn.close(code as u32, "disconnected by the relay");
        }
    });
}
