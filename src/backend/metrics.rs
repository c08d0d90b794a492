//! What a server's traffic is counted by: failure kinds, selection reasons and the
//! pre-resolved metric handles of one server, so the request path never looks a label up.

use prometheus::IntCounter;

use crate::metrics::Metrics;

/// Kinds of failure talking to a server, for metrics and passive detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect refused or timed out.
    Connect,
    /// Connection reset or closed before a response head.
    Reset,
    /// No response head within the timeout.
    Timeout,
    /// A 5xx response.
    Status5xx,
    /// A malformed response.
    Protocol,
}

impl FailureKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Status5xx => "5xx",
            FailureKind::Protocol => "protocol",
        }
    }
    pub(super) const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::Status5xx,
        FailureKind::Protocol,
    ];
}

/// Why a server was chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The balancer chose it from the primary tier.
    Balance,
    /// A hashing algorithm chose it.
    Hash,
    /// The request's sticky cookie named it.
    Sticky,
    /// No primary was eligible; the backup tier was used.
    Backup,
    /// Chosen for a retry after another server failed.
    Retry,
    /// The first choice had no free slot (`max_conns`); the queue moved the request here.
    Queue,
}

impl Selection {
    pub(super) const ALL: [Selection; 6] = [
        Selection::Balance,
        Selection::Hash,
        Selection::Sticky,
        Selection::Backup,
        Selection::Retry,
        Selection::Queue,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Balance => "balance",
            Selection::Hash => "hash",
            Selection::Sticky => "sticky",
            Selection::Backup => "backup",
            Selection::Retry => "retry",
            Selection::Queue => "queue",
        }
    }
}

/// Pre-resolved metric handles of one server.
pub struct BackendMetrics {
    errors: [IntCounter; FailureKind::ALL.len()],
    /// Response-head latency.
    pub response: crate::metrics::ShardedHistogram,
    selections: [IntCounter; Selection::ALL.len()],
    /// Passive ejections.
    pub ejections: IntCounter,
    /// Times flap damping held the server out.
    pub flap_suppressions: IntCounter,
    /// Disagreement episodes: checks pass while traffic fails.
    pub disagree_traffic_failing: IntCounter,
    /// Disagreement episodes: checks fail while traffic succeeds.
    pub disagree_check_failing: IntCounter,
}

impl BackendMetrics {
    pub(super) fn new(m: &Metrics, pool: &str, server: &str) -> Self {
        BackendMetrics {
            errors: FailureKind::ALL.map(|k| {
                m.backend_errors
                    .with_label_values(&[pool, server, k.as_str()])
            }),
            response: m.backend_response.with_label_values(&[pool, server]),
            selections: Selection::ALL
                .map(|s| m.selections.with_label_values(&[pool, server, s.as_str()])),
            ejections: m.ejections.with_label_values(&[pool, server]),
            flap_suppressions: m.flap_suppressions.with_label_values(&[pool, server]),
            disagree_traffic_failing: m.disagreements.with_label_values(&[
                pool,
                server,
                DISAGREE_TRAFFIC_FAILING,
            ]),
            disagree_check_failing: m.disagreements.with_label_values(&[
                pool,
                server,
                DISAGREE_CHECK_FAILING,
            ]),
        }
    }

    /// Failures so far of the kinds `counts` accepts (read by the health checker, not per request).
    pub fn errors_total(&self, counts: impl Fn(FailureKind) -> bool) -> u64 {
        FailureKind::ALL
            .iter()
            .filter(|k| counts(**k))
            .map(|k| self.errors[*k as usize].get())
            .sum()
    }

    /// Counts a failure.
    #[inline]
    pub fn error(&self, kind: FailureKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts a selection: a request (L7) or connection (L4) sent to the server, and why.
    /// The only per-request count of the server; `fulcrum_server_requests_total` is their
    /// sum, computed at scrape time.
    #[inline]
    pub fn selected(&self, why: Selection) {
        self.selections[why as usize].inc();
    }

    /// Requests (L7) or connections (L4) sent so far: the sum of the selections (read by
    /// the health checker, `/status` and scrapes, never per request).
    pub fn requests(&self) -> u64 {
        self.selections.iter().map(IntCounter::get).sum()
    }
}

/// `kind` label of a disagreement where active checks pass while real traffic fails.
pub const DISAGREE_TRAFFIC_FAILING: &str = "traffic_failing";
/// `kind` label of a disagreement where active checks fail while real traffic succeeds.
pub const DISAGREE_CHECK_FAILING: &str = "check_failing";
