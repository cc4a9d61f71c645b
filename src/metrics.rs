//! Prometheus metrics: what the proxy counts and how it is encoded.
//! The admin listener serves them; the proxy and the sweep record them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `1xx` to `5xx`.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// `created`, `rotated`, `flushed` or `expired`.
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `malformed`, `refused` (size or corrupt data) or `server_error` (5xx response).
    pub reason: &'static str,
}

/// Status classes, in the order of `Metrics::by_class`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    /// The request counter of each status class, looked up once: the hot
    /// path increments an atomic, not a map.
    by_class: [Counter; 5],
    pub upstream_latency: Histogram,
    sessions: Family<EventLabel, Counter>,
    operations_rejected: Family<ReasonLabel, Counter>,
    pub store_errors: Counter,
    pub store_latency: Histogram,
    /// Refreshed from the store just before each scrape.
    pub sessions_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sessiongate");
        let requests: Family<ClassLabel, Counter> = Family::default();
        let upstream_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let sessions = Family::default();
        let operations_rejected = Family::default();
        let store_errors = Counter::default();
        let store_latency = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        let sessions_held = Gauge::default();
        registry.register(
            "requests",
            "Responses sent to clients, by status class",
            requests.clone(),
        );
        let by_class = CLASSES.map(|class| requests.get_or_create(&ClassLabel { class }).clone());
        registry.register(
            "upstream_latency_seconds",
            "Time to the upstream's response head",
            upstream_latency.clone(),
        );
        registry.register("sessions", "Session lifecycle events", sessions.clone());
        registry.register(
            "operations_rejected",
            "Upstream responses whose session operations were not applied",
            operations_rejected.clone(),
        );
        registry.register(
            "store_errors",
            "Session store operations that failed (503)",
            store_errors.clone(),
        );
        registry.register(
            "store_latency_seconds",
            "Duration of session store calls",
            store_latency.clone(),
        );
        registry.register(
            "sessions_held",
            "Live sessions held by the store",
            sessions_held.clone(),
        );
        Metrics {
            registry,
            by_class,
            upstream_latency,
            sessions,
            operations_rejected,
            store_errors,
            store_latency,
            sessions_held,
        }
    }

    pub fn response(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
    }

    pub fn session_event(&self, event: &'static str, n: u64) {
        self.sessions.get_or_create(&EventLabel { event }).inc_by(n);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.operations_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
