//! One listener's authorization: the enforced policy, whether it is enforced
//! or only audited, and shadow rules evaluated beside it.
//!
//! This is the one policy engine: the TLS handshake, the live-connection
//! re-check on reload and `portcullis authz explain` all ask an
//! [`Authorizer`], so what `explain` prints is what the proxy does.
//!
//! - In `enforce` mode a peer the rules deny is refused (`access_denied`).
//! - In `audit` mode it is admitted, and the verdict says `would_deny` with
//!   the same rule-by-rule reason a refusal carries. Chain and trust checks
//!   happen before any of this, so an untrusted or revoked chain is refused
//!   in either mode.
//! - Shadow rules never change the outcome; their decision is reported next
//!   to the enforced one, so a new rule set can be compared with the one in
//!   force on real traffic before it replaces it.

use std::fmt;

use super::peer::PeerIdentity;
use super::policy::{Decision, Policy, Rule};

/// Whether a listener's rules refuse peers or only report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A peer the rules deny is refused.
    #[default]
    Enforce,
    /// A peer the rules deny is admitted and reported as `would_deny`.
    Audit,
}

impl Mode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// The enforced policy, its mode, and optional shadow rules.
#[derive(Debug, Clone)]
pub struct Authorizer {
    enforced: Policy,
    mode: Mode,
    shadow: Option<Policy>,
    extension_oids: Vec<String>,
}

/// What the authorizer decided for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The enforced rules' decision.
    pub enforced: Decision,
    /// The mode the enforced rules ran in.
    pub mode: Mode,
    /// The shadow rules' decision, when the listener has shadow rules.
    pub shadow: Option<Decision>,
}

/// The outcome of one rule for one peer, for `authz explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The rule's index in its list.
    pub index: usize,
    /// Ok when every field matched, else the first field that did not.
    pub result: Result<(), String>,
}

impl Authorizer {
    /// An authorizer for `enforced` in `mode`, with optional shadow rules.
    pub fn new(enforced: Policy, mode: Mode, shadow: Option<Policy>) -> Self {
        let mut extension_oids: Vec<String> = enforced.extension_oids().to_vec();
        if let Some(shadow) = &shadow {
            extension_oids.extend(shadow.extension_oids().iter().cloned());
        }
        extension_oids.sort();
        extension_oids.dedup();
        Authorizer {
            enforced,
            mode,
            shadow,
            extension_oids,
        }
    }

    /// An authorizer that enforces `policy` and has no shadow rules.
    pub fn enforcing(policy: Policy) -> Self {
        Authorizer::new(policy, Mode::Enforce, None)
    }

    /// The custom extension OIDs the enforced and shadow rules read.
    pub fn extension_oids(&self) -> &[String] {
        &self.extension_oids
    }

    /// The mode of the enforced rules.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The enforced rules.
    pub fn enforced(&self) -> &Policy {
        &self.enforced
    }

    /// The shadow rules, if any.
    pub fn shadow(&self) -> Option<&Policy> {
        self.shadow.as_ref()
    }

    /// Decide for `peer`.
    pub fn authorize(&self, peer: &PeerIdentity) -> Verdict {
        Verdict {
            enforced: self.enforced.evaluate(peer),
            mode: self.mode,
            shadow: self.shadow.as_ref().map(|s| s.evaluate(peer)),
        }
    }

    /// Every rule of the enforced policy and of the shadow rules, with its
    /// outcome for `peer` (the same checks [`Authorizer::authorize`] runs).
    pub fn explain(&self, peer: &PeerIdentity) -> (Vec<RuleOutcome>, Option<Vec<RuleOutcome>>) {
        let outcomes = |policy: &Policy| {
            policy
                .rules()
                .iter()
                .enumerate()
                .map(|(index, rule): (usize, &Rule)| RuleOutcome {
                    index,
                    result: rule.check(peer),
                })
                .collect()
        };
        (outcomes(&self.enforced), self.shadow.as_ref().map(outcomes))
    }
}

impl Verdict {
    /// True when the peer may proceed: allowed, or denied in audit mode.
    pub fn admitted(&self) -> bool {
        self.enforced.is_allowed() || self.mode == Mode::Audit
    }

    /// The `decision` label of the enforced policy: `allow`, `deny`, or
    /// `would_deny` (denied by the rules, admitted by audit mode).
    pub fn label(&self) -> &'static str {
        match (&self.enforced, self.mode) {
            (Decision::Allow { .. }, _) => "allow",
            (Decision::Deny { .. }, Mode::Enforce) => "deny",
            (Decision::Deny { .. }, Mode::Audit) => "would_deny",
        }
    }

    /// The shadow rules' `decision` label, `allow` or `deny`.
    pub fn shadow_label(&self) -> Option<&'static str> {
        self.shadow.as_ref().map(decision_label)
    }

    /// `(enforced label, shadow label)` when the shadow rules decided
    /// otherwise than the enforced rules.
    pub fn disagreement(&self) -> Option<(&'static str, &'static str)> {
        let shadow = self.shadow.as_ref()?;
        (shadow.is_allowed() != self.enforced.is_allowed())
            .then(|| (self.label(), decision_label(shadow)))
    }

    /// Why the enforced rules denied, when they did.
    pub fn deny_reason(&self) -> Option<&str> {
        match &self.enforced {
            Decision::Deny { reason } => Some(reason),
            Decision::Allow { .. } => None,
        }
    }
}

fn decision_label(decision: &Decision) -> &'static str {
    if decision.is_allowed() {
        "allow"
    } else {
        "deny"
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
