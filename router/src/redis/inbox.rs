//! The node's side of the cluster in Redis: its lease, kept alive, and its
//! inbox stream, read into the relay's queue and trimmed.

use super::*;

/// Renews the node's lease every third of it. When Redis lost the node's
/// keys (restart, failover to a replica that had not seen them) or a write
/// failed meanwhile, re-announces the node's devices and interests and
/// tells the relay it lagged.
pub(super) async fn keep_lease(
    inner: std::sync::Weak<Inner>,
    node: String,
    incarnation: String,
    announced: Arc<Announced>,
    tx: mpsc::Sender<InboxEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(period) = inner.upgrade().map(|i| i.cfg.lease / 3) else {
        return;
    };
    let lagged_total = counter!(INBOX_LAGGED);
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let lease_ms = inner.cfg.lease.as_millis() as u64;
        let renewed: Result<i64, RouterError> = inner
            .with_conn(|mut c| {
                let inner = &inner;
                let (node, inc) = (&node, &incarnation);
                async move {
                    inner
                        .renew
                        .key(inner.lease_key(node))
                        .key(inner.inbox_key(node))
                        .key(inner.counter_key(node))
                        .arg(inc)
                        .arg(lease_ms)
                        .arg(lease_ms.saturating_mul(10))
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await;
        let lost = match renewed {
            Ok(1) => announced.dirty.swap(false, Ordering::Relaxed),
            Ok(0) => {
                warn!(
                    node,
                    "Redis had lost this node's lease; re-announcing its devices"
                );
                true
            }
            Ok(_) => {
                warn!(
                    node,
                    "another relay holds this node id: node ids must be unique per process"
                );
                continue;
            }
            Err(e) => {
                warn!(node, error = %e, "renewing the node lease failed; retrying");
                announced.dirty.store(true, Ordering::Relaxed);
                continue;
            }
        };
        if !lost {
            continue;
        }
        let devices: Vec<String> = lock(&announced.present).iter().cloned().collect();
        let conversations: Vec<String> = lock(&announced.interests).iter().cloned().collect();
        let nodes_key = inner.nodes_key();
        let again = async {
            inner
                .with_conn(|mut c| {
                    let (nodes_key, node) = (nodes_key.clone(), node.clone());
                    async move { c.sadd::<_, _, ()>(&nodes_key, &node).await }
                })
                .await?;
            inner.announce(&node, &devices).await?;
            inner.write_interest(&node, &conversations, true).await
        };
        match again.await {
            Ok(()) => {
                info!(node, devices = devices.len(), "presence re-announced");
                // Pushes may have been lost meanwhile: devices resync.
                lagged_total.increment(1);
                if tx.send(InboxEvent::Lagged).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(node, error = %e, "re-announcing presence failed; retrying");
                announced.dirty.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Reads the node's inbox stream into the relay's queue, trimming what it
/// has read. Any doubt about completeness (a number gap, a broken link, an
/// undecodable entry) becomes [`InboxEvent::Lagged`].
pub(super) async fn read_inbox(
    inner: Arc<Inner>,
    node: String,
    tx: mpsc::Sender<InboxEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let inbox = inner.inbox_key(&node);
    let connector = inner.connector.clone();
    let reply_timeout = READ_BLOCK + inner.cfg.response_timeout;
    // Hold no strong reference while blocked: the router may be dropped.
    let weak = Arc::downgrade(&inner);
    drop(inner);
    let mut last_id = "0-0".to_owned();
    let mut expected: i64 = 1;
    let mut backoff = Duration::from_millis(50);
    let mut lagged = false;
    // During an outage: when the devices were last resynced from the store.
    let mut last_outage_resync: Option<tokio::time::Instant> = None;
    // Batches read since the inbox was last trimmed, and when that was.
    let mut untrimmed = 0u32;
    let mut last_trim = tokio::time::Instant::now();
    let opts = StreamReadOptions::default()
        .count(READ_COUNT)
        .block(READ_BLOCK.as_millis() as usize);
    let entries_read = counter!(INBOX_ENTRIES);
    let entry_age = histogram!(INBOX_LAG_SECONDS);
    let lagged_total = counter!(INBOX_LAGGED);
    'connect: loop {
        if *stop.borrow() {
            return;
        }
        let mut c = match connector.connect(reply_timeout).await {
            Ok(c) => c,
            Err(e) => {
                warn!(node, error = %e, "connecting the inbox reader failed; retrying");
                lagged = true;
                // Redis is away: what the other relays accepted meanwhile
                // reaches this node's devices from the store, every so often.
                let now = tokio::time::Instant::now();
                if last_outage_resync.is_none_or(|t| now.duration_since(t) >= OUTAGE_RESYNC) {
                    last_outage_resync = Some(now);
                    lagged_total.increment(1);
                    if tx.send(InboxEvent::Lagged).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        last_outage_resync = None;
        if std::mem::take(&mut lagged) {
            lagged_total.increment(1);
            if tx.send(InboxEvent::Lagged).await.is_err() {
                return;
            }
        }
        loop {
            let (keys, ids) = ([&inbox], [&last_id]);
            let read = tokio::select! {
                r = c.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts) => r,
                _ = stop.changed() => return,
            };
            let reply = match read {
                Ok(r) => r,
                Err(e) => {
                    warn!(node, error = %e, "reading the inbox failed; reconnecting");
                    lagged = true;
                    continue 'connect;
                }
            };
            let Some(reply) = reply else {
                // Idle: drop what was read since the last trim.
                if untrimmed > 0 {
                    trim(&mut c, &inbox, &last_id, &node).await;
                    untrimmed = 0;
                    last_trim = tokio::time::Instant::now();
                }
                continue;
            };
            let now_ms = unix_now_ms();
            for key in reply.keys {
                for entry in key.ids {
                    entries_read.increment(1);
                    if let Some(age) = entry_age_seconds(&entry.id, now_ms) {
                        entry_age.record(age);
                    }
                    last_id = entry.id.clone();
                    let n = entry.map.get("n").and_then(value_i64).unwrap_or(-1);
                    let mut events = Vec::with_capacity(2);
                    if n != expected {
                        warn!(
                            node,
                            got = n,
                            expected,
                            "inbox entries were lost; devices resync"
                        );
                        events.push(InboxEvent::Lagged);
                    }
                    expected = n.saturating_add(1);
                    if let Some(v) = entry.map.get("d") {
                        match value_bytes(v).map(wire::decode) {
                            Some(Ok(d)) => events.push(InboxEvent::Delivery(d)),
                            Some(Err(e)) => {
                                warn!(node, error = %e, "undecodable inbox entry; devices resync");
                                events.push(InboxEvent::Lagged);
                            }
                            None => events.push(InboxEvent::Lagged),
                        }
                    } else if let Some(v) = entry.map.get("b") {
                        match value_bytes(v) {
                            Some(b) => events.push(InboxEvent::Broadcast(b)),
                            None => events.push(InboxEvent::Lagged),
                        }
                    }
                    for ev in events {
                        if matches!(ev, InboxEvent::Lagged) {
                            lagged_total.increment(1);
                        }
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
            untrimmed += 1;
            let due = untrimmed >= TRIM_EVERY
                || tokio::time::Instant::now().saturating_duration_since(last_trim) >= TRIM_AFTER;
            if due {
                trim(&mut c, &inbox, &last_id, &node).await;
                untrimmed = 0;
                last_trim = tokio::time::Instant::now();
            }
            if weak.strong_count() == 0 {
                return;
            }
        }
    }
}

/// Drops the entries up to `last_id` (read and handed to the relay) from
/// the inbox. Done once per [`TRIM_EVERY`] batches or [`TRIM_AFTER`], not
/// per batch: at low rates most batches are one entry.
async fn trim(c: &mut conn::Conn, inbox: &str, last_id: &str, node: &str) {
    let trimmed: redis::RedisResult<i64> = redis::cmd("XTRIM")
        .arg(inbox)
        .arg("MINID")
        .arg(last_id)
        .query_async(c)
        .await;
    if let Err(e) = trimmed {
        warn!(node, error = %e, "trimming the inbox failed");
    }
}

/// The age at `now_ms`, in seconds, of the stream entry `id` (`<ms>-<seq>`,
/// the time Redis appended it): 0 when Redis's clock is ahead of ours,
/// `None` for an id of another form.
fn entry_age_seconds(id: &str, now_ms: i64) -> Option<f64> {
    let (ms, _seq) = id.split_once('-')?;
    let appended_ms: i64 = ms.parse().ok()?;
    Some(now_ms.saturating_sub(appended_ms).max(0) as f64 / 1000.0)
}

#[cfg(test)]
mod entry_age_tests {
    use super::entry_age_seconds;

    #[test]
    fn age_is_now_minus_the_id_time() {
        assert_eq!(entry_age_seconds("1000-0", 3500), Some(2.5));
        assert_eq!(entry_age_seconds("1000-7", 1000), Some(0.0));
    }

    #[test]
    fn a_clock_behind_redis_gives_zero() {
        assert_eq!(entry_age_seconds("5000-0", 4000), Some(0.0));
    }

    #[test]
    fn other_ids_give_none() {
        assert_eq!(entry_age_seconds("0", 1), None);
        assert_eq!(entry_age_seconds("x-1", 1), None);
        assert_eq!(entry_age_seconds("99999999999999999999-0", 1), None);
    }
}
