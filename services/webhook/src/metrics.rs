//! Prometheus metrics of the webhook, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency histogram buckets.
const BOUNDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct Metrics {
    /// (event, outcome) → count. Events other than the known ones count as "other", so a
    /// sender cannot grow this map.
    deliveries: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Per-bucket (not cumulative) counts, with +Inf last.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    latency_micros: AtomicU64,
}

impl Metrics {
    pub fn delivery(&self, event: &str, outcome: &'static str) {
        let event = match event {
            "pull_request" => "pull_request",
            "status" => "status",
            "ping" => "ping",
            "" => "none",
            _ => "other",
        };
        *self.deliveries.lock().expect("metrics lock").entry((event, outcome)).or_default() += 1;
    }

    pub fn publish_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, broker_connected: bool) -> String {
        let mut out = String::new();
        out.push_str("# HELP webhook_deliveries_total GitHub deliveries received, by event and outcome.\n");
        out.push_str("# TYPE webhook_deliveries_total counter\n");
        for ((event, outcome), count) in self.deliveries.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "webhook_deliveries_total{{event=\"{event}\",outcome=\"{outcome}\"}} {count}");
        }
        out.push_str("# HELP webhook_publish_seconds Time to publish a delivery, until the broker's confirm.\n");
        out.push_str("# TYPE webhook_publish_seconds histogram\n");
        let mut cumulative = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BOUNDS.get(index).map_or("+Inf".to_owned(), |bound| bound.to_string());
            let _ = writeln!(out, "webhook_publish_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "webhook_publish_seconds_sum {sum}");
        let _ = writeln!(out, "webhook_publish_seconds_count {cumulative}");
        out.push_str("# HELP webhook_broker_connected Whether the broker connection is up.\n");
        out.push_str("# TYPE webhook_broker_connected gauge\n");
        let _ = writeln!(out, "webhook_broker_connected {}", u8::from(broker_connected));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.delivery("pull_request", "published");
        metrics.delivery("pull_request", "published");
        metrics.delivery("x-evil-\"event", "ignored");
        metrics.publish_latency(Duration::from_micros(700));
        metrics.publish_latency(Duration::from_secs(10));
        let text = metrics.render(true);
        for line in [
            "webhook_deliveries_total{event=\"other\",outcome=\"ignored\"} 1",
            "webhook_deliveries_total{event=\"pull_request\",outcome=\"published\"} 2",
            "webhook_publish_seconds_bucket{le=\"0.0005\"} 0",
            "webhook_publish_seconds_bucket{le=\"0.001\"} 1",
            "webhook_publish_seconds_bucket{le=\"5\"} 1",
            "webhook_publish_seconds_bucket{le=\"+Inf\"} 2",
            "webhook_publish_seconds_count 2",
            "webhook_publish_seconds_sum 10.0007",
            "webhook_broker_connected 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
