//! Devices connected end-to-end through a test relay, their events
//! collected: shared by the MLS test files.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use herold_client::e2e::{E2eClient, E2eEvent, Message};
use herold_client::raw::WireTap;
use herold_client::{Client, ClientConfig, Event};
use herold_mls::MlsDevice;
use tokio::sync::watch;

use crate::common::{DEADLINE, TestRelay};

/// (conversation, seq, why) of an envelope a device could not read.
pub type Unread = (String, u64, String);
/// (conversation, generation) of a restart of its group.
pub type Restart = (String, u64);

/// What every device decrypted, and what it could not read.
#[derive(Clone, Default)]
pub struct Inbox {
    pub messages: Arc<Mutex<HashMap<String, Vec<Message>>>>,
    pub unreadable: Arc<Mutex<HashMap<String, Vec<Unread>>>>,
    pub joined: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// (conversation, generation) of every restart a device saw.
    pub restarted: Arc<Mutex<HashMap<String, Vec<Restart>>>>,
    /// Every commit of another device a device applied.
    pub changed: Arc<Mutex<HashMap<String, Vec<Change>>>>,
}

/// (conversation, epoch, added, removed) of a commit a device applied.
pub type Change = (String, u64, Vec<String>, Vec<String>);

impl Inbox {
    /// `f` of every message `device` decrypted in `conv`, in order.
    fn of<T>(&self, device: &str, conv: &str, f: impl Fn(&Message) -> T) -> Vec<T> {
        self.messages
            .lock()
            .unwrap()
            .get(device)
            .map(|v| {
                v.iter()
                    .filter(|m| m.conversation_id == conv)
                    .map(f)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn texts(&self, device: &str, conv: &str) -> Vec<String> {
        self.of(device, conv, |m| {
            String::from_utf8_lossy(&m.plaintext).into_owned()
        })
    }

    /// (account, device) of the sender of each message.
    pub fn senders(&self, device: &str, conv: &str) -> Vec<(String, String)> {
        self.of(device, conv, |m| {
            (m.sender_account_id.clone(), m.sender_device_id.clone())
        })
    }
}

/// Devices connected end-to-end, their events collected in the background.
pub struct Net {
    pub addr: std::net::SocketAddr,
    pub fingerprint: [u8; 32],
    pub inbox: Inbox,
    pub bell: watch::Sender<u64>,
    pub taps: Arc<Mutex<Vec<WireTap>>>,
}

impl Net {
    pub fn new(addr: std::net::SocketAddr, fingerprint: [u8; 32]) -> Self {
        Self {
            addr,
            fingerprint,
            inbox: Inbox::default(),
            bell: watch::channel(0).0,
            taps: Arc::default(),
        }
    }

    pub async fn connect(&self, device: &str, key: &SigningKey) -> E2eClient {
        self.connect_at(self.addr, device, key).await
    }

    pub async fn connect_at(
        &self,
        addr: std::net::SocketAddr,
        device: &str,
        key: &SigningKey,
    ) -> E2eClient {
        let mls = MlsDevice::create(device, None).unwrap();
        self.connect_mls(addr, device, key, mls).await
    }

    /// Connects with the MLS state `mls` (e.g. one kept in a file, for a
    /// device that comes back).
    pub async fn connect_mls(
        &self,
        addr: std::net::SocketAddr,
        device: &str,
        key: &SigningKey,
        mls: MlsDevice,
    ) -> E2eClient {
        let mut config = ClientConfig::new(addr, self.fingerprint, device, key.clone());
        let tap = WireTap::default();
        self.taps.lock().unwrap().push(tap.clone());
        config.wire_tap = Some(tap);
        let mut c = E2eClient::connect(config, mls).await.expect("e2e connect");
        let mut events = c.take_events();
        let (inbox, bell, me) = (self.inbox.clone(), self.bell.clone(), device.to_owned());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    E2eEvent::Message(m) => inbox
                        .messages
                        .lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push(m),
                    E2eEvent::Unreadable {
                        conversation_id,
                        seq,
                        reason,
                    } => inbox
                        .unreadable
                        .lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push((conversation_id, seq, reason)),
                    E2eEvent::Joined {
                        conversation_id, ..
                    } => inbox
                        .joined
                        .lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push(conversation_id),
                    E2eEvent::GroupChanged {
                        conversation_id,
                        epoch,
                        added,
                        removed,
                        ..
                    } => inbox
                        .changed
                        .lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push((conversation_id, epoch, added, removed)),
                    E2eEvent::Restarted {
                        conversation_id,
                        generation,
                    } => inbox
                        .restarted
                        .lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push((conversation_id, generation)),
                    _ => {}
                }
                bell.send_modify(|n| *n += 1);
            }
        });
        c
    }

    /// Waits until `cond` holds on the inbox, failing after the deadline.
    pub async fn until(&self, what: &str, cond: impl Fn(&Inbox) -> bool) {
        let mut bell = self.bell.subscribe();
        let ok = tokio::time::timeout(DEADLINE, async {
            loop {
                if cond(&self.inbox) {
                    return;
                }
                bell.changed().await.unwrap();
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting for: {what}");
    }

    /// Every device in `devices` decrypted exactly `texts`, in this order.
    pub async fn all_read(&self, devices: &[String], conv: &str, texts: &[&str]) {
        let want: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        self.until(
            &format!("{} devices read {texts:?} in {conv}", devices.len()),
            |i| devices.iter().all(|d| i.texts(d, conv).len() >= want.len()),
        )
        .await;
        for d in devices {
            assert_eq!(self.inbox.texts(d, conv), want, "what {d} read in {conv}");
        }
    }
}

pub fn others(all: &[String], me: &str) -> Vec<String> {
    all.iter().filter(|d| *d != me).cloned().collect()
}

/// A device that connects without MLS and records the raw envelopes: what
/// any member device (and an attacker holding one) receives as ciphertext.
pub async fn raw_observer(relay: &TestRelay, account: &str, device: &str) -> Client {
    let key = relay.device(account, device).await;
    relay.client(device, &key).await
}

pub async fn raw_until(client: &mut Client, conv: &str, seq: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut got = BTreeMap::new();
    tokio::time::timeout(DEADLINE, async {
        while got.keys().next_back().copied().unwrap_or(0) < seq {
            match client.next_event().await {
                Some(Event::Message(m)) if m.conversation_id == conv => {
                    got.insert(m.seq, m.ciphertext);
                }
                Some(Event::Stopped(e)) => panic!("observer stopped: {e}"),
                None => panic!("observer gone"),
                _ => {}
            }
        }
    })
    .await
    .expect("observer receives");
    got
}
