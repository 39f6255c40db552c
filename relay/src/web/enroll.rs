//! Enrollment from a browser: `POST /v1/enroll` with a JSON body
//! `{"code", "device_id", "public_key"}` (the key as 64 hex digits), the
//! same redemption as the gRPC `Enrollment` service, with its per-address
//! failure limit and audit record. The answer is `{"device_id",
//! "account_id"}` or `{"error"}` with an HTTP status for the gRPC code.

use std::net::SocketAddr;

use bytes::Bytes;
use herold_proto::v1;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming as Body;
use serde::Deserialize;
use tonic::Code;

use crate::admin::EnrollmentService;

/// Where browsers enroll.
pub(crate) const PATH: &str = "/v1/enroll";
/// The largest request body.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    code: String,
    device_id: String,
    public_key: String,
}

/// Redeems the code in `req`'s body for the device it names.
pub(crate) async fn redeem(
    service: &EnrollmentService,
    req: Request<Body>,
    from: SocketAddr,
) -> Response<Full<Bytes>> {
    // A JSON body: pages of other origins cannot send one without asking
    // first (CORS), which the relay never allows.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {MAX_BODY_BYTES} bytes or broken off"),
            );
        }
    };
    let parsed: EnrollBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"code\", \"device_id\", \"public_key\"}}: {e}"),
            );
        }
    };
    let Ok(public_key) = hex::decode(&parsed.public_key) else {
        return error(
            StatusCode::BAD_REQUEST,
            "public_key must be the Ed25519 key in hex",
        );
    };
    let request = v1::EnrollRequest {
        code: parsed.code,
        device_id: parsed.device_id,
        public_key,
    };
    match service.redeem(Some(from.ip()), request).await {
        Ok(d) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "device_id": d.device_id, "account_id": d.account_id }),
        ),
        Err(s) => error(status_of(s.code()), s.message()),
    }
}

/// The HTTP status of a gRPC code.
fn status_of(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({ "error": message }))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
