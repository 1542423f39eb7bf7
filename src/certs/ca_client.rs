//! The proxy's client for the internal CA's HTTPS API (`ca::api`): asks for
//! a certificate with a fresh key, authenticated by the bootstrap token or by
//! our current certificate, and fetches the trust bundle.
//!
//! The private key is generated here, in process, for every request, and
//! never leaves the process (unless the operator asks for `write_dir`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::client::ResolvesClientCert;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::pem::load_certs;
use super::Credentials;
use crate::ca::api::{ErrorResponse, SignRequest, SignResponse, BUNDLE_PATH, SIGN_PATH};
use crate::config::{split_host_port, CaIdentity};
use crate::tls::IdentityStore;

/// Longest one CA request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why talking to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The bootstrap token or CA bundle file cannot be read.
    #[error("{0}")]
    Local(String),
    /// The CA cannot be reached or the TLS handshake failed.
    #[error("cannot reach the CA at {url}: {reason}")]
    Unreachable {
        /// The CA URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The CA refused the request.
    #[error("the CA refused: {status} {error}: {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's error code.
        error: String,
        /// The CA's reason.
        reason: String,
    },
    /// The CA's answer is not what the API says.
    #[error("unexpected answer from the CA: {0}")]
    BadAnswer(String),
}

/// How to authenticate a signing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The bootstrap token from `token_file` (first certificate, or after expiry).
    Token,
    /// Our current, still valid certificate, over mTLS (renewal).
    CurrentCert,
}

impl Credential {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Token => "token",
            Credential::CurrentCert => "renewal",
        }
    }
}

/// Ask the CA for a new certificate with a new key.
pub async fn request_certificate(
    config: &CaIdentity,
    store: Option<&Arc<IdentityStore>>,
    credential: Credential,
) -> Result<Credentials, CaClientError> {
    let key = KeyPair::generate()
        .map_err(|e| CaClientError::Local(format!("cannot generate a key: {e}")))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CaClientError::Local(format!("cannot build a CSR: {e}")))?;
    let request = SignRequest {
        csr,
        ttl_seconds: config.ttl.map(|t| t.as_secs()),
    };
    let body = serde_json::to_vec(&request).map_err(|e| CaClientError::Local(e.to_string()))?;
    let mut authorization = None;
    let client_cert = match credential {
        Credential::Token => {
            let token = std::fs::read_to_string(&config.token_file).map_err(|e| {
                CaClientError::Local(format!(
                    "cannot read the bootstrap token {}: {e}",
                    config.token_file.display()
                ))
            })?;
            authorization = Some(format!("Bearer {}", token.trim()));
            None
        }
        Credential::CurrentCert => store.cloned(),
    };
    let (status, answer) = send(
        config,
        store,
        client_cert,
        Method::POST,
        SIGN_PATH,
        authorization,
        Some(body),
    )
    .await?;
    if status != StatusCode::OK {
        let refusal: ErrorResponse = serde_json::from_slice(&answer).unwrap_or(ErrorResponse {
            error: "unknown".into(),
            reason: String::from_utf8_lossy(&answer).chars().take(200).collect(),
        });
        return Err(CaClientError::Refused {
            status: status.as_u16(),
            error: refusal.error,
            reason: refusal.reason,
        });
    }
    let signed: SignResponse =
        serde_json::from_slice(&answer).map_err(|e| CaClientError::BadAnswer(e.to_string()))?;
    let chain = pem_certs(&signed.certificate_chain)?;
    let trust_bundle = pem_certs(&signed.trust_bundle)?;
    Ok(Credentials {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        trust_bundle,
        crls: Vec::new(),
    })
}

/// Fetch the CA's current trust bundle.
pub async fn fetch_bundle(
    config: &CaIdentity,
    store: Option<&Arc<IdentityStore>>,
) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
    let (status, answer) = send(config, store, None, Method::GET, BUNDLE_PATH, None, None).await?;
    if status != StatusCode::OK {
        return Err(CaClientError::BadAnswer(format!(
            "{BUNDLE_PATH} answered {status}"
        )));
    }
    pem_certs(&String::from_utf8_lossy(&answer))
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CaClientError::BadAnswer(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CaClientError::BadAnswer(
            "no certificate in the answer".into(),
        ));
    }
    Ok(certs)
}

/// One HTTPS request to the CA. The CA is verified against `ca_bundle` plus
/// the trust bundle we hold (so a CA that moved to a new root we already
/// trust stays reachable).
async fn send(
    config: &CaIdentity,
    store: Option<&Arc<IdentityStore>>,
    client_cert: Option<Arc<IdentityStore>>,
    method: Method,
    path: &str,
    authorization: Option<String>,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), CaClientError> {
    let unreachable = |reason: String| CaClientError::Unreachable {
        url: config.url.clone(),
        reason,
    };
    let authority = config
        .url
        .strip_prefix("https://")
        .unwrap_or(&config.url)
        .trim_end_matches('/')
        .to_string();
    let (host, port) = split_host_port(&authority).map_err(&unreachable)?;
    let name = config.server_name.clone().unwrap_or(host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| unreachable(format!("{name:?} is not a valid server name")))?;

    let mut roots = RootCertStore::empty();
    let seed = load_certs(&config.ca_bundle).map_err(|e| CaClientError::Local(e.to_string()))?;
    let held = store
        .map(|s| s.current().trust_bundle.clone())
        .unwrap_or_default();
    for cert in seed.into_iter().chain(held) {
        let _ = roots.add(cert);
    }
    let provider = crate::tls::default_provider();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaClientError::Local(e.to_string()))?
        .with_root_certificates(roots);
    let tls_config = match client_cert {
        Some(store) => builder.with_client_cert_resolver(Arc::new(crate::tls::StoreResolver::new(
            store,
        )) as Arc<dyn ResolvesClientCert>),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(value) = &authorization {
            request = request.header(hyper::header::AUTHORIZATION, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CaClientError::Local(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, answer))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))?
}
