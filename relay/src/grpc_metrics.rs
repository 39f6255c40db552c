//! Admin API calls in the metrics: a tower layer around the gRPC server
//! that counts every call by method and outcome and times it. It sits
//! outside the services, so calls refused by authentication count too.
//!
//! The outcome is the `grpc-status` of the response headers (a unary error
//! is sent trailers-only, status in the headers); a response without one
//! succeeded (status `0` follows in the trailers). Method labels are the
//! request paths' `Service/Method`, except for calls the server answered
//! `UNIMPLEMENTED`: those count as `unknown`, so a client making up paths
//! cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::metrics as m;

/// The layer: wraps the admin gRPC server's routes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AdminMetricsLayer;

impl<S> tower_layer::Layer<S> for AdminMetricsLayer {
    type Service = AdminMetrics<S>;

    fn layer(&self, inner: S) -> AdminMetrics<S> {
        AdminMetrics { inner }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub(crate) struct AdminMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for AdminMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let started = tokio::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let outcome = match &r {
                Ok(resp) => outcome_of(resp.headers()),
                Err(_) => "transport_error".to_owned(),
            };
            let method = if outcome == "Unimplemented" {
                "unknown".to_owned()
            } else {
                method
            };
            metrics::histogram!(m::ADMIN_CALL_SECONDS, "method" => method.clone())
                .record(m::seconds_since(started));
            metrics::counter!(m::ADMIN_CALLS, "method" => method, "outcome" => outcome)
                .increment(1);
            r
        })
    }
}

/// `Service/Method` of a gRPC path `/package.Service/Method`.
fn method_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or_default();
    if service.is_empty() || method.is_empty() || method.len() > 64 {
        return "unknown".into();
    }
    format!("{service}/{method}")
}

/// `ok` or the gRPC code's name (`NotFound`, `PermissionDenied`).
fn outcome_of(headers: &http::HeaderMap) -> String {
    match headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        None | Some(0) => "ok".into(),
        Some(c) => format!("{:?}", tonic::Code::from_i32(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_readable() {
        assert_eq!(
            method_of("/herold.v1.Admin/CreateAccount"),
            "Admin/CreateAccount"
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(method_of("/"), "unknown");
        assert_eq!(method_of("/x"), "unknown");
        assert_eq!(method_of(&format!("/a.B/{}", "m".repeat(100))), "unknown");
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome_of(&h), "ok");
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(outcome_of(&h), "NotFound");
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(outcome_of(&h), "ok");
    }
}
