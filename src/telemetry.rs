//! Logging setup: structured logs through `tracing`, as text on a terminal or JSON for
//! log collectors.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `imagelock=debug,warn`). Logs go to stderr so command output on stdout stays clean.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling run twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

// ---- metrics ---------------------------------------------------------------------------

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::manifest::AdmissionMode;

/// The content type of [`encode`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of `imagelock_admission_duration_seconds`: 50 µs to 1 s (the webhook answers
/// from memory in microseconds; the API server's own timeout is seconds).
const ADMISSION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub registry: String,
    pub method: String,
    /// The HTTP status code, or `error` when no response came back.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResolutionLabels {
    pub registry: String,
    /// `success` or `failure`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlobLabels {
    /// `uploaded`, `mounted` or `present`.
    pub how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GitErrorLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `webhook`, `admin` or `hooks`.
    pub server: &'static str,
    /// A fixed word: `per_peer`, `connections`, `fd_reserve`, `evicted`, `unauthenticated`,
    /// `replay`, `stale`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// The admission mode of the request's namespace (`rewrite`, `enforce`, `audit`, `off`),
    /// or `none` when no review was made (a rejected request, or no pins loaded yet).
    pub mode: &'static str,
    /// `ok` (2xx: a review was answered, which may itself deny the Pod), `rejected` (4xx: bad
    /// request, too large, wrong path) or `error` (5xx, including 503 before the pins are
    /// loaded).
    pub outcome: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepositoryLabels {
    /// The config repo URL, redacted.
    pub repository: String,
}

/// Every metric family of the process. Label values are bounded: registry hosts, methods,
/// status codes, fixed outcome words, the (one) config repository; never image names or
/// digests.
pub struct Metrics {
    registry: Registry,
    pub registry_requests: Family<RequestLabels, Counter>,
    pub registry_throttled: Family<RegistryLabels, Counter>,
    pub registry_ratelimit_remaining: Family<RegistryLabels, Gauge>,
    pub resolutions: Family<ResolutionLabels, Counter>,
    pub mirror_bytes: Counter,
    pub mirror_blobs: Family<BlobLabels, Counter>,
    pub commits: Counter,
    pub push_retries: Counter,
    pub git_errors: Family<GitErrorLabels, Counter>,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: Histogram,
    pub last_successful_sync: Family<RepositoryLabels, Gauge<f64, AtomicU64>>,
    /// 1 while this replica may write (always without leader election), else 0.
    pub leader: Gauge,
    pub refusals: Family<RefusalLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let registry_requests = Family::<RequestLabels, Counter>::default();
        let registry_throttled = Family::<RegistryLabels, Counter>::default();
        let registry_ratelimit_remaining = Family::<RegistryLabels, Gauge>::default();
        let resolutions = Family::<ResolutionLabels, Counter>::default();
        let mirror_bytes = Counter::default();
        let mirror_blobs = Family::<BlobLabels, Counter>::default();
        let commits = Counter::default();
        let push_retries = Counter::default();
        let git_errors = Family::<GitErrorLabels, Counter>::default();
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        let admission_duration = Histogram::new(ADMISSION_BUCKETS);
        let last_successful_sync = Family::<RepositoryLabels, Gauge<f64, AtomicU64>>::default();
        let leader = Gauge::default();
        let refusals = Family::<RefusalLabels, Counter>::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "imagelock_registry_requests",
            "Registry HTTP responses, by registry host, method and status (`error`: none came back)",
            registry_requests.clone(),
        );
        registry.register(
            "imagelock_registry_throttled",
            "Registry responses with status 429 Too Many Requests",
            registry_throttled.clone(),
        );
        registry.register(
            "imagelock_registry_ratelimit_remaining",
            "The last RateLimit-Remaining a registry sent",
            registry_ratelimit_remaining.clone(),
        );
        registry.register(
            "imagelock_resolutions",
            "Tag resolutions, by registry and outcome (a failed listing counts once)",
            resolutions.clone(),
        );
        registry.register(
            "imagelock_mirror_bytes",
            "Bytes uploaded to mirror registries",
            mirror_bytes.clone(),
        );
        registry.register(
            "imagelock_mirror_blobs",
            "Mirrored blobs, by how they reached the destination",
            mirror_blobs.clone(),
        );
        registry.register(
            "imagelock_commits",
            "Lock commits pushed to the config repo",
            commits.clone(),
        );
        registry.register(
            "imagelock_push_retries",
            "Pushes attempted again after a rejection by the config repo",
            push_retries.clone(),
        );
        registry.register(
            "imagelock_git_errors",
            "Failed Git steps of the reconcile loop, by operation",
            git_errors.clone(),
        );
        registry.register(
            "imagelock_admission_requests",
            "Admission webhook requests, by namespace mode, outcome and HTTP status",
            admission_requests.clone(),
        );
        registry.register(
            "imagelock_admission_duration_seconds",
            "Admission webhook server-side time, from the request head to the response",
            admission_duration.clone(),
        );
        registry.register(
            "imagelock_last_successful_sync_timestamp_seconds",
            "Unix time of the last successful fetch of the config repo",
            last_successful_sync.clone(),
        );
        registry.register(
            "imagelock_leader",
            "1 while this replica holds the leader election Lease (or runs without one) and may write, else 0",
            leader.clone(),
        );
        registry.register(
            "imagelock_refusals",
            "Connections and hook requests the servers refused, by server and reason",
            refusals.clone(),
        );
        Metrics {
            registry,
            registry_requests,
            registry_throttled,
            registry_ratelimit_remaining,
            resolutions,
            mirror_bytes,
            mirror_blobs,
            commits,
            push_retries,
            git_errors,
            admission_requests,
            admission_duration,
            last_successful_sync,
            leader,
            refusals,
        }
    }

    /// Counts one registry response (`status: None` when the request failed without one)
    /// and records throttling and the `RateLimit-Remaining` header.
    pub fn registry_response(
        &self,
        registry: &str,
        method: &str,
        status: Option<u16>,
        ratelimit_remaining: Option<&str>,
    ) {
        self.registry_requests
            .get_or_create(&RequestLabels {
                registry: registry.to_owned(),
                method: method.to_owned(),
                status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
            })
            .inc();
        let labels = RegistryLabels {
            registry: registry.to_owned(),
        };
        if status == Some(429) {
            self.registry_throttled.get_or_create(&labels).inc();
        }
        if let Some(remaining) = ratelimit_remaining.and_then(parse_ratelimit_remaining) {
            self.registry_ratelimit_remaining
                .get_or_create(&labels)
                .set(remaining);
        }
    }

    pub fn resolution(&self, registry: &str, success: bool) {
        self.resolutions
            .get_or_create(&ResolutionLabels {
                registry: registry.to_owned(),
                outcome: if success { "success" } else { "failure" },
            })
            .inc();
    }

    pub fn mirrored(&self, report: &crate::mirror::CopyReport) {
        self.mirror_bytes.inc_by(report.bytes_uploaded);
        for (how, count) in [
            ("uploaded", report.blobs_uploaded),
            ("mounted", report.blobs_mounted),
            ("present", report.blobs_present),
        ] {
            if count > 0 {
                self.mirror_blobs
                    .get_or_create(&BlobLabels { how })
                    .inc_by(count as u64);
            }
        }
    }

    /// A connection or hook request `server` refused, and why (a fixed word).
    pub fn refused(&self, server: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { server, reason })
            .inc();
    }

    pub fn git_error(&self, operation: &'static str) {
        self.git_errors
            .get_or_create(&GitErrorLabels { operation })
            .inc();
    }

    /// One admission request, as the webhook's observer reports it: its status, the mode of
    /// the namespace it was reviewed for (`None`: no review was made) and its server-side time.
    pub fn admission(&self, status: u16, mode: Option<AdmissionMode>, took: Duration) {
        let outcome = match status {
            200..=299 => "ok",
            400..=499 => "rejected",
            _ => "error",
        };
        let mode = mode.map_or("none", AdmissionMode::as_str);
        self.admission_requests
            .get_or_create(&AdmissionLabels {
                mode,
                outcome,
                status,
            })
            .inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    /// The config repo (its redacted URL) was fetched successfully `at`.
    pub fn synced(&self, repository: &str, at: chrono::DateTime<chrono::Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.last_successful_sync
            .get_or_create(&RepositoryLabels {
                repository: repository.to_owned(),
            })
            .set(seconds);
    }
}

