//! Roster cache: a conversation's kind, members and their devices, loaded
//! from the store once and reused for every message until the directory
//! changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use herold_proto::v1::ErrorCode;
use herold_store::{ConversationKind, PolicyScope, Role, Store, StoreError};

use crate::config::Limits;
use crate::policy::Effective;

/// What a submit and a fan-out need to know about a conversation.
#[derive(Debug)]
pub(crate) struct Roster {
    pub kind: ConversationKind,
    /// Archived: nobody posts.
    pub archived: bool,
    /// The policy the relay enforces in this conversation.
    pub policy: Effective,
    pub members: HashMap<String, Role>,
    /// Every non-revoked device of every member.
    pub devices: Vec<String>,
    /// For a direct conversation: the account of each of `devices`
    /// (`MlsState.roster_accounts`); empty otherwise.
    pub device_accounts: HashMap<String, String>,
    /// For a large channel: how many sub-groups it has (0: none).
    pub sub_groups: u32,
}

/// The most sub-groups a large channel can have.
pub(crate) const MAX_SUB_GROUPS: u32 = 1024;

/// How many sub-groups the channel has: they are made together at its
/// creation, numbered from 0, so a binary search over their existence
/// finds the count in about 11 reads.
pub(crate) async fn sub_group_count(store: &dyn Store, channel: &str) -> Result<u32, StoreError> {
    let exists = |i: u32| async move {
        store
            .get_conversation(&herold_proto::ids::sub_group_id(channel, i))
            .await
            .map(|c| c.is_some())
    };
    if !exists(0).await? {
        return Ok(0);
    }
    // Invariant: sub-group `lo` exists, `hi` does not.
    let (mut lo, mut hi) = (0u32, MAX_SUB_GROUPS);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// The sub-group of a member (not a publisher) of a large channel with `n`
/// sub-groups: FNV-1a of the account id, modulo `n`. Stable, so that a
/// member stays in its sub-group as others come and go.
pub(crate) fn sub_group_of_account(account_id: &str, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in account_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(h % u64::from(n.max(1))).unwrap_or(0)
}

/// A load under way; when it ends (or is cancelled) its gate leaves the
/// map unless others wait on it, so the map holds only loads under way, not
/// every conversation id ever asked for (unknown ones included).
struct Gate<'a> {
    rosters: &'a Rosters,
    conversation_id: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        // Two holders: the map and this load. A waiter holds a third.
        self.rosters
            .loading
            .remove_if(self.conversation_id, |_, g| {
                Arc::ptr_eq(g, &self.lock) && Arc::strong_count(g) <= 2
            });
    }
}

/// Why an account may not post in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostRefusal {
    NotMember,
    NotPublisher,
    Archived,
}

impl PostRefusal {
    /// The error a device is told.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::NotMember => ErrorCode::NotMember,
            Self::NotPublisher => ErrorCode::NotPublisher,
            Self::Archived => ErrorCode::ConversationArchived,
        }
    }

    /// What the device is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotMember => "your account is not a member of this conversation",
            Self::NotPublisher => "only publishers may post in this channel",
            Self::Archived => "this conversation is archived: it can be read, not posted to",
        }
    }
}

impl Roster {
    /// The posting rules, the same for messages and for MLS commits: the
    /// account is a member, a publisher if this is a channel, and the
    /// conversation is not archived.
    pub fn check_post(&self, account_id: &str) -> Result<(), PostRefusal> {
        let role = self.members.get(account_id).ok_or(PostRefusal::NotMember)?;
        if !role.may_post(self.kind) {
            return Err(PostRefusal::NotPublisher);
        }
        if self.archived {
            return Err(PostRefusal::Archived);
        }
        Ok(())
    }
}

