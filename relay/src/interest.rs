//! Interest: the conversations this relay holds devices of, registered with
//! the router, so that a fan-out to a large conversation reaches this relay
//! once, without a device list; and the local members such a delivery is
//! for.
//!
//! A session's sync tells [`Interest::set_device`] the device's
//! conversations before it reads them from the store (so nothing posted
//! after the read can pass this relay by); its end tells
//! [`Interest::remove_device`]. The relay registers with the router under a
//! conversation when its first device of it comes and leaves when the last
//! one goes. Membership changes ([`Interest::rosters_changed`]) add a
//! connected device to a conversation it was added to and take it out of
//! one it left; a delivery is handed only to devices whose account is a
//! member by the current roster, so a removal holds even before that.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use herold_router::{Router, RouterError};
use tracing::warn;

use crate::metrics as m;
use crate::roster::{Roster, Rosters};

/// From this many devices a conversation's fan-out goes to the relays
/// interested in it instead of locating every device. Below it, one `MGET`
/// (about 93 B into Redis per device) does the delivery and finds the
/// devices to wake by push at once; from it on, the delivery's cost stops
/// growing with the members. docs/routing.md, "Interest sets".
pub(crate) const INTEREST_MIN_DEVICES: usize = 16;

/// Whether a fan-out to this roster goes by interest.
pub(crate) fn by_interest(roster: &Roster) -> bool {
    roster.devices.len() >= INTEREST_MIN_DEVICES
}

#[derive(Debug, Default)]
struct State {
    /// conversation -> this relay's devices in it.
    by_conv: HashMap<String, HashSet<String>>,
    /// device -> its account and conversations.
    by_device: HashMap<String, (String, HashSet<String>)>,
    /// account -> its devices connected here.
    by_account: HashMap<String, HashSet<String>>,
    /// The conversations the router holds this relay's interest in (as far
    /// as the last write under the conversation's gate knows).
    registered: HashSet<String>,
}

impl State {
    fn join(&mut self, device: &str, conv: &str) {
        self.by_conv
            .entry(conv.to_owned())
            .or_default()
            .insert(device.to_owned());
        if let Some((_, convs)) = self.by_device.get_mut(device) {
            convs.insert(conv.to_owned());
        }
    }

    fn leave(&mut self, device: &str, conv: &str) {
        if let Some(devices) = self.by_conv.get_mut(conv) {
            devices.remove(device);
            if devices.is_empty() {
                self.by_conv.remove(conv);
            }
        }
        if let Some((_, convs)) = self.by_device.get_mut(device) {
            convs.remove(conv);
        }
    }
}

/// This relay's interest in conversations.
#[derive(Debug)]
pub(crate) struct Interest {
    node_id: String,
    router: Arc<dyn Router>,
    rosters: Arc<Rosters>,
    /// A std mutex, never held across an `.await`.
    state: Mutex<State>,
    /// Per-conversation gates: the router writes of one conversation happen
    /// one at a time, so the last one matches the state it read.
    gates: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Interest {
    pub fn new(node_id: String, router: Arc<dyn Router>, rosters: Arc<Rosters>) -> Self {
        Self {
            node_id,
            router,
            rosters,
            state: Mutex::new(State::default()),
            gates: DashMap::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent before it can
        // panic: poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device (of `account`) is in these conversations: registers what
    /// this relay was not interested in yet, and leaves what the device
    /// left. Returns once the router has the registrations.
    pub async fn set_device(
        &self,
        device: &str,
        account: &str,
        conversations: &[String],
    ) -> Result<(), RouterError> {
        let mut touched: Vec<String> = Vec::new();
        {
            let mut st = self.state();
            let new: HashSet<String> = conversations.iter().cloned().collect();
            let old = st
                .by_device
                .insert(
                    device.to_owned(),
                    (account.to_owned(), HashSet::with_capacity(new.len())),
                )
                .map(|(_, convs)| convs)
                .unwrap_or_default();
            st.by_account
                .entry(account.to_owned())
                .or_default()
                .insert(device.to_owned());
            for c in old.difference(&new) {
                st.leave(device, c);
                touched.push(c.clone());
            }
            for c in &new {
                st.join(device, c);
                if !st.registered.contains(c) {
                    touched.push(c.clone());
                }
            }
        }
        self.settle(touched).await
    }

    /// The device's session ended here.
    pub async fn remove_device(&self, device: &str) {
        let touched: Vec<String> = {
            let mut st = self.state();
            let Some((account, convs)) = st.by_device.remove(device) else {
                return;
            };
            if let Some(devices) = st.by_account.get_mut(&account) {
                devices.remove(device);
                if devices.is_empty() {
                    st.by_account.remove(&account);
                }
            }
            for c in &convs {
                st.leave(device, c);
            }
            convs.into_iter().collect()
        };
        if let Err(e) = self.settle(touched).await {
            // The relay stays registered: it gets entries for nobody here.
            warn!(error = %e, "router interest removal failed");
        }
    }

    /// Membership of these conversations changed: connected devices of
    /// accounts added join, those of accounts removed leave. Returns the
    /// devices that joined a conversation: a delivery by interest that
    /// arrived before this change passed them by, so they must sync it.
    pub async fn rosters_changed(&self, conversations: &[String]) -> Vec<String> {
        let mut joined = Vec::new();
        for conv in conversations {
            if self.state().by_device.is_empty() {
                return joined;
            }
            let roster = match self.rosters.get(conv).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "loading a changed roster failed; devices pick it up at their next sync");
                    continue;
                }
            };
            {
                let mut st = self.state();
                let members = roster.as_ref().map(|r| &r.members);
                let here: Vec<String> = st
                    .by_conv
                    .get(conv)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                for d in here {
                    let member = st
                        .by_device
                        .get(&d)
                        .is_some_and(|(a, _)| members.is_some_and(|m| m.contains_key(a)));
                    if !member {
                        st.leave(&d, conv);
                    }
                }
                let joining: Vec<String> = members
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .filter_map(|a| st.by_account.get(a))
                    .flatten()
                    .cloned()
                    .collect();
                for d in joining {
                    if !st.by_conv.get(conv).is_some_and(|here| here.contains(&d)) {
                        joined.push(d.clone());
                    }
                    st.join(&d, conv);
                }
            }
            if let Err(e) = self.settle(vec![conv.clone()]).await {
                warn!(error = %e, "router interest update failed; the router registers it again");
            }
        }
        joined
    }

