//! The deployment's traces read back: every service appends its spans to a file of the run
//! directory's `traces/` as OTLP JSON lines (the `traces` crate); here each line is read as the
//! OTLP schema's `ExportTraceServiceRequest` (not by string matching) and flattened into spans,
//! for the scenarios' checks and run-local's report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// One span, as the report and the checks need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Hex, as OTLP JSON writes them; `parent` is empty for a trace's root.
    pub trace: String,
    pub id: String,
    pub parent: String,
    pub name: String,
    /// The `service.name` of the process that made it, and that process's id.
    pub service: String,
    pub pid: i64,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub attributes: BTreeMap<String, String>,
    /// The log lines recorded in it: when, and the message.
    pub events: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the traces in {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line} is not an OTLP JSON trace export: {source}", path.display())]
    NotOtlp { path: PathBuf, line: usize, source: serde_json::Error },
}

/// Every span of every `*.jsonl` file in `dir`, ordered by start. No directory: no spans. A
/// last line without its newline is one still being written, and is left for the next read.
pub fn read(dir: &Path) -> Result<Vec<Span>, TraceError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TraceError::Io { path, source }
    };
    let mut spans = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(spans),
        Err(err) => return Err(io(dir)(err)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_none_or(|extension| extension != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let whole = text.split_inclusive('\n').filter(|line| line.ends_with('\n'));
        for (n, line) in whole.enumerate() {
            let request: ExportTraceServiceRequest = serde_json::from_str(line)
                .map_err(|source| TraceError::NotOtlp { path: path.clone(), line: n + 1, source })?;
            spans.extend(flatten(request));
        }
    }
    spans.sort_by_key(|span| (span.start, span.end));
    Ok(spans)
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        let pid = resource.get("process.pid").and_then(|pid| pid.parse().ok()).unwrap_or(0);
        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            spans.push(Span {
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                service: service.clone(),
                pid,
                start: span.start_time_unix_nano,
                end: span.end_time_unix_nano,
                attributes: attributes(&span.attributes),
                events: span.events.into_iter().map(|event| (event.time_unix_nano, event.name)).collect(),
            });
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|pair| (pair.key.clone(), pair.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(x)) => x.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The spans of the trace the webhook started for delivery `id`, ordered by start; none if
/// the webhook traced no such delivery.
pub fn of_delivery<'a>(spans: &'a [Span], id: &str) -> Vec<&'a Span> {
    let root = spans
        .iter()
        .find(|span| span.name == "delivery" && span.attributes.get("delivery").map(String::as_str) == Some(id));
    match root {
        Some(root) => spans.iter().filter(|span| span.trace == root.trace).collect(),
        None => Vec::new(),
    }
}

/// The causal chain a delivery that starts a job leaves, each span named after its parent:
/// the webhook's delivery (with its `published` event), the worker's scan and the job it
/// queues, the worker taking the job, and the job's own process.
pub const JOB_CHAIN: [(&str, &str, &str); 5] = [
    ("scan", "delivery", "run-queue"),
    ("queue-job", "scan", "run-queue"),
    ("job", "queue-job", "run-queue"),
    ("job-runner", "job", "job-runner"),
    ("status", "job-runner", "job-runner"),
];

/// Whether `trace` (one delivery's spans) holds `links` (of [`JOB_CHAIN`]): each span under a
/// parent of the right name, made by the right service, started no earlier than its parent.
/// `Err` says what is missing or out of order.
pub fn check_chain(trace: &[&Span], links: &[(&str, &str, &str)]) -> Result<(), String> {
    let by_id: BTreeMap<&str, &Span> = trace.iter().map(|span| (span.id.as_str(), *span)).collect();
    for &(name, parent_name, service) in links {
        let found = trace.iter().find(|span| {
            span.name == name
                && span.service == service
                && by_id.get(span.parent.as_str()).is_some_and(|parent| parent.name == parent_name)
        });
        let Some(span) = found else {
            return Err(format!("no span {name} of {service} under {parent_name} in the trace"));
        };
        let parent = by_id[span.parent.as_str()];
        if span.start < parent.start {
            return Err(format!("{name} starts before its parent {parent_name}"));
        }
    }
    Ok(())
}

/// Whether a job `trace` (one delivery's spans) queued stopped for its twin before it posted
/// anything: its process's span holds the line [`tasks::job::SUPERSEDED`].
pub fn stopped_for_twin(trace: &[&Span]) -> bool {
    let said = |span: &Span| span.events.iter().any(|(_, message)| message == tasks::job::SUPERSEDED);
    trace.iter().any(|span| span.name == "job-runner" && said(span))
}

/// Whether every job `trace` (one delivery's spans) queued has ended, as far as its spans
/// say: each `queue-job` has its `job`, each `job` its `job-runner`. A job's process writes its
/// spans as it exits, the worker's `job` span ends after that: until then a trace read is
/// missing its end.
pub fn settled(trace: &[&Span]) -> bool {
    let has_child = |parent: &Span, name: &str| trace.iter().any(|span| span.parent == parent.id && span.name == name);
    trace.iter().all(|span| match span.name.as_str() {
        "queue-job" => has_child(span, "job"),
        "job" => has_child(span, "job-runner"),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, service: &str, id: &str, parent: &str, start: u64) -> Span {
        Span {
            trace: "t".into(),
            id: id.into(),
            parent: parent.into(),
            name: name.into(),
            service: service.into(),
            pid: 1,
            start,
            end: start + 1,
            attributes: BTreeMap::new(),
            events: vec![],
        }
    }

    #[test]
    fn the_job_chain_needs_every_link_in_causal_order() {
        let chain = [
            span("delivery", "webhook", "1", "", 1),
            span("scan", "run-queue", "3", "1", 3),
            span("queue-job", "run-queue", "4", "3", 4),
            span("job", "run-queue", "5", "4", 5),
            span("job-runner", "job-runner", "6", "5", 6),
            span("status", "job-runner", "7", "6", 7),
        ];
        let all: Vec<&Span> = chain.iter().collect();
        assert_eq!(check_chain(&all, &JOB_CHAIN), Ok(()));
        assert!(!stopped_for_twin(&all));
        let mut twin = chain[..5].to_vec();
        twin[4].events.push((6, tasks::job::SUPERSEDED.to_owned()));
        assert!(stopped_for_twin(&twin.iter().collect::<Vec<_>>()));
        let without_job: Vec<&Span> = chain.iter().filter(|s| s.name != "job").collect();
        assert_eq!(
            check_chain(&without_job, &JOB_CHAIN),
            Err("no span job of run-queue under queue-job in the trace".into())
        );
        let mut early = chain.clone();
        early[4].start = 4;
        let early: Vec<&Span> = early.iter().collect();
        assert_eq!(check_chain(&early, &JOB_CHAIN), Err("job-runner starts before its parent job".into()));
        assert!(settled(&all));
        assert!(!settled(&without_job), "a queued job without its span has not ended");
        let running: Vec<&Span> = chain.iter().filter(|s| s.service != "job-runner").collect();
        assert!(!settled(&running), "a job without its process's spans has not ended");
    }
}