/// How long a cached roster is used before it is read again. Changes reach
/// every relay's cache at once through the cluster's broadcasts; this bounds
/// how long one that every other path missed can linger.
pub(crate) const ROSTER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The cache. A directory change drops the rosters it touches (all of them
/// when that is not known); changes are rare (admin actions), messages are
/// many.
#[derive(Debug)]
pub(crate) struct Rosters {
    store: Arc<dyn Store>,
    /// The relay's limits, under which policies resolve.
    limits: Limits,
    /// Each roster with when it was loaded.
    cache: DashMap<String, (Arc<Roster>, tokio::time::Instant)>,
    /// Per-conversation load gates (an async mutex: held across the store
    /// reads of one load).
    loading: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bumped on every invalidation, so that a load racing an invalidation
    /// does not put a stale roster back.
    generation: AtomicU64,
}

impl Rosters {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self {
            store,
            limits,
            cache: DashMap::new(),
            loading: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// A cached roster younger than [`ROSTER_TTL`].
    fn cached(&self, conversation_id: &str) -> Option<Arc<Roster>> {
        let entry = self.cache.get(conversation_id)?;
        (entry.1.elapsed() < ROSTER_TTL).then(|| entry.0.clone())
    }

    /// The conversation's roster; `None` if it does not exist.
    pub async fn get(&self, conversation_id: &str) -> Result<Option<Arc<Roster>>, StoreError> {
        if let Some(r) = self.cached(conversation_id) {
            return Ok(Some(r));
        }
        // One load per conversation at a time: concurrent submits to a cold
        // 7,000-member channel wait for the first load instead of repeating it.
        let gate = Gate {
            rosters: self,
            conversation_id,
            lock: self
                .loading
                .entry(conversation_id.to_owned())
                .or_default()
                .clone(),
        };
        let _loading = gate.lock.lock().await;
        if let Some(r) = self.cached(conversation_id) {
            return Ok(Some(r));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(conv) = self.store.get_conversation(conversation_id).await? else {
            return Ok(None);
        };
        let members = self.store.members(conversation_id).await?;
        let archived = self.store.conversation_archived(conversation_id).await?;
        let org = self.store.get_policy(PolicyScope::Org).await?;
        let own = self
            .store
            .get_policy(PolicyScope::Conversation(conversation_id.to_owned()))
            .await?;
        let policy = Effective::resolve(
            &self.limits,
            org.as_ref(),
            own.as_ref(),
            conv.default_ttl_seconds,
        );
        let live: Vec<_> = self
            .store
            .devices_of(members.iter().map(|m| m.account_id.clone()).collect())
            .await?
            .into_iter()
            .filter(|d| !d.revoked)
            .collect();
        let device_accounts = if conv.kind == ConversationKind::Direct {
            live.iter()
                .map(|d| (d.id.clone(), d.account_id.clone()))
                .collect()
        } else {
            HashMap::new()
        };
        let devices = live.into_iter().map(|d| d.id).collect();
        let sub_groups = if conv.kind == ConversationKind::Channel {
            sub_group_count(self.store.as_ref(), conversation_id).await?
        } else {
            0
        };
        let roster = Arc::new(Roster {
            kind: conv.kind,
            archived,
            policy,
            members: members
                .into_iter()
                .map(|m| (m.account_id, m.role))
                .collect(),
            devices,
            device_accounts,
            sub_groups,
        });
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache.insert(
                conversation_id.to_owned(),
                (roster.clone(), tokio::time::Instant::now()),
            );
        }
        Ok(Some(roster))
    }

    /// Forgets everything: after a change whose conversations are not known,
    /// or when this node may have missed changes (its inbox lagged).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Forgets these conversations' rosters; an empty slice forgets all.
    pub fn invalidate_some(&self, conversations: &[String]) {
        if conversations.is_empty() {
            return self.invalidate();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        for c in conversations {
            self.cache.remove(c);
        }
    }
}

/// Stores for the relay's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failure

    use std::sync::Arc;

    use herold_store::{ConversationKind, Member, Role, Store};

    /// An embedded store in a folder of its own holding `accounts` and the
    /// groups `(id, members)`.
    pub(crate) async fn store_with(
        accounts: &[&str],
        groups: &[(&str, &[&str])],
    ) -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            herold_store::embedded::EmbeddedStore::open(
                dir.path(),
                herold_store::embedded::EmbeddedConfig::default(),
            )
            .unwrap(),
        );
        for id in accounts {
            store
                .create_account(herold_store::Account {
                    id: (*id).into(),
                    display_name: String::new(),
                    created_at_ms: 1,
                })
                .await
                .unwrap();
        }
        for (conv, members) in groups {
            let members = members
                .iter()
                .map(|id| Member {
                    account_id: (*id).into(),
                    role: Role::Member,
                })
                .collect();
            store
                .create_conversation(
                    herold_store::Conversation {
                        id: (*conv).into(),
                        kind: ConversationKind::Group,
                        title: String::new(),
                        default_ttl_seconds: 0,
                        created_at_ms: 1,
                    },
                    members,
                )
                .await
                .unwrap();
        }
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(kind: ConversationKind, archived: bool) -> Roster {
        Roster {
            kind,
            archived,
            policy: Effective::org(&Limits::default(), None),
            members: HashMap::from([
                ("reader".to_owned(), Role::Member),
                ("lead".to_owned(), Role::Publisher),
            ]),
            devices: Vec::new(),
            device_accounts: HashMap::new(),
            sub_groups: 0,
        }
    }

    /// An embedded store holding group `conv` of `members` (accounts too).
    async fn group(conv: &str, members: &[&str]) -> (tempfile::TempDir, Arc<dyn Store>) {
        testing::store_with(members, &[(conv, members)]).await
    }

    #[tokio::test]
    async fn loads_leave_no_gate_behind() {
        let (_dir, store) = group("known", &["a"]).await;
        let rosters = Rosters::new(store, Limits::default());
        // A device asking for ids that do not exist, many times over.
        for i in 0..200 {
            assert!(rosters.get(&format!("nope-{i}")).await.unwrap().is_none());
        }
        let r = rosters.get("known").await.unwrap().unwrap();
        assert!(r.members.contains_key("a"));
        assert_eq!(rosters.loading.len(), 0);
        // Concurrent loads of one conversation share a gate and leave none.
        rosters.invalidate();
        let (x, y) = tokio::join!(rosters.get("known"), rosters.get("known"));
        assert!(x.unwrap().is_some() && y.unwrap().is_some());
        assert_eq!(rosters.loading.len(), 0);
    }

    /// A change no broadcast announced (every other path failed) is seen
    /// once the cached roster is older than [`ROSTER_TTL`].
    #[tokio::test(start_paused = true)]
    async fn a_cached_roster_is_read_again_after_its_ttl() {
        let (_dir, store) = group("c", &["a", "b"]).await;
        let rosters = Rosters::new(store.clone(), Limits::default());
        let has_b = async || {
            rosters
                .get("c")
                .await
                .unwrap()
                .unwrap()
                .members
                .contains_key("b")
        };
        assert!(has_b().await);
        store.remove_members("c", vec!["b".into()]).await.unwrap();
        tokio::time::advance(ROSTER_TTL - std::time::Duration::from_secs(1)).await;
        assert!(has_b().await);
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        assert!(!has_b().await, "read again after its TTL");
    }

    #[test]
    fn posting_rules() {
        let group = roster(ConversationKind::Group, false);
        assert_eq!(group.check_post("reader"), Ok(()));
        assert_eq!(group.check_post("stranger"), Err(PostRefusal::NotMember));
        let channel = roster(ConversationKind::Channel, false);
        assert_eq!(channel.check_post("lead"), Ok(()));
        assert_eq!(channel.check_post("reader"), Err(PostRefusal::NotPublisher));
        let archived = roster(ConversationKind::Channel, true);
        assert_eq!(archived.check_post("lead"), Err(PostRefusal::Archived));
        assert_eq!(archived.check_post("stranger"), Err(PostRefusal::NotMember));
        assert_eq!(
            PostRefusal::Archived.code(),
            ErrorCode::ConversationArchived
        );
    }
}
