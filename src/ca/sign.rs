//! `POST /v1/sign`: deciding whether to issue, and for whom.
//!
//! The identity comes only from the caller's credential:
//! 1. `Authorization: Bearer <JWT>` accepted by a provisioner; or
//! 2. the client certificate of the TLS connection (renewal): its chain was
//!    verified against the trust bundle in the handshake; here it must also
//!    be valid now, not revoked, and carry a SPIFFE ID of this trust domain.
//!
//! With both, the token is used only when it names the certificate's
//! identity (`identity_mismatch` otherwise). Then the CSR must parse and its
//! signature verify (`bad_csr`); only then is a token consumed (single use),
//! the leaf signed per [`super::policy`], and the issuance logged. If the
//! issuance log cannot be written, nothing is returned.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::api::{SignRequest, SignResponse};
use super::authority::Authority;
use super::csr;
use super::log::{Entry, IssuanceLog};
use super::policy::{self, LeafSpec};
use super::provisioner::Provisioners;
use super::revocation::Revocations;
use crate::identity::{PeerIdentity, SpiffeId};

/// Why a request was refused: the `error` field of an `ErrorResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The request is malformed (JSON, ttl, method, size).
    BadRequest,
    /// The CSR does not parse, or its signature does not verify.
    BadCsr,
    /// The token is malformed, not signed by a provisioner, or has wrong claims.
    BadToken,
    /// The token has expired.
    TokenExpired,
    /// The token was used before.
    TokenReplayed,
    /// The token and the client certificate name different identities.
    IdentityMismatch,
    /// No credential at all.
    Unauthenticated,
    /// The credential is genuine but does not allow this (revoked
    /// certificate, identity outside the trust domain, ...).
    Forbidden,
    /// The CA failed (signing, issuance log); nothing was issued.
    Internal,
}

impl Code {
    /// Every code, for pre-initialised metrics.
    pub const ALL: [Code; 9] = [
        Code::BadRequest,
        Code::BadCsr,
        Code::BadToken,
        Code::TokenExpired,
        Code::TokenReplayed,
        Code::IdentityMismatch,
        Code::Unauthenticated,
        Code::Forbidden,
        Code::Internal,
    ];

    /// The wire name, e.g. `bad_csr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::BadCsr => "bad_csr",
            Code::BadToken => "bad_token",
            Code::TokenExpired => "token_expired",
            Code::TokenReplayed => "token_replayed",
            Code::IdentityMismatch => "identity_mismatch",
            Code::Unauthenticated => "unauthenticated",
            Code::Forbidden => "forbidden",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Code::BadRequest | Code::BadCsr => 400,
            Code::BadToken | Code::TokenExpired | Code::TokenReplayed | Code::Unauthenticated => {
                401
            }
            Code::IdentityMismatch | Code::Forbidden => 403,
            Code::Internal => 500,
        }
    }
}

/// A refused request: code and human-readable reason (never token contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", code.as_str())]
pub struct Refusal {
    /// Machine-readable code.
    pub code: Code,
    /// Why.
    pub reason: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: Code, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// What the caller presented.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header, if any (raw value).
    pub authorization: Option<&'a str>,
    /// The client certificate chain verified in the TLS handshake, if any.
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
}

impl Credentials<'_> {
    /// `token`, `certificate`, `token+certificate` or `none`, for logs.
    pub fn kind(&self) -> &'static str {
        match (self.authorization.is_some(), self.client_chain.is_some()) {
            (true, true) => "token+certificate",
            (true, false) => "token",
            (false, true) => "certificate",
            (false, false) => "none",
        }
    }
}

/// A successful issuance.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The response body.
    pub response: SignResponse,
    /// How the caller authenticated (`token:<provisioner>` or `renewal`).
    pub credential: String,
}

/// Everything the signing endpoint needs.
#[derive(Debug)]
pub struct Signer {
    /// The issuing CA.
    pub authority: Authority,
    /// Token issuers.
    pub provisioners: Provisioners,
    /// Revoked serials and the CRL.
    pub revocations: Revocations,
    /// The issuance log.
    pub log: IssuanceLog,
    /// Lifetime when the request names none.
    pub default_ttl: Duration,
    /// Longest lifetime issued.
    pub max_ttl: Duration,
}

