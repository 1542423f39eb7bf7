//! Provisioners: who may mint bootstrap tokens, and turning a token into an
//! identity. A token is accepted when its signature verifies with a key of
//! a provisioner's JWKS (read offline from a file, re-read when the file
//! changes) and its `iss`, `aud`, `exp` and `nbf` (30 s leeway) are right;
//! it must carry a `jti`, which is accepted once: a second use is refused
//! as a replay until the token expires.
//!
//! Kubernetes projected service-account tokens fit as they are: `iss` is
//! the cluster's issuer, `aud` the audience the pod asked for, and the
//! `kubernetes.io` claim gives `{namespace}` and `{serviceaccount}`.
//!
//! Token contents never appear in errors or logs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::config::ProvisionerConfig;
use super::sign::{Code, Refusal};
use super::template::{IdentityTemplate, Values};
use crate::identity::SpiffeId;

/// Clock skew allowed on `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: u64 = 30;

/// A provisioner's JWKS file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct JwksError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// One usable verification key.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

struct KeySet {
    stamp: Option<(SystemTime, u64)>,
    keys: Vec<Key>,
}

/// Read a JWKS file. Symmetric (`oct`) keys are refused: a key set given to
/// the CA must be public. Keys of unsupported types are skipped with a
/// warning; at least one usable key is required.
fn load_jwks(path: &Path) -> Result<KeySet, JwksError> {
    let err = |reason: String| JwksError {
        path: path.to_path_buf(),
        reason,
    };
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let Some(entries) = value.get("keys").and_then(|k| k.as_array()) else {
        return Err(err("not a JWKS: no \"keys\" array".into()));
    };
    let mut keys = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.get("kty").and_then(|k| k.as_str()) == Some("oct") {
            return Err(err(format!(
                "key #{index} is a symmetric (oct) key; only public keys belong in a JWKS given to the CA"
            )));
        }
        let parsed = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                Ok((jwk, decoding))
            });
        match parsed {
            Ok((jwk, decoding)) => {
                if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                    continue;
                }
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg: jwk
                        .common
                        .key_algorithm
                        .and_then(|a| a.to_string().parse::<Algorithm>().ok()),
                    decoding,
                });
            }
            Err(reason) => {
                tracing::warn!(file = %path.display(), index, %reason, "skipping an unusable JWKS key");
            }
        }
    }
    if keys.is_empty() {
        return Err(err("holds no usable public key".into()));
    }
    Ok(KeySet { stamp, keys })
}

/// One configured provisioner with its keys.
pub struct Provisioner {
    name: String,
    issuer: String,
    audience: String,
    template: IdentityTemplate,
    jwks_path: PathBuf,
    keys: Mutex<KeySet>,
    single_use: bool,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("template", &self.template.to_string())
            .field("jwks", &self.jwks_path)
            .finish()
    }
}

/// Claims the CA reads; everything else in a token is ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    exp: u64,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaim {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    serviceaccount: Option<NamedRef>,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    #[serde(default)]
    name: Option<String>,
}

/// What one provisioner made of a token.
enum Outcome {
    /// Signature and claims are good.
    Verified(Claims),
    /// The signature verified but a claim is wrong.
    ClaimsRejected(Refusal),
    /// No key of this provisioner signed it.
    NotOurs,
}

fn claims_refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal::new(Code::TokenExpired, "the token has expired"),
        ErrorKind::ImmatureSignature => {
            Refusal::new(Code::BadToken, "the token is not valid yet (nbf)")
        }
        ErrorKind::InvalidIssuer => {
            Refusal::new(Code::BadToken, "the token's issuer is not accepted")
        }
        ErrorKind::InvalidAudience => Refusal::new(
            Code::BadToken,
            "the token's audience is not the one this CA expects",
        ),
        ErrorKind::MissingRequiredClaim(claim) => {
            Refusal::new(Code::BadToken, format!("the token has no {claim} claim"))
        }
        _ => Refusal::new(Code::BadToken, "the token's claims are malformed"),
    }
}

impl Provisioner {
    /// Build a provisioner from its configuration, loading its JWKS.
    pub fn new(config: &ProvisionerConfig) -> Result<Provisioner, JwksError> {
        let template = IdentityTemplate::parse(&config.identity).map_err(|e| JwksError {
            path: config.jwks.clone(),
            reason: format!("identity template: {e}"),
        })?;
        Ok(Provisioner {
            name: config.name.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            template,
            keys: Mutex::new(load_jwks(&config.jwks)?),
            jwks_path: config.jwks.clone(),
            single_use: config.single_use,
        })
    }

