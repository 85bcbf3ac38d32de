//! The worker's Prometheus metrics: jobs by outcome, how long they ran, how long their
//! messages waited in the queue, and how many messages came back redelivered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::job::Outcome;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<&'static str, u64>,
    job_seconds: Summary,
    queue_wait_seconds: Summary,
    redelivered: BTreeMap<String, u64>,
    given_up: BTreeMap<String, u64>,
    put_off: BTreeMap<String, u64>,
    parked: BTreeMap<String, u64>,
    peak_job_memory: u64,
    /// Rate-limit refusals met by the jobs (each in a process of its own).
    jobs_rate_limited: u64,
}

/// A Prometheus summary without quantiles: a sum and a count.
#[derive(Default)]
struct Summary {
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn job(&self, outcome: &Outcome, ran: Duration) {
        let label = match outcome {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Error(_) | Outcome::LogNotStored(_) => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Superseded(_) => "superseded",
        };
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.jobs.entry(label).or_default() += 1;
        inner.job_seconds.sum += ran.as_secs_f64();
        inner.job_seconds.count += 1;
    }

    /// A message taken from `queue`; `published` is its timestamp (Unix seconds), if any.
    pub fn taken(&self, queue: &str, published: Option<u64>, redelivered: bool) {
        let mut inner = self.inner.lock().expect("metrics lock");
        if redelivered {
            *inner.redelivered.entry(queue.to_owned()).or_default() += 1;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Some(published) = published {
            inner.queue_wait_seconds.sum += now.as_secs().saturating_sub(published) as f64;
            inner.queue_wait_seconds.count += 1;
        }
    }

    /// A message whose work was given up after too many tries.
    pub fn given_up(&self, queue: &str) {
        *self.inner.lock().expect("metrics lock").given_up.entry(queue.to_owned()).or_default() += 1;
    }

    /// A message whose work was put off, to be tried again later.
    pub fn put_off(&self, queue: &str) {
        *self.inner.lock().expect("metrics lock").put_off.entry(queue.to_owned()).or_default() += 1;
    }

    /// A message parked in the dead-letter queue.
    pub fn parked(&self, queue: &str) {
        *self.inner.lock().expect("metrics lock").parked.entry(queue.to_owned()).or_default() += 1;
    }

    /// Rate-limit refusals a job process reported.
    pub fn rate_limited(&self, refusals: u64) {
        self.inner.lock().expect("metrics lock").jobs_rate_limited += refusals;
    }

    /// The peak memory a job process reported.
    pub fn job_memory(&self, bytes: u64) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner.peak_job_memory = inner.peak_job_memory.max(bytes);
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str("# HELP tasks_jobs_total Jobs run to their end, by outcome.\n# TYPE tasks_jobs_total counter\n");
        for (outcome, count) in &inner.jobs {
            let _ = writeln!(out, "tasks_jobs_total{{outcome=\"{outcome}\"}} {count}");
        }
        for (name, help, summary) in [
            ("tasks_job_seconds", "How long jobs ran.", &inner.job_seconds),
            (
                "tasks_queue_wait_seconds",
                "How long messages waited in their queue (1 s resolution).",
                &inner.queue_wait_seconds,
            ),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} summary\n");
            let _ = write!(out, "{name}_sum {}\n{name}_count {}\n", summary.sum, summary.count);
        }
        out.push_str("# HELP tasks_messages_redelivered_total Messages the broker delivered again, by queue.\n");
        out.push_str("# TYPE tasks_messages_redelivered_total counter\n");
        for (queue, count) in &inner.redelivered {
            let _ = writeln!(out, "tasks_messages_redelivered_total{{queue=\"{queue}\"}} {count}");
        }
        out.push_str(
            "# HELP tasks_messages_given_up_total Messages whose work was given up after too many tries, by queue.\n",
        );
        out.push_str("# TYPE tasks_messages_given_up_total counter\n");
        for (queue, count) in &inner.given_up {
            let _ = writeln!(out, "tasks_messages_given_up_total{{queue=\"{queue}\"}} {count}");
        }
        for (name, help, counts) in [
            (
                "tasks_messages_put_off_total",
                "Messages whose work failed for a while and was put off, by queue.",
                &inner.put_off,
            ),
            (
                "tasks_messages_parked_total",
                "Messages parked in the dead-letter queue, by the queue they came from.",
                &inner.parked,
            ),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for (queue, count) in counts {
                let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {count}");
            }
        }
        let name = "tasks_github_rate_limited_total";
        let _ = writeln!(out, "# HELP {name} Requests GitHub refused to limit our rate (each waited out or put off).");
        let _ =
            writeln!(out, "# TYPE {name} counter\n{name} {}", inner.jobs_rate_limited + crate::retry::rate_limited());
        out.push_str("# HELP tasks_job_process_peak_memory_bytes The most memory one job process held at once.\n");
        out.push_str("# TYPE tasks_job_process_peak_memory_bytes gauge\n");
        let _ = writeln!(out, "tasks_job_process_peak_memory_bytes {}", inner.peak_job_memory);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.job(&Outcome::Success, Duration::from_millis(1500));
        metrics.job(&Outcome::Failure("x".into()), Duration::from_millis(500));
        metrics.job(&Outcome::Success, Duration::from_secs(1));
        metrics.taken("public", None, true);
        metrics.taken("webhook", None, false);
        metrics.given_up("public");
        metrics.job_memory(3000);
        metrics.job_memory(2000);
        metrics.rate_limited(2);
        let text = metrics.render();
        // This process's own refusals (none here, but tests share a process under cargo test).
        let rate_limited = format!("tasks_github_rate_limited_total {}", 2 + crate::retry::rate_limited());
        for line in [
            "tasks_jobs_total{outcome=\"success\"} 2",
            "tasks_jobs_total{outcome=\"failure\"} 1",
            "tasks_job_seconds_sum 3",
            "tasks_job_seconds_count 3",
            "tasks_queue_wait_seconds_count 0",
            "tasks_messages_redelivered_total{queue=\"public\"} 1",
            "tasks_messages_given_up_total{queue=\"public\"} 1",
            "tasks_job_process_peak_memory_bytes 3000",
            &rate_limited,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("queue=\"webhook\""), "only redelivered messages count");
    }
}
