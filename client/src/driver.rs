//! The task behind a [`Client`](crate::Client): connects, authenticates,
//! syncs, hands deliveries to the app, acknowledges them, re-sends what was
//! not answered after a reconnect, and backs off between attempts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use tokio::sync::{mpsc, oneshot, watch};

use crate::raw::RawConnection;
use crate::{Accepted, ClientConfig, ClientError, Cmd, Event, MAX_DRAIN_WAIT_MS};

/// Where a submit's outcome goes.
type Reply = oneshot::Sender<Result<Accepted, ClientError>>;
/// Where a request's outcome goes.
type RequestReply = oneshot::Sender<Result<v1::response::Kind, ClientError>>;

/// What the driver shares with its [`Client`](crate::Client).
pub(crate) struct Shared {
    pub max_ciphertext: Arc<AtomicUsize>,
    pub cursors: Arc<Mutex<HashMap<String, u64>>>,
    pub events: mpsc::Sender<Event>,
    /// The authenticated connection of the moment (attachment transfers
    /// open their streams on it).
    pub conn: watch::Sender<Option<crate::raw::Carrier>>,
}

/// Starts the driver on an authenticated connection.
pub(crate) fn spawn(
    config: ClientConfig,
    first: RawConnection,
    cmds: mpsc::Receiver<Cmd>,
    shared: Shared,
) {
    let (retry_tx, retry_rx) = mpsc::unbounded_channel();
    let kept = if config.app_acks {
        config.cursors.clone()
    } else {
        HashMap::new()
    };
    let driver = Driver {
        max_ciphertext: shared.max_ciphertext,
        config,
        cursors: shared.cursors,
        events: shared.events,
        conn: shared.conn,
        pending: HashMap::new(),
        requests: HashMap::new(),
        next_request: 1,
        dirty: HashMap::new(),
        kept,
        relay_index: 0,
        reconnect_after: None,
        retry_tx,
        retry_rx,
    };
    crate::rt::spawn(driver.run(first, cmds));
}

