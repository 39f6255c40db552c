//! Certificate pinning: the client accepts exactly the relay certificate
//! whose SHA-256 fingerprint it was given, and still checks that the relay
//! holds that certificate's key (the TLS 1.3 handshake signature).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Parses a hex SHA-256 fingerprint (colons and spaces allowed).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let clean: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '\n' | '\r'))
        .collect();
    let bytes = hex::decode(&clean).map_err(|e| format!("fingerprint is not hex: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "fingerprint must be 32 bytes (64 hex digits), not {} bytes",
            b.len()
        )
    })
}

#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "relay certificate fingerprint {} does not match the pinned {}",
                hex::encode(got),
                hex::encode(self.fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that pins `fingerprint`, offering `alpn`.
pub fn pinned(fingerprint: [u8; 32], alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// The TLS of the TCP fallback (a WebSocket over TLS): the same pinning,
/// ALPN `http/1.1`.
pub fn fallback_connector(fingerprint: [u8; 32]) -> Result<tokio_rustls::TlsConnector, String> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(pinned(
        fingerprint,
        b"http/1.1",
    )?)))
}

pub use crate::DEFAULT_IDLE_TIMEOUT;

/// A quinn client configuration that pins `fingerprint`.
pub fn client_config(fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, String> {
    client_config_with_idle(fingerprint, DEFAULT_IDLE_TIMEOUT)
}

/// Like [`client_config`], with the idle timeout after which a relay that
/// stopped answering (a crashed node) counts as lost and the client moves on.
pub fn client_config_with_idle(
    fingerprint: [u8; 32],
    idle: std::time::Duration,
) -> Result<quinn::ClientConfig, String> {
    let tls = pinned(fingerprint, herold_proto::ALPN)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(idle / 2));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| format!("idle timeout {idle:?}: {e}"))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
