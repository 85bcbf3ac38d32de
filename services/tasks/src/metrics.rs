//! The worker's Prometheus metrics (prometheus-client), served in the OpenMetrics text format:
//! jobs by outcome and how long they ran, how long messages waited in their queue, messages
//! redelivered, put off, parked and given up, GitHub's rate limits, job processes' memory,
//! broker sessions lost and the jobs abandoned with them, rescans of all open pull requests.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::job::Outcome;

/// The counter of finished rescans of every open pull request, by outcome, as served.
pub const RESCANS: &str = "tasks_rescans_total";

/// The content type of [`Metrics::render`]'s text, which Prometheus asks for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<OutcomeLabel, Counter>,
    job_seconds: Histogram,
    queue_wait_seconds: Histogram,
    redelivered: Family<QueueLabel, Counter>,
    given_up: Family<QueueLabel, Counter>,
    put_off: Family<QueueLabel, Counter>,
    parked: Family<QueueLabel, Counter>,
    already_reported: Counter,
    peak_job_memory: Gauge,
    broker_lost: Counter,
    abandoned: Counter,
    rescans: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::default();
        registry.register("tasks_jobs", "Jobs run to their end, by outcome", jobs.clone());
        // A second to 2.3 hours, doubling: jobs run up to Cockpit's two-hour timeout.
        let job_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("tasks_job_seconds", "How long jobs ran", job_seconds.clone());
        // A second to 18 hours, doubling (the timestamp has whole seconds).
        let queue_wait_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 17));
        registry.register(
            "tasks_queue_wait_seconds",
            "How long messages waited in their queue",
            queue_wait_seconds.clone(),
        );
        let redelivered = Family::default();
        registry.register(
            "tasks_messages_redelivered",
            "Messages the broker delivered again, by queue",
            redelivered.clone(),
        );
        let given_up = Family::default();
        registry.register(
            "tasks_messages_given_up",
            "Messages whose work was given up after too many tries, by queue",
            given_up.clone(),
        );
        let put_off = Family::default();
        registry.register(
            "tasks_messages_put_off",
            "Messages whose work failed for a while and was put off, by queue",
            put_off.clone(),
        );
        let parked = Family::default();
        registry.register(
            "tasks_messages_parked",
            "Messages parked in the dead-letter queue, by the queue they came from",
            parked.clone(),
        );
        let already_reported = Counter::default();
        registry.register(
            "tasks_jobs_already_reported",
            "Redelivered jobs not run again: their final status was posted already",
            already_reported.clone(),
        );
        registry.register(
            "tasks_github_rate_limited",
            "Requests GitHub refused to limit our rate (each waited out or put off)",
            retry::RATE_LIMITED.clone(),
        );
        let peak_job_memory = Gauge::default();
        registry.register(
            "tasks_job_process_peak_memory_bytes",
            "The most memory one job process held at once",
            peak_job_memory.clone(),
        );
        let broker_lost = Counter::default();
        registry.register(
            "tasks_broker_connections_lost",
            "Broker sessions lost (the broker went away or stopped answering); the worker connected again",
            broker_lost.clone(),
        );
        let abandoned = Counter::default();
        registry.register(
            "tasks_jobs_abandoned",
            "Jobs abandoned with a lost broker session, left for the broker to give to other workers",
            abandoned.clone(),
        );
        let rescans = Family::default();
        registry.register(
            RESCANS.trim_end_matches("_total"),
            "Rescans of every open pull request finished, by outcome (failed: a repository could not be scanned)",
            rescans.clone(),
        );
        Metrics {
            registry,
            jobs,
            job_seconds,
            queue_wait_seconds,
            redelivered,
            given_up,
            put_off,
            parked,
            already_reported,
            peak_job_memory,
            broker_lost,
            abandoned,
            rescans,
        }
    }
}

impl Metrics {
    pub fn job(&self, outcome: &Outcome, ran: Duration) {
        let outcome = match outcome {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Error(_) | Outcome::LogNotStored(_) => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Superseded(_) => "superseded",
        };
        self.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
        self.job_seconds.observe(ran.as_secs_f64());
    }

