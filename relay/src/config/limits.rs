//! The limits protecting the relay and its other users from one client:
//! each with its default and where it comes from (flag, environment, file).

use std::time::Duration;

use super::args::{Args, FileConfig};

/// Most UDP sockets the relay opens on its QUIC port.
pub const MAX_UDP_SOCKETS: u32 = 64;
/// Fewest UDP sockets the relay opens by default, whatever its cores.
const MIN_DEFAULT_UDP_SOCKETS: u32 = 4;
/// Devices per second handed a delivery, per core, by default.
const FAN_OUT_RATE_PER_CORE: u32 = 32_000;
/// Bounds of `fan-out-rate`.
pub(super) const MIN_FAN_OUT_RATE: u32 = 1_000;
pub(super) const MAX_FAN_OUT_RATE: u32 = 10_000_000;

/// Restarts of one conversation's MLS group allowed at once before
/// `mls_restarts_per_hour` applies.
pub const MLS_RESTART_BURST: u32 = 2;

/// Limits protecting the relay and its other users from one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Devices one account may enroll.
    pub max_devices_per_account: u32,
    /// Largest client frame body, bytes.
    pub max_frame_bytes: u32,
    /// Largest ciphertext of one message, bytes.
    pub max_ciphertext_bytes: u32,
    /// Largest MLS commit plus Welcome, bytes (a commit adding many members
    /// to a large group is big: 2 MB for 7,000; docs/BENCHMARKS.md).
    pub max_handshake_bytes: u32,
    /// One-time MLS key packages kept per device.
    pub max_key_packages: u32,
    /// Concurrent client connections.
    pub max_connections: u32,
    /// Submits awaiting acceptance per connection.
    pub max_in_flight: u32,
    /// Deliveries queued per device before it is disconnected as slow.
    pub device_queue: u32,
    /// Time a connection has to authenticate.
    pub auth_timeout: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Longest expiry a message may ask for.
    pub max_expiry: Duration,
    /// Window over which a draining relay's devices spread their reconnects.
    pub drain_reconnect_spread: Duration,
    /// Receive buffer asked for on the QUIC socket.
    pub udp_recv_buffer_bytes: u32,
    /// Send buffer asked for on the QUIC socket.
    pub udp_send_buffer_bytes: u32,
    /// UDP sockets sharing the QUIC port.
    pub udp_sockets: u32,
    /// Devices per second handed a delivery.
    pub fan_out_rate: u32,
    /// Submits a second per device (burst: 4 s of it).
    pub submit_rate: u32,
    /// Submits a second per conversation through this relay (burst: 4 s).
    pub conversation_submit_rate: u32,
    /// Connections awaiting authentication, all addresses together.
    pub max_unauthenticated: u32,
    /// Connections awaiting authentication from one address (IPv6: /64).
    pub max_unauthenticated_per_address: u32,
    /// Handshakes a second one address may start (burst: 4 s of it).
    pub handshake_rate_per_address: u32,
    /// Unauthenticated connections above which a new one must first prove
    /// its address (QUIC Retry); 0: always.
    pub retry_above: u32,
    /// Authentications a second of one account's devices (burst: 4 s).
    pub auth_rate_per_account: u32,
    /// Failed enrollments a second from one address (burst: 4 s).
    pub enroll_failure_rate: u32,
    /// Restarts of one conversation's MLS group an hour through this relay
    /// (`ResetMlsGroup`, burst: [`MLS_RESTART_BURST`]).
    pub mls_restarts_per_hour: u32,
    /// Seconds between two purges of expired messages from the store.
    pub purge_interval_secs: u32,
    /// Submits waiting for the store on this relay, all devices together;
    /// beyond, new ones are refused UNAVAILABLE with a retry-after.
    pub max_pending_appends: u32,
    /// Longest a write to a device may block (it reads nothing) before the
    /// device is disconnected as a slow consumer; also the longest an
    /// attachment stream may make no progress.
    pub write_timeout: Duration,
    /// Largest attachment ciphertext, bytes: the ceiling of every policy.
    pub max_attachment_bytes: u64,
    /// Attachment streams served at once, all devices together.
    pub max_attachment_streams: u32,
    /// Within this, a device that stays away is woken once.
    pub push_coalesce: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_devices_per_account: 10,
            max_frame_bytes: 8 * 1024 * 1024 + 64 * 1024,
            max_ciphertext_bytes: 256 * 1024,
            max_handshake_bytes: 8 * 1024 * 1024,
            max_key_packages: 100,
            max_connections: 100_000,
            max_in_flight: 64,
            device_queue: 1024,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_expiry: Duration::from_secs(365 * 24 * 3600),
            drain_reconnect_spread: Duration::from_millis(2000),
            // A fan-out to thousands of devices answers with thousands of
            // acks at once: the kernel's default (208 KiB) drops them.
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            udp_send_buffer_bytes: 8 * 1024 * 1024,
            // At least 4 even on one core: quinn reads a socket for at
            // most 50 µs before it yields to the other tasks, so during a
            // fan-out to thousands of sessions each socket gets a small
            // share of the core; more sockets, more shares.
            udp_sockets: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                .clamp(MIN_DEFAULT_UDP_SOCKETS, MAX_UDP_SOCKETS),
            // About what one core serves (docs/BENCHMARKS.md, "Delivery
            // path"): faster, the acks of a channel post overflow the socket.
            fan_out_rate: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                .saturating_mul(FAN_OUT_RATE_PER_CORE)
                .min(MAX_FAN_OUT_RATE),
            // A person types far slower; a script that posts faster is
            // slowed down, not its conversation's readers.
            submit_rate: 50,
            conversation_submit_rate: 500,
            // A peer without an enrolled device can only hold connections
            // awaiting authentication (for auth_timeout each): a tenth of
            // the relay's connections, a few hundred per address (an
            // office or a carrier's NAT shares one).
            max_unauthenticated: 10_000,
            max_unauthenticated_per_address: 256,
            // Enough for an office's devices reconnecting together after a
            // relay left (they spread over drain_reconnect_spread).
            handshake_rate_per_address: 200,
            retry_above: 1_000,
            // An account has at most max_devices_per_account devices; a
            // script reconnecting in a loop is slowed, its devices are not.
            auth_rate_per_account: 5,
            // Codes cannot be guessed (60 bits); this bounds the store and
            // audit writes of a flood of wrong ones.
            enroll_failure_rate: 2,
            // A broken group is rare (a faulty or hostile member); each
            // restart has every device of the conversation rejoin, so a
            // member asking again and again must not keep it busy.
            mls_restarts_per_hour: 6,
            purge_interval_secs: 30,
            // Frames waiting to be written stay in the relay's memory;
            // QUIC's own window (2 MiB a connection) bounds how much.
            write_timeout: Duration::from_secs(30),
            // A message is at most 256 KiB: at most 256 MiB held for a
            // slow store, and thousands a second while it answers in ms.
            max_pending_appends: 1_024,
            // The city's current product takes files up to 100 MB.
            max_attachment_bytes: 100 * 1024 * 1024,
            // Each holds at most two chunks (128 KiB) in the relay's memory.
            max_attachment_streams: 256,
            // A burst of messages wakes a phone once; another minute of
            // them, once more.
            push_coalesce: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The limits the flags (or their environment) and the file set, each
    /// flag over the file over the default.
    pub(super) fn from_flags(args: &Args, file: &FileConfig) -> Self {
        let defaults = Limits::default();
        let secs = Duration::from_secs;
        Limits {
            max_devices_per_account: args
                .max_devices_per_account
                .or(file.max_devices_per_account)
                .unwrap_or(defaults.max_devices_per_account),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(defaults.max_frame_bytes),
            max_ciphertext_bytes: args
                .max_ciphertext_bytes
                .or(file.max_ciphertext_bytes)
                .unwrap_or(defaults.max_ciphertext_bytes),
            max_handshake_bytes: args
                .max_handshake_bytes
                .or(file.max_handshake_bytes)
                .unwrap_or(defaults.max_handshake_bytes),
            max_key_packages: args
                .max_key_packages
                .or(file.max_key_packages)
                .unwrap_or(defaults.max_key_packages),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_in_flight: args
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(defaults.max_in_flight),
            device_queue: args
                .device_queue
                .or(file.device_queue)
                .unwrap_or(defaults.device_queue),
            auth_timeout: args
                .auth_timeout_secs
                .or(file.auth_timeout_secs)
                .map_or(defaults.auth_timeout, secs),
            idle_timeout: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .map_or(defaults.idle_timeout, secs),
            max_expiry: args
                .max_expiry_days
                .or(file.max_expiry_days)
                .map_or(defaults.max_expiry, |d| secs(u64::from(d) * 24 * 3600)),
            drain_reconnect_spread: args
                .drain_reconnect_spread_ms
                .or(file.drain_reconnect_spread_ms)
                .map_or(defaults.drain_reconnect_spread, Duration::from_millis),
            udp_recv_buffer_bytes: args
                .udp_recv_buffer_bytes
                .or(file.udp_recv_buffer_bytes)
                .unwrap_or(defaults.udp_recv_buffer_bytes),
            udp_send_buffer_bytes: args
                .udp_send_buffer_bytes
                .or(file.udp_send_buffer_bytes)
                .unwrap_or(defaults.udp_send_buffer_bytes),
            udp_sockets: args
                .udp_sockets
                .or(file.udp_sockets)
                .unwrap_or(defaults.udp_sockets),
            fan_out_rate: args
                .fan_out_rate
                .or(file.fan_out_rate)
                .unwrap_or(defaults.fan_out_rate),
            submit_rate: args
                .submit_rate
                .or(file.submit_rate)
                .unwrap_or(defaults.submit_rate),
            conversation_submit_rate: args
                .conversation_submit_rate
                .or(file.conversation_submit_rate)
                .unwrap_or(defaults.conversation_submit_rate),
            max_unauthenticated: args
                .max_unauthenticated
                .or(file.max_unauthenticated)
                .unwrap_or(defaults.max_unauthenticated),
            max_unauthenticated_per_address: args
                .max_unauthenticated_per_address
                .or(file.max_unauthenticated_per_address)
                .unwrap_or(defaults.max_unauthenticated_per_address),
            handshake_rate_per_address: args
                .handshake_rate_per_address
                .or(file.handshake_rate_per_address)
                .unwrap_or(defaults.handshake_rate_per_address),
            retry_above: args
                .retry_above
                .or(file.retry_above)
                .unwrap_or(defaults.retry_above),
            auth_rate_per_account: args
                .auth_rate_per_account
                .or(file.auth_rate_per_account)
                .unwrap_or(defaults.auth_rate_per_account),
            enroll_failure_rate: args
                .enroll_failure_rate
                .or(file.enroll_failure_rate)
                .unwrap_or(defaults.enroll_failure_rate),
            mls_restarts_per_hour: args
                .mls_restarts_per_hour
                .or(file.mls_restarts_per_hour)
                .unwrap_or(defaults.mls_restarts_per_hour),
            purge_interval_secs: args
                .purge_interval_secs
                .or(file.purge_interval_secs)
                .unwrap_or(defaults.purge_interval_secs),
            max_pending_appends: args
                .max_pending_appends
                .or(file.max_pending_appends)
                .unwrap_or(defaults.max_pending_appends),
            write_timeout: args
                .write_timeout_secs
                .or(file.write_timeout_secs)
                .map_or(defaults.write_timeout, Duration::from_secs),
            max_attachment_bytes: args
                .max_attachment_bytes
                .or(file.max_attachment_bytes)
                .unwrap_or(defaults.max_attachment_bytes),
            max_attachment_streams: args
                .max_attachment_streams
                .or(file.max_attachment_streams)
                .unwrap_or(defaults.max_attachment_streams),
            push_coalesce: args
                .push_coalesce_secs
                .or(file.push_coalesce_secs)
                .map_or(defaults.push_coalesce, Duration::from_secs),
        }
    }
}