struct Driver {
    /// The relay's ciphertext limit, refreshed at every authentication.
    max_ciphertext: Arc<AtomicUsize>,
    config: ClientConfig,
    cursors: Arc<Mutex<HashMap<String, u64>>>,
    events: mpsc::Sender<Event>,
    conn: watch::Sender<Option<crate::raw::Carrier>>,
    /// Submits sent but not yet answered, by message id: re-sent after a
    /// reconnect.
    pending: HashMap<Vec<u8>, (v1::Submit, Reply)>,
    /// Requests sent but not yet answered, by request id: re-sent after a
    /// reconnect.
    requests: HashMap<u64, (v1::request::Kind, RequestReply)>,
    next_request: u64,
    /// Acks to send, per conversation.
    dirty: HashMap<String, u64>,
    /// With app acks: what the app has kept, per conversation.
    kept: HashMap<String, u64>,
    /// Which relay to connect to next: 0 is `config.relay`, then the
    /// fallbacks in order.
    relay_index: usize,
    /// How long a draining relay asked us to wait before reconnecting (its
    /// devices spread out instead of all arriving at the next relay at once).
    reconnect_after: Option<Duration>,
    /// Message ids of submits the relay refused as too fast, each sent when
    /// its wait is over (and sent again only if still unanswered).
    retry_tx: mpsc::UnboundedSender<Vec<u8>>,
    retry_rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

enum Outcome {
    Lost(String),
    /// The relay is shutting down: hand in the last acks, then reconnect.
    Draining,
    Stop(Option<ClientError>),
}

impl Driver {
    async fn run(mut self, first: RawConnection, mut cmds: mpsc::Receiver<Cmd>) {
        let mut conn = Some(first);
        let mut delay = self.config.backoff.initial;
        loop {
            let c = match conn.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Ok(c) => {
                        delay = self.config.backoff.initial;
                        let _ = self.events.send(Event::Reconnected).await;
                        c
                    }
                    Err(e) if e.is_permanent() => {
                        self.fail_pending(&e);
                        let _ = self.events.send(Event::Stopped(e)).await;
                        return;
                    }
                    Err(_) => {
                        self.next_relay();
                        crate::rt::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(self.config.backoff.max);
                        continue;
                    }
                },
            };
            match self.serve(c, &mut cmds).await {
                Outcome::Lost(reason) => {
                    self.next_relay();
                    let _ = self.events.send(Event::Disconnected { reason }).await;
                    if let Some(wait) = self.reconnect_after.take() {
                        crate::rt::sleep(wait).await;
                    }
                }
                Outcome::Draining => {
                    self.next_relay();
                    let reason = "the relay is draining".to_owned();
                    let _ = self.events.send(Event::Disconnected { reason }).await;
                }
                Outcome::Stop(err) => {
                    let err = err.unwrap_or(ClientError::Shutdown);
                    self.fail_pending(&err);
                    let _ = self.events.send(Event::Stopped(err)).await;
                    return;
                }
            }
        }
    }

    fn fail_pending(&mut self, e: &ClientError) {
        for (_, (_, done)) in self.pending.drain() {
            let _ = done.send(Err(e.clone()));
        }
        for (_, (_, done)) in self.requests.drain() {
            let _ = done.send(Err(e.clone()));
        }
    }

    /// Moves on to the next relay address (if there are several).
    fn next_relay(&mut self) {
        self.relay_index = (self.relay_index + 1) % (1 + self.config.fallback_relays.len());
    }

    fn current_relay(&self) -> SocketAddr {
        match self.relay_index {
            0 => self.config.relay,
            i => self.config.fallback_relays[i - 1],
        }
    }

    async fn reconnect(&self) -> Result<RawConnection, ClientError> {
        let mut c = open(&self.config, self.current_relay()).await?;
        let ok = c
            .authenticate_signed(
                &self.config.device_id,
                self.config.relay_name.as_deref(),
                &crate::signer::DeviceSigner::of(&self.config),
            )
            .await?;
        self.max_ciphertext
            .store(ok.max_ciphertext_bytes as usize, Ordering::Relaxed);
        Ok(c)
    }

    fn seen(&self, conv: &str) -> u64 {
        self.cursors
            .lock()
            .map(|c| c.get(conv).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    async fn serve(&mut self, mut c: RawConnection, cmds: &mut mpsc::Receiver<Cmd>) -> Outcome {
        self.conn
            .send_replace(Some(crate::raw::Carrier::of(&c, &self.config)));
        // Resume: our cursors, then every unanswered submit again.
        let cursors: Vec<v1::Cursor> = self
            .cursors
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(conversation_id, seq)| v1::Cursor {
                conversation_id,
                seq,
            })
            .collect();
        if let Err(e) = c
            .send_kind(client_frame::Kind::Sync(v1::Sync { cursors }))
            .await
        {
            return Outcome::Lost(e.to_string());
        }
        let resend: Vec<v1::Submit> = self.pending.values().map(|(s, _)| s.clone()).collect();
        for s in resend {
            if let Err(e) = c.send_kind(client_frame::Kind::Submit(s)).await {
                return Outcome::Lost(e.to_string());
            }
        }
        // An upload is not idempotent (the relay would keep the packages
        // twice): it fails, and the caller asks for the status and uploads
        // what is missing. Every other request is sent again.
        let uploads: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, (k, _))| matches!(k, v1::request::Kind::UploadKeyPackages(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in uploads {
            if let Some((_, done)) = self.requests.remove(&id) {
                let _ = done.send(Err(ClientError::Closed(
                    "the connection was lost during the upload; ask for the status again".into(),
                )));
            }
        }
        let again: Vec<(u64, v1::request::Kind)> = self
            .requests
            .iter()
            .map(|(id, (k, _))| (*id, k.clone()))
            .collect();
        for (request_id, kind) in again {
            let frame = client_frame::Kind::Request(v1::Request {
                request_id,
                kind: Some(kind),
            });
            if let Err(e) = c.send_kind(frame).await {
                return Outcome::Lost(e.to_string());
            }
        }
        // Acks go out 20 ms after the first unacked delivery, and at most
        // once per ACK_INTERVAL while deliveries keep coming; an idle client
        // arms no timer at all (thousands of idle devices in one load
        // generator would otherwise wake 20 times a second each).
        let mut ack_at: Option<crate::rt::Instant> = None;
        let mut acked_at: Option<crate::rt::Instant> = None;
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Submit { submit, done }) => {
                        let frame = client_frame::Kind::Submit(submit.clone());
                        self.pending.insert(submit.message_id.clone(), (submit, done));
                        if let Err(e) = c.send_kind(frame).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Some(Cmd::Request { kind, done }) => {
                        let request_id = self.next_request;
                        self.next_request += 1;
                        let frame = client_frame::Kind::Request(v1::Request {
                            request_id,
                            kind: Some(kind.clone()),
                        });
                        self.requests.insert(request_id, (kind, done));
                        if let Err(e) = c.send_kind(frame).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Some(Cmd::Ack { conversation_id, seq }) => {
                        let k = self.kept.entry(conversation_id.clone()).or_insert(0);
                        *k = (*k).max(seq);
                        let d = self.dirty.entry(conversation_id).or_insert(0);
                        *d = (*d).max(seq);
                    }
                    Some(Cmd::Close(done)) => {
                        let _ = self.flush_acks(&mut c).await;
                        c.close().await;
                        let _ = done.send(());
                        return Outcome::Stop(None);
                    }
                    None => {
                        let _ = self.flush_acks(&mut c).await;
                        c.close().await;
                        return Outcome::Stop(None);
                    }
                },
                frame = c.recv() => match frame {
                    Ok(Some(f)) => match self.on_frame(f).await {
                        Some(Outcome::Draining) => {
                            // Hand in the last acks and wait until the relay
                            // read them: dropping the connection would lose them.
                            let _ = self.flush_acks(&mut c).await;
                            c.close().await;
                            return Outcome::Lost("the relay is draining".into());
                        }
                        Some(out) => return out,
                        None => {}
                    },
                    Ok(None) => return Outcome::Lost("the relay closed the stream".into()),
                    Err(e) => return Outcome::Lost(e.to_string()),
                },
                Some(id) = self.retry_rx.recv() => {
                    if let Some((submit, _)) = self.pending.get(&id) {
                        let frame = client_frame::Kind::Submit(submit.clone());
                        if let Err(e) = c.send_kind(frame).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                }
                _ = sleep_until_some(ack_at), if ack_at.is_some() => {
                    ack_at = None;
                    acked_at = Some(crate::rt::Instant::now());
                    if let Err(e) = self.flush_acks(&mut c).await {
                        return Outcome::Lost(e.to_string());
                    }
                }
            }
            if ack_at.is_none() && !self.dirty.is_empty() {
                ack_at = Some(next_ack_at(crate::rt::Instant::now(), acked_at));
            }
        }
    }

    async fn flush_acks(&mut self, c: &mut RawConnection) -> Result<(), ClientError> {
        for (conversation_id, seq) in self.dirty.drain().collect::<Vec<_>>() {
            c.send_kind(client_frame::Kind::Ack(v1::Ack {
                conversation_id,
                seq,
            }))
            .await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, f: v1::ServerFrame) -> Option<Outcome> {
        match f.kind? {
            server_frame::Kind::Deliver(d) => {
                let env = d.envelope?;
                let conv = env.conversation_id.clone();
                let duplicate = env.seq <= self.seen(&conv);
                // Ack even duplicates: the relay's cursor may lag ours. With
                // app acks, only what the app has kept.
                let ack = if !self.config.app_acks {
                    Some(env.seq)
                } else if duplicate {
                    self.kept.get(&conv).map(|k| env.seq.min(*k))
                } else {
                    None
                };
                if let Some(seq) = ack {
                    let e = self.dirty.entry(conv.clone()).or_insert(0);
                    *e = (*e).max(seq);
                }
                if duplicate {
                    return None;
                }
                if let Ok(mut c) = self.cursors.lock() {
                    c.insert(conv, env.seq);
                }
                if self.events.send(Event::Message(env)).await.is_err() {
                    return Some(Outcome::Stop(None));
                }
                None
            }
            server_frame::Kind::Accepted(a) => {
                if let Some((_, done)) = self.pending.remove(&a.message_id) {
                    let _ = done.send(Ok(a));
                }
                None
            }
            server_frame::Kind::SyncDone(s) => {
                let _ = self
                    .events
                    .send(Event::Synced {
                        delivered: s.delivered,
                    })
                    .await;
                None
            }
            server_frame::Kind::Error(e)
                if (e.code == ErrorCode::RateLimited as i32
                    || (e.code == ErrorCode::Unavailable as i32 && e.retry_after_ms > 0))
                    && !e.fatal
                    && self.pending.contains_key(&e.message_id) =>
            {
                // Too fast, or the relay shed it (overloaded): the submit
                // stays pending and goes out again, with the same message
                // id, once the relay's wait is over.
                let wait = jitter_up(Duration::from_millis(u64::from(e.retry_after_ms.max(1))));
                let (tx, id) = (self.retry_tx.clone(), e.message_id);
                crate::rt::spawn(async move {
                    crate::rt::sleep(wait).await;
                    let _ = tx.send(id);
                });
                None
            }
            server_frame::Kind::Error(e) => {
                let err = ClientError::relay(&e);
                if !e.message_id.is_empty()
                    && let Some((_, done)) = self.pending.remove(&e.message_id)
                {
                    let _ = done.send(Err(err.clone()));
                }
                if e.fatal {
                    if err.is_permanent() {
                        return Some(Outcome::Stop(Some(err)));
                    }
                    return Some(Outcome::Lost(err.to_string()));
                }
                None
            }
            server_frame::Kind::Response(r) => {
                if let Some((_, done)) = self.requests.remove(&r.request_id) {
                    let _ = done.send(match r.kind {
                        Some(v1::response::Kind::Error(e)) => Err(ClientError::relay(&e)),
                        Some(k) => Ok(k),
                        None => Err(ClientError::Protocol("an empty Response".into())),
                    });
                }
                None
            }
            server_frame::Kind::Draining(d) => {
                // Bounded: a relay cannot park its devices for long.
                let ms = u64::from(d.reconnect_after_ms).min(MAX_DRAIN_WAIT_MS);
                self.reconnect_after = (ms > 0).then(|| Duration::from_millis(ms));
                Some(Outcome::Draining)
            }
            server_frame::Kind::Pong(_)
            | server_frame::Kind::AuthChallenge(_)
            | server_frame::Kind::AuthOk(_) => None,
        }
    }
}

pub(crate) async fn open(
    config: &ClientConfig,
    relay: SocketAddr,
) -> Result<RawConnection, ClientError> {
    #[cfg(target_arch = "wasm32")]
    let mut c = {
        let _ = relay;
        RawConnection::connect_browser(
            &config.url,
            config.webtransport.as_ref(),
            config.idle_timeout,
        )
        .await?
    };
    #[cfg(not(target_arch = "wasm32"))]
    let mut c = {
        let own;
        let endpoint = match &config.endpoint {
            Some(e) => e,
            None => {
                own = crate::raw::client_endpoint(relay)?;
                &own
            }
        };
        if config.tcp_fallback {
            RawConnection::connect_any(endpoint, relay, config.fingerprint, config.idle_timeout)
                .await?
        } else {
            RawConnection::connect_via_idle(
                endpoint,
                relay,
                config.fingerprint,
                config.idle_timeout,
            )
            .await?
        }
    };
    if let Some(tap) = &config.wire_tap {
        c.set_tap(tap.clone());
    }
    Ok(c)
}

/// How long acks wait after the first unacknowledged delivery. Shorter
/// than QUIC's delayed acknowledgement (25 ms): the transport's ACK then
/// rides in the packet that carries these acks, so a delivery costs the
/// device one packet back, not two, and the relay reads half as many
/// datagrams after a fan-out.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Least time between two rounds of acks while deliveries keep coming. Every
/// packet of acks costs the relay a QUIC ACK back; a device receiving ten
/// messages a second acks them once a second, not ten times. On reconnect
/// at most this much is delivered again (and recognised as duplicate).
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// When the acks of a delivery arriving `now` go out, the last round of
/// acks having gone out at `acked_at`.
fn next_ack_at(
    now: crate::rt::Instant,
    acked_at: Option<crate::rt::Instant>,
) -> crate::rt::Instant {
    let soon = now + ACK_DELAY;
    match acked_at {
        Some(t) => soon.max(t + ACK_INTERVAL),
        None => soon,
    }
}

async fn sleep_until_some(at: Option<crate::rt::Instant>) {
    match at {
        Some(t) => crate::rt::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// 100% to 125% of `d`: senders told to wait the same time do not all come
/// back at once.
fn jitter_up(d: Duration) -> Duration {
    d + jitter(d / 4) * 2 - d / 4
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        u16::from_le_bytes(b)
    } else {
        0
    };
    // 50% to 100% of the delay.
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_submit_waits_at_least_what_the_relay_asked() {
        let asked = Duration::from_millis(400);
        for _ in 0..100 {
            let w = jitter_up(asked);
            assert!(w >= asked && w <= asked + asked / 4, "{w:?}");
        }
    }

    #[test]
    fn acks_go_out_soon_after_a_quiet_spell_and_once_a_second_under_a_stream() {
        let t0 = crate::rt::Instant::now();
        // The first delivery, or one long after the last acks: 20 ms.
        assert_eq!(next_ack_at(t0, None), t0 + ACK_DELAY);
        let long_ago = t0.checked_sub(Duration::from_secs(5)).unwrap_or(t0);
        if long_ago < t0 {
            assert_eq!(next_ack_at(t0, Some(long_ago)), t0 + ACK_DELAY);
        }
        // Deliveries keep coming 100 ms after the last acks: they wait for
        // the interval to pass.
        let now = t0 + Duration::from_millis(100);
        assert_eq!(next_ack_at(now, Some(t0)), t0 + ACK_INTERVAL);
        // Never sooner than ACK_DELAY after the delivery.
        let late = t0 + ACK_INTERVAL;
        assert_eq!(next_ack_at(late, Some(t0)), late + ACK_DELAY);
    }
}
