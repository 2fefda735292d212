//! `/metrics` in the Prometheus text format: decisions, invocations by outcome and level, job
//! latency, and (read at scrape time) pending approvals and the audit head height.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Job latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default)]
struct Inner {
    decisions: BTreeMap<String, u64>,
    jobs: BTreeMap<(String, u8), u64>,
    latency_buckets: [u64; BUCKETS.len()],
    latency_sum: f64,
    latency_count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn decision(&self, decision: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.decisions.entry(decision.to_string()).or_default() += 1;
    }

    /// Count a finished job. `outcome` may come from an agent's report: only the runtime's own
    /// outcomes (and `refused`) become a label; anything else counts as `other`, so no peer
    /// can add label values or text to `/metrics`.
    pub fn job_finished(&self, outcome: &str, level: u8, took: Duration) {
        let known = outcome == "refused"
            || serde_json::from_value::<tend_runtime::Outcome>(outcome.into()).is_ok();
        let outcome = if known { outcome } else { "other" };
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.jobs.entry((outcome.to_string(), level)).or_default() += 1;
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                m.latency_buckets[i] += 1;
            }
        }
        m.latency_sum += s;
        m.latency_count += 1;
    }

    /// Render, with the gauges read from storage by the caller.
    /// `refusals`: per audit action, unauthenticated requests refused and how many of those
    /// flood control left out of the audit trail.
    pub fn render(
        &self,
        by_state: &[(String, i64)],
        audit_head: i64,
        refusals: &[(String, u64, u64)],
    ) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tend_decisions_total Policy decisions on submitted invocations.\n# TYPE tend_decisions_total counter"
        );
        for (d, n) in &m.decisions {
            let _ = writeln!(out, "tend_decisions_total{{decision=\"{d}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tend_invocations_total Invocations run to the end, by outcome and zero-trust level.\n# TYPE tend_invocations_total counter"
        );
        for ((o, l), n) in &m.jobs {
            let _ = writeln!(
                out,
                "tend_invocations_total{{outcome=\"{o}\",level=\"{l}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tend_invocations Invocations currently in each state.\n# TYPE tend_invocations gauge"
        );
        for (s, n) in by_state {
            let _ = writeln!(out, "tend_invocations{{state=\"{s}\"}} {n}");
        }
        let pending = by_state
            .iter()
            .find(|(s, _)| s == crate::invocation::State::PendingApproval.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "# HELP tend_pending_approvals Invocations waiting for approval.\n# TYPE tend_pending_approvals gauge\ntend_pending_approvals {pending}"
        );
        let _ = writeln!(
            out,
            "# HELP tend_job_duration_seconds Time from claim to recorded result.\n# TYPE tend_job_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tend_job_duration_seconds_bucket{{le=\"{b}\"}} {}",
                m.latency_buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "tend_job_duration_seconds_bucket{{le=\"+Inf\"}} {c}\ntend_job_duration_seconds_sum {s}\ntend_job_duration_seconds_count {c}",
            c = m.latency_count,
            s = m.latency_sum
        );
        let _ = writeln!(
            out,
            "# HELP tend_audit_head_height Events in the audit hash chain.\n# TYPE tend_audit_head_height gauge\ntend_audit_head_height {audit_head}"
        );
        let _ = writeln!(
            out,
            "# HELP tend_refusals_total Unauthenticated requests refused, by audit action (written to the audit trail or not).\n# TYPE tend_refusals_total counter"
        );
        for (action, n, _) in refusals {
            let _ = writeln!(out, "tend_refusals_total{{action=\"{action}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tend_audit_refusals_suppressed_total Refusals counted but left out of the audit trail by flood control (each window is summarised by one audit.refusals_suppressed event).\n# TYPE tend_audit_refusals_suppressed_total counter"
        );
        for (action, _, suppressed) in refusals {
            let _ = writeln!(
                out,
                "tend_audit_refusals_suppressed_total{{action=\"{action}\"}} {suppressed}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outcome comes from an agent's report: text that is not one of the runtime's outcomes
    /// is counted as `other` and never reaches `/metrics`.
    #[test]
    fn an_outcome_a_peer_makes_up_is_counted_as_other() {
        let m = Metrics::default();
        m.job_finished("ok", 0, Duration::from_millis(1));
        m.job_finished(
            "x\"} 0\ntend_invocations{state=\"pending_approval\"} 0\n#",
            0,
            Duration::from_millis(1),
        );
        let text = m.render(&[], 0, &[]);
        assert!(
            text.contains("tend_invocations_total{outcome=\"ok\",level=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tend_invocations_total{outcome=\"other\",level=\"0\"} 1"),
            "{text}"
        );
        assert!(!text.contains("x\\\""), "{text}");
        assert!(!text.contains("state=\"pending_approval\"} 0\n#"), "{text}");
    }
}
