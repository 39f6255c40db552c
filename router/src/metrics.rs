//! The router's metrics, declared in one place (the relay installs the
//! recorder and serves them). Names follow `herold_<subsystem>_<thing>_<unit>`;
//! labels are operation names (the [`crate::Router`] methods), never an id.

use metrics::{Unit, describe_counter, describe_histogram};

/// Duration of one router operation, by `op` (the `Router` method).
pub const OPERATION_SECONDS: &str = "herold_router_operation_seconds";
/// Router operations that failed, by `op`.
pub const ERRORS: &str = "herold_router_errors_total";
/// Age of a node-inbox entry when this relay read it (Redis stream id's
/// time to now): how far this relay's inbox consumer lags.
pub const INBOX_LAG_SECONDS: &str = "herold_router_inbox_lag_seconds";
/// Entries read from this relay's node inbox.
pub const INBOX_ENTRIES: &str = "herold_router_inbox_entries_total";
/// Times the inbox reported lost entries (trimmed, failover, undecodable),
/// each followed by a resync of every device from the store.
pub const INBOX_LAGGED: &str = "herold_router_inbox_lagged_total";

/// Help texts and units of the router's metrics.
pub fn describe() {
    describe_histogram!(
        OPERATION_SECONDS,
        Unit::Seconds,
        "Duration of router operations, by operation."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Router operations that failed, by operation."
    );
    describe_histogram!(
        INBOX_LAG_SECONDS,
        Unit::Seconds,
        "Age of a node-inbox entry when it was read."
    );
    describe_counter!(
        INBOX_ENTRIES,
        Unit::Count,
        "Entries read from the node inbox."
    );
    describe_counter!(
        INBOX_LAGGED,
        Unit::Count,
        "Times the node inbox reported lost entries (each followed by a resync)."
    );
}
