//! The CA's signing request as a hostile client sends it: arbitrary bytes as
//! the body of `POST /v1/sign`, handled by the real handler
//! (`ca::sign::Signer::sign`) of a real CA, the caller renewing with a valid
//! client certificate; and the CSR check on its own
//! (`ca::csr::verified_public_key`) on the body's CSR, or on the whole input
//! as PEM text when it is not a JSON body.
//!
//! Properties:
//! - a body that parses as `SignRequest` serializes and parses back equal;
//! - a body that is not a `SignRequest` is `bad_request`; a CSR that fails
//!   `verified_public_key` is `bad_csr`, and `bad_csr` only then;
//! - a good body and CSR are issued, for the identity of the credential
//!   (never what the CSR asks for), within the CA's maximum lifetime.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use portcullis::ca::api::SignRequest;
use portcullis::ca::csr::verified_public_key;
use portcullis::ca::sign::{Code, Credentials};
use portcullis::identity::PeerIdentity;

fuzz_target!(|data: &[u8]| {
    let ca = common::ca();
    ca.tick();

    let request = serde_json::from_slice::<SignRequest>(data).ok();
    if let Some(request) = &request {
        let json = serde_json::to_vec(request).expect("a SignRequest serializes");
        let again: SignRequest = serde_json::from_slice(&json).expect("round trip");
        assert_eq!(&again, request);
    }
    let csr_text = match &request {
        Some(request) => request.csr.clone(),
        None => String::from_utf8_lossy(data).into_owned(),
    };
    let csr_ok = match verified_public_key(&csr_text) {
        Ok(_) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };

    let credentials = Credentials {
        authorization: None,
        client_chain: Some(&ca.renewal_chain),
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match ca.signer.sign(data, credentials) {
        Ok(signed) => {
            let request = request.expect("issued for a body that is not a SignRequest");
            assert!(csr_ok, "issued for a CSR that verified_public_key refuses");
            assert_ne!(request.ttl_seconds, Some(0));
            assert_eq!(signed.credential, "renewal");
            assert_eq!(signed.response.spiffe_id, common::RENEWER);
            // The certificate says who the credential is, whatever the CSR asked.
            let leaf = portcullis::inspect::summarize_pem(
                signed.response.certificate_chain.as_bytes(),
                std::path::Path::new("issued.pem"),
            )
            .expect("the issued chain parses");
            assert_eq!(leaf[0].spiffe_id.as_deref(), Some(common::RENEWER));
            assert_eq!(leaf[0].uri_sans, [common::RENEWER]);
            assert!(leaf[0].dns_sans.is_empty() && leaf[0].ip_sans.is_empty());
            assert!(!leaf[0].is_ca);
            let lifetime = signed.response.not_after - started;
            assert!(
                lifetime <= common::MAX_TTL.as_secs() as i64 + 120,
                "issued for {lifetime} s, more than the maximum"
            );
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(
                signed.response.certificate_chain.as_bytes(),
            )
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .expect("PEM");
            let id = PeerIdentity::from_der(&der, &[]).expect("the issued leaf parses");
            assert_eq!(
                id.serial.trim_start_matches('0'),
                signed.response.serial.trim_start_matches('0')
            );
            assert_eq!(
                id.spiffe_id.map(|s| s.to_string()).as_deref(),
                Some(common::RENEWER)
            );
        }
        Err(refusal) => {
            match refusal.code {
                Code::BadRequest => {
                    assert!(
                        request.is_none()
                            || request.as_ref().and_then(|r| r.ttl_seconds) == Some(0),
                        "bad_request for a good body: {refusal}"
                    );
                }
                Code::BadCsr => {
                    assert!(request.is_some());
                    assert!(
                        !csr_ok,
                        "bad_csr for a CSR verified_public_key accepts: {refusal}"
                    );
                }
                other => panic!("unexpected refusal {other:?} for a renewal: {refusal}"),
            }
            if request.is_some() && request.as_ref().and_then(|r| r.ttl_seconds) != Some(0) {
                assert!(!csr_ok, "refused a good request: {refusal}");
            }
        }
    }
});