    /// The provisioner's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Re-read the JWKS file if it changed; on error keep the old keys.
    fn refresh_keys(&self, keys: &mut KeySet) {
        let stamp = std::fs::metadata(&self.jwks_path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp.is_none() || stamp == keys.stamp {
            return;
        }
        match load_jwks(&self.jwks_path) {
            Ok(fresh) => {
                tracing::info!(provisioner = %self.name, file = %self.jwks_path.display(), keys = fresh.keys.len(), "reloaded JWKS");
                *keys = fresh;
            }
            Err(error) => {
                tracing::warn!(provisioner = %self.name, %error, "JWKS changed but cannot be used; keeping the previous keys");
                keys.stamp = stamp;
            }
        }
    }

    fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> Outcome {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_keys(&mut keys);
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let candidates = keys.keys.iter().filter(|k| {
            let kid_ok = match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            kid_ok && k.alg.is_none_or(|alg| alg == header.alg)
        });
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => return Outcome::Verified(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::Crypto(_) => continue,
                    other => return Outcome::ClaimsRejected(claims_refusal(other)),
                },
            }
        }
        Outcome::NotOurs
    }
}

/// A token that verified, and the identity it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The provisioner that accepted it.
    pub provisioner: String,
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// None when the provisioner does not make tokens single-use.
    replay_key: Option<String>,
    exp: u64,
}

/// The configured provisioners and the `jti`s already used.
#[derive(Debug)]
pub struct Provisioners {
    list: Vec<Provisioner>,
    trust_domain: String,
    seen: Mutex<HashMap<String, u64>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Provisioners {
    /// Provisioners for a CA of `trust_domain`.
    pub fn new(list: Vec<Provisioner>, trust_domain: &str) -> Provisioners {
        Provisioners {
            list,
            trust_domain: trust_domain.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Verify `token` and work out the identity it grants. Does not consume
    /// the token: call [`Provisioners::consume`] once the request is
    /// otherwise acceptable.
    pub fn authenticate(&self, token: &str) -> Result<TokenGrant, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::new(Code::BadToken, "the token is not a well-formed JWT"))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(Refusal::new(
                Code::BadToken,
                "HMAC-signed tokens are not accepted",
            ));
        }
        let mut claims_problem = None;
        for provisioner in &self.list {
            match provisioner.verify(token, &header) {
                Outcome::Verified(claims) => return self.grant(provisioner, claims),
                Outcome::ClaimsRejected(refusal) => {
                    claims_problem.get_or_insert(refusal);
                }
                Outcome::NotOurs => {}
            }
        }
        Err(claims_problem.unwrap_or_else(|| {
            Refusal::new(
                Code::BadToken,
                "the token's signature does not verify with any provisioner's keys",
            )
        }))
    }

    fn grant(&self, provisioner: &Provisioner, claims: Claims) -> Result<TokenGrant, Refusal> {
        let bad = |reason: String| Refusal::new(Code::BadToken, reason);
        let jti = claims.jti.as_deref().filter(|j| !j.is_empty());
        if provisioner.single_use && jti.is_none() {
            return Err(bad(
                "the token has no jti claim (needed to refuse replays)".into()
            ));
        }
        let kubernetes = claims.kubernetes.as_ref();
        let values = Values {
            sub: claims.sub.as_deref(),
            trust_domain: &self.trust_domain,
            namespace: kubernetes.and_then(|k| k.namespace.as_deref()),
            serviceaccount: kubernetes
                .and_then(|k| k.serviceaccount.as_ref())
                .and_then(|s| s.name.as_deref()),
        };
        let rendered = provisioner
            .template
            .render(&values)
            .map_err(|e| bad(e.to_string()))?;
        let spiffe_id = SpiffeId::parse(&rendered).map_err(|e| {
            bad(format!(
                "the identity the token maps to is not a valid SPIFFE ID: {e}"
            ))
        })?;
        if spiffe_id.trust_domain() != self.trust_domain || spiffe_id.path().is_empty() {
            return Err(Refusal::new(
                Code::Forbidden,
                format!(
                    "the token names {spiffe_id}, which is not a workload in trust domain {}",
                    self.trust_domain
                ),
            ));
        }
        Ok(TokenGrant {
            provisioner: provisioner.name.clone(),
            spiffe_id,
            replay_key: jti.filter(|_| provisioner.single_use).map(|jti| {
                format!(
                    "{}\u{0}{}\u{0}{jti}",
                    provisioner.name,
                    claims.iss.clone().unwrap_or_default()
                )
            }),
            exp: claims.exp,
        })
    }

