//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go to the collector over OTLP/HTTP, and a span
//! that continues a W3C `traceparent` is exported in that trace, as that span's child. The
//! collector here is a local HTTP server that decodes the protobuf export requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use streamscan_api::trace::TraceParent;
use streamscan_runtime::telemetry::{self, LogFormat};

type Res = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// (trace id, parent span id, span id, name) of every span received.
type Received = Arc<Mutex<Vec<(String, String, String, String)>>>;

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let mut out = received.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            out.push((
                hex(&span.trace_id),
                hex(&span.parent_span_id),
                hex(&span.span_id),
                span.name.clone(),
            ));
        }
    }
    "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_jobs_trace_and_reach_the_otlp_collector() -> Res {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The endpoint a deployment sets in OTEL_EXPORTER_OTLP_ENDPOINT, given directly (setting
    // the environment of a running test process is unsafe).
    let endpoint = format!("http://{addr}/v1/traces");
    let guard =
        tokio::task::spawn_blocking(move || telemetry::init_with(LogFormat::Text, "otlp-test", Some(endpoint))).await?;
    assert!(guard.exporting(), "an endpoint is configured");

    let span = tracing::info_span!("attempt", job = "fw");
    let parent = TraceParent::parse(PARENT).ok_or("the spec's example parses")?;
    telemetry::continue_trace(&span, &parent);
    let own = telemetry::traceparent_of(&span)
        .ok_or("no traceparent for an exported span")?
        .to_string();
    assert!(own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{own}");
    assert!(
        !own.contains("00f067aa0ba902b7"),
        "the span has an id of its own: {own}"
    );
    span.in_scope(|| tracing::info_span!("child").in_scope(|| tracing::info!("inside")));
    drop(span);
    // Dropping the guard flushes the batch (blocking: off the async runtime).
    tokio::task::spawn_blocking(move || drop(guard)).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let attempt = spans.iter().find(|s| s.3 == "attempt");
        let child = spans.iter().find(|s| s.3 == "child");
        if let (Some(attempt), Some(child)) = (attempt, child) {
            assert_eq!(attempt.0, "4bf92f3577b34da6a3ce929d0e0e4736", "the job's trace");
            assert_eq!(attempt.1, "00f067aa0ba902b7", "the traceparent's span is the parent");
            assert_eq!(own, format!("00-{}-{}-01", attempt.0, attempt.2));
            assert_eq!(
                (child.0.as_str(), child.1.as_str()),
                (attempt.0.as_str(), attempt.2.as_str())
            );
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the collector did not receive both spans: {spans:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
