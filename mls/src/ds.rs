//! Delivery Service side: what the relay can check without any group state,
//! and the authenticated data format of application messages.

use std::sync::LazyLock;

use openmls::prelude::tls_codec::{Deserialize as _, DeserializeBytes as _, VLBytes};
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;

use crate::CIPHERSUITE;
use crate::error::MlsError;

/// Crypto for signature checks on the DS side (no keys, no storage).
static CRYPTO: LazyLock<RustCrypto> = LazyLock::new(RustCrypto::default);

/// The content type of an MLS protocol message, readable without keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// An application message (a chat message, encrypted).
    Application,
    /// A standalone proposal. Herold does not relay these: commits carry
    /// their proposals by value.
    Proposal,
    /// A commit: moves the group from `epoch` to `epoch + 1`.
    Commit,
}

/// The clear-text framing of an MLS protocol message (RFC 9420 keeps these
/// fields outside the encryption even in a PrivateMessage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The MLS group id (Herold: the conversation id's UTF-8 bytes).
    pub group_id: Vec<u8>,
    /// The epoch the message was sent in.
    pub epoch: u64,
    /// Application message, proposal or commit.
    pub kind: ContentKind,
    /// The authenticated data: readable by anyone, tamper-proof for members.
    /// For application messages see [`decode_aad`].
    pub aad: Vec<u8>,
}

/// Reads group id, epoch, content type and authenticated data of a
/// PrivateMessage or PublicMessage (MLSMessage-wrapped). A Welcome,
/// KeyPackage or GroupInfo is an error. Nothing is verified: the aad of a
/// PrivateMessage is only authenticated for group members.
pub fn inspect(message: &[u8]) -> Result<Inspected, MlsError> {
    match parse(message)?.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => Ok(Inspected {
            group_id: m.group_id().as_slice().to_vec(),
            epoch: m.epoch().as_u64(),
            kind: kind(m.content_type()),
            aad: m.aad().to_vec(),
        }),
        MlsMessageBodyIn::PublicMessage(m) => Ok(Inspected {
            group_id: m.group_id().as_slice().to_vec(),
            epoch: m.epoch().as_u64(),
            kind: kind(m.content_type()),
            aad: public_message_aad(message)?,
        }),
        other => Err(MlsError::WrongMessageType {
            expected: "an MLS PrivateMessage or PublicMessage",
            found: body_name(&other),
        }),
    }
}

/// What [`validate_key_package`] found in a valid key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// The BasicCredential identity: the device id it claims to belong to.
    pub identity: Vec<u8>,
    /// The package carries the last-resort extension (may be used more than
    /// once).
    pub last_resort: bool,
}

/// Parses and validates an MLSMessage-wrapped key package: leaf node and
/// package signatures, ciphersuite (Herold's only), protocol version,
/// lifetime, init key != encryption key, basic credential.
pub fn validate_key_package(bytes: &[u8]) -> Result<ValidKeyPackage, MlsError> {
    let kp = parse_key_package(bytes)?;
    let identity = basic_identity(kp.leaf_node().credential())?;
    Ok(ValidKeyPackage {
        identity,
        last_resort: kp.last_resort(),
    })
}

/// Parses an MLSMessage-wrapped Welcome and checks its ciphersuite. The
/// rest is encrypted to the new members and cannot be checked here.
pub fn check_welcome(bytes: &[u8]) -> Result<(), MlsError> {
    let welcome = parse_welcome(bytes)?;
    if welcome.secrets().is_empty() {
        return Err(MlsError::Malformed("Welcome has no new members".into()));
    }
    Ok(())
}

const AAD_PREFIX: &[u8] = b"herold/1 aad";

/// Authenticated data for Herold application messages:
/// `"herold/1 aad"` followed by `expires_at_ms` as i64 big-endian
/// (0 = no expiry). The relay reads it with [`inspect`] + [`decode_aad`];
/// recipients get it back authenticated from processing.
pub fn encode_aad(expires_at_ms: i64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 8);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(&expires_at_ms.to_be_bytes());
    aad
}

/// The `expires_at_ms` of authenticated data made by [`encode_aad`].
pub fn decode_aad(aad: &[u8]) -> Result<i64, MlsError> {
    let rest = aad
        .strip_prefix(AAD_PREFIX)
        .ok_or(MlsError::InvalidAad("does not start with \"herold/1 aad\""))?;
    let bytes: [u8; 8] = rest
        .try_into()
        .map_err(|_| MlsError::InvalidAad("expiry is not exactly 8 bytes"))?;
    Ok(i64::from_be_bytes(bytes))
}

/// Separates a conversation id from the generation in a group id; never
/// part of a conversation id (see `herold_proto::ids`).
const GENERATION_SEPARATOR: char = '#';

