//! The relay's UDP socket, counted: every datagram quinn sends or receives
//! through it increments a counter, and the kernel's drops at the socket
//! (its receive buffer was full) are read from `/proc/net/udp` when
//! `/metrics` is scraped. A datagram dropped there is invisible to QUIC
//! until loss recovery notices, which is where seconds of latency come from:
//! SREs must see it.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use metrics::Counter;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics as m;

/// A quinn socket that counts the datagrams passing through it.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    received: Counter,
    sent: Counter,
}

/// Datagrams in a buffer of `len` bytes cut at `stride` (GRO/GSO batches).
fn datagrams(len: usize, stride: usize) -> u64 {
    if stride == 0 || len <= stride {
        1
    } else {
        len.div_ceil(stride) as u64
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let n = match transmit.segment_size {
            Some(s) => datagrams(transmit.contents.len(), s),
            None => 1,
        };
        self.sent.increment(n);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let r = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &r {
            let count: u64 = meta
                .iter()
                .take(*n)
                .map(|m| datagrams(m.len, m.stride))
                .sum();
            self.received.increment(count);
        }
        r
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What identifies the relay's sockets in the kernel's tables.
#[derive(Debug, Clone)]
pub(crate) struct SocketStats {
    /// The sockets' inodes (`/proc/net/udp`'s `inode` column); empty where
    /// `/proc` is not available.
    inodes: Vec<u64>,
}

impl SocketStats {
    /// Reads the kernel's counters into the metrics: the sockets' drops,
    /// the host's receive-buffer errors. Cheap (two small files); called on
    /// every scrape.
    pub fn refresh(&self) {
        if self.inodes.is_empty() {
            return;
        }
        let mut drops = 0u64;
        for table in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                drops += herold_proto::udpstat::socket_drops(&text, &self.inodes).0;
            }
        }
        metrics::counter!(m::UDP_RECEIVE_DROPS).absolute(drops);
        if let Some(e) = std::fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|s| herold_proto::udpstat::host_rcvbuf_errors(&s))
        {
            metrics::counter!(m::UDP_HOST_RCVBUF_ERRORS).absolute(e);
        }
    }
}

/// Binds the relay's QUIC endpoints: `sockets` UDP sockets on one port
/// (`SO_REUSEPORT`; the kernel spreads the clients over them by address, so
/// each socket has its own receive queue and its own task draining it), each
/// counted and with the configured buffers. The endpoints share one
/// configuration, stateless-reset key included: a device whose address
/// changes mid-connection lands on another socket, which resets the
/// connection at once, and the device reconnects and syncs.
pub(crate) fn bind(
    server_config: quinn::ServerConfig,
    addr: SocketAddr,
    limits: &crate::config::Limits,
) -> anyhow::Result<(Vec<quinn::Endpoint>, SocketStats)> {
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let endpoint_config = quinn::EndpointConfig::default();
    let received = metrics::counter!(m::UDP_RECEIVED);
    let sent = metrics::counter!(m::UDP_SENT);
    let n = limits.udp_sockets.max(1) as usize;
    let mut endpoints = Vec::with_capacity(n);
    let mut inodes = Vec::with_capacity(n);
    // The first socket picks the port when `addr` asks for any (port 0);
    // the others join it.
    let mut addr = addr;
    for i in 0..n {
        let socket = new_socket(addr, n > 1, limits)
            .with_context(|| format!("binding UDP socket {} of {n} on {addr}", i + 1))?;
        if i == 0 {
            addr = socket.local_addr()?;
            if let Ok(size) = socket2::SockRef::from(&socket).recv_buffer_size() {
                metrics::gauge!(m::UDP_RECEIVE_BUFFER).set(size as f64);
            }
        }
        if let Some(inode) = socket_inode(&socket) {
            inodes.push(inode);
        }
        let inner = runtime.wrap_udp_socket(socket)?;
        let socket = Arc::new(CountingSocket {
            inner,
            received: received.clone(),
            sent: sent.clone(),
        });
        endpoints.push(quinn::Endpoint::new_with_abstract_socket(
            endpoint_config.clone(),
            Some(server_config.clone()),
            socket,
            runtime.clone(),
        )?);
    }
    let stats = SocketStats { inodes };
    stats.refresh();
    Ok((endpoints, stats))
}

/// One UDP socket of the relay, buffers sized, bound to `addr`.
fn new_socket(
    addr: SocketAddr,
    reuse_port: bool,
    limits: &crate::config::Limits,
) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Clients on IPv4 reach an IPv6 wildcard too, as with std's bind.
        let _ = socket.set_only_v6(false);
    }
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    size_buffers(&socket, limits);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
fn set_reuse_port(socket: &socket2::Socket) -> anyhow::Result<()> {
    socket
        .set_reuse_port(true)
        .context("SO_REUSEPORT (for several sockets on one port)")
}

#[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
fn set_reuse_port(_: &socket2::Socket) -> anyhow::Result<()> {
    anyhow::bail!("several UDP sockets on one port need SO_REUSEPORT: set --udp-sockets 1")
}

/// Asks the kernel for the configured socket buffers and says so when it
/// grants less: Linux caps the request at `net.core.rmem_max` /
/// `wmem_max`, and reports twice what it reserves for payload (its
/// bookkeeping included), so the grant is compared at half.
fn size_buffers(s: &socket2::Socket, limits: &crate::config::Limits) {
    let want_recv = limits.udp_recv_buffer_bytes as usize;
    let want_send = limits.udp_send_buffer_bytes as usize;
    let _ = s.set_recv_buffer_size(want_recv);
    let _ = s.set_send_buffer_size(want_send);
    let payload = |reported: usize| {
        if cfg!(target_os = "linux") {
            reported / 2
        } else {
            reported
        }
    };
    let got_recv = payload(s.recv_buffer_size().unwrap_or(0));
    let got_send = payload(s.send_buffer_size().unwrap_or(0));
    if got_recv < want_recv {
        tracing::warn!(
            requested = want_recv,
            granted = got_recv,
            "the kernel granted a smaller UDP receive buffer than configured: raise \
             net.core.rmem_max, or bursts of acks may be dropped (docs/operations.md)"
        );
    }
    if got_send < want_send {
        tracing::warn!(
            requested = want_send,
            granted = got_send,
            "the kernel granted a smaller UDP send buffer than configured: raise net.core.wmem_max"
        );
    }
}

/// The inode of a socket, as `/proc/self/fd/<fd>` reports it.
#[cfg(unix)]
fn socket_inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

#[cfg(not(unix))]
fn socket_inode(_: &std::net::UdpSocket) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gro_buffer_counts_each_datagram() {
        assert_eq!(datagrams(1200, 1200), 1);
        assert_eq!(datagrams(100, 1200), 1);
        assert_eq!(datagrams(3600, 1200), 3);
        assert_eq!(datagrams(3601, 1200), 4);
        assert_eq!(datagrams(10, 0), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_its_own_socket_in_the_kernel_table() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inode = socket_inode(&socket).expect("the socket's inode");
        let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
        assert_eq!(herold_proto::udpstat::socket_drops(&table, &[inode]).1, 1);
    }
}
