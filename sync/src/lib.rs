//! Concurrent building blocks of the relay, kept small and free of I/O so
//! that loom can check every interleaving of their threads (as tokio does:
//! the `shim` module swaps `std::sync` for `loom::sync` under `cfg(loom)`).
//! `scripts/loom.sh` runs the models; `scripts/test.sh` calls it.
//!
//! - [`Coalesced`]: requests for a background run folded into one worker
//!   (the cluster's resync and repair workers).
//! - [`MaxTable`]: the highest acknowledged seq per device and
//!   conversation, taken for a write and put back if the write fails (the
//!   relay's cursor sink).

#![warn(missing_docs)]

mod coalesced;
mod max_table;
mod shim;

pub use coalesced::Coalesced;
pub use max_table::{MaxTable, Taken};
