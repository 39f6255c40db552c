//! The store's metrics, declared in one place (the relay installs the
//! recorder and serves them). Names follow `herold_<subsystem>_<thing>_<unit>`;
//! the only label is the operation's name (a fixed set, the [`crate::Store`]
//! methods), never an id.

use metrics::{Unit, describe_counter, describe_histogram};

/// Duration of one store operation, by `op` (the `Store` method).
pub const OPERATION_SECONDS: &str = "herold_store_operation_seconds";
/// Store operations that failed, by `op` and `kind` (`unavailable` for a
/// backend that could not be reached or answered, `rejected` for an
/// operation the store refused: not found, conflict, limit).
pub const ERRORS: &str = "herold_store_errors_total";

/// Help texts and units of the store's metrics.
pub fn describe() {
    describe_histogram!(
        OPERATION_SECONDS,
        Unit::Seconds,
        "Duration of store operations, by operation."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Store operations that failed, by operation and kind (unavailable, rejected)."
    );
}
