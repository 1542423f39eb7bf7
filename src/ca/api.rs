//! The CA's HTTPS API, shared by the CA server and the proxy's CA client.
//!
//! - `POST /v1/sign`: body [`SignRequest`]; authenticated either by
//!   `Authorization: Bearer <bootstrap JWT>` or by a client certificate the
//!   CA issued that is still valid (renewal: same identity only). Answers
//!   200 [`SignResponse`], or 4xx [`ErrorResponse`].
//! - `GET /v1/bundle`: the trust bundle, PEM (no authentication).
//! - `GET /v1/crl`: the CRL signed by the issuing CA, PEM (no authentication).
//! - `GET /metrics`, `GET /healthz`.

use serde::{Deserialize, Serialize};

/// Path of the signing endpoint.
pub const SIGN_PATH: &str = "/v1/sign";
/// Path of the trust bundle.
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// Path of the CRL.
pub const CRL_PATH: &str = "/v1/crl";

/// A certificate signing request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// PKCS#10 CSR, PEM. Its subject and SANs are ignored: the identity
    /// comes from the credential. Its signature proves key possession.
    pub csr: String,
    /// Wanted lifetime in seconds; capped by the CA's policy.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A signed certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignResponse {
    /// Leaf then intermediates, PEM.
    pub certificate_chain: String,
    /// The CA's trust bundle (roots), PEM.
    pub trust_bundle: String,
    /// The SPIFFE ID issued.
    pub spiffe_id: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Machine-readable code, e.g. `bad_csr`, `bad_token`, `token_replayed`,
    /// `token_expired`, `identity_mismatch`, `unauthenticated`.
    pub error: String,
    /// Human-readable reason.
    pub reason: String,
}
