//! Content-free push (docs/push.md): when a message arrives for a device
//! that is connected nowhere, the relay asks the device's push gateway to
//! wake it. The request carries no content and no sender: an empty Web
//! Push message (RFC 8030), one per device per burst.
//!
//! - **Coalesced.** A device is woken at most once per `coalesce` window
//!   while it stays away; it connecting again starts a new burst.
//! - **Endpoints are user input.** A device registers its own endpoint;
//!   [`check_endpoint`] refuses anything but `https://` to a public
//!   address, unless the endpoint lies under a gateway the operator named
//!   (`--push-gateways`, which may then be internal and plain `http://`).
//!   Names are resolved by the relay, which connects only to an address it
//!   checked, so a name that resolves to an internal address (DNS
//!   rebinding) is refused at send time too. No redirects are followed.
//! - **Bounded.** Wake-ups wait in a queue of [`QUEUE`]; at most
//!   [`CONCURRENCY`] requests are under way, each within [`TIMEOUT`].
//!   Beyond, wake-ups are dropped and counted, never held.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use herold_store::Store;
use http_body_util::Empty;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::metrics as m;

/// Wake-ups waiting to be sent.
pub const QUEUE: usize = 10_000;
/// Requests to push gateways under way at once.
pub const CONCURRENCY: usize = 32;
/// Longest a request to a gateway may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest endpoint accepted, bytes.
pub const MAX_ENDPOINT_BYTES: usize = 1024;
/// How long the gateway keeps a wake-up for a device it cannot reach.
const TTL_SECS: u32 = 24 * 3600;
/// Past this many remembered devices, those woken long ago are forgotten.
const MAX_REMEMBERED: usize = 200_000;

/// An endpoint that passed [`check_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub uri: http::Uri,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Under a gateway the operator named: its addresses are not checked.
    pub trusted: bool,
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, link-local, shared (CGNAT), multicast, documentation or
/// otherwise reserved, in IPv4 or IPv6 (IPv4-mapped included).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// Checks a device's push endpoint (see the module doc); the reason to
/// tell the device otherwise.
pub fn check_endpoint(endpoint: &str, gateways: &[String]) -> Result<Endpoint, String> {
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(format!(
            "the endpoint has {} bytes; the limit is {MAX_ENDPOINT_BYTES}",
            endpoint.len()
        ));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("the endpoint is not a URL: {e}"))?;
    let trusted = gateways.iter().any(|g| endpoint.starts_with(g.as_str()));
    if !gateways.is_empty() && !trusted {
        return Err("the endpoint is not under one of this relay's push gateways".into());
    }
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if trusted => false,
        _ => return Err("the endpoint must be an https:// URL".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the endpoint names no host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("the endpoint must not carry a user name or password".into());
    }
    let host = authority.host().trim_matches(['[', ']']).to_owned();
    if host.is_empty() {
        return Err("the endpoint names no host".into());
    }
    if !trusted
        && let Ok(ip) = host.parse::<IpAddr>()
        && !is_public(ip)
    {
        return Err(format!("the endpoint's address {ip} is not a public one"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Endpoint {
        uri,
        tls,
        host,
        port,
        trusted,
    })
}

/// Normalises the operator's gateway prefixes: each an `http(s)://` URL
/// whose prefix ends in `/`, so `http://gw:80` cannot match `http://gw:8080`.
pub fn gateway_prefixes(gateways: &[String]) -> Result<Vec<String>, String> {
    gateways
        .iter()
        .map(|g| {
            let g = g.trim();
            let uri: http::Uri = g
                .parse()
                .map_err(|e| format!("push gateway {g:?} is not a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!("push gateway {g:?} must be an http(s):// URL"));
            }
            Ok(if g.ends_with('/') {
                g.to_owned()
            } else {
                format!("{g}/")
            })
        })
        .collect()
}

/// The task that sends the wake-ups: run it with `tokio::spawn(w.0)`.
pub(crate) struct Worker(pub std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("push::Worker")
    }
}

/// Wakes devices that are not connected.
#[derive(Debug)]
pub(crate) struct Pusher {
    gateways: Vec<String>,
    coalesce: Duration,
    /// When each device was last considered for a wake-up.
    woken: DashMap<String, Instant>,
    queue: mpsc::Sender<String>,
}

impl Pusher {
    /// A pusher and its worker (run it as a task).
    pub fn new(
        store: Arc<dyn Store>,
        gateways: Vec<String>,
        coalesce: Duration,
    ) -> (Arc<Self>, Worker) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pusher = Arc::new(Self {
            gateways,
            coalesce,
            woken: DashMap::new(),
            queue: tx,
        });
        let worker = Worker(Box::pin(work(pusher.clone(), store, rx)));
        (pusher, worker)
    }

    /// The operator's gateway prefixes.
    pub fn gateways(&self) -> &[String] {
        &self.gateways
    }

    /// Messages arrived for `devices`, connected nowhere: wake those not
    /// woken within the window.
    pub fn offline<'a>(&self, devices: impl Iterator<Item = &'a str>) {
        let now = Instant::now();
        if self.woken.len() > MAX_REMEMBERED {
            self.woken
                .retain(|_, at| now.saturating_duration_since(*at) < self.coalesce);
        }
        for d in devices {
            let due = match self.woken.get(d) {
                Some(at) => now.saturating_duration_since(*at) >= self.coalesce,
                None => true,
            };
            if !due {
                metrics::counter!(m::PUSHES, "outcome" => "coalesced").increment(1);
                continue;
            }
            self.woken.insert(d.to_owned(), now);
            if self.queue.try_send(d.to_owned()).is_err() {
                metrics::counter!(m::PUSHES, "outcome" => "dropped").increment(1);
            }
        }
    }

    /// The device connected (or changed its endpoint): its next message
    /// while away starts a new burst.
    pub fn forget(&self, device: &str) {
        self.woken.remove(device);
    }
}

