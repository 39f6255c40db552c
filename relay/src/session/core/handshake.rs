//! Authentication in the core: Hello, the directory lookups, the challenge,
//! the signature over the transcript (nonce, TLS exporter, device id), and
//! the device's cursors before the session goes live. The driver hands in
//! the nonce and the exporter; nothing here waits or draws randomness.

use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_proto::{auth, ids};
use herold_store::{AccountState, Device};

use super::{Action, Core, Now, Pending, Phase, Query};
use crate::session::{DeviceCtx, Fatal, ReadEvent, codec_fatal, server_frame};

/// The public key an unknown device id's signature is checked against (the
/// key of the all-zero seed): the check only makes an unknown id cost the
/// work of a known one; its outcome is never trusted.
const NOBODYS_KEY: [u8; 32] = [
    0x3b, 0x6a, 0x27, 0xbc, 0xce, 0xb6, 0xa4, 0x2d, 0x62, 0xa3, 0xa8, 0xd0, 0x2a, 0x6f, 0x0d, 0x73,
    0x65, 0x32, 0x15, 0x77, 0x1d, 0xe2, 0x43, 0xa6, 0x3a, 0xc0, 0x48, 0xa1, 0x8b, 0x59, 0xda, 0x29,
];

/// Why a signature is refused; the same for an id nobody enrolled.
fn wrong_signature() -> Fatal {
    Fatal::new(
        ErrorCode::AuthFailed,
        "the signature does not verify for this device and connection",
    )
}

/// An id nobody enrolled: told as a wrong signature, recorded as what it is.
fn unknown_device() -> Fatal {
    Fatal {
        recorded: ErrorCode::UnknownDevice,
        ..wrong_signature()
    }
}

impl Core {
    /// A frame expected during authentication, or why the session ends.
    fn auth_frame(ev: ReadEvent) -> Result<v1::ClientFrame, Fatal> {
        match ev {
            ReadEvent::Frame(f) => Ok(f),
            ReadEvent::Malformed(e) => Err(Fatal::new(ErrorCode::BadFrame, e)),
            ReadEvent::Codec(e) => Err(codec_fatal(e)),
            ReadEvent::Closed => Err(Fatal::new(ErrorCode::Unspecified, "connection closed")),
        }
    }

