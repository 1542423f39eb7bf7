//! The CA's bootstrap tokens: arbitrary text as the bearer JWT, checked by
//! the CA's real provisioners (`ca::provisioner::Provisioners::authenticate`
//! and `consume`: the CA's own ES256 tokens with identity `{sub}`, and
//! Kubernetes service-account tokens with identity
//! `spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}`), and as the
//! `Authorization` header of `POST /v1/sign` (`ca::sign::Signer::sign`) with
//! a good CSR.
//!
//! Properties:
//! - a token is granted only when ES256-signed by the JWKS key (no `none`,
//!   no HMAC, no other algorithm), and grants an identity that is a
//!   workload of the CA's trust domain: for `{sub}` exactly the `sub`
//!   claim, for the Kubernetes template exactly `/ns/<ns>/sa/<sa>` (a claim
//!   can never add path segments);
//! - a bootstrap token is single-use (needs a `jti`; consumed twice, the
//!   second is a replay); a Kubernetes token (`single_use = false`) is not;
//! - a refusal never quotes the token.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::ca::sign::{Code, Credentials};

/// A good sign request body (a fresh P-256 CSR, made once).
fn body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let csr = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/corpus/ca_csr/csr-p256.pem"
        ))
        .expect("fuzz/corpus/ca_csr/csr-p256.pem (run examples/make_seeds.rs)");
        serde_json::json!({ "csr": csr }).to_string().into_bytes()
    })
}

fuzz_target!(|data: &[u8]| {
    let ca = common::ca();
    ca.tick();
    let text = String::from_utf8_lossy(data);
    let token = text.trim();

    match ca.provisioners.authenticate(token) {
        Ok(grant) => {
            let header = jsonwebtoken::decode_header(token).expect("granted, so a JWT");
            assert_eq!(
                header.alg,
                jsonwebtoken::Algorithm::ES256,
                "granted a non-ES256 token"
            );
            let id = &grant.spiffe_id;
            assert_eq!(id.trust_domain(), common::TRUST_DOMAIN);
            assert!(!id.path().is_empty());
            let claims = common::unverified_claims(token).expect("granted, so claims decode");
            match grant.provisioner.as_str() {
                "bootstrap" => {
                    assert_eq!(claims["iss"], common::CA_ISSUER);
                    assert_eq!(claims["sub"].as_str(), Some(id.as_str()));
                }
                "k8s" => {
                    assert_eq!(claims["iss"], common::K8S_ISSUER);
                    let k8s = &claims["kubernetes.io"];
                    let want = format!(
                        "/ns/{}/sa/{}",
                        k8s["namespace"].as_str().expect("namespace"),
                        k8s["serviceaccount"]["name"]
                            .as_str()
                            .expect("serviceaccount")
                    );
                    assert_eq!(id.path(), want);
                    assert_eq!(id.path().split('/').count(), 5);
                }
                other => panic!("unknown provisioner {other}"),
            }
            let first = ca.provisioners.consume(&grant);
            let second = ca.provisioners.consume(&grant);
            if grant.provisioner == "bootstrap" {
                // Single use: a jti is required, and a second use is a replay.
                assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
                let second = second.expect_err("a single-use token used twice");
                assert_eq!(second.code, Code::TokenReplayed);
                if let Err(e) = first {
                    assert_eq!(e.code, Code::TokenReplayed);
                }
            } else {
                // Kubernetes tokens are reusable (single_use = false).
                assert!(first.is_ok() && second.is_ok(), "a reusable token refused");
            }
        }
        Err(refusal) => {
            assert!(
                matches!(
                    refusal.code,
                    Code::BadToken | Code::TokenExpired | Code::Forbidden
                ),
                "{refusal}"
            );
            assert_no_token(token, &refusal.reason);
        }
    }

    // The same text as the Authorization header, with a good CSR.
    let credentials = Credentials {
        authorization: Some(&text),
        client_chain: None,
    };
    match ca.signer.sign(body(), credentials) {
        Ok(signed) => {
            assert!(
                signed.credential.starts_with("token:"),
                "{}",
                signed.credential
            );
            assert!(signed
                .response
                .spiffe_id
                .starts_with("spiffe://example.org/"));
        }
        Err(refusal) => {
            assert!(
                matches!(
                    refusal.code,
                    Code::BadToken | Code::TokenExpired | Code::TokenReplayed | Code::Forbidden
                ),
                "{refusal}"
            );
            assert_no_token(token, &refusal.reason);
        }
    }
});

/// "Token contents never appear in errors or logs": no JWT segment of 16
/// characters or more is quoted in a refusal.
fn assert_no_token(token: &str, reason: &str) {
    for part in token.split('.') {
        if part.len() >= 16 && !part.contains(char::is_whitespace) {
            assert!(
                !reason.contains(part),
                "the refusal quotes the token: {reason}"
            );
        }
    }
}
