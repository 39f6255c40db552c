//! A transfer WebSocket (`/v1/transfer`, docs/protocol.md section 20.1):
//! how a device on a WebSocket (the TCP fallback, a browser) uploads or
//! downloads a file, since a WebSocket has no streams beside the
//! session's. The device authenticates as on its session (Hello,
//! AuthChallenge, AuthResponse, checked by the session core itself, so any
//! relay of the cluster serves it), gets AuthOk, and the WebSocket then
//! carries one attachment transfer as a QUIC attachment stream does.

use std::sync::Arc;
use std::time::Duration;

use herold_proto::auth::NONCE_BYTES;
use herold_proto::codec::{FrameDecoder, decode_message};
use herold_proto::v1::{self, ErrorCode, server_frame};

use super::core::{Action, Answer, AuthSecrets, Core, CoreConfig, Input, Query};
use super::driver::{account_rate_limited, now};
use super::{AUTH_FRAME_BYTES, ReadEvent};
use crate::admission::Ticket;
use crate::link::{Link, Receiver, Sender};
use crate::metrics as m;
use crate::node::{Shared, now_ms};

/// How long the relay waits for the device to take its last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Authenticates the device on `link`, by `deadline`, then serves its one
/// transfer.
pub(super) async fn serve(
    shared: Arc<Shared>,
    link: Link,
    (mut send, mut recv): (Sender, Receiver),
    admission: Ticket,
    deadline: tokio::time::Instant,
) {
    let mut nonce = [0u8; NONCE_BYTES];
    let nonce = getrandom::fill(&mut nonce)
        .map(|()| nonce)
        .map_err(|e| e.to_string());
    let secrets = AuthSecrets {
        nonce,
        exporter: link.exporter(),
        names: link.names(),
    };
    let config = CoreConfig::from_limits(&shared.limits);
    let mut core = Core::new(config, secrets, deadline.into_std());
    let mut dec = FrameDecoder::new(AUTH_FRAME_BYTES);
    let (mut out, mut traced) = (Vec::new(), Vec::new());
    loop {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Query(q) => {
                    let store = &shared.store;
                    let answer = match q {
                        Query::Device(d) => store.get_device(&d).await.map(Answer::Device),
                        Query::AccountState(a) => {
                            store.account_state(&a).await.map(Answer::AccountState)
                        }
                        // Nothing else is asked before authentication.
                        _ => Ok(Answer::Failed),
                    };
                    core.handle(now(), Input::Store(answer.unwrap_or(Answer::Failed)));
                }
                Action::Authenticated(ctx) => {
                    let at = tokio::time::Instant::now().into_std();
                    if let Err(wait) = shared.account_auths.take(&ctx.account_id, at) {
                        core.refuse(account_rate_limited(
                            shared.limits.auth_rate_per_account,
                            wait,
                        ));
                        continue;
                    }
                    metrics::counter!(m::AUTH, "outcome" => "ok").increment(1);
                    // No longer a connection awaiting authentication.
                    drop(admission);
                    let ok = crate::frames::server_frame(server_frame::Kind::AuthOk(v1::AuthOk {
                        account_id: ctx.account_id.clone(),
                        server_time_ms: now_ms(),
                        max_frame_bytes: shared.limits.max_frame_bytes,
                        max_ciphertext_bytes: shared.limits.max_ciphertext_bytes,
                    }));
                    if send.write_all_chunks(&mut [ok]).await.is_err() {
                        return;
                    }
                    let held = dec.take_buffered();
                    super::attachments::over_websocket(shared, ctx, (send, recv), held).await;
                    link.close(0, "");
                    return;
                }
                Action::Close(fatal) => {
                    core.take_transmit(&mut out, &mut traced);
                    let _ = send.write_all_chunks(&mut out).await;
                    let (code, message, retry) = match fatal {
                        Some(f) => {
                            let label = crate::metrics::code_label(f.recorded);
                            metrics::counter!(m::AUTH, "outcome" => label).increment(1);
                            (f.code, f.message, f.retry_after_ms)
                        }
                        None => (ErrorCode::Unspecified, String::new(), 0),
                    };
                    if code != ErrorCode::Unspecified {
                        let frame = crate::frames::fatal_frame(code, &message, retry);
                        send.finish_with(frame, code as u32, CLOSE_GRACE).await;
                    }
                    link.close(code as u32, &message);
                    return;
                }
                // A session's actions; none come before authentication.
                _ => {}
            }
        }
        if core.is_closed() {
            return;
        }
        core.take_transmit(&mut out, &mut traced);
        if !out.is_empty() && send.write_all_chunks(&mut out).await.is_err() {
            return;
        }
        out.clear();
        core.handle(now(), next_input(&mut dec, &mut recv, deadline).await);
    }
}

/// The next frame (or the end, or the deadline) as the core's input.
async fn next_input(
    dec: &mut FrameDecoder,
    recv: &mut Receiver,
    deadline: tokio::time::Instant,
) -> Input {
    loop {
        match dec.next_frame() {
            Ok(Some(body)) => {
                return Input::Read(match decode_message::<v1::ClientFrame>(&body) {
                    Ok(f) => ReadEvent::Frame(f),
                    Err(e) => ReadEvent::Malformed(e.to_string()),
                });
            }
            Ok(None) => {}
            Err(e) => return Input::Read(ReadEvent::Codec(e)),
        }
        match tokio::time::timeout_at(deadline, recv.chunk()).await {
            Ok(Ok(Some(b))) => dec.extend(&b),
            Ok(Ok(None) | Err(_)) => return Input::Read(ReadEvent::Closed),
            Err(_) => return Input::Timeout,
        }
    }
}
