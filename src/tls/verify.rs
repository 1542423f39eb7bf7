//! Certificate verifiers that authenticate AND authorize inside the handshake.
//!
//! Inbound, the client chain is checked against the current trust bundle and
//! CRLs, then the listener's policy decides; a peer that is not allowed gets
//! an `access_denied` alert and never reaches the backend. Outbound, the
//! upstream chain is checked the same way and its identity must match the
//! listener's expectation.
//!
//! The verifier runs synchronously inside the connection's task while rustls
//! processes the peer's Certificate message. It leaves what it learnt (the
//! peer identity, the decision, why the chain failed) in a task-local
//! [`HandshakeRecord`], so the connection can log one line with everything
//! and put the identity in a PROXY header without parsing the certificate
//! twice.

use std::future::Future;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::chain_cache::{CacheUse, ChainCache, ChainKey};
use super::store::{IdentityStore, TlsMaterial};
use crate::identity::policy::{Decision, Rule};
use crate::identity::{Authorizer, Mode, PeerIdentity, Verdict};

/// What the verifier found out during one handshake.
#[derive(Debug, Clone, Default)]
pub struct HandshakeRecord {
    /// The peer identity, when the chain verified and the leaf parsed.
    pub identity: Option<Arc<PeerIdentity>>,
    /// The authorization verdict, when one was made (outbound: the
    /// upstream against `expect`, always enforced, no shadow rules).
    pub verdict: Option<Verdict>,
    /// Why the peer's chain was rejected, when it was.
    pub chain_error: Option<String>,
    /// What the handshake did with the verified-chain cache, when it got
    /// that far.
    pub chain_cache: Option<CacheUse>,
}

tokio::task_local! {
    static RECORD: Arc<Mutex<HandshakeRecord>>;
}

/// Run a handshake future and return what the verifier recorded during it.
pub async fn record_handshake<F: Future>(handshake: F) -> (F::Output, HandshakeRecord) {
    let slot = Arc::new(Mutex::new(HandshakeRecord::default()));
    let output = RECORD.scope(slot.clone(), handshake).await;
    let record = slot.lock().map(|r| r.clone()).unwrap_or_default();
    (output, record)
}

fn record(update: impl FnOnce(&mut HandshakeRecord)) {
    let _ = RECORD.try_with(|slot| {
        if let Ok(mut r) = slot.lock() {
            update(&mut r);
        }
    });
}

/// Verifies client certificates for one inbound listener.
#[derive(Debug)]
pub struct InboundVerifier {
    store: Arc<IdentityStore>,
    authz: Arc<Authorizer>,
    verified: ChainCache,
}

/// Why a peer's chain was refused: the error rustls turns into the alert,
/// and a sentence for the log.
#[derive(Debug, Clone)]
pub struct ChainRefusal {
    /// What rustls is told (and so which alert the peer gets).
    pub error: TlsError,
    /// Why, for people.
    pub detail: String,
}

impl InboundVerifier {
    /// A verifier for a listener authorized by `authz`, trusting what
    /// `store` holds.
    pub fn new(store: Arc<IdentityStore>, authz: Arc<Authorizer>) -> Self {
        InboundVerifier {
            store,
            authz,
            verified: ChainCache::default(),
        }
    }

