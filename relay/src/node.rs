//! The node's state: what every task of this relay shares, and the clock.
//!
//! Tasks get the narrowest handle that serves them: a session gets
//! [`Shared`] (it needs nearly all of it), the admin API its
//! `admin::AdminNode` (the store, the limits and the [`Cluster`]), the
//! inbox consumer only the [`Cluster`] and the [`Pacer`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use herold_router::Router;
use herold_store::Store;

use crate::admission::Admission;
use crate::cluster::Cluster;
use crate::config::Limits;
use crate::cursors::CursorSink;
use crate::pacer::Pacer;
use crate::rate::Buckets;
use crate::reads::SharedReads;

use crate::registry::Registry;
use crate::roster::Rosters;

/// Conversations whose submit rate is tracked at once before the idle ones
/// are forgotten.
const MAX_RATED_CONVERSATIONS: usize = 100_000;
/// Accounts whose authentication rate is tracked at once, likewise.
const MAX_RATED_ACCOUNTS: usize = 100_000;

/// Wall clock in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// State shared by every task of the relay.
#[derive(Debug)]
pub(crate) struct Shared {
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub router: Arc<dyn Router>,
    pub registry: Arc<Registry>,
    pub rosters: Arc<Rosters>,
    pub cursors: CursorSink,
    pub limits: Limits,
    /// Whether logs may carry client IP addresses (off by default).
    pub log_client_addresses: bool,
    /// Fan-outs under way: a drain waits for them before the relay leaves
    /// the router, so what it accepted reaches the other relays live.
    pub fan_outs: tokio_util::task::TaskTracker,
    /// Spreads deliveries to this node's devices over time.
    pub pacer: Arc<Pacer>,
    /// Directory changes told to and heard from the other relays.
    pub cluster: Arc<Cluster>,
    /// Submits per conversation through this relay.
    pub conversation_rates: Buckets,
    /// Authentications per account on this relay.
    pub account_auths: Buckets,
    /// Restarts of MLS groups per conversation through this relay.
    pub mls_restarts: Buckets,
    /// Connections awaiting authentication, per address and in total.
    pub admission: Arc<Admission>,
    /// Places for appends waiting for the store (`max_pending_appends`).
    pub appends: tokio::sync::Semaphore,
    /// Attachment streams served at once (`max_attachment_streams`).
    pub attachment_streams: Arc<tokio::sync::Semaphore>,
    /// Wakes devices connected nowhere.
    pub push: Arc<crate::push::Pusher>,
    /// Push endpoint registrations per device.
    pub push_registrations: Buckets,
    /// Link codes issued per account (`session::link`).
    pub link_codes: Buckets,
    /// Log reads of the sessions, shared when they ask at once.
    pub reads: Arc<SharedReads>,
}

impl Shared {
    /// The node's state on these backends.
    pub fn new(
        node_id: String,
        store: Arc<dyn Store>,
        router: Arc<dyn Router>,
        limits: &Limits,
        log_client_addresses: bool,
        push: Arc<crate::push::Pusher>,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let rosters = Arc::new(Rosters::new(store.clone(), limits.clone()));
        let cluster = Arc::new(Cluster::new(
            node_id.clone(),
            router.clone(),
            store.clone(),
            registry.clone(),
            rosters.clone(),
        ));
        Self {
            node_id,
            pacer: Arc::new(Pacer::new(limits.fan_out_rate, registry.clone())),
            reads: SharedReads::new(store.clone()),
            store,
            router,
            registry,
            rosters,
            cursors: CursorSink::default(),
            limits: limits.clone(),
            log_client_addresses,
            fan_outs: tokio_util::task::TaskTracker::new(),
            cluster,
            conversation_rates: Buckets::new(
                limits.conversation_submit_rate,
                MAX_RATED_CONVERSATIONS,
            ),
            account_auths: Buckets::new(limits.auth_rate_per_account, MAX_RATED_ACCOUNTS),
            mls_restarts: Buckets::per_hour(
                limits.mls_restarts_per_hour,
                crate::config::MLS_RESTART_BURST,
                MAX_RATED_CONVERSATIONS,
            ),
            admission: Admission::new(limits),
            appends: tokio::sync::Semaphore::new(limits.max_pending_appends as usize),
            attachment_streams: Arc::new(tokio::sync::Semaphore::new(
                limits.max_attachment_streams as usize,
            )),
            push,
            // An app registers once and again when its distributor changes.
            push_registrations: Buckets::new(1, MAX_RATED_ACCOUNTS),
            link_codes: Buckets::per_hour(
                crate::codes::LINK_CODES_PER_HOUR,
                crate::codes::LINK_CODE_BURST,
                MAX_RATED_ACCOUNTS,
            ),
        }
    }
}