/// The bearer token in an `Authorization` header value.
fn bearer(value: &str) -> Result<&str, Refusal> {
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Refusal::new(
            Code::BadToken,
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    Ok(token)
}

impl Signer {
    /// The identity of a client certificate, if it may renew.
    fn renewal_identity(&self, chain: &[CertificateDer<'static>]) -> Result<SpiffeId, Refusal> {
        let forbidden = |reason: String| Refusal::new(Code::Forbidden, reason);
        let leaf = chain
            .first()
            .ok_or_else(|| forbidden("empty client certificate chain".into()))?;
        let peer = PeerIdentity::from_der(leaf, &[])
            .map_err(|e| forbidden(format!("client certificate: {e}")))?;
        let id = peer.spiffe_id.ok_or_else(|| {
            forbidden(
                "the client certificate has no SPIFFE ID (exactly one spiffe:// URI SAN)".into(),
            )
        })?;
        if !self.authority.admits(&id) {
            return Err(forbidden(format!(
                "the client certificate's identity {id} is not a workload of trust domain {}",
                self.authority.trust_domain()
            )));
        }
        if peer.not_after < OffsetDateTime::now_utc().unix_timestamp() {
            return Err(forbidden("the client certificate has expired".into()));
        }
        let revoked = self
            .revocations
            .current(&self.authority)
            .map_err(|e| Refusal::new(Code::Internal, format!("revocation list: {e}")))?;
        let serial = super::revocation::normalize_serial(&peer.serial).unwrap_or(peer.serial);
        if revoked.serials.contains(&serial) {
            return Err(forbidden(format!(
                "the client certificate (serial {serial}) is revoked"
            )));
        }
        Ok(id)
    }

    /// Handle one signing request.
    pub fn sign(&self, body: &[u8], credentials: Credentials<'_>) -> Result<Signed, Refusal> {
        let request: SignRequest = serde_json::from_slice(body).map_err(|e| {
            Refusal::new(
                Code::BadRequest,
                format!("the body is not a sign request: {e}"),
            )
        })?;
        let requested_ttl = match request.ttl_seconds {
            Some(0) => {
                return Err(Refusal::new(
                    Code::BadRequest,
                    "ttl_seconds must be at least 1",
                ))
            }
            other => other.map(Duration::from_secs),
        };

        // Authenticate: the identity comes from the credential only.
        let grant = credentials
            .authorization
            .map(|value| bearer(value).and_then(|t| self.provisioners.authenticate(t)))
            .transpose()?;
        let (spiffe_id, credential) = match (grant.as_ref(), credentials.client_chain) {
            (Some(grant), Some(chain)) => {
                let cert_id = PeerIdentity::from_der(chain.first().map_or(&[][..], |c| c), &[])
                    .ok()
                    .and_then(|p| p.spiffe_id);
                if cert_id.as_ref() != Some(&grant.spiffe_id) {
                    return Err(Refusal::new(
                        Code::IdentityMismatch,
                        format!(
                            "the token names {} but the client certificate is {}",
                            grant.spiffe_id,
                            cert_id
                                .map_or_else(|| "without a SPIFFE ID".into(), |id| id.to_string())
                        ),
                    ));
                }
                (
                    grant.spiffe_id.clone(),
                    format!("token:{}", grant.provisioner),
                )
            }
            (Some(grant), None) => (
                grant.spiffe_id.clone(),
                format!("token:{}", grant.provisioner),
            ),
            (None, Some(chain)) => (self.renewal_identity(chain)?, "renewal".to_string()),
            (None, None) => {
                return Err(Refusal::new(
                    Code::Unauthenticated,
                    "no credential: send `Authorization: Bearer <bootstrap token>`, \
                     or renew over mTLS with your current certificate",
                ))
            }
        };

        // Proof of possession.
        let public_key = csr::verified_public_key(&request.csr)
            .map_err(|e| Refusal::new(Code::BadCsr, format!("CSR {e}")))?;

        if let Some(grant) = &grant {
            self.provisioners.consume(grant)?;
        }

        let spec = LeafSpec {
            spiffe_id: Some(spiffe_id.clone()),
            dns: vec![],
            ips: vec![],
            lifetime: policy::lifetime(requested_ttl, self.default_ttl, self.max_ttl),
        };
        let issued = self
            .authority
            .issue(&spec, &public_key)
            .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        self.log
            .record(&Entry::now(
                &issued.serial,
                spiffe_id.as_str(),
                &credential,
                issued.not_after,
            ))
            .map_err(|e| {
                Refusal::new(
                    Code::Internal,
                    format!("issuance log: {e}; the certificate was not handed out"),
                )
            })?;
        Ok(Signed {
            response: SignResponse {
                certificate_chain: issued.chain_pem,
                trust_bundle: self.authority.bundle_pem().to_string(),
                spiffe_id: spiffe_id.to_string(),
                serial: issued.serial,
                not_after: issued.not_after.unix_timestamp(),
            },
            credential,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc").unwrap(), "abc");
        assert_eq!(bearer("bearer  abc ").unwrap(), "abc");
        assert_eq!(bearer("Basic abc").unwrap_err().code, Code::BadToken);
        assert_eq!(bearer("Bearer").unwrap_err().code, Code::BadToken);
    }

    #[test]
    fn codes_have_4xx_statuses_except_internal() {
        for code in Code::ALL {
            let status = code.status();
            assert!(
                (400..500).contains(&status) || code == Code::Internal,
                "{code:?}"
            );
        }
    }
}