    /// Mark the token as used; refuses a token used before. Used tokens are
    /// remembered until they expire (plus leeway), in memory.
    pub fn consume(&self, grant: &TokenGrant) -> Result<(), Refusal> {
        let Some(replay_key) = &grant.replay_key else {
            return Ok(());
        };
        let now = now_secs();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, exp| exp.saturating_add(LEEWAY_SECS) >= now);
        if seen.contains_key(replay_key) {
            return Err(Refusal::new(
                Code::TokenReplayed,
                "this token was already used; tokens are single-use",
            ));
        }
        seen.insert(replay_key.clone(), grant.exp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::token::{jwks_json, sign};
    use rcgen::KeyPair;
    use serde_json::json;

    fn setup(identity: &str) -> (tempfile::TempDir, KeyPair, Provisioners) {
        setup_with(identity, true)
    }

    fn setup_with(identity: &str, single_use: bool) -> (tempfile::TempDir, KeyPair, Provisioners) {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, jwks_json(&key).unwrap()).unwrap();
        let p = Provisioner::new(&ProvisionerConfig {
            name: "k8s".into(),
            issuer: "https://kubernetes.default.svc".into(),
            audience: "portcullis-ca".into(),
            jwks,
            identity: identity.into(),
            single_use,
        })
        .unwrap();
        (dir, key, Provisioners::new(vec![p], "example.org"))
    }

    fn k8s_claims(jti: &str, exp: u64) -> serde_json::Value {
        json!({
            "iss": "https://kubernetes.default.svc",
            "aud": ["portcullis-ca", "other"],
            "sub": "system:serviceaccount:web:frontend",
            "exp": exp,
            "jti": jti,
            "kubernetes.io": {"namespace": "web", "serviceaccount": {"name": "frontend", "uid": "u"}}
        })
    }

    #[test]
    fn kubernetes_token_maps_and_is_single_use() {
        let (_dir, key, provisioners) =
            setup("spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}");
        let token = sign(&k8s_claims("j1", now_secs() + 600), &key).unwrap();
        let grant = provisioners.authenticate(&token).unwrap();
        assert_eq!(
            grant.spiffe_id.as_str(),
            "spiffe://example.org/ns/web/sa/frontend"
        );
        assert_eq!(grant.provisioner, "k8s");
        provisioners.consume(&grant).unwrap();
        let again = provisioners.authenticate(&token).unwrap();
        assert_eq!(
            provisioners.consume(&again).unwrap_err().code,
            Code::TokenReplayed
        );
    }

    #[test]
    fn reusable_provisioner_accepts_a_token_again_and_needs_no_jti() {
        let (_dir, key, provisioners) = setup_with(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}",
            false,
        );
        let mut claims = k8s_claims("unused", now_secs() + 600);
        claims.as_object_mut().unwrap().remove("jti");
        let token = sign(&claims, &key).unwrap();
        for _ in 0..2 {
            let grant = provisioners.authenticate(&token).unwrap();
            provisioners.consume(&grant).unwrap();
        }
        // Expiry and signature are still enforced.
        let expired = sign(&k8s_claims("j", now_secs() - 600), &key).unwrap();
        assert_eq!(
            provisioners.authenticate(&expired).unwrap_err().code,
            Code::TokenExpired
        );
    }

    #[test]
    fn expired_wrong_audience_and_foreign_tokens_are_refused() {
        let (_dir, key, provisioners) =
            setup("spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}");
        let expired = sign(&k8s_claims("j", now_secs() - 600), &key).unwrap();
        assert_eq!(
            provisioners.authenticate(&expired).unwrap_err().code,
            Code::TokenExpired
        );
        let mut claims = k8s_claims("j", now_secs() + 600);
        claims["aud"] = json!("someone-else");
        let wrong_aud = sign(&claims, &key).unwrap();
        assert_eq!(
            provisioners.authenticate(&wrong_aud).unwrap_err().code,
            Code::BadToken
        );
        let other = KeyPair::generate().unwrap();
        let foreign = sign(&k8s_claims("j", now_secs() + 600), &other).unwrap();
        let refusal = provisioners.authenticate(&foreign).unwrap_err();
        assert_eq!(refusal.code, Code::BadToken);
        assert!(refusal.reason.contains("signature"), "{refusal:?}");
        assert_eq!(
            provisioners.authenticate("garbage").unwrap_err().code,
            Code::BadToken
        );
        let mut no_jti = k8s_claims("x", now_secs() + 600);
        no_jti.as_object_mut().unwrap().remove("jti");
        let no_jti = sign(&no_jti, &key).unwrap();
        assert!(provisioners
            .authenticate(&no_jti)
            .unwrap_err()
            .reason
            .contains("jti"));
    }

    #[test]
    fn identity_outside_the_trust_domain_is_forbidden() {
        let (_dir, key, provisioners) = setup("{sub}");
        let mut claims = k8s_claims("j", now_secs() + 600);
        claims["sub"] = json!("spiffe://evil.org/a");
        let token = sign(&claims, &key).unwrap();
        assert_eq!(
            provisioners.authenticate(&token).unwrap_err().code,
            Code::Forbidden
        );
    }

    #[test]
    fn symmetric_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let err = load_jwks(&jwks).err().unwrap();
        assert!(err.reason.contains("symmetric"), "{err}");
    }
}
