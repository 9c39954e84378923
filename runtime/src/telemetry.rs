//! Logging: JSON lines in containers (or when asked), human-readable on a terminal; and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the `tracing`
//! spans exported over OTLP/HTTP, joined to the W3C trace a job carries.

use std::io::IsTerminal;

use clap::ValueEnum;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use streamscan_api::trace::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

/// Keeps the OTLP exporter for the life of the process; dropping it sends the spans still
/// queued (call it outside the async runtime: the flush blocks).
#[must_use = "dropping the guard stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing the OTLP trace export: {err}");
        }
    }
}

/// Installs the global subscriber for `service` (the OTLP `service.name` unless
/// `OTEL_SERVICE_NAME` says otherwise). `RUST_LOG` overrides the default `info` level. A second
/// init (tests) keeps the first subscriber.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    init_with(format, service, None)
}

/// [`init`], exporting to `traces_endpoint` (the full URL, `…/v1/traces`) when given, else where
/// the `OTEL_EXPORTER_OTLP_*` variables say.
pub fn init_with(format: LogFormat, service: &'static str, traces_endpoint: Option<String>) -> Telemetry {
    let provider = otlp_provider(service, traces_endpoint);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().flatten_event(true).with_current_span(false).boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(filter)
        .try_init();
    Telemetry { provider }
}

/// The OTLP/HTTP (protobuf) exporter, when an endpoint is configured; built on a thread of its
/// own because its blocking HTTP client must not be made inside an async runtime.
fn otlp_provider(service: &'static str, traces_endpoint: Option<String>) -> Option<SdkTracerProvider> {
    let configured = traces_endpoint.is_some()
        || ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return None;
    }
    let built = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
                if let Some(url) = traces_endpoint {
                    exporter = exporter.with_endpoint(url);
                }
                exporter.build().map(|exporter| {
                    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
                    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource)
                        .build()
                })
            })
            .join()
    });
    match built {
        Ok(Ok(provider)) => Some(provider),
        Ok(Err(err)) => {
            eprintln!("OTLP trace export is off: {err}");
            None
        }
        Err(_) => {
            eprintln!("OTLP trace export is off: building the exporter panicked");
            None
        }
    }
}

/// Makes `span` a child of `parent` (a job's, a request's trace), so its exported span joins
/// that trace. Without an exporter nothing changes.
pub fn continue_trace(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    // Fails only when no OpenTelemetry layer is installed: then there is nothing to join.
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// `span`'s own trace context (its span id as the parent of what follows), when spans are
/// exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}
