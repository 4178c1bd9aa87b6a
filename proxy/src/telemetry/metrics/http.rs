//! HTTP requests per route: answered by status class, duration (with the
//! request's trace id as an OpenMetrics exemplar when spans are exported,
//! so a slow bucket links to its trace), truncated responses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: String,
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    listener: String,
    route: String,
    upstream: String,
    status_class: &'static str,
}

/// The exemplar of a request duration: the trace it belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    pub(crate) trace_id: String,
}

type DurationHistogram = HistogramWithExemplars<TraceExemplar>;

fn request_duration_histogram() -> DurationHistogram {
    // 250 µs .. ~65 s: proxied loopback requests land in the first buckets,
    // request timeouts in the last ones.
    HistogramWithExemplars::new(exponential_buckets(0.00025, 2.0, 19))
}

pub(super) struct Families {
    http_requests: Family<RouteStatusLabels, Counter>,
    http_duration: Family<RouteLabels, DurationHistogram, fn() -> DurationHistogram>,
    http_truncated: Family<RouteLabels, Counter>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_duration_histogram),
            http_truncated: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, upstream and status class",
            self.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request duration, from the request headers to the end of the response body",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        registry.register(
            "http_responses_truncated",
            "HTTP responses whose body the upstream cut short",
            self.http_truncated.clone(),
        );
    }

    /// Handles for one HTTP route's metrics; `upstream` is empty for direct responses.
    pub(super) fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        let status = |status_class| {
            self.http_requests
                .get_or_create(&RouteStatusLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    upstream: upstream.to_owned(),
                    status_class,
                })
                .clone()
        };
        let labels = RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
        };
        RouteMetrics {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(status),
            duration: self.http_duration.get_or_create(&labels).clone(),
            truncated: self.http_truncated.get_or_create(&labels).clone(),
        }
    }
}

/// One HTTP route's request counters (by status class) and duration histogram.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    requests: [Counter; 5],
    duration: DurationHistogram,
    pub(crate) truncated: Counter,
}

impl RouteMetrics {
    /// Counts one answered request; `trace_id` (of a sampled trace) becomes
    /// the exemplar of the duration's bucket.
    pub(crate) fn answered(
        &self,
        status: http::StatusCode,
        took: std::time::Duration,
        trace_id: Option<String>,
    ) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        let exemplar = trace_id.map(|trace_id| TraceExemplar { trace_id });
        self.duration.observe(took.as_secs_f64(), exemplar, None);
    }
}