/// The process's metrics. A process-wide static rather than a handle passed around: the
/// registry client, the mirror engine, the reconciler and the webhook all record into it,
/// and threading a handle through every constructor (and the CLI commands that share those
/// types) would touch every signature for no gain; the families are lock-free to update.
/// Tests in one process share it, so they assert on presence and growth, not exact values.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics in the OpenMetrics text format ([`METRICS_CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The leading number of a `RateLimit-Remaining` value (`76;w=21600` -> 76).
fn parse_ratelimit_remaining(value: &str) -> Option<i64> {
    let number = value.split([';', ',']).next()?.trim();
    number.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ratelimit_remaining() {
        assert_eq!(parse_ratelimit_remaining("76;w=21600"), Some(76));
        assert_eq!(parse_ratelimit_remaining(" 5 "), Some(5));
        assert_eq!(parse_ratelimit_remaining("0"), Some(0));
        assert_eq!(parse_ratelimit_remaining("abc"), None);
    }

    #[test]
    fn encodes_every_family() {
        let m = &*METRICS;
        m.registry_response("test.example:5000", "GET", Some(429), Some("76;w=21600"));
        m.registry_response("test.example:5000", "HEAD", None, None);
        m.resolution("test.example:5000", true);
        m.mirrored(&crate::mirror::CopyReport {
            blobs_uploaded: 2,
            blobs_mounted: 1,
            bytes_uploaded: 10,
            ..Default::default()
        });
        m.commits.inc();
        m.git_error("push");
        m.admission(
            200,
            Some(AdmissionMode::Enforce),
            Duration::from_micros(120),
        );
        m.admission(503, None, Duration::from_micros(40));
        m.synced("https://example.com/repo.git", chrono::Utc::now());
        let text = encode();
        for needle in [
            "imagelock_registry_requests_total{registry=\"test.example:5000\",method=\"GET\",status=\"429\"}",
            "status=\"error\"",
            "imagelock_registry_throttled_total{registry=\"test.example:5000\"}",
            "imagelock_registry_ratelimit_remaining{registry=\"test.example:5000\"} 76",
            "imagelock_resolutions_total{registry=\"test.example:5000\",outcome=\"success\"}",
            "imagelock_mirror_bytes_total ",
            "imagelock_mirror_blobs_total{how=\"uploaded\"}",
            "imagelock_mirror_blobs_total{how=\"mounted\"}",
            "imagelock_commits_total ",
            "imagelock_push_retries_total ",
            "imagelock_git_errors_total{operation=\"push\"}",
            "imagelock_admission_requests_total{mode=\"enforce\",outcome=\"ok\",status=\"200\"}",
            "imagelock_admission_requests_total{mode=\"none\",outcome=\"error\",status=\"503\"}",
            "imagelock_admission_duration_seconds_bucket{le=\"0.00005\"}",
            "imagelock_admission_duration_seconds_count ",
            "imagelock_last_successful_sync_timestamp_seconds{repository=\"https://example.com/repo.git\"}",
            "imagelock_leader ",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }
}
