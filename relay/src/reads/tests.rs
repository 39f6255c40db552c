#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::unreliable::Unreliable;
use herold_store::{Account, Conversation, ConversationKind, Member, NewMessage, Role};

use super::*;

const NOW: i64 = 1_000_000;

/// An embedded store with conversation `conv` holding `messages`
/// messages, of which those with a seq in `expired` expired at `NOW`;
/// behind an [`Unreliable`] that counts the reads.
async fn log_of(
    messages: u64,
    expired: Option<std::ops::RangeInclusive<u64>>,
) -> (tempfile::TempDir, Arc<EmbeddedStore>, Arc<Unreliable>) {
    let dir = tempfile::tempdir().unwrap();
    let inner =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    inner
        .create_account(Account {
            id: "a".into(),
            display_name: String::new(),
            created_at_ms: 1,
        })
        .await
        .unwrap();
    inner
        .create_conversation(
            Conversation {
                id: "conv".into(),
                kind: ConversationKind::Group,
                title: String::new(),
                default_ttl_seconds: 0,
                created_at_ms: 1,
            },
            vec![Member {
                account_id: "a".into(),
                role: Role::Member,
            }],
        )
        .await
        .unwrap();
    for seq in 1..=messages {
        let gone = expired.as_ref().is_some_and(|r| r.contains(&seq));
        append(&inner, seq, gone.then_some(NOW - 1)).await;
    }
    let store: Arc<dyn Store> = inner.clone();
    (dir, inner, Arc::new(Unreliable::new(store)))
}

async fn append(store: &EmbeddedStore, seq: u64, expires_at_ms: Option<i64>) {
    let appended = store
        .append(NewMessage {
            conversation_id: "conv".into(),
            message_id: seq.to_be_bytes().to_vec(),
            sender_account_id: "a".into(),
            sender_device_id: "a.d".into(),
            server_time_ms: 1,
            expires_at_ms,
            ciphertext: format!("message {seq}").into_bytes(),
            mls: None,
        })
        .await
        .unwrap();
    assert_eq!(appended.seq, seq);
}

fn seqs(page: &[StoredMessage]) -> Vec<u64> {
    page.iter().map(|m| m.seq).collect()
}

/// Waits until `store` has seen `n` reads.
async fn reads_reach(store: &Unreliable, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.calls("read") < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} reads, waited for {n}",
            store.calls("read")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_reads_the_log_a_few_times_and_answers_each_as_its_own_read() {
    // 400 messages, 30..=60 expired: a page is not always a run of seqs.
    let (_dir, inner, store) = log_of(400, Some(30..=60)).await;
    store.set_latency(Duration::from_millis(20));
    let reads = SharedReads::new(store.clone());
    // 600 devices: most near the head, some far behind, pages of several
    // sizes; a fixed pseudo-random spread.
    let mut asked = Vec::new();
    let mut x: u64 = 2026;
    for i in 0..600u64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let after = match i % 10 {
            0 => (x >> 33) % 400,
            _ => 380 + (x >> 33) % 21,
        };
        let limit = [256, 256, 16, 1][(i % 4) as usize];
        asked.push((after, limit));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (after, limit)) in asked.iter().copied().enumerate() {
        let reads = reads.clone();
        tasks.spawn(async move { (i, reads.read("conv", after, limit, NOW).await.unwrap()) });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, page) = r.unwrap();
        let (after, limit) = asked[i];
        let own = inner.read("conv", after, limit, NOW).await.unwrap();
        assert_eq!(seqs(&page), seqs(&own), "after {after}, limit {limit}");
        assert_eq!(page, own);
        answered += 1;
    }
    assert_eq!(answered, 600);
    let made = store.calls("read");
    assert!(made <= 10, "600 requests took {made} store reads");
    // Nothing is left waiting: the next request reads again.
    let before = store.calls("read");
    reads.read("conv", 399, 10, NOW).await.unwrap();
    assert_eq!(store.calls("read"), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_takes_the_answer_of_a_read_that_began_before_it() {
    let (_dir, inner, store) = log_of(5, None).await;
    store.set_latency(Duration::from_millis(100));
    let reads = SharedReads::new(store.clone());
    let early = {
        let reads = reads.clone();
        tokio::spawn(async move { reads.read("conv", 0, 256, NOW).await.unwrap() })
    };
    // The early read is in the store; a message is stored meanwhile, then
    // another session asks for the same part of the log.
    reads_reach(&store, 1).await;
    append(&inner, 6, None).await;
    let late = reads.read("conv", 0, 256, NOW).await.unwrap();
    assert_eq!(seqs(&late), vec![1, 2, 3, 4, 5, 6]);
    // It waited for a read of its own rather than join the early one.
    assert_eq!(store.calls("read"), 2);
    early.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_fails_its_requests_and_the_next_ones_read_again() {
    let (_dir, _inner, store) = log_of(3, None).await;
    store.set_latency(Duration::from_millis(20));
    store.set_failing(true);
    let reads = SharedReads::new(store.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for after in 0..20 {
        let reads = reads.clone();
        tasks.spawn(async move { reads.read("conv", after % 3, 10, NOW).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().is_err());
    }
    store.set_failing(false);
    let page = reads.read("conv", 1, 10, NOW).await.unwrap();
    assert_eq!(seqs(&page), vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gone_in_the_middle_of_its_read_strands_nobody() {
    let (_dir, _inner, store) = log_of(4, None).await;
    store.set_latency(Duration::from_millis(200));
    let reads = SharedReads::new(store.clone());
    let gone = {
        let reads = reads.clone();
        tokio::spawn(async move { reads.read("conv", 0, 256, NOW).await })
    };
    reads_reach(&store, 1).await;
    // Another session asks meanwhile; then the first goes away.
    let waiting = {
        let reads = reads.clone();
        tokio::spawn(async move { reads.read("conv", 2, 256, NOW).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reads
        .waiting
        .lock()
        .unwrap()
        .get("conv")
        .is_none_or(Vec::is_empty)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never queued"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gone.abort();
    let page = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&page), vec![3, 4]);
    // And the conversation's entry goes once its batch is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !reads.waiting.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the entry stayed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
