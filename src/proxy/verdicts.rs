//! Reporting authorization verdicts: the decision counters (enforced and
//! shadow), shadow disagreements, and a log line per disagreement that is
//! limited to one per identity per minute, so a flood of connections from
//! one peer cannot flood the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ConnectionContext;
use crate::tls::HandshakeRecord;

/// How often one identity's disagreement is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Identities remembered at most; past that, disagreements of identities
/// not yet remembered go unlogged until old entries expire (they are still
/// counted).
const REMEMBERED: usize = 1024;

/// Remembers when each identity's disagreement was last logged.
#[derive(Debug, Default)]
pub struct DisagreementLog {
    last_logged: Mutex<HashMap<String, Instant>>,
}

impl DisagreementLog {
    /// True when `identity`'s disagreement should be logged now.
    pub fn should_log(&self, identity: &str, now: Instant) -> bool {
        let Ok(mut last) = self.last_logged.lock() else {
            return false;
        };
        if let Some(at) = last.get(identity) {
            if now.duration_since(*at) < LOG_EVERY {
                return false;
            }
        } else if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            if last.len() >= REMEMBERED {
                return false;
            }
        }
        last.insert(identity.to_string(), now);
        true
    }
}

/// Remember an inbound peer whose chain verified in the peer table
/// (`GET /peers`), with the decision on it.
pub fn remember_peer(ctx: &ConnectionContext, name: &Arc<str>, record: &HandshakeRecord) {
    let (Some(identity), Some(verdict)) = (&record.identity, &record.verdict) else {
        return;
    };
    let recorded = ctx
        .peers
        .record(name, identity, verdict.label(), unix_now());
    ctx.metrics
        .peer_table_entries
        .set(i64::try_from(recorded.entries).unwrap_or(i64::MAX));
    if recorded.evicted {
        ctx.metrics.peer_table_evictions.inc();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Count the verdict the verifier reached, if it reached one, and log a
/// shadow disagreement (rate-limited).
pub fn report(ctx: &ConnectionContext, name: &str, record: &HandshakeRecord) {
    let Some(verdict) = &record.verdict else {
        return;
    };
    let decisions = &ctx.metrics.authz_decisions;
    decisions
        .with_label_values(&[name, "enforced", verdict.label()])
        .inc();
    if let Some(shadow) = verdict.shadow_label() {
        decisions.with_label_values(&[name, "shadow", shadow]).inc();
    }
    let Some((enforced, shadow)) = verdict.disagreement() else {
        return;
    };
    ctx.metrics
        .authz_shadow_disagreements
        .with_label_values(&[name, enforced, shadow])
        .inc();
    let identity = record
        .identity
        .as_ref()
        .map(|i| i.display_name())
        .unwrap_or_default();
    if ctx.disagreements.should_log(&identity, Instant::now()) {
        // Exactly one side denied; its reason says which rule failed.
        let reason = match (&verdict.shadow, verdict.deny_reason()) {
            (_, Some(enforced)) => enforced,
            (Some(crate::identity::Decision::Deny { reason }), None) => reason.as_str(),
            _ => "",
        };
        tracing::info!(
            listener = name,
            peer_identity = %identity,
            enforced,
            shadow,
            reason,
            "shadow rules disagree with the enforced rules (logged once a minute per identity)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_each_identity_once_a_minute() {
        let log = DisagreementLog::default();
        let start = Instant::now();
        assert!(log.should_log("a", start));
        assert!(!log.should_log("a", start + Duration::from_secs(59)));
        assert!(log.should_log("b", start + Duration::from_secs(1)));
        assert!(log.should_log("a", start + Duration::from_secs(61)));
    }

    #[test]
    fn stays_bounded_under_a_flood_of_identities() {
        let log = DisagreementLog::default();
        let start = Instant::now();
        for i in 0..REMEMBERED {
            assert!(log.should_log(&format!("peer-{i}"), start));
        }
        // Full, and nothing has expired: a new identity is not logged.
        assert!(!log.should_log("one more", start + Duration::from_secs(1)));
        assert_eq!(log.last_logged.lock().unwrap().len(), REMEMBERED);
        // Once the old entries expire, there is room again.
        assert!(log.should_log("one more", start + Duration::from_secs(61)));
        assert_eq!(log.last_logged.lock().unwrap().len(), 1);
    }
}
