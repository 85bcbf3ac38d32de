//! One trace per delivery, across the services. The webhook starts a trace for each delivery;
//! its W3C Trace Context (`traceparent`) travels in the AMQP message's headers to tests-scan, in
//! the job messages tests-scan queues to the worker that takes them, and in the job request to
//! the job's own process. Each process writes its spans, when `WORKBENCH_TRACES` names a file,
//! as OTLP JSON: one `ExportTraceServiceRequest` per line, the form an OpenTelemetry collector's
//! file receiver reads.
//!
//! Spans are `tracing` spans of our crates, carried into OpenTelemetry by
//! `tracing-opentelemetry`; the log lines on standard error are unchanged.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable naming the file spans are appended to; unset, nothing is traced.
pub const ENV: &str = "WORKBENCH_TRACES";

/// The W3C Trace Context header, in AMQP headers and job requests alike.
pub const TRACEPARENT: &str = "traceparent";

/// How soon an ended span is in the file.
pub const WRITTEN_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The crates whose spans are exported: ours, not those of the libraries under them.
const OURS: [&str; 5] = ["webhook", "tasks", "amqp", "github", "s3"];

/// Flushes and stops the exporter when dropped: keep it until the process ends.
#[must_use = "spans are written until the guard drops"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs this process's subscriber: log lines on standard error as `RUST_LOG` says
/// (`default_log` without it) and, when [`ENV`] names a file, the spans of our crates written
/// to it under the service name `service`. A file that cannot be opened is said on standard
/// error and not traced: tracing never stops a service.
pub fn init(service: &'static str, default_log: &str) -> Guard {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_log.into());
    // Colours only on a terminal: the deployment's logs are files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(log_filter);
    let file = std::env::var_os(ENV).map(|path| (File::options().create(true).append(true).open(&path), path));
    let provider = match file {
        Some((Ok(file), _)) => Some(provider(service, file)),
        Some((Err(err), path)) => {
            eprintln!("cannot open {} ({ENV}) to write traces: {err}; not tracing", Path::new(&path).display());
            None
        }
        None => None,
    };
    let spans = provider.as_ref().map(|provider| {
        let ours = OURS.iter().fold(Targets::new(), |targets, target| targets.with_target(*target, LevelFilter::INFO));
        // Names, times, parents and our fields: no source locations, threads or busy times.
        let layer = tracing_opentelemetry::layer()
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_tracer(provider.tracer(service));
        layer.with_filter(ours)
    });
    tracing_subscriber::registry().with(log).with(spans).init();
    Guard(provider)
}

fn provider(service: &'static str, file: File) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("process.pid", i64::from(std::process::id())))
        .build();
    let exporter = FileExporter { file: Mutex::new(file), resource: (&resource).into() };
    // Written from a thread of the exporter's own, not in the request that ended the span, and
    // soon: a report read while the services run sees every span ended more than
    // `WRITTEN_WITHIN` ago; a process killed outright loses at most those.
    let batches = BatchConfigBuilder::default().with_scheduled_delay(WRITTEN_WITHIN).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    SdkTracerProvider::builder().with_resource(resource).with_span_processor(processor).build()
}

/// The W3C `traceparent` of `span`, to pass on: `None` when it is not traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` continue the trace `traceparent` names (a parent in another process); without
/// one, or with one that does not parse, `span` starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier = std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// Appends each batch of ended spans to the file as one line of OTLP JSON. Hand-written
/// because no maintained exporter writes OTLP JSON to a file (`opentelemetry-stdout` prints a
/// debug form); the message and its JSON form are `opentelemetry-proto`'s. Several processes
/// append to one file (a worker and its jobs' processes): each line is one `write` to a file
/// opened for appending, which Linux does not interleave with another's.
#[derive(Debug)]
struct FileExporter {
    file: Mutex<File>,
    resource: ResourceAttributesWithSchema,
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request =
            ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &self.resource) };
        let mut line = serde_json::to_vec(&request).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push(b'\n');
        let mut file = self.file.lock().map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        file.write_all(&line).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    #[test]
    fn a_traceparent_passed_on_is_continued_in_the_same_trace() {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("delivery");
            let header = traceparent(&sender).expect("a traced span has a traceparent");
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{header}");
            let receiver = tracing::info_span!("scan");
            continue_trace(&receiver, Some(&header));
            let passed_on = traceparent(&receiver).unwrap();
            assert_eq!(passed_on.split('-').nth(1), Some(parts[1]), "the same trace id");
            assert_ne!(passed_on.split('-').nth(2), Some(parts[2]), "a span of its own");

            let fresh = tracing::info_span!("scan");
            continue_trace(&fresh, Some("not a traceparent"));
            assert_ne!(traceparent(&fresh).unwrap().split('-').nth(1), Some(parts[1]), "a trace of its own");
        });
    }

    /// What the file receives reads back as the OTLP messages (not by string matching): one
    /// request per line, the service named, the span with its parent, attributes and log lines
    /// (an event named by its message, formatted: what the checks of the traces look for).
    #[test]
    fn spans_are_written_as_otlp_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.jsonl");
        let file = File::options().create(true).append(true).open(&path).unwrap();
        let provider = provider("webhook", file);
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("webhook"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let delivery = tracing::info_span!("delivery", event = "pull_request");
            delivery.in_scope(|| tracing::info_span!("publish").in_scope(|| {}));
            let said = "a line of the log";
            delivery.in_scope(|| tracing::info!(owner = "someone", "{said}"));
        });
        provider.shutdown().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let requests: Vec<ExportTraceServiceRequest> =
            text.lines().map(|line| serde_json::from_str(line).expect("OTLP JSON")).collect();
        assert!(!requests.is_empty(), "nothing written:\n{text}");
        let spans: Vec<_> = requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        let (publish, delivery) = (spans[0], spans[1]);
        assert_eq!((publish.name.as_str(), delivery.name.as_str()), ("publish", "delivery"));
        assert_eq!(publish.trace_id, delivery.trace_id);
        assert_eq!(publish.parent_span_id, delivery.span_id);
        assert!(delivery.attributes.iter().any(|kv| kv.key == "event"), "{text}");
        let said: Vec<&str> = delivery.events.iter().map(|event| event.name.as_str()).collect();
        assert_eq!(said, ["a line of the log"], "{text}");
        let resource = requests[0].resource_spans[0].resource.as_ref().unwrap();
        let service = resource.attributes.iter().find(|kv| kv.key == "service.name").unwrap();
        let name = service.value.as_ref().and_then(|value| value.value.as_ref());
        assert!(matches!(name, Some(Value::StringValue(name)) if name == "webhook"), "{service:?}");
        // OTLP JSON: ids in hex, as the specification says (not protobuf JSON's base64).
        let raw: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let trace_id = raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"].as_str().unwrap();
        assert!(trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()), "{trace_id}");
    }
}
