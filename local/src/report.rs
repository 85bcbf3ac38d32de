//! run-local's HTML report: one self-contained file (no script, no external asset, readable
//! offline) with each scenario's result, what it asserts, and the timeline of each of its
//! deliveries' traces (`crate::trace`) drawn as SVG, with links to the jobs' logs in S3 and to
//! the run directory's service logs. Everything from a trace or a result is escaped: repository
//! names, commands and status texts come from the tested projects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::trace::{self, Span};

/// The report's name in the run directory.
pub const FILE: &str = "report.html";

/// One scenario's part of the report.
pub struct Scenario<'a> {
    pub name: &'a str,
    pub seconds: f64,
    pub verdict: Verdict<'a>,
    /// The ids of the deliveries it sent: each starts a trace.
    pub deliveries: &'a [String],
}

pub enum Verdict<'a> {
    Passed,
    Skipped(&'a str),
    Failed(&'a str),
}

/// The whole run.
pub struct Run<'a> {
    pub runtime: &'a str,
    pub seconds: f64,
    /// Where the services' logs are.
    pub run_dir: &'a Path,
    /// Where people read the job logs: `<logs>/<slug>/log.html`.
    pub logs_url: &'a str,
    pub scenarios: &'a [Scenario<'a>],
}

/// What each scenario asserts, for readers of the report.
pub const ABOUT: [(&str, &str); 9] = [
    ("queue", "a message round-trips through each of Cockpit's four queues, declared with Cockpit's arguments"),
    ("amqp-refusals", "the broker refuses clients without our certificate, of another CA, of no user, and plain AMQP"),
    ("s3", "the store's name, key lookup and anonymous reads follow Cockpit's conventions"),
    (
        "pr-success",
        "a pull request's delivery ends in Cockpit's three statuses, its log and attachment in S3, one trace",
    ),
    ("pr-failure", "the failing project's pull request ends in state failure, with its log"),
    ("cross-project", "the library's context runs demo's tests against the library's pull request"),
    ("direct-trigger", "a \"Not yet tested (direct trigger)\" status event runs that manual context"),
    ("bad-signature", "a delivery signed with another secret is refused and nothing is published"),
    ("kvm", "inside a job, /dev/kvm opens and answers the KVM API version"),
];

fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// The report of `run` with the deployment's `spans`.
pub fn render(run: &Run, spans: &[Span]) -> String {
    let passed = run.scenarios.iter().filter(|s| matches!(s.verdict, Verdict::Passed)).count();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>run-local report</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px}}h2{{margin-top:1.6em}}\
         .pass{{color:#060}}.fail{{color:#a00}}.skip{{color:#666}}svg text{{font-size:11px;font-family:monospace}}\
         pre{{background:#f6f6f6;padding:.6em;white-space:pre-wrap}}</style></head><body>\n\
         <h1>run-local on {}: {passed} of {} scenarios passed in {:.1} s</h1>\n\
         <p>Service logs: <a href=\"{}\">{}</a> (removed after a successful run unless <code>--keep</code>)</p>\n",
        escape(run.runtime),
        run.scenarios.len(),
        run.seconds,
        escape(&file_url(run.run_dir)),
        escape(&run.run_dir.display().to_string()),
    );
    for scenario in run.scenarios {
        let (class, verdict) = match scenario.verdict {
            Verdict::Passed => ("pass", "passed".to_owned()),
            Verdict::Skipped(why) => ("skip", format!("skipped: {why}")),
            Verdict::Failed(_) => ("fail", "failed".to_owned()),
        };
        let about = ABOUT.iter().find(|(name, _)| *name == scenario.name).map_or("", |(_, about)| about);
        let _ = write!(
            page,
            "<section class=scenario id=\"{0}\"><h2>{0} <span class={class}>{1}</span> <small>{2:.2} s</small></h2>\n\
             <p>Asserts: {3}</p>\n",
            escape(scenario.name),
            escape(&verdict),
            scenario.seconds,
            escape(about),
        );
        if let Verdict::Failed(message) = scenario.verdict {
            let _ = writeln!(page, "<pre>{}</pre>", escape(message));
        }
        for delivery in scenario.deliveries {
            let spans = trace::of_delivery(spans, delivery);
            match spans.is_empty() {
                true => {
                    let _ = writeln!(page, "<p>Delivery {}: no trace recorded.</p>", escape(delivery));
                }
                false => page.push_str(&timeline(delivery, &spans, run.logs_url)),
            }
        }
        page.push_str("</section>\n");
    }
    page.push_str("</body></html>\n");
    page
}

/// How long the report waits for the last spans of jobs that just ended.
const SETTLED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the report into the run directory and, if given, to `also`; returns the first path.
/// A scenario can fail as its job ends: the spans of every delivery's jobs are waited for
/// (`trace::settled`), at most [`SETTLED_WITHIN`], then the report shows what there is.
pub async fn write(run: &Run<'_>, also: Option<&Path>) -> Result<std::path::PathBuf, ReportError> {
    let dir = crate::deployment::traces_dir(run.run_dir);
    let deliveries: Vec<&String> = run.scenarios.iter().flat_map(|scenario| scenario.deliveries).collect();
    let deadline = std::time::Instant::now() + SETTLED_WITHIN;
    let spans = loop {
        let spans = trace::read(&dir)?;
        let settled = deliveries.iter().all(|id| trace::settled(&trace::of_delivery(&spans, id)));
        if settled || std::time::Instant::now() >= deadline {
            break spans;
        }
        tokio::time::sleep(traces::WRITTEN_WITHIN).await;
    };
    let page = render(run, &spans);
    let path = run.run_dir.join(FILE);
    for target in std::iter::once(path.as_path()).chain(also) {
        std::fs::write(target, &page).map_err(|source| ReportError::Write { path: target.to_owned(), source })?;
    }
    Ok(path)
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Traces(#[from] trace::TraceError),
    #[error("cannot write the report {}: {source}", path.display())]
    Write { path: std::path::PathBuf, source: std::io::Error },
}

/// What a link may keep of a path unencoded: its separators and what plain names use.
const IN_LINK: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// What one path segment may keep unencoded: [`IN_LINK`] but the separator.
const SEGMENT: &percent_encoding::AsciiSet = &IN_LINK.add(b'/');

fn file_url(path: &Path) -> String {
    format!("file://{}/", percent_encoding::utf8_percent_encode(&path.to_string_lossy(), IN_LINK))
}

/// The link to a job's log page; the slug comes from the job message, so it is one segment.
fn job_log_url(logs_url: &str, slug: &str) -> String {
    let slug = percent_encoding::utf8_percent_encode(slug, SEGMENT);
    format!("{}/{slug}/log.html", logs_url.trim_end_matches('/'))
}

/// The colour of a service's bars.
fn colour(service: &str) -> &'static str {
    match service {
        "webhook" => "#4e79a7",
        "run-queue" => "#f28e2b",
        "job-runner" => "#59a14f",
        _ => "#999",
    }
}

/// What a span's row says besides its name: the attribute that tells it apart.
fn detail(span: &Span) -> String {
    let get = |key: &str| span.attributes.get(key).cloned().unwrap_or_default();
    match span.name.as_str() {
        "delivery" => get("event"),
        "scan" => get("repo"),
        "queue-job" => get("context"),
        "job-runner" => get("slug"),
        "git" => get("step"),
        "test" => get("command"),
        "status" => format!("{}: {}", get("state"), get("description")),
        _ => String::new(),
    }
}

const LABEL_WIDTH: f64 = 420.0;
const BAR_WIDTH: f64 = 560.0;
const ROW: f64 = 18.0;

/// One delivery's trace as an SVG timeline, a row per span in start order, indented by depth,
/// log lines as ticks, with the job logs it links to.
fn timeline(delivery: &str, spans: &[&Span], logs_url: &str) -> String {
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end).max().unwrap_or(start).max(start + 1);
    let scale = BAR_WIDTH / (end - start) as f64;
    let x = |t: u64| LABEL_WIDTH + (t.saturating_sub(start)) as f64 * scale;
    let parents: BTreeMap<&str, &str> = spans.iter().map(|s| (s.id.as_str(), s.parent.as_str())).collect();
    // Bounded: the files are read as written, and a span naming itself would loop.
    let depth = |span: &Span| {
        let (mut depth, mut at) = (0, span.parent.as_str());
        while let Some(parent) = parents.get(at)
            && depth < spans.len()
        {
            depth += 1;
            at = parent;
        }
        depth
    };
    let height = ROW * (spans.len() + 1) as f64;
    let mut svg = format!(
        "<figure><figcaption>Delivery {} &#8212; {:.1} ms across {} processes</figcaption>\n\
         <svg class=timeline xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\">\n",
        escape(delivery),
        (end - start) as f64 / 1e6,
        spans.iter().map(|s| s.pid).collect::<std::collections::BTreeSet<_>>().len(),
        LABEL_WIDTH + BAR_WIDTH + 80.0,
    );
    for (row, span) in spans.iter().enumerate() {
        let y = ROW * row as f64;
        let label = format!("{}{} · {} {}", "  ".repeat(depth(span)), span.service, span.name, detail(span));
        let label: String = label.chars().take(64).collect();
        let duration = span.end.saturating_sub(span.start);
        let (left, width) = (x(span.start), (duration as f64 * scale).max(1.5));
        let milliseconds = duration as f64 / 1e6;
        let title: Vec<String> = span.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            svg,
            "<g class=span data-name=\"{name}\"><title>{service} {name} {milliseconds:.1} ms {title}</title>\
             <text x=\"2\" y=\"{ty}\" xml:space=\"preserve\">{label}</text>\
             <rect x=\"{left:.1}\" y=\"{ry}\" width=\"{width:.1}\" height=\"{rh}\" fill=\"{fill}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{milliseconds:.1} ms</text>",
            name = escape(&span.name),
            service = escape(&span.service),
            title = escape(&title.join(" ")),
            ty = y + 13.0,
            label = escape(&label),
            ry = y + 3.0,
            rh = ROW - 6.0,
            fill = colour(&span.service),
            tx = left + width + 4.0,
        );
        for (at, message) in &span.events {
            let _ = write!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#000\"><title>{3}</title></line>",
                x(*at),
                y + 1.0,
                y + ROW - 1.0,
                escape(message)
            );
        }
        svg.push_str("</g>\n");
    }
    let _ = writeln!(
        svg,
        "<text x=\"{LABEL_WIDTH}\" y=\"{0}\">0 ms</text><text x=\"{1}\" y=\"{0}\" text-anchor=\"end\">{2:.1} ms</text></svg>",
        height - 4.0,
        LABEL_WIDTH + BAR_WIDTH,
        (end - start) as f64 / 1e6
    );
    let slugs: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|s| s.attributes.get("slug")).map(String::as_str).collect();
    for slug in slugs {
        let url = job_log_url(logs_url, slug);
        let _ = writeln!(svg, "<p>Job log: <a href=\"{0}\">{1}</a></p>", escape(&url), escape(slug));
    }
    svg.push_str("</figure>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, id: &str, parent: &str, start: u64, attributes: &[(&str, &str)]) -> Span {
        Span {
            trace: "t".into(),
            id: id.into(),
            parent: parent.into(),
            name: name.into(),
            service: "job-runner".into(),
            pid: 7,
            start,
            end: start + 1_000_000,
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            events: vec![],
        }
    }

    #[test]
    fn every_scenario_says_what_it_asserts() {
        let about: Vec<&str> = ABOUT.iter().map(|(name, _)| *name).collect();
        assert_eq!(about, crate::scenario::ALL);
    }

    #[test]
    fn a_slug_is_one_segment_of_its_link() {
        let url = job_log_url("https://localhost:9000/logs/", "pull-1-x/../../y?#%");
        assert_eq!(url, "https://localhost:9000/logs/pull-1-x%2F..%2F..%2Fy%3F%23%25/log.html");
        assert_eq!(file_url(Path::new("/tmp/run #1")), "file:///tmp/run%20%231/");
    }

    #[test]
    fn every_scenario_is_named_and_what_a_trace_holds_stays_text() {
        let spans = [
            span("delivery", "1", "", 0, &[("delivery", "d-1"), ("event", "pull_request")]),
            span("job-runner", "2", "1", 1_000_000, &[("slug", "pull-1-abc-unit-tests")]),
            span("status", "3", "2", 2_000_000, &[("state", "failure"), ("description", "<script>alert(1)</script>")]),
        ];
        let deliveries = ["d-1".to_owned()];
        let scenarios = [
            Scenario { name: "pr-success", seconds: 1.0, verdict: Verdict::Passed, deliveries: &deliveries },
            Scenario { name: "kvm", seconds: 0.0, verdict: Verdict::Skipped("no /dev/kvm"), deliveries: &[] },
            Scenario { name: "queue", seconds: 0.5, verdict: Verdict::Failed("<b>broken</b>"), deliveries: &[] },
        ];
        let run = Run {
            runtime: "process",
            seconds: 3.0,
            run_dir: Path::new("/tmp/run-x"),
            logs_url: "https://localhost:9000/logs",
            scenarios: &scenarios,
        };
        let page = render(&run, &spans);
        assert!(page.contains("<h1>run-local on process: 1 of 3 scenarios passed in 3.0 s</h1>"), "{page}");
        for name in ["pr-success", "kvm", "queue"] {
            assert!(page.contains(&format!("<section class=scenario id=\"{name}\">")), "{name}: {page}");
        }
        assert_eq!(page.matches("<g class=span").count(), 3, "{page}");
        assert!(page.contains("<a href=\"https://localhost:9000/logs/pull-1-abc-unit-tests/log.html\">"), "{page}");
        assert!(!page.contains("<script>") && !page.contains("<b>broken"), "markup from a trace or result: {page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    }
}
