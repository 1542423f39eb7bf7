//! TLS plumbing: the swappable identity store, the certificate resolver
//! that reads from it, verifiers that authenticate and authorize peers, and
//! the rustls server/client configs built from them.

pub mod chain_cache;
pub mod linger;
pub mod store;
pub mod verify;

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme, SupportedProtocolVersion};

use crate::config::TlsVersion;
use crate::identity::policy::Rule;
use crate::identity::Authorizer;

pub use store::{default_provider, IdentityStore, TlsMaterial};
pub use verify::{
    record_handshake, ChainRefusal, HandshakeRecord, InboundVerifier, OutboundVerifier,
};

/// Presents whatever certificate the identity store holds at handshake time.
#[derive(Debug)]
pub struct StoreResolver(Arc<IdentityStore>);

impl StoreResolver {
    /// A resolver reading from `store`.
    pub fn new(store: Arc<IdentityStore>) -> Self {
        StoreResolver(store)
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static TLS12_AND_13: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    match min {
        TlsVersion::Tls13 => TLS13_ONLY,
        TlsVersion::Tls12 => TLS12_AND_13,
    }
}

/// The server config of an inbound listener: client certificate required,
/// verified and authorized by `authz` inside the handshake.
pub fn inbound_server_config(
    store: &Arc<IdentityStore>,
    authz: Arc<Authorizer>,
    min_version: TlsVersion,
    alpn_protocols: &[&[u8]],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = Arc::new(InboundVerifier::new(store.clone(), authz));
    let mut config = ServerConfig::builder_with_provider(store.provider().clone())
        .with_protocol_versions(versions(min_version))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreResolver::new(store.clone())));
    // A resumed session skips client certificate verification, and so would
    // skip a policy or trust bundle changed since the session began. Every
    // inbound handshake is a full one.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn_protocols.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client config of an outbound listener: presents our certificate and
/// admits only an upstream matching `expect`.
pub fn outbound_client_config(
    store: &Arc<IdentityStore>,
    expect: Arc<Rule>,
    min_version: TlsVersion,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(OutboundVerifier::new(store.clone(), expect));
    let config = ClientConfig::builder_with_provider(store.provider().clone())
        .with_protocol_versions(versions(min_version))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreResolver::new(store.clone())));
    Ok(Arc::new(config))
}

/// A bounded label for why a TLS handshake failed, from the error that
/// tokio-rustls returned (used for the `result` label and in logs). For a
/// refused certificate it names the alert rustls sends for that error, so
/// the label and what the peer reads always agree.
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls_failure_reason(tls),
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "peer_closed",
            std::io::ErrorKind::InvalidData => "protocol_error",
            _ => "io_error",
        },
    }
}

/// The bounded label of a rustls error: what [`handshake_failure_reason`]
/// says for it.
pub fn tls_failure_reason(tls: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match tls {
        E::InvalidCertificate(cert) => match (cert, A::from(cert.clone())) {
            (C::NotValidYet | C::NotValidYetContext { .. }, _) => "cert_not_yet_valid",
            (_, A::AccessDenied) => "access_denied",
            (_, A::UnknownCA) => "unknown_ca",
            (_, A::CertificateExpired) => "cert_expired",
            (_, A::CertificateRevoked) => "cert_revoked",
            (_, A::DecryptError) => "decrypt_error",
            (_, A::BadCertificate) => "bad_certificate",
            (_, A::UnsupportedCertificate) => "unsupported_certificate",
            _ => "certificate_unknown",
        },
        E::NoCertificatesPresented => "no_client_cert",
        E::AlertReceived(_) => "alert_received",
        E::PeerIncompatible(_) => "incompatible",
        _ => "protocol_error",
    }
}
