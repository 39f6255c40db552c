//! One message, one trace, across two relay processes: the sender's relay
//! records `submit`, `store` and `route`; the recipient's relay records
//! `deliver` and `push` as children of that trace, because the node inbox
//! entry carries the W3C traceparent. The spans reach a real OTLP/gRPC
//! receiver (the collector protocol's tonic server, in this test) and carry
//! no ids and no payload.
//!
//! Needs `HEROLD_TEST_CQL` and `HEROLD_TEST_REDIS` (scripts/test.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;
#[path = "common/redis.rs"]
mod redis_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herold_client::{Client, ClientConfig};
use herold_proto::v1::ConversationKind;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use redis_support::*;

/// A span as the collector received it, with its relay's node id.
#[derive(Debug, Clone)]
struct Received {
    node: String,
    span: Span,
}

/// The OTLP trace service: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let node = rs
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.instance.id"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Received {
                        node: node.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_two_relays() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let t = format!("tr{}x{ms:x}", std::process::id());
    let mut extra = cql_args();
    extra.extend([
        "--otlp-endpoint".into(),
        otlp,
        "--trace-sample-ratio".into(),
        "1".into(),
    ]);
    let relays = spawn_cluster(dir.path(), 2, &shared_redis(), &t, &extra).await;

    let mut admin = admin_at(relays[0].admin).await;
    let (sender, recipient) = (format!("{t}s"), format!("{t}r"));
    create_account(&mut admin, &sender).await;
    create_account(&mut admin, &recipient).await;
    let (sd, rd) = (format!("{sender}.phone"), format!("{recipient}.phone"));
    let sk = enroll(&mut admin, &sender, &sd).await;
    let rk = enroll(&mut admin, &recipient, &rd).await;
    let conv = format!("{t}grp");
    create_conversation(
        &mut admin,
        &conv,
        ConversationKind::Group,
        &[&sender, &recipient],
    )
    .await;

    let fp = relays[0].fingerprint;
    let mut r = Client::connect(ClientConfig::new(relays[1].addr, fp, &rd, rk))
        .await
        .unwrap();
    receive_until_synced(&mut r).await;
    let mut s = Client::connect(ClientConfig::new(relays[0].addr, fp, &sd, sk))
        .await
        .unwrap();
    receive_until_synced(&mut s).await;
    let body = b"opaque ciphertext 7f3a".to_vec();
    s.send(&conv, body.clone(), 0).await.unwrap();
    assert_eq!(receive(&mut r, 1).await[0].ciphertext, body);

    // The relays export in batches: wait for the recipient's push.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let spans = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let has_push = spans
            .iter()
            .any(|x| x.node == "r1" && x.span.name == "push");
        if has_push {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push span from the recipient's relay; received: {:?}",
            spans
                .iter()
                .map(|x| (&x.node, &x.span.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = |node: &str, name: &str| -> Span {
        let found: Vec<&Received> = spans
            .iter()
            .filter(|x| x.node == node && x.span.name == name)
            .collect();
        assert_eq!(found.len(), 1, "{name} on {node}: {found:?}");
        found[0].span.clone()
    };
    let submit = one("r0", "submit");
    let store = one("r0", "store");
    let route = one("r0", "route");
    let deliver = one("r1", "deliver");
    let push = one("r1", "push");
    for s in [&store, &route, &deliver, &push] {
        assert_eq!(
            s.trace_id, submit.trace_id,
            "{} is in another trace",
            s.name
        );
    }
    assert!(submit.parent_span_id.is_empty(), "submit starts the trace");
    assert_eq!(store.parent_span_id, submit.span_id);
    assert_eq!(route.parent_span_id, submit.span_id);
    assert_eq!(
        deliver.parent_span_id, route.span_id,
        "deliver joins across relays"
    );
    assert_eq!(push.parent_span_id, deliver.span_id);
    assert_eq!(
        attribute(&route.attributes, "devices").as_deref(),
        Some("2")
    );

    // Nothing that identifies a person or a conversation, and no payload.
    let secrets = [&sender, &recipient, &sd, &rd, &conv];
    for x in &spans {
        for kv in &x.span.attributes {
            let v = text(&kv.value);
            for s in secrets {
                assert!(
                    !v.contains(s.as_str()),
                    "span {} attribute {} names {s}",
                    x.span.name,
                    kv.key
                );
            }
            assert!(
                !v.contains("opaque ciphertext"),
                "a payload in span {}",
                x.span.name
            );
        }
    }
    server.abort();
}