async fn work(pusher: Arc<Pusher>, store: Arc<dyn Store>, mut rx: mpsc::Receiver<String>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    // Without TLS only the operator's plain-http gateways can be called.
    let tls = match tls_config() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            warn!(error = %e, "push: no TLS to gateways");
            None
        }
    };
    while let Some(device) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (pusher, store, tls) = (pusher.clone(), store.clone(), tls.clone());
        tokio::spawn(async move {
            let outcome = wake(&pusher, &*store, &tls, &device).await;
            metrics::counter!(m::PUSHES, "outcome" => outcome).increment(1);
            drop(slot);
        });
    }
}

/// TLS to push gateways: the Web PKI's roots, rustls's safe defaults.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// One wake-up; the outcome label.
async fn wake(
    pusher: &Pusher,
    store: &dyn Store,
    tls: &Option<Arc<rustls::ClientConfig>>,
    device: &str,
) -> &'static str {
    let endpoint = match store.push_endpoint(device).await {
        Ok(Some(e)) => e,
        Ok(None) => return "no_endpoint",
        Err(e) => {
            warn!(error = %e, "push: store unavailable");
            return "store_failed";
        }
    };
    let ep = match check_endpoint(&endpoint, &pusher.gateways) {
        Ok(ep) => ep,
        // Registered under other settings: refused now.
        Err(why) => {
            debug!(%why, "push endpoint refused");
            return "forbidden";
        }
    };
    match tokio::time::timeout(TIMEOUT, send(&ep, tls)).await {
        Ok(Ok(status)) if status.is_success() => "sent",
        Ok(Ok(status))
            if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE =>
        {
            // The subscription is gone (RFC 8030, section 7.3): forget it.
            if let Err(e) = store.set_push_endpoint(device, None).await {
                warn!(error = %e, "push: forgetting a gone endpoint failed");
            }
            "gone"
        }
        Ok(Ok(status)) => {
            debug!(%status, "push gateway refused");
            "refused"
        }
        Ok(Err(Forbidden)) => "forbidden",
        Err(_) => "timeout",
    }
}

/// The endpoint resolved only to addresses the relay may not call, or the
/// request failed (both end the same way: no wake-up).
struct Forbidden;

/// Resolves, checks the address, connects and posts an empty message.
async fn send(
    ep: &Endpoint,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> Result<http::StatusCode, Forbidden> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|_| Forbidden)?
        .filter(|a| ep.trusted || is_public(a.ip()))
        .collect();
    let addr = *addrs.first().ok_or(Forbidden)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| Forbidden)?;
    let path = ep
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    let authority = ep
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header("ttl", TTL_SECS.to_string())
        .header("urgency", "high")
        // Later wake-ups replace this one at the gateway.
        .header("topic", "wake")
        .header(http::header::CONTENT_LENGTH, "0")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|_| Forbidden)?;
    if ep.tls {
        let name =
            rustls_pki_types::ServerName::try_from(ep.host.clone()).map_err(|_| Forbidden)?;
        let tls = tls.clone().ok_or(Forbidden)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|_| Forbidden)?;
        post(hyper_util::rt::TokioIo::new(stream), request).await
    } else {
        post(hyper_util::rt::TokioIo::new(tcp), request).await
    }
}

async fn post<T>(
    io: T,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::StatusCode, Forbidden>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| Forbidden)?;
    let driver = tokio::spawn(conn);
    let status = sender
        .send_request(request)
        .await
        .map(|r| r.status())
        .map_err(|_| Forbidden);
    driver.abort();
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_endpoints_or_the_operators_gateways() {
        let none: Vec<String> = Vec::new();
        assert!(check_endpoint("https://push.example.org/up/abc", &none).is_ok());
        assert!(check_endpoint("https://93.184.215.14/x", &none).is_ok());
        for bad in [
            "http://push.example.org/up/abc",
            "ftp://push.example.org/",
            "https://user:pw@push.example.org/",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://0.0.0.0/",
            "not a url",
        ] {
            assert!(check_endpoint(bad, &none).is_err(), "{bad}");
        }
        let long = format!(
            "https://push.example.org/{}",
            "a".repeat(MAX_ENDPOINT_BYTES)
        );
        assert!(check_endpoint(&long, &none).is_err());

        let gw = gateway_prefixes(&["http://127.0.0.1:8080".into()]).unwrap();
        assert_eq!(gw, ["http://127.0.0.1:8080/"]);
        let ep = check_endpoint("http://127.0.0.1:8080/up/1", &gw).unwrap();
        assert!(ep.trusted && !ep.tls);
        assert_eq!((ep.host.as_str(), ep.port), ("127.0.0.1", 8080));
        // With gateways named, nothing else.
        assert!(check_endpoint("http://127.0.0.1:80800/up/1", &gw).is_err());
        assert!(check_endpoint("https://push.example.org/up/abc", &gw).is_err());
        assert!(gateway_prefixes(&["gopher://x/".into()]).is_err());
    }
}
