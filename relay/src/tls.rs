//! TLS for the QUIC endpoint (TLS 1.3 only, ALPN `herold/1`, and `h3` for
//! browsers' WebTransport) and for the TCP fallback (the same identity,
//! ALPN `http/1.1`), and the development certificate that is generated
//! once and kept with the data.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

use crate::config::{Config, TlsSource};

/// A certificate chain with its key, and the SHA-256 fingerprint of the leaf
/// that clients pin.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub fingerprint: String,
}

/// Lowercase hex SHA-256 of a DER certificate: what `herold --fingerprint` pins.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// Loads the configured identity, generating the dev certificate if needed.
pub fn load_identity(config: &Config) -> anyhow::Result<Identity> {
    match &config.tls {
        TlsSource::DevSelfSigned => dev_identity(&config.data_dir.join("tls")),
        TlsSource::Files { cert, key } => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading certificate {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing certificate {}", cert.display()))?;
            let Some(leaf) = chain.first() else {
                bail!("no certificate in {}", cert.display());
            };
            let fingerprint = fingerprint(leaf);
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading private key {}", key.display()))?;
            Ok(Identity {
                chain,
                key,
                fingerprint,
            })
        }
    }
}

/// The dev certificate in `dir` (`cert.der`, `key.der`, `cert.sha256`),
/// created on first use. Valid for `localhost` and 127.0.0.1.
fn dev_identity(dir: &Path) -> anyhow::Result<Identity> {
    let cert_path = dir.join("cert.der");
    let key_path = dir.join("key.der");
    let fp_path = dir.join("cert.sha256");
    if !cert_path.exists() || !key_path.exists() {
        create_dev_identity(dir)?;
    }
    let cert =
        std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let fingerprint = fingerprint(&cert);
    std::fs::write(&fp_path, format!("{fingerprint}\n"))
        .with_context(|| format!("writing {}", fp_path.display()))?;
    Ok(Identity {
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        fingerprint,
    })
}

/// Creates the dev certificate and key in a fresh folder next to `dir` and
/// renames it into place, so relays started at once on one data directory
/// (a cluster on one machine) all end up with the same certificate: the
/// first rename wins, the others read the winner's.
fn create_dev_identity(dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let tmp = parent.join(format!(".tls-{}", hex::encode(salt)));
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let made = (|| {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .context("generating the development certificate")?;
        write_private(&tmp.join("key.der"), &ck.signing_key.serialize_der())?;
        let cert = tmp.join("cert.der");
        std::fs::write(&cert, ck.cert.der()).with_context(|| format!("writing {}", cert.display()))
    })();
    let placed = made.and_then(|()| {
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another relay may have placed its certificate first: use that.
        if !(dir.join("cert.der").exists() && dir.join("key.der").exists()) {
            return Err(e);
        }
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// The TLS of the TCP fallback (docs/web.md): the same identity, TLS 1.3
/// only, ALPN `http/1.1` for the WebSocket upgrade that follows.
pub(crate) fn tcp_acceptor(identity: &Identity) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the certificate and key do not match or are unsupported")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls.max_early_data_size = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Bytes sent to one device and not yet acknowledged, at most.
pub(crate) const SEND_WINDOW_BYTES: u64 = 2 * 1024 * 1024;

/// The ALPN of HTTP/3, which a browser's WebTransport speaks.
pub(crate) const H3_ALPN: &[u8] = b"h3";

/// How long the certificate pinned for WebTransport is valid: browsers
/// accept a pinned certificate of at most 14 days (W3C WebTransport,
/// `serverCertificateHashes`).
const PINNED_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// The certificate browsers get on QUIC when the relay's own is the
/// development certificate, which no browser trusts: a short-lived ECDSA
/// P-256 certificate made at start, which the relay's pages pin by its
/// SHA-256 (`/v1/transports`, docs/web.md).
#[derive(Debug)]
pub(crate) struct PinnedCert {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the certificate's DER.
    pub hash: [u8; 32],
}

/// A pinned certificate older than this is replaced at start, so that one
/// made at start lasts the relay a week at least.
const PINNED_RENEW_AFTER: Duration = Duration::from_secs(6 * 24 * 3600);

impl PinnedCert {
    /// The pinned certificate kept in `dir` (`webtransport.pem`, the
    /// certificate and its key), made anew when missing or older than
    /// [`PINNED_RENEW_AFTER`]: kept so that a page's pin survives a restart
    /// of the relay. Written whole by a rename, so relays started at once
    /// on one data directory never read half of one.
    pub(crate) fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("webtransport.pem");
        let made = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let fresh = made.is_some_and(|t| {
            std::time::SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age < PINNED_RENEW_AFTER)
        });
        if fresh && let Some(kept) = std::fs::read(&path).ok().and_then(|pem| Self::parse(&pem)) {
            return Ok(kept);
        }
        let (new, pem) = Self::generate()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let tmp = dir.join(format!(".webtransport-{}.pem", hex::encode(salt)));
        write_private(&tmp, pem.as_bytes())?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("moving {} to {}", tmp.display(), path.display()))?;
        Ok(new)
    }

    fn parse(pem: &[u8]) -> Option<Self> {
        let cert = CertificateDer::from_pem_slice(pem).ok()?;
        let key = PrivateKeyDer::from_pem_slice(pem).ok()?;
        Some(Self {
            hash: Sha256::digest(&cert).into(),
            cert,
            key,
        })
    }

    /// A new certificate for the development names, valid from an hour ago
    /// (clocks differ) for [`PINNED_VALIDITY`], and it with its key as PEM.
    fn generate() -> anyhow::Result<(Self, String)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?;
        let at = |secs: u64| {
            time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
                .context("the clock is out of range")
        };
        let start = now.as_secs().saturating_sub(3600);
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .context("the WebTransport certificate's names")?;
        params.not_before = at(start)?;
        params.not_after = at(start + PINNED_VALIDITY.as_secs())?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the WebTransport key")?;
        let cert = params
            .self_signed(&key)
            .context("signing the WebTransport certificate")?;
        let der = cert.der().clone();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        Ok((
            Self {
                hash: Sha256::digest(&der).into(),
                cert: der,
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            },
            pem,
        ))
    }
}

