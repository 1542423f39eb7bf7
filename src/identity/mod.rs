//! Who the peer is and whether it may talk to us: SPIFFE IDs, identity
//! fields read from a verified certificate, globs and the allow policy.

pub mod authz;
pub mod glob;
pub mod peer;
pub mod policy;
pub mod spiffe;

pub use authz::{Authorizer, Mode, Verdict};
pub use peer::PeerIdentity;
pub use policy::{Decision, Policy, RuleSpec};
pub use spiffe::SpiffeId;
