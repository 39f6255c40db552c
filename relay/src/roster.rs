//! Roster cache: a conversation's kind, members and their devices, loaded
//! from the store once and reused for every message until the directory
//! changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use herold_store::{ConversationKind, Role, Store, StoreError};

/// What a submit and a fan-out need to know about a conversation.
#[derive(Debug)]
pub(crate) struct Roster {
    pub kind: ConversationKind,
    pub default_ttl_seconds: u64,
    pub members: HashMap<String, Role>,
    /// Every non-revoked device of every member.
    pub devices: Vec<String>,
}

/// The cache. Any directory change invalidates all of it: changes are rare
/// (admin actions), messages are many.
#[derive(Debug)]
pub(crate) struct Rosters {
    store: Arc<dyn Store>,
    cache: DashMap<String, Arc<Roster>>,
    /// Per-conversation load gates (an async mutex: held across the store
    /// reads of one load).
    loading: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bumped on every invalidation, so that a load racing an invalidation
    /// does not put a stale roster back.
    generation: AtomicU64,
}

impl Rosters {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: DashMap::new(),
            loading: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// The conversation's roster; `None` if it does not exist.
    pub async fn get(&self, conversation_id: &str) -> Result<Option<Arc<Roster>>, StoreError> {
        if let Some(r) = self.cache.get(conversation_id) {
            return Ok(Some(r.clone()));
        }
        // One load per conversation at a time: concurrent submits to a cold
        // 7,000-member channel wait for the first load instead of repeating it.
        let gate = self
            .loading
            .entry(conversation_id.to_owned())
            .or_default()
            .clone();
        let _loading = gate.lock().await;
        if let Some(r) = self.cache.get(conversation_id) {
            return Ok(Some(r.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(conv) = self.store.get_conversation(conversation_id).await? else {
            return Ok(None);
        };
        let members = self.store.members(conversation_id).await?;
        let devices = self
            .store
            .devices_of(members.iter().map(|m| m.account_id.clone()).collect())
            .await?
            .into_iter()
            .filter(|d| !d.revoked)
            .map(|d| d.id)
            .collect();
        let roster = Arc::new(Roster {
            kind: conv.kind,
            default_ttl_seconds: conv.default_ttl_seconds,
            members: members
                .into_iter()
                .map(|m| (m.account_id, m.role))
                .collect(),
            devices,
        });
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache
                .insert(conversation_id.to_owned(), roster.clone());
        }
        Ok(Some(roster))
    }

    /// Forgets everything; called after any directory change.
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