    /// A message taken from `queue`; `published` is its timestamp (Unix seconds), if any.
    pub fn taken(&self, queue: &str, published: Option<u64>, redelivered: bool) {
        if redelivered {
            self.redelivered.get_or_create(&queue_label(queue)).inc();
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Some(published) = published {
            self.queue_wait_seconds.observe(now.as_secs().saturating_sub(published) as f64);
        }
    }

    /// A message whose work was given up after too many tries.
    pub fn given_up(&self, queue: &str) {
        self.given_up.get_or_create(&queue_label(queue)).inc();
    }

    /// A message whose work was put off, to be tried again later.
    pub fn put_off(&self, queue: &str) {
        self.put_off.get_or_create(&queue_label(queue)).inc();
    }

    /// A message parked in the dead-letter queue.
    pub fn parked(&self, queue: &str) {
        self.parked.get_or_create(&queue_label(queue)).inc();
    }

    /// A redelivered job not run again, its final status posted already.
    pub fn already_reported(&self) {
        self.already_reported.inc();
    }

    /// A broker session lost.
    pub fn broker_lost(&self) {
        self.broker_lost.inc();
    }

    /// Jobs abandoned with a lost session.
    pub fn abandoned(&self, jobs: usize) {
        self.abandoned.inc_by(jobs as u64);
    }

    /// A rescan of every open pull request finished; `failed` when a repository could not be
    /// scanned.
    pub fn rescanned(&self, failed: bool) {
        let outcome = if failed { "failed" } else { "done" };
        self.rescans.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Rate-limit refusals a job process met, added to this process's own.
    pub fn rate_limited(&self, refusals: u64) {
        retry::RATE_LIMITED.inc_by(refusals);
    }

    /// The peak memory a job process reported.
    pub fn job_memory(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes > self.peak_job_memory.get() {
            self.peak_job_memory.set(bytes);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

fn queue_label(queue: &str) -> QueueLabel {
    QueueLabel { queue: queue.to_owned() }
}

#[cfg(test)]
mod tests {
    use prometheus_parse::{LineInfo, Scrape, Value};

    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let metrics = Metrics::default();
        metrics.job(&Outcome::Success, Duration::from_millis(1500));
        metrics.job(&Outcome::Failure("x".into()), Duration::from_millis(500));
        metrics.job(&Outcome::Success, Duration::from_secs(1));
        metrics.taken("public", None, true);
        metrics.taken("webhook", None, false);
        metrics.given_up("public");
        metrics.job_memory(3000);
        metrics.job_memory(2000);
        let before = retry::RATE_LIMITED.get();
        metrics.rate_limited(2);
        metrics.rescanned(false);
        let text = metrics.render();
        // This process's own refusals count too (tests share a process under cargo test).
        let rate_limited = format!("tasks_github_rate_limited_total {}", before + 2);
        for line in [
            "tasks_jobs_total{outcome=\"success\"} 2",
            "tasks_jobs_total{outcome=\"failure\"} 1",
            "tasks_job_seconds_sum 3.0",
            "tasks_job_seconds_count 3",
            "tasks_job_seconds_bucket{le=\"1.0\"} 2",
            "tasks_queue_wait_seconds_count 0",
            "tasks_messages_redelivered_total{queue=\"public\"} 1",
            "tasks_messages_given_up_total{queue=\"public\"} 1",
            "tasks_job_process_peak_memory_bytes 3000",
            "tasks_rescans_total{outcome=\"done\"} 1",
            &rate_limited,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("queue=\"webhook\""), "only redelivered messages count");
        // As a Prometheus server reads it: every line understood, the figures where they were put.
        let ignored = text.lines().filter(|l| *l != "# EOF" && LineInfo::parse(l) == LineInfo::Ignored);
        assert_eq!(ignored.collect::<Vec<_>>(), Vec::<&str>::new());
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let sample = |name: &str| scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("{name}"));
        let failures = scrape.samples.iter().find(|s| s.labels.get("outcome") == Some("failure")).unwrap();
        assert_eq!((failures.metric.as_str(), &failures.value), ("tasks_jobs_total", &Value::Untyped(1.0)));
        assert_eq!(sample("tasks_job_process_peak_memory_bytes").value, Value::Gauge(3000.0));
        let Value::Histogram(buckets) = &sample("tasks_job_seconds").value else { panic!("a histogram") };
        let count = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!((count(1.0), count(2.0), count(f64::INFINITY)), (Some(2.0), Some(3.0), Some(3.0)));
    }
}
