//! Prometheus metrics in the text exposition format (version 0.0.4), kept by hand: request
//! counts by route template, method and status, a request latency histogram per route
//! template, and lifecycle run counts.
//!
//! Labels carry route templates such as `/v1/policy`, never concrete paths, so a client cannot
//! grow the label set: paths that match no route share the label `unmatched`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Route label of requests whose path matches no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The server's counters, shared by every request and the lifecycle scheduler.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    lifecycle_runs: AtomicU64,
    lifecycle_failures: AtomicU64,
    lifecycle_interval_seconds: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    route: String,
    method: String,
    status: u16,
}

/// Cumulative bucket counts, as Prometheus histograms report them.
#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`].
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Counts one finished request.
    pub fn record_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let key = RequestKey { route: route.to_owned(), method: method.to_owned(), status };
        *lock(&self.inner.requests).entry(key).or_default() += 1;
        lock(&self.inner.latency)
            .entry(route.to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one lifecycle run that the scheduler started, and whether it failed.
    pub fn record_lifecycle_run(&self, failed: bool) {
        self.inner.lifecycle_runs.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.inner.lifecycle_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the scheduler's interval, 0 when the scheduler is off.
    pub fn set_lifecycle_interval(&self, interval: Duration) {
        self.inner.lifecycle_interval_seconds.store(interval.as_secs(), Ordering::Relaxed);
    }

    /// Returns the number of lifecycle runs started and of those that failed.
    pub fn lifecycle_counts(&self) -> (u64, u64) {
        (
            self.inner.lifecycle_runs.load(Ordering::Relaxed),
            self.inner.lifecycle_failures.load(Ordering::Relaxed),
        )
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        self.render_lifecycle(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        out.push_str("# HELP medconnect_http_requests_total HTTP requests answered, by route template, method and status.\n");
        out.push_str("# TYPE medconnect_http_requests_total counter\n");
        for (key, count) in lock(&self.inner.requests).iter() {
            let _ = writeln!(
                out,
                "medconnect_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {count}",
                escape_label(&key.route),
                escape_label(&key.method),
                key.status
            );
        }
    }

    fn render_latency(&self, out: &mut String) {
        out.push_str("# HELP medconnect_http_request_duration_seconds Time from the request's arrival to its response, by route template.\n");
        out.push_str("# TYPE medconnect_http_request_duration_seconds histogram\n");
        for (route, histogram) in lock(&self.inner.latency).iter() {
            let route = escape_label(route);
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "medconnect_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "medconnect_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "medconnect_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                histogram.sum_seconds
            );
            let _ = writeln!(
                out,
                "medconnect_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.count
            );
        }
    }

    fn render_lifecycle(&self, out: &mut String) {
        let (runs, failures) = self.lifecycle_counts();
        let interval = self.inner.lifecycle_interval_seconds.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP medconnect_lifecycle_runs_total Lifecycle runs the server's scheduler started.\n\
             # TYPE medconnect_lifecycle_runs_total counter\n\
             medconnect_lifecycle_runs_total {runs}\n\
             # HELP medconnect_lifecycle_failures_total Lifecycle runs of the scheduler that failed.\n\
             # TYPE medconnect_lifecycle_failures_total counter\n\
             medconnect_lifecycle_failures_total {failures}\n\
             # HELP medconnect_lifecycle_interval_seconds Seconds between scheduled lifecycle runs; 0 when the scheduler is off.\n\
             # TYPE medconnect_lifecycle_interval_seconds gauge\n\
             medconnect_lifecycle_interval_seconds {interval}\n"
        );
    }
}

/// Middleware that counts every request under its route template and times it.
pub async fn track_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method()).to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let elapsed = started.elapsed();
    metrics.record_request(&route, &method, status.as_u16(), elapsed);
    if status.is_server_error() {
        tracing::warn!(%route, %method, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%route, %method, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request");
    }
    response
}

/// Returns the method's name for the standard methods and `other` for the rest, so that
/// made-up methods cannot grow the label set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Escapes a label value as the text format requires: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Locks a metrics map. The maps are changed in single steps, so a lock poisoned by a panic
/// elsewhere still holds consistent counts and is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        metrics.record_request("/healthz", "GET", 200, Duration::from_millis(3));
        metrics.record_request("/healthz", "GET", 200, Duration::from_millis(300));
        let text = metrics.render();
        let bucket = |le: &str| {
            let prefix = format!(
                "medconnect_http_request_duration_seconds_bucket{{route=\"/healthz\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket le={le} in:\n{text}"))
                .to_owned()
        };
        assert_eq!(bucket("0.001"), "0");
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("0.25"), "1");
        assert_eq!(bucket("0.5"), "2");
        assert_eq!(bucket("+Inf"), "2");
        assert!(
            text.contains("medconnect_http_request_duration_seconds_count{route=\"/healthz\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn requests_counted_by_route_method_and_status() {
        let metrics = Metrics::new();
        metrics.record_request("/readyz", "GET", 503, Duration::ZERO);
        metrics.record_request("/readyz", "GET", 503, Duration::ZERO);
        metrics.record_request(UNMATCHED_ROUTE, "POST", 404, Duration::ZERO);
        let text = metrics.render();
        assert!(text.contains(
            "medconnect_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"503\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "medconnect_http_requests_total{route=\"unmatched\",method=\"POST\",status=\"404\"} 1\n"
        ), "{text}");
    }

    #[test]
    fn lifecycle_failures_count_as_runs_too() {
        let metrics = Metrics::new();
        metrics.record_lifecycle_run(false);
        metrics.record_lifecycle_run(true);
        metrics.set_lifecycle_interval(Duration::from_secs(3600));
        let text = metrics.render();
        assert!(text.contains("medconnect_lifecycle_runs_total 2\n"), "{text}");
        assert!(text.contains("medconnect_lifecycle_failures_total 1\n"), "{text}");
        assert!(text.contains("medconnect_lifecycle_interval_seconds 3600\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
