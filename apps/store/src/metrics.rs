//! Prometheus metrics: requests by route and status, request latency, inference time, queue
//! depth and refusals, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::pool::{PoolCounts, WorkerPool};

/// The worker pool's gauges and counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Requests waiting.
    pub queued: usize,
    /// Their total cost.
    pub queued_cost: u64,
    /// Requests waiting or running.
    pub in_flight: usize,
    /// Worker threads.
    pub workers: usize,
    /// What the pool refused, expired or dropped.
    pub counts: PoolCounts,
}

impl PoolState {
    /// The state of `pool` now.
    pub fn of(pool: &WorkerPool) -> PoolState {
        PoolState {
            queued: pool.queued(),
            queued_cost: pool.queued_cost(),
            in_flight: pool.in_flight(),
            workers: pool.workers(),
            counts: pool.counts(),
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    inference: Histogram,
    body_timeouts: u64,
}

/// The store's metrics. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one answered request: its method, route pattern (not the raw path, so ids do not
    /// blow up the label set), status and duration.
    pub fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut inner = self.lock();
        *inner
            .requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        inner
            .latency
            .entry(route.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Records the time one inference (decode, embed, search) took.
    pub fn record_inference(&self, seconds: f64) {
        self.lock().inference.observe(seconds);
    }

    /// Counts a request whose body did not arrive in time.
    pub fn record_body_timeout(&self) {
        self.lock().body_timeouts += 1;
    }

    /// The text exposition format, with the worker pool's state.
    pub fn render(&self, pool: &PoolState) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP wtb_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE wtb_http_requests_total counter\n");
        for ((method, route, status), count) in &inner.requests {
            let _ = writeln!(
                out,
                "wtb_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape_label(method),
                escape_label(route)
            );
        }
        out.push_str("# HELP wtb_http_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE wtb_http_request_duration_seconds histogram\n");
        for (route, histogram) in &inner.latency {
            let labels = format!("route=\"{}\"", escape_label(route));
            histogram.render(&mut out, "wtb_http_request_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP wtb_inference_duration_seconds Time to decode, embed and search one query.\n",
        );
        out.push_str("# TYPE wtb_inference_duration_seconds histogram\n");
        inner
            .inference
            .render(&mut out, "wtb_inference_duration_seconds", "");
        out.push_str("# HELP wtb_queue_depth Inference requests waiting for a worker.\n");
        out.push_str("# TYPE wtb_queue_depth gauge\n");
        let _ = writeln!(out, "wtb_queue_depth {}", pool.queued);
        out.push_str(
            "# HELP wtb_queue_cost Cost of the waiting requests (thousands of decoded pixels).\n",
        );
        out.push_str("# TYPE wtb_queue_cost gauge\n");
        let _ = writeln!(out, "wtb_queue_cost {}", pool.queued_cost);
        out.push_str("# HELP wtb_inference_in_flight Inference requests waiting or running.\n");
        out.push_str("# TYPE wtb_inference_in_flight gauge\n");
        let _ = writeln!(out, "wtb_inference_in_flight {}", pool.in_flight);
        out.push_str("# HELP wtb_inference_workers Inference worker threads.\n");
        out.push_str("# TYPE wtb_inference_workers gauge\n");
        let _ = writeln!(out, "wtb_inference_workers {}", pool.workers);
        out.push_str(
            "# HELP wtb_rejected_total Searches answered 503 or 429 without running: the queue \
             was full, the client held its share of it, or the request waited past the deadline.\n",
        );
        out.push_str("# TYPE wtb_rejected_total counter\n");
        for (reason, count) in [
            ("queue_full", pool.counts.queue_full),
            ("client_share", pool.counts.client_share),
            ("deadline", pool.counts.expired),
        ] {
            let _ = writeln!(out, "wtb_rejected_total{{reason=\"{reason}\"}} {count}");
        }
        out.push_str(
            "# HELP wtb_abandoned_total Queued searches dropped because the client went away.\n",
        );
        out.push_str("# TYPE wtb_abandoned_total counter\n");
        let _ = writeln!(out, "wtb_abandoned_total {}", pool.counts.abandoned);
        out.push_str(
            "# HELP wtb_body_timeouts_total Requests answered 408: the body did not arrive in time.\n",
        );
        out.push_str("# TYPE wtb_body_timeouts_total counter\n");
        let _ = writeln!(out, "wtb_body_timeouts_total {}", inner.body_timeouts);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.record_request("GET", "/healthz", 200, 0.001);
        metrics.record_request("GET", "/healthz", 200, 0.2);
        metrics.record_request("POST", "/api/v1/search", 400, 0.03);
        metrics.record_inference(0.04);
        metrics.record_body_timeout();
        let text = metrics.render(&PoolState {
            queued: 3,
            queued_cost: 4500,
            in_flight: 5,
            workers: 2,
            counts: PoolCounts {
                queue_full: 1,
                client_share: 2,
                expired: 3,
                abandoned: 4,
            },
        });
        assert!(text.contains(
            "wtb_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "wtb_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "wtb_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("wtb_http_request_duration_seconds_count{route=\"/healthz\"} 2"));
        assert!(text.contains("wtb_inference_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("wtb_inference_duration_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("wtb_queue_depth 3\n"));
        assert!(text.contains("wtb_inference_in_flight 5\n"));
        assert!(text.contains("wtb_queue_cost 4500\n"));
        assert!(text.contains("wtb_rejected_total{reason=\"queue_full\"} 1\n"));
        assert!(text.contains("wtb_rejected_total{reason=\"client_share\"} 2\n"));
        assert!(text.contains("wtb_rejected_total{reason=\"deadline\"} 3\n"));
        assert!(text.contains("wtb_abandoned_total 4\n"));
        assert!(text.contains("wtb_body_timeouts_total 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
