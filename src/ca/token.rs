//! Bootstrap tokens minted by `portcullis ca token`: ES256 JWTs signed with
//! the CA folder's `token.key`, whose public half is `jwks.json`.
//!
//! Claims: `iss` and `aud` are both `portcullis-ca`, `sub` is the SPIFFE ID
//! the token may obtain a certificate for, `iat`, `exp`, and a random `jti`
//! (the CA accepts each `jti` once). The header names the key (`kid`).

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use super::authority::Authority;
use super::files::{self, CaDir, FileError};
use super::policy::{self, PolicyError};
use crate::certs::pem::{self, CertError};
use crate::identity::SpiffeId;

/// `iss` of the CA's own tokens.
pub const ISSUER: &str = "portcullis-ca";
/// `aud` of the CA's own tokens.
pub const AUDIENCE: &str = "portcullis-ca";

/// Why a token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The SPIFFE ID is not valid or not in the CA's trust domain.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    BadId {
        /// What was given.
        id: String,
        /// Why.
        reason: String,
    },
    /// The key files are missing or unusable.
    #[error("{0}")]
    Key(CertError),
    /// The CA folder cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The CA cannot be loaded (to learn its trust domain).
    #[error(transparent)]
    Authority(#[from] super::authority::AuthorityError),
    /// The key is not an ECDSA P-256 key, or signing failed.
    #[error("{what}: {reason}")]
    Crypto {
        /// Which step.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Random generation failed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The lifetime is zero or too long.
    #[error("token lifetime must be between 1s and 24h, not {0:?}")]
    Ttl(Duration),
}

// By hand rather than `#[from]`, so the OS error is not printed twice.
impl From<CertError> for TokenError {
    fn from(error: CertError) -> Self {
        TokenError::Key(error)
    }
}

/// The claims of a CA bootstrap token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The SPIFFE ID.
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Unique token ID.
    pub jti: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key ID of a public key: the RFC 7638 thumbprint would need a hash;
/// the first 16 hex digits of the x coordinate identify the key as well.
fn key_id(raw_public: &[u8]) -> String {
    policy::hex(raw_public.get(1..9).unwrap_or_default())
}

/// The JWK of an ECDSA P-256 key pair's public half.
pub fn jwk(key: &KeyPair) -> Result<Jwk, TokenError> {
    let raw = key.public_key_raw();
    // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
    if raw.len() != 65 || raw[0] != 4 {
        return Err(TokenError::Crypto {
            what: "token signing key",
            reason: "not an ECDSA P-256 key".into(),
        });
    }
    Ok(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::ES256),
            key_id: Some(key_id(raw)),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
            key_type: EllipticCurveKeyType::EC,
            curve: EllipticCurve::P256,
            x: b64url(&raw[1..33]),
            y: b64url(&raw[33..65]),
        }),
    })
}

/// `jwks.json` for a token signing key.
pub fn jwks_json(key: &KeyPair) -> Result<String, TokenError> {
    let set = JwkSet {
        keys: vec![jwk(key)?],
    };
    serde_json::to_string_pretty(&set)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| TokenError::Crypto {
            what: "jwks.json",
            reason: e.to_string(),
        })
}

/// Sign `claims` with an ES256 key (PKCS#8 PEM).
pub fn sign(claims: &impl Serialize, key: &KeyPair) -> Result<String, TokenError> {
    let jwk = jwk(key)?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = jwk.common.key_id;
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).map_err(|e| {
        TokenError::Crypto {
            what: "token signing key",
            reason: e.to_string(),
        }
    })?;
    jsonwebtoken::encode(&header, claims, &encoding).map_err(|e| TokenError::Crypto {
        what: "signing the token",
        reason: e.to_string(),
    })
}

/// Mint a bootstrap token for `spiffe_id`, valid for `ttl`.
pub fn mint(dir: &CaDir, spiffe_id: &str, ttl: Duration) -> Result<String, TokenError> {
    if ttl.is_zero() || ttl > Duration::from_secs(86_400) {
        return Err(TokenError::Ttl(ttl));
    }
    let id = SpiffeId::parse(spiffe_id).map_err(|e| TokenError::BadId {
        id: spiffe_id.into(),
        reason: e.to_string(),
    })?;
    let authority = Authority::load(dir)?;
    if !authority.admits(&id) {
        return Err(TokenError::BadId {
            id: spiffe_id.into(),
            reason: format!(
                "not a workload ID in this CA's trust domain {}",
                authority.trust_domain()
            ),
        });
    }
    drop(authority);
    let key_path = dir.file(files::TOKEN_KEY);
    pem::check_key_permissions(&key_path)?;
    let key_der = pem::load_key(&key_path)?;
    let key = KeyPair::try_from(&key_der).map_err(|e| TokenError::Crypto {
        what: "token.key",
        reason: e.to_string(),
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut jti = [0u8; 16];
    policy::random_bytes(&mut jti)?;
    let claims = BootstrapClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: id.to_string(),
        iat: now,
        exp: now + ttl.as_secs(),
        jti: policy::hex(&jti),
    };
    sign(&claims, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_with_the_jwks() {
        let key = KeyPair::generate().unwrap();
        let set: JwkSet = serde_json::from_str(&jwks_json(&key).unwrap()).unwrap();
        let claims = BootstrapClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "spiffe://example.org/a".into(),
            iat: 1,
            exp: u64::MAX / 2,
            jti: "x".into(),
        };
        let token = sign(&claims, &key).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        let decoded = jsonwebtoken::decode::<BootstrapClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, claims);
    }
}