    /// Everything the handshake decides about a client's certificate list
    /// at `now`: the chain against the current trust bundle and CRLs, the
    /// identity read from the leaf, and the listener's verdict. The
    /// handshake and `portcullis authz explain` both call this.
    pub fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(Arc<PeerIdentity>, Verdict), ChainRefusal> {
        let material = self.store.current();
        let identity = verified_identity(
            &self.verified,
            &self.store,
            &material,
            Presented {
                end_entity,
                intermediates,
                now,
            },
            self.authz.extension_oids(),
            webpki::KeyUsage::client_auth(),
        )?;
        let verdict = self.authz.authorize(&identity);
        Ok((identity, verdict))
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The trust bundle can change under us; clients send their
        // certificate without hints, so none are advertised.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let (identity, verdict) =
            self.judge(end_entity, intermediates, now)
                .map_err(|refusal| {
                    record(|r| r.chain_error = Some(refusal.detail));
                    refusal.error
                })?;
        let admitted = verdict.admitted();
        record(|r| {
            r.identity = Some(identity);
            r.verdict = Some(verdict);
        });
        if admitted {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(&self.store, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(&self.store, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies an upstream's certificate for one outbound listener: chain to the
/// trust bundle (with CRLs) for server use, then the expected identity.
#[derive(Debug)]
pub struct OutboundVerifier {
    store: Arc<IdentityStore>,
    expect: Arc<Rule>,
    verified: ChainCache,
}

impl OutboundVerifier {
    /// A verifier that admits only upstreams matching `expect`.
    pub fn new(store: Arc<IdentityStore>, expect: Arc<Rule>) -> Self {
        OutboundVerifier {
            store,
            expect,
            verified: ChainCache::default(),
        }
    }
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // The expected identity (SPIFFE ID, DNS SAN, ...) replaces the usual
        // host name check: in a mesh the upstream is named by identity.
        let material = self.store.current();
        let identity = verified_identity(
            &self.verified,
            &self.store,
            &material,
            Presented {
                end_entity,
                intermediates,
                now,
            },
            &[],
            webpki::KeyUsage::server_auth(),
        )
        .map_err(|refusal| {
            record(|r| r.chain_error = Some(refusal.detail));
            refusal.error
        })?;
        let outcome = self.expect.check(&identity);
        let decision = match &outcome {
            Ok(()) => Decision::Allow { rule: Some(0) },
            Err(reason) => Decision::Deny {
                reason: format!("upstream identity not as expected: {reason}"),
            },
        };
        record(|r| {
            r.identity = Some(identity);
            r.verdict = Some(Verdict {
                enforced: decision,
                mode: Mode::Enforce,
                shadow: None,
            });
        });
        match outcome {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(_) => Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(&self.store, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(&self.store, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a peer presented, and when.
struct Presented<'a, 'b> {
    end_entity: &'a CertificateDer<'b>,
    intermediates: &'a [CertificateDer<'b>],
    now: UnixTime,
}

/// The peer's identity from a chain that verifies for `usage`: from the
/// cache when this leaf verified before under the same trust material
/// through intermediates the peer presents again (see [`ChainCache`]), else
/// by verifying the chain and parsing the leaf. Every entry of the peer's
/// list must be a certificate, cached or not. What the cache did is left in
/// the handshake record.
fn verified_identity(
    cache: &ChainCache,
    store: &IdentityStore,
    material: &TlsMaterial,
    presented: Presented<'_, '_>,
    extension_oids: &[String],
    usage: webpki::KeyUsage,
) -> Result<Arc<PeerIdentity>, ChainRefusal> {
    let Presented {
        end_entity,
        intermediates,
        now,
    } = presented;
    let trust_generation = material.trust_generation;
    if let Err(detail) = check_presented(intermediates) {
        return Err(ChainRefusal {
            error: TlsError::InvalidCertificate(CertificateError::BadEncoding),
            detail,
        });
    }
    let key = ChainKey::of_leaf(end_entity);
    if let Some(identity) = cache.get(&key, trust_generation, now, intermediates) {
        record(|r| {
            r.chain_cache = Some(CacheUse {
                hit: true,
                ..CacheUse::default()
            })
        });
        return Ok(identity);
    }
    record(|r| r.chain_cache = Some(CacheUse::default()));
    let path =
        verify_chain(store, material, end_entity, intermediates, now, usage).map_err(|error| {
            ChainRefusal {
                detail: error.to_string(),
                error,
            }
        })?;
    let identity =
        PeerIdentity::from_der(end_entity, extension_oids).map_err(|e| ChainRefusal {
            error: TlsError::InvalidCertificate(CertificateError::BadEncoding),
            detail: e.to_string(),
        })?;
    let identity = Arc::new(identity);
    let used = cache.insert(key, trust_generation, end_entity, path, identity.clone());
    record(|r| r.chain_cache = Some(used));
    Ok(identity)
}

/// Every certificate the peer sent beyond its leaf must at least parse as
/// one: path building skips what it cannot use, so without this check junk
/// in the list would pass unnoticed (other TLS stacks answer decode_error
/// or bad_certificate to it).
fn check_presented(intermediates: &[CertificateDer<'_>]) -> Result<(), String> {
    for (index, der) in intermediates.iter().enumerate() {
        if let Err(e) = webpki::EndEntityCert::try_from(der) {
            return Err(format!(
                "entry {} of the peer's certificate list is not a certificate ({e:?})",
                index + 2
            ));
        }
    }
    Ok(())
}

/// Check a peer's chain against the trust bundle and CRLs for `usage`
/// (client or server authentication); returns the intermediates of the
/// path that verified, leaf side first.
fn verify_chain(
    store: &IdentityStore,
    material: &TlsMaterial,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let algorithms = store.provider().signature_verification_algorithms.all;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = material.crls.iter().collect();
    // A chain whose issuer has no CRL loaded is accepted ("unknown status").
    let revocation = if crl_refs.is_empty() {
        None
    } else {
        webpki::RevocationOptionsBuilder::new(&crl_refs)
            .ok()
            .map(|b| {
                b.with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .build()
            })
    };
    let path = cert
        .verify_for_usage(
            algorithms,
            &material.roots.roots,
            intermediates,
            now,
            usage,
            revocation,
            None,
        )
        .map_err(pki_error)?;
    Ok(path
        .intermediate_certificates()
        .map(|c| c.der().into_owned())
        .collect())
}

/// The peer's TLS 1.2 handshake signature, with the store's algorithms.
fn verify_tls12_signature(
    store: &IdentityStore,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &store.provider().signature_verification_algorithms,
    )
}

/// The peer's TLS 1.3 CertificateVerify signature, with the store's
/// algorithms. Never cached: it proves the peer holds the key now.
fn verify_tls13_signature(
    store: &IdentityStore,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &store.provider().signature_verification_algorithms,
    )
}

/// Map a webpki error to the rustls error (and so the TLS alert) it means.
fn pki_error(error: webpki::Error) -> TlsError {
    use webpki::Error as E;
    let cert_error = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertExpired { .. } | E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(rustls::OtherError(Arc::new(WebpkiError(format!(
            "{other:?}"
        ))))),
    };
    TlsError::InvalidCertificate(cert_error)
}

#[derive(Debug)]
struct WebpkiError(String);

impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebpkiError {}