    pub(super) fn on_hello(&mut self, ev: ReadEvent) {
        let hello = match Self::auth_frame(ev).map(|f| f.kind) {
            Ok(Some(client_frame::Kind::Hello(h))) => h,
            Ok(_) => {
                return self.close(Some(Fatal::new(
                    ErrorCode::AuthRequired,
                    "the first frame must be Hello",
                )));
            }
            Err(f) => return self.close(Some(f)),
        };
        if hello.version != herold_proto::PROTOCOL_VERSION {
            return self.close(Some(Fatal::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this relay speaks {}",
                    hello.version,
                    herold_proto::PROTOCOL_VERSION
                ),
            )));
        }
        if let Err(e) = ids::validate_id("device", &hello.device_id) {
            return self.close(Some(Fatal::new(ErrorCode::UnknownDevice, e.to_string())));
        }
        self.phase = Phase::Lookup;
        self.ask(Pending::Device, Query::Device(hello.device_id));
    }

    pub(super) fn on_device(&mut self, device: Option<Device>) {
        // Before a peer proves that it holds a device's key it learns
        // nothing of the device: an id nobody enrolled, a revoked device
        // and a device whose account is gone or suspended all get a
        // challenge like any other.
        let Some(device) = device else {
            return self.challenge(None, None);
        };
        if device.revoked {
            let refusal = Fatal::new(ErrorCode::DeviceRevoked, "this device was revoked");
            return self.challenge(Some(device), Some(refusal));
        }
        let account = device.account_id.clone();
        self.ask(Pending::Account(device), Query::AccountState(account));
    }

    pub(super) fn on_account(&mut self, device: Device, state: Option<AccountState>) {
        let refusal = match state {
            None => Some(Fatal::new(
                ErrorCode::DeviceRevoked,
                "this device's account was deleted",
            )),
            Some(s) if s.suspended => Some(Fatal::new(
                ErrorCode::DeviceRevoked,
                "this device's account is suspended",
            )),
            Some(_) => None,
        };
        self.challenge(Some(device), refusal);
    }

    fn challenge(&mut self, device: Option<Device>, refusal: Option<Fatal>) {
        let nonce = match &self.secrets.nonce {
            Ok(n) => *n,
            Err(e) => {
                let message = format!("no randomness: {e}");
                return self.close(Some(Fatal::new(ErrorCode::Internal, message)));
            }
        };
        self.frames
            .push(server_frame(server_frame::Kind::AuthChallenge(
                v1::AuthChallenge {
                    nonce: nonce.to_vec(),
                    version: herold_proto::PROTOCOL_VERSION,
                },
            )));
        self.phase = Phase::Challenged {
            device,
            nonce,
            refusal,
        };
    }

    pub(super) fn on_auth_response(&mut self, ev: ReadEvent) {
        let Phase::Challenged {
            device,
            nonce,
            refusal,
        } = std::mem::replace(&mut self.phase, Phase::Loading)
        else {
            return;
        };
        // An id nobody enrolled is checked against a key nobody holds: the
        // answer, and the work, are those of a wrong signature.
        let unknown = Device {
            id: String::new(),
            account_id: String::new(),
            public_key: NOBODYS_KEY.to_vec(),
            revoked: false,
            created_at_ms: 0,
        };
        let checked = device.as_ref().unwrap_or(&unknown);
        match (self.verify(ev, checked, &nonce), device, refusal) {
            (Err(f), None, _) => self.close(Some(Fatal {
                recorded: ErrorCode::UnknownDevice,
                ..f
            })),
            (Ok(()), None, _) => self.close(Some(unknown_device())),
            (Err(f), Some(_), _) | (Ok(()), Some(_), Some(f)) => self.close(Some(f)),
            (Ok(()), Some(device), None) => {
                let ctx = Arc::new(DeviceCtx {
                    device_id: device.id,
                    account_id: device.account_id,
                });
                self.ctx = Some(ctx.clone());
                let device_id = ctx.device_id.clone();
                self.actions.push_back(Action::Authenticated(ctx));
                self.ask(Pending::Cursors, Query::Cursors(device_id));
            }
        }
    }

    fn verify(
        &self,
        ev: ReadEvent,
        device: &Device,
        nonce: &[u8; auth::NONCE_BYTES],
    ) -> Result<(), Fatal> {
        let response = match Self::auth_frame(ev)?.kind {
            Some(client_frame::Kind::AuthResponse(r)) => r,
            _ => {
                return Err(Fatal::new(
                    ErrorCode::AuthRequired,
                    "expected AuthResponse after AuthChallenge",
                ));
            }
        };
        let transcript = if response.relay_name.is_empty() {
            let exporter = self
                .secrets
                .exporter
                .ok_or_else(|| Fatal::new(ErrorCode::Internal, "TLS exporter unavailable"))?;
            auth::transcript(nonce, &exporter, &device.id)
        } else {
            self.relay_name(&response.relay_name)?;
            auth::web_transcript(nonce, &response.relay_name, &device.id)
        };
        let malformed = || Fatal::new(ErrorCode::Internal, "the enrolled public key is malformed");
        let key_bytes: [u8; 32] = device
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| malformed())?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| malformed())?;
        let sig = Signature::from_slice(&response.signature)
            .map_err(|_| Fatal::new(ErrorCode::AuthFailed, "the signature is malformed"))?;
        key.verify_strict(&transcript, &sig)
            .map_err(|_| wrong_signature())
    }

    /// Checks the relay name a device signed instead of the exporter: only
    /// over a transport that offers the binding, and only one of this
    /// relay's own names.
    fn relay_name(&self, name: &str) -> Result<(), Fatal> {
        if self.secrets.names.is_empty() {
            return Err(Fatal::new(
                ErrorCode::AuthFailed,
                "this connection offers no relay-name binding: sign the TLS exporter \
                 (the relay-name binding is for browsers, over WebSocket, on a relay \
                 with web names)",
            ));
        }
        if !self.secrets.names.iter().any(|n| n == name) {
            return Err(Fatal::new(
                ErrorCode::AuthFailed,
                format!(
                    "the signature names the relay {:?}, which is not this relay's name",
                    name.chars()
                        .take(auth::MAX_RELAY_NAME_BYTES)
                        .collect::<String>()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn on_cursors(
        &mut self,
        now: Now,
        stored: Vec<(String, u64)>,
        pending: Vec<(String, u64)>,
    ) {
        self.stored = stored.into_iter().collect();
        // Acks from a previous connection that are not written yet.
        for (c, s) in pending {
            let e = self.stored.entry(c).or_insert(0);
            *e = (*e).max(s);
        }
        let Some(ctx) = self.ctx.clone() else {
            return self.close(Some(Fatal::new(ErrorCode::Internal, "no device")));
        };
        self.actions.push_back(Action::Register);
        self.frames
            .push(server_frame(server_frame::Kind::AuthOk(v1::AuthOk {
                account_id: ctx.account_id.clone(),
                server_time_ms: now.wall_ms,
                max_frame_bytes: self.config.max_frame_bytes,
                max_ciphertext_bytes: self.config.max_ciphertext_bytes,
            })));
        self.phase = Phase::Live;
        if let Some(ms) = self.drain_requested.take() {
            self.begin_drain(now, ms);
        }
    }
}
