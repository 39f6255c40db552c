//! Logs and traces of the relay process.
//!
//! Logs go to stderr as text or JSON lines, filtered by `--log`. Traces go
//! to an OpenTelemetry collector over OTLP/gRPC, only when `--otlp-endpoint`
//! is set, sampled at `--trace-sample-ratio` (a trace another relay started
//! keeps that relay's decision). Only the spans named in [`TRACED_SPANS`]
//! are exported: one trace follows a message from `submit` through `store`
//! and `route` to `deliver` on each receiving relay and `push` to each
//! device. The relay carries the trace across relays as a W3C
//! `traceparent` inside the node-to-node delivery ([`traceparent`],
//! [`follow`]). Spans carry counts and outcomes, never a payload, a device,
//! account or conversation id, or a client address (docs/observability.md).

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Config, LogFormat};

/// The spans a trace is made of; every other span stays in the logs.
pub const TRACED_SPANS: &[&str] = &["submit", "store", "route", "deliver", "push"];

/// How long the exporter waits for the collector per batch.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The installed telemetry; [`Telemetry::shutdown`] flushes the last spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the process-wide log subscriber and, with an OTLP endpoint, the
/// trace exporter. Call once, inside the tokio runtime (the exporter's
/// channel lives on it).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    let (text, json) = match config.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let logs = text
        .map(|l| l.boxed())
        .or(json.map(|l| l.boxed()))
        .map(|l| l.with_filter(filter));
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, config)?),
        None => None,
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herold-relay"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !meta.is_span() || TRACED_SPANS.contains(&meta.name())
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str, config: &Config) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_owned())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("configuring the OTLP exporter for {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("herold-relay")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            config.node_id.clone(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Sends the spans still buffered to the collector (bounded by the
    /// export timeout) and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // Both calls block on the exporter's thread: not on a runtime worker.
        let done = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            provider.shutdown()
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "stopping the trace exporter failed");
        }
    }
}

/// The W3C `traceparent` of `span` when it is being recorded and sampled;
/// `None` otherwise (no tracing configured, or not sampled), so that
/// nothing travels for a trace nobody keeps.
pub(crate) fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (not yet entered) a child of the remote `traceparent`.
pub(crate) fn follow(span: &tracing::Span, traceparent: &str) {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    let cx = TraceContextPropagator::new().extract(&carrier);
    // Fails only when tracing is off for this span: nothing to join then.
    let _ = span.set_parent(cx);
}
