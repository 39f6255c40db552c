//! The Herold load tester.
//!
//! # Layout
//! - [`scenario`]: the TOML scenario files (population, conversations,
//!   traffic, bursts) and their validation.
//! - [`world`]: the simulated population built from a scenario, and its
//!   provisioning through the admin API.
//! - [`run`]: the engine. Every simulated device is a real SDK client over
//!   QUIC; sends follow an open-loop Poisson schedule; every delivery is
//!   checked (exactly once, in the conversation's order, only to members);
//!   latencies are measured from the intended send time.
//! - [`check`]: every delivery checked against every acceptance; silences
//!   and recoveries.
//! - [`slice`]: several load generators on one scenario, each its share
//!   of the population, and the merge of their reports into one verdict.
//! - `files`: attachments in the traffic (uploaded, then fetched by every
//!   recipient device).
//! - [`report`]: JSON, Markdown and SVG plots.
//! - [`plan`]: the capacity model of `docs/capacity.md` (`herold-plan`).
//! - [`udp`]: datagrams the kernel dropped during the run, at the relays
//!   (their `/metrics`) and at the load tester's own sockets.
//!
//! `docs/loadtest.md` tells an SRE how to run a pre-election load test.

#![warn(missing_docs)]

pub mod check;
mod files;
pub mod plan;
pub mod report;
pub mod run;
pub mod scenario;
pub mod slice;
pub mod udp;
pub mod world;

pub use report::Report;
pub use run::{Target, run};
pub use scenario::Scenario;
