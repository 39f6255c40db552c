//! TLS for the QUIC endpoint (TLS 1.3 only, ALPN `herold/1`) and for the
//! TCP fallback (the same identity, ALPN `http/1.1`), and the development
//! certificate that is generated once and kept with the data.

use std::path::Path;
use std::sync::Arc;

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

/// The quinn server configuration for `identity`.
pub fn server_config(
    identity: Identity,
    limits: &crate::config::Limits,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("the certificate and key do not match or are unsupported")?;
    tls.alpn_protocols = vec![herold_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS configuration unusable for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // One control stream per connection; a few more for future use, bounded.
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
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