/// The MLS group id of a conversation's group of `generation`: the
/// conversation id's UTF-8 bytes for generation 0, `"<conversation>#<n>"`
/// after the n-th restart. A restart (the relay's `ResetMlsGroup`) starts a
/// new group under a new id, so no message of the old group can pass for
/// one of the new.
pub fn group_id(conversation_id: &str, generation: u64) -> Vec<u8> {
    if generation == 0 {
        conversation_id.as_bytes().to_vec()
    } else {
        format!("{conversation_id}{GENERATION_SEPARATOR}{generation}").into_bytes()
    }
}

/// The generation of a group id of `conversation_id` (see [`group_id`]);
/// `None` for a group of another conversation or a malformed suffix.
pub fn group_generation(conversation_id: &str, group_id: &[u8]) -> Option<u64> {
    let rest = group_id.strip_prefix(conversation_id.as_bytes())?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = std::str::from_utf8(rest.strip_prefix(&[GENERATION_SEPARATOR as u8])?).ok()?;
    // Canonical only: one spelling per generation ("#1", not "#01" or "#0").
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---- shared with the client side ----

pub(crate) fn parse(bytes: &[u8]) -> Result<MlsMessageIn, MlsError> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| MlsError::Malformed(e.to_string()))
}

pub(crate) fn parse_welcome(bytes: &[u8]) -> Result<Welcome, MlsError> {
    match parse(bytes)?.extract() {
        MlsMessageBodyIn::Welcome(w) => {
            if w.ciphersuite() != CIPHERSUITE {
                return Err(MlsError::UnsupportedCiphersuite(format!(
                    "{:?}",
                    w.ciphersuite()
                )));
            }
            Ok(w)
        }
        other => Err(MlsError::WrongMessageType {
            expected: "an MLS Welcome",
            found: body_name(&other),
        }),
    }
}

/// Parses and validates a key package (see [`validate_key_package`]).
pub(crate) fn parse_key_package(bytes: &[u8]) -> Result<KeyPackage, MlsError> {
    let kp_in = match parse(bytes)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        other => {
            return Err(MlsError::WrongMessageType {
                expected: "an MLS KeyPackage",
                found: body_name(&other),
            });
        }
    };
    let kp = kp_in
        .validate(&*CRYPTO, ProtocolVersion::Mls10)
        .map_err(|e| MlsError::InvalidKeyPackage(format!("{e} [{e:?}]")))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::UnsupportedCiphersuite(format!(
            "{:?}",
            kp.ciphersuite()
        )));
    }
    Ok(kp)
}

/// The identity of a BasicCredential.
pub(crate) fn basic_identity(credential: &Credential) -> Result<Vec<u8>, MlsError> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| {
        MlsError::UnsupportedCredential(format!("{:?}", credential.credential_type()))
    })?;
    Ok(basic.identity().to_vec())
}

pub(crate) fn body_name(body: &MlsMessageBodyIn) -> &'static str {
    match body {
        MlsMessageBodyIn::PublicMessage(_) => "a PublicMessage",
        MlsMessageBodyIn::PrivateMessage(_) => "a PrivateMessage",
        MlsMessageBodyIn::Welcome(_) => "a Welcome",
        MlsMessageBodyIn::GroupInfo(_) => "a GroupInfo",
        MlsMessageBodyIn::KeyPackage(_) => "a KeyPackage",
    }
}

fn kind(content_type: ContentType) -> ContentKind {
    match content_type {
        ContentType::Application => ContentKind::Application,
        ContentType::Proposal => ContentKind::Proposal,
        ContentType::Commit => ContentKind::Commit,
    }
}

/// openmls has no public accessor for a PublicMessage's authenticated data,
/// so read it from the wire (RFC 9420 §6): MLSMessage { version u16,
/// wire_format u16, FramedContent { group_id<V>, epoch u64, sender,
/// authenticated_data<V>, .. } }. Only called after the whole message parsed.
fn public_message_aad(message: &[u8]) -> Result<Vec<u8>, MlsError> {
    let bad = |e: tls_codec::Error| MlsError::Malformed(format!("PublicMessage framing: {e}"));
    let rest = message
        .get(4..)
        .ok_or_else(|| MlsError::Malformed("PublicMessage shorter than its header".into()))?;
    let (_group_id, rest) = VLBytes::tls_deserialize_bytes(rest).map_err(bad)?;
    let (_epoch, rest) = u64::tls_deserialize_bytes(rest).map_err(bad)?;
    let (_sender, rest) = Sender::tls_deserialize_bytes(rest).map_err(bad)?;
    let (aad, _) = VLBytes::tls_deserialize_bytes(rest).map_err(bad)?;
    Ok(aad.as_slice().to_vec())
}