/// What the QUIC port offers browsers.
#[derive(Debug)]
pub(crate) enum WebTransport {
    /// No WebTransport (the relay serves no browsers: no TCP port).
    Off,
    /// WebTransport with the relay's own certificate.
    Own,
    /// WebTransport with a certificate of its own, pinned by the pages.
    Pinned(PinnedCert),
}

/// The relay's certificate, or the pinned one to a client that offers
/// HTTP/3 (a browser).
#[derive(Debug)]
struct ByAlpn {
    own: Arc<rustls::sign::CertifiedKey>,
    pinned: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let h3 = hello.alpn().is_some_and(|mut a| a.any(|p| p == H3_ALPN));
        Some(if h3 { &self.pinned } else { &self.own }.clone())
    }
}

/// The quinn server configuration for `identity`, with WebTransport as
/// `web` says.
pub(crate) fn server_config(
    identity: Identity,
    limits: &crate::config::Limits,
    web: &WebTransport,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_no_client_auth();
    let mut tls = match web {
        WebTransport::Off | WebTransport::Own => builder
            .with_single_cert(identity.chain, identity.key)
            .context("the certificate and key do not match or are unsupported")?,
        WebTransport::Pinned(p) => {
            let own = rustls::sign::CertifiedKey::from_der(identity.chain, identity.key, &provider)
                .context("the certificate and key do not match or are unsupported")?;
            let pinned = rustls::sign::CertifiedKey::from_der(
                vec![p.cert.clone()],
                p.key.clone_key(),
                &provider,
            )
            .context("the WebTransport certificate is unusable")?;
            builder.with_cert_resolver(Arc::new(ByAlpn {
                own: Arc::new(own),
                pinned: Arc::new(pinned),
            }))
        }
    };
    tls.alpn_protocols = vec![herold_proto::ALPN.to_vec()];
    if !matches!(web, WebTransport::Off) {
        tls.alpn_protocols.push(H3_ALPN.to_vec());
    }
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS configuration unusable for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // One control stream per connection; a few more for future use, bounded.
    transport.max_concurrent_bidi_streams(4u32.into());
    // HTTP/3 needs three from a browser (control and the two QPACK
    // streams); a native device opens none, and the relay reads none of
    // a device's.
    let uni = if matches!(web, WebTransport::Off) {
        0u32
    } else {
        3
    };
    transport.max_concurrent_uni_streams(uni.into());
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .context("idle-timeout-secs is too large")?;
    transport.max_idle_timeout(Some(idle));
    // What waits unacknowledged for one device, at most: a device that
    // stops reading holds this much of the relay's memory (quinn's default
    // is 10 MB) until write_timeout disconnects it.
    transport.send_window(SEND_WINDOW_BYTES);
    // No ACK-frequency request (QUIC extension) to the devices: asking
    // them to acknowledge every tenth packet made a channel post's first
    // burst drop thousands of datagrams at the relay (docs/BENCHMARKS.md,
    // "Delivery path"); their default (every second packet, or 25 ms) is
    // what is measured there.
    server.transport_config(Arc::new(transport));
    Ok(server)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_pinned_certificate_is_kept_until_it_is_a_week_old() {
        let dir = tempfile::tempdir().unwrap();
        let first = PinnedCert::in_dir(dir.path()).unwrap();
        let again = PinnedCert::in_dir(dir.path()).unwrap();
        assert_eq!(first.hash, again.hash, "a restart keeps the page's pin");
        assert_eq!(again.hash, <[u8; 32]>::from(Sha256::digest(&again.cert)));

        let path = dir.path().join("webtransport.pem");
        let old = std::time::SystemTime::now() - PINNED_RENEW_AFTER - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let renewed = PinnedCert::in_dir(dir.path()).unwrap();
        assert_ne!(renewed.hash, first.hash, "an old certificate is replaced");

        std::fs::write(&path, "not a certificate").unwrap();
        let replaced = PinnedCert::in_dir(dir.path()).unwrap();
        assert_ne!(replaced.hash, renewed.hash, "a damaged file is replaced");
        assert_eq!(PinnedCert::in_dir(dir.path()).unwrap().hash, replaced.hash);
    }
}
