//! Prometheus metrics of the webhook (prometheus-client), served in the OpenMetrics text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text, which Prometheus asks for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the publish latency histogram buckets.
const BOUNDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    event: &'static str,
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    publish_seconds: Histogram,
    broker_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register("webhook_deliveries", "GitHub deliveries received, by event and outcome", deliveries.clone());
        let publish_seconds = Histogram::new(BOUNDS);
        registry.register(
            "webhook_publish_seconds",
            "Time to publish a delivery, until the broker's confirm",
            publish_seconds.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register("webhook_broker_connected", "Whether the broker connection is up", broker_connected.clone());
        Metrics { registry, deliveries, publish_seconds, broker_connected }
    }
}

/// An `X-GitHub-Event` as the metrics and the status page name it: events other than the
/// known ones are "other", so that a sender cannot add labels or text.
pub fn event_label(event: &str) -> &'static str {
    match event {
        "pull_request" => "pull_request",
        "status" => "status",
        "ping" => "ping",
        "" => "none",
        _ => "other",
    }
}

impl Metrics {
    pub fn delivery(&self, event: &str, outcome: &'static str) {
        let event = event_label(event);
        self.deliveries.get_or_create(&DeliveryLabels { event, outcome }).inc();
    }

    pub fn publish_latency(&self, latency: Duration) {
        self.publish_seconds.observe(latency.as_secs_f64());
    }

    pub fn render(&self, broker_connected: bool) -> String {
        self.broker_connected.set(i64::from(broker_connected));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use prometheus_parse::{LineInfo, Scrape, Value};

    use super::*;

    #[test]
    fn renders_openmetrics_text() {
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
            "webhook_publish_seconds_bucket{le=\"5.0\"} 1",
            "webhook_publish_seconds_bucket{le=\"+Inf\"} 2",
            "webhook_publish_seconds_count 2",
            "webhook_publish_seconds_sum 10.0007",
            "webhook_broker_connected 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // As a Prometheus server reads it: every line understood, the figures where they were put.
        let ignored = text.lines().filter(|l| *l != "# EOF" && LineInfo::parse(l) == LineInfo::Ignored);
        assert_eq!(ignored.collect::<Vec<_>>(), Vec::<&str>::new());
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let sample = |name: &str| scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("{name}"));
        let published = scrape.samples.iter().find(|s| s.labels.get("outcome") == Some("published")).unwrap();
        assert_eq!((published.metric.as_str(), &published.value), ("webhook_deliveries_total", &Value::Untyped(2.0)));
        assert_eq!(sample("webhook_broker_connected").value, Value::Gauge(1.0));
        let Value::Histogram(buckets) = &sample("webhook_publish_seconds").value else { panic!("a histogram") };
        let count = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!((count(0.0005), count(0.001), count(f64::INFINITY)), (Some(0.0), Some(1.0), Some(2.0)));
    }
}
