//! UDP datagrams the kernel dropped during a run, on both sides: the
//! relays' (from their `/metrics`) and the load tester's own sockets (from
//! `/proc/net/udp`). A latency measured while datagrams were dropped
//! measures the kernel's socket buffers and QUIC's loss recovery, not the
//! relay: the report puts these figures next to the latencies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a scrape of a relay's metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Socket buffers the load tester asks for: a fan-out to thousands of its
/// devices arrives as one burst of datagrams, and the kernel's default
/// (208 KiB) holds about a hundred of them.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The load tester's UDP sockets, as the kernel knows them.
#[derive(Debug, Default, Clone)]
pub struct OwnSockets {
    /// Socket inodes (`/proc/net/udp`'s `inode` column).
    inodes: Vec<u64>,
    /// The smallest receive buffer the kernel granted, in bytes of payload.
    granted: Option<usize>,
}

impl OwnSockets {
    /// Binds a client endpoint for `relay`'s address family on a socket
    /// with large buffers, and remembers the socket.
    pub fn endpoint(&mut self, relay: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
        let bind: SocketAddr = if relay.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .context("creating a client UDP socket")?;
        // Best effort: the kernel caps both at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        // Linux reports twice what it reserves for payload.
        let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
        self.granted = Some(self.granted.map_or(granted, |g| g.min(granted)));
        socket
            .bind(&bind.into())
            .context("binding a client UDP socket")?;
        let socket: std::net::UdpSocket = socket.into();
        if let Some(inode) = socket_inode(&socket) {
            self.inodes.push(inode);
        }
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .context("creating a QUIC endpoint")
    }

    /// The receive buffer the kernel granted each socket (the smallest),
    /// in bytes of payload; `None` before the first socket.
    pub fn granted_recv_buffer(&self) -> Option<usize> {
        self.granted
    }

    /// Datagrams dropped at these sockets so far; `None` without `/proc`.
    pub fn drops(&self) -> Option<u64> {
        let mut total = None;
        for table in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                let (d, _) = herold_proto::udpstat::socket_drops(&text, &self.inodes);
                total = Some(total.unwrap_or(0) + d);
            }
        }
        total
    }
}

/// The host's UDP receive-buffer errors (all sockets), if readable.
pub fn host_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    herold_proto::udpstat::host_rcvbuf_errors(&snmp)
}

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

/// A relay's UDP counters, from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayUdp {
    /// `herold_udp_datagrams_received_total`.
    pub received: u64,
    /// `herold_udp_datagrams_sent_total`.
    pub sent: u64,
    /// `herold_udp_receive_drops_total`.
    pub drops: u64,
}

impl RelayUdp {
    /// The counters of a Prometheus exposition.
    pub fn parse(exposition: &str) -> Self {
        let value = |name: &str| -> u64 {
            exposition
                .lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Self {
            received: value("herold_udp_datagrams_received_total"),
            sent: value("herold_udp_datagrams_sent_total"),
            drops: value("herold_udp_receive_drops_total"),
        }
    }

    /// What changed from `before` to `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            received: self.received.saturating_sub(before.received),
            sent: self.sent.saturating_sub(before.sent),
            drops: self.drops.saturating_sub(before.drops),
        }
    }

    /// The sum over relays.
    fn add(self, o: Self) -> Self {
        Self {
            received: self.received + o.received,
            sent: self.sent + o.sent,
            drops: self.drops + o.drops,
        }
    }
}

/// Scrapes one relay's `/metrics` (`http://host:port/metrics`).
pub async fn scrape(url: &str) -> anyhow::Result<RelayUdp> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// metrics URLs are supported"))?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/metrics".to_owned()),
    };
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .with_context(|| format!("scraping {url} timed out"))?
    .with_context(|| format!("scraping {url}"))?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{url}: {}", head.lines().next().unwrap_or("no status line"));
    }
    Ok(RelayUdp::parse(body))
}

/// Scrapes every relay and sums their counters.
pub async fn scrape_all(urls: &[String]) -> anyhow::Result<RelayUdp> {
    let mut total = RelayUdp::default();
    for u in urls {
        total = total.add(scrape(u).await?);
    }
    Ok(total)
}

/// Dropped datagrams over a run, both sides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UdpReport {
    /// The relays' counters over the run; `None` when their metrics could
    /// not be read (the reason is in `relay_error`).
    pub relay: Option<RelayUdp>,
    /// Why the relays' counters are missing.
    pub relay_error: Option<String>,
    /// Datagrams dropped at the load tester's own sockets over the run.
    pub loadtest_drops: Option<u64>,
    /// The host's UDP receive-buffer errors over the run (all processes).
    pub host_rcvbuf_errors: Option<u64>,
    /// The receive buffer the kernel granted each of the load tester's
    /// sockets, bytes of payload (capped by `net.core.rmem_max`).
    #[serde(default)]
    pub loadtest_recv_buffer_bytes: Option<u64>,
}

impl UdpReport {
    /// Whether any datagram is known to have been dropped.
    pub fn dropped_any(&self) -> bool {
        self.relay.is_some_and(|r| r.drops > 0)
            || self.loadtest_drops.is_some_and(|d| d > 0)
            || self.host_rcvbuf_errors.is_some_and(|d| d > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_udp_counters_of_an_exposition() {
        let text = "# HELP herold_udp_datagrams_received_total x\n\
# TYPE herold_udp_datagrams_received_total counter\n\
herold_udp_datagrams_received_total 1200\n\
herold_udp_datagrams_received_total_extra 5\n\
herold_udp_datagrams_sent_total{socket=\"a\"} 30\n\
herold_udp_datagrams_sent_total{socket=\"b\"} 12\n\
herold_udp_receive_drops_total 7\n";
        let r = RelayUdp::parse(text);
        assert_eq!(
            r,
            RelayUdp {
                received: 1200,
                sent: 42,
                drops: 7
            }
        );
        let before = RelayUdp {
            received: 200,
            sent: 2,
            drops: 7,
        };
        assert_eq!(
            r.since(before),
            RelayUdp {
                received: 1000,
                sent: 40,
                drops: 0
            }
        );
    }

    #[test]
    fn own_sockets_are_found_in_the_kernel_table() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut own = OwnSockets::default();
            let _e = own.endpoint("127.0.0.1:9".parse().unwrap()).unwrap();
            assert_eq!(own.inodes.len(), 1);
            assert_eq!(own.drops(), Some(0));
        });
    }
}