    /// This relay's devices that a delivery by interest in `conv` is for:
    /// those here whose account is a member by `roster` (or all those here
    /// when there is no roster to check against).
    pub fn local_members(&self, conv: &str, roster: Option<&Roster>) -> Vec<String> {
        let st = self.state();
        let Some(devices) = st.by_conv.get(conv) else {
            return Vec::new();
        };
        devices
            .iter()
            .filter(|d| match roster {
                Some(r) => st
                    .by_device
                    .get(*d)
                    .is_some_and(|(a, _)| r.members.contains_key(a)),
                None => true,
            })
            .cloned()
            .collect()
    }

    /// Conversations the router holds this relay's interest in.
    #[cfg(test)]
    pub fn registered(&self) -> usize {
        self.state().registered.len()
    }

    /// Brings the router's interest in each conversation in line with the
    /// state, all conversations at once.
    async fn settle(&self, conversations: Vec<String>) -> Result<(), RouterError> {
        let results =
            futures_util::future::join_all(conversations.iter().map(|c| self.settle_one(c))).await;
        results.into_iter().collect()
    }

    async fn settle_one(&self, conv: &str) -> Result<(), RouterError> {
        let gate = self.gates.entry(conv.to_owned()).or_default().clone();
        let result = {
            let _turn = gate.lock().await;
            self.write_until_settled(conv).await
        };
        // Holders: the map and this call; a waiter holds one more.
        self.gates.remove_if(conv, |_, g| {
            Arc::ptr_eq(g, &gate) && Arc::strong_count(g) <= 2
        });
        result
    }

    /// Under the conversation's gate: writes until the router's interest
    /// matches whether devices are here (the state can change meanwhile).
    async fn write_until_settled(&self, conv: &str) -> Result<(), RouterError> {
        let one = [conv.to_owned()];
        loop {
            let (want, have) = {
                let st = self.state();
                (st.by_conv.contains_key(conv), st.registered.contains(conv))
            };
            if want == have {
                return Ok(());
            }
            if want {
                self.router.add_interest(&self.node_id, &one).await?;
                let mut st = self.state();
                st.registered.insert(conv.to_owned());
                metrics::gauge!(m::INTEREST_CONVERSATIONS).set(st.registered.len() as f64);
            } else {
                // Unregistered first: if the removal fails, the next
                // device of the conversation registers it again.
                {
                    let mut st = self.state();
                    st.registered.remove(conv);
                    metrics::gauge!(m::INTEREST_CONVERSATIONS).set(st.registered.len() as f64);
                }
                self.router.remove_interest(&self.node_id, &one).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests;
