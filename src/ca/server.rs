//! `portcullis ca serve`: the CA's HTTPS API (hyper HTTP/1.1 over
//! tokio-rustls), see [`super::api`] for the contract.
//!
//! The CA's own TLS certificate is issued at start by the intermediate for
//! `server_names` (and re-issued every 8 hours). Client certificates are
//! requested but optional: they are verified against the trust bundle in the
//! handshake and used for renewal. TLS sessions are never resumed, so every
//! request's client certificate was verified in its own handshake. Only the
//! intermediate key is loaded; the root key is never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::KeyPair;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::api::{ErrorResponse, BUNDLE_PATH, CRL_PATH, SIGN_PATH};
use super::authority::Authority;
use super::config::{self, CaConfig};
use super::files::{self, CaDir};
use super::log::IssuanceLog;
use super::metrics::CaMetrics;
use super::policy::LeafSpec;
use super::provisioner::{Provisioner, Provisioners};
use super::revocation::Revocations;
use super::sign::{Code, Credentials, Refusal, Signer};
use crate::config::{ConfigError, ConfigErrors};
use crate::tls::linger::{close_failed_handshake, LingerGate, LingerLimits};

/// Lifetime of the CA's own TLS certificate.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How often the CA's own TLS certificate is re-issued.
const SERVER_CERT_RENEW: Duration = Duration::from_secs(8 * 3600);
/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request may touch.
#[derive(Debug)]
struct State {
    signer: Signer,
    metrics: CaMetrics,
}

/// Presents the CA's current TLS certificate.
#[derive(Debug)]
struct ServerCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Issue the CA's own TLS certificate with a fresh key.
fn issue_server_cert(authority: &Authority, config: &CaConfig) -> anyhow::Result<CertifiedKey> {
    let key = KeyPair::generate().context("cannot generate the CA's TLS key")?;
    let spec = LeafSpec {
        spiffe_id: None,
        dns: config.server_dns(),
        ips: config.server_ips(),
        lifetime: SERVER_CERT_LIFETIME,
    };
    let issued = authority
        .issue(&spec, &key)
        .context("cannot issue the CA's own TLS certificate")?;
    let mut chain = vec![issued.leaf];
    chain.extend(authority.intermediates().iter().cloned());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    CertifiedKey::from_der(chain, key_der, &crate::tls::default_provider())
        .context("the CA's TLS certificate and key do not fit together")
}

/// Load everything `serve` needs; configuration problems are reported with
/// the file and key.
fn prepare(config: &CaConfig, config_path: &Path) -> anyhow::Result<Signer> {
    let dir = CaDir::new(&config.dir);
    let authority = Authority::load_with(&dir, config.insecure_key_permissions)
        .with_context(|| format!("cannot load the CA in {}", config.dir.display()))?;
    if authority.trust_domain() != config.trust_domain {
        return Err(ConfigErrors {
            file: config_path.to_path_buf(),
            errors: vec![ConfigError {
                key: "trust_domain".into(),
                reason: format!(
                    "{:?} is not the trust domain of the CA in {} ({:?})",
                    config.trust_domain,
                    config.dir.display(),
                    authority.trust_domain()
                ),
            }],
        }
        .into());
    }
    let mut provisioners = Vec::new();
    let mut errors = Vec::new();
    for (i, p) in config.provisioners.iter().enumerate() {
        match Provisioner::new(p) {
            Ok(p) => provisioners.push(p),
            Err(e) => errors.push(ConfigError {
                key: format!("provisioner[{i}].jwks"),
                reason: e.to_string(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors {
            file: config_path.to_path_buf(),
            errors,
        }
        .into());
    }
    if provisioners.is_empty() {
        tracing::warn!("no [[provisioner]] configured: only renewals over mTLS can be served");
    }
    let log = IssuanceLog::open(&config.log_path())?;
    let revocations = Revocations::new(dir.file(files::REVOKED));
    revocations
        .current(&authority)
        .context("cannot build the CRL")?;
    Ok(Signer {
        provisioners: Provisioners::new(provisioners, authority.trust_domain()),
        authority,
        revocations,
        log,
        default_ttl: config.default_ttl,
        max_ttl: config.max_ttl,
    })
}

/// Run `ca serve` with the configuration file at `config_path`, until
/// SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = config::load(config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(config, config_path))
}

async fn serve(config: CaConfig, config_path: &Path) -> anyhow::Result<()> {
    let signer = prepare(&config, config_path)?;
    let provider = crate::tls::default_provider();
    let mut roots = RootCertStore::empty();
    for cert in signer.authority.bundle() {
        roots
            .add(cert.clone())
            .context("a trust bundle certificate cannot be a trust anchor")?;
    }
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?;
    let server_cert = Arc::new(ServerCert(ArcSwap::from_pointee(issue_server_cert(
        &signer.authority,
        &config,
    )?)));
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(server_cert.clone());
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let state = Arc::new(State {
        signer,
        metrics: CaMetrics::new().context("cannot register the CA metrics")?,
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        trust_domain = %state.signer.authority.trust_domain(),
        provisioners = config.provisioners.len(),
        log = %config.log_path().display(),
        "CA serving on https://{}",
        config.listen
    );

    // Keep the CA's own certificate fresh, and the CRL regenerated at least
    // every minute even when nobody asks for it.
    {
        let state = state.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let mut crl_tick = tokio::time::interval(Duration::from_secs(30));
            let mut cert_tick = tokio::time::interval(SERVER_CERT_RENEW);
            cert_tick.tick().await;
            loop {
                tokio::select! {
                    _ = crl_tick.tick() => {
                        if let Err(error) = state.signer.revocations.current(&state.signer.authority) {
                            tracing::warn!(%error, "cannot refresh the CRL; serving the previous one");
                        }
                    }
                    _ = cert_tick.tick() => match issue_server_cert(&state.signer.authority, &config) {
                        Ok(cert) => {
                            server_cert.0.store(Arc::new(cert));
                            tracing::info!("re-issued the CA's own TLS certificate");
                        }
                        Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot re-issue the CA's own TLS certificate"),
                    },
                }
            }
        });
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let handshake = acceptor.accept(tcp).into_fallible();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err((error, tcp))) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    // The CA has no connection limit to protect, so
                    // nothing ever sheds these.
                    let gate = LingerGate::default();
                    close_failed_handshake(&error, tcp, LingerLimits::DEFAULT, &gate).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let chain: Option<Arc<Vec<CertificateDer<'static>>>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.to_vec()));
            let service = service_fn(move |req| {
                let state = state.clone();
                let chain = chain.clone();
                async move { Ok::<_, Infallible>(route(state, req, chain, peer).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    tracing::info!("CA shutting down");
    Ok(())
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
    chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == SIGN_PATH {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
        }
        return sign(state, req, chain, peer).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is supported\n".into(),
        );
    }
    match path.as_str() {
        BUNDLE_PATH => with_type(
            text(
                StatusCode::OK,
                state.signer.authority.bundle_pem().to_string(),
            ),
            "application/x-pem-file",
        ),
        CRL_PATH => {
            let signer = &state.signer;
            match signer.revocations.current(&signer.authority) {
                Ok(snapshot) => with_type(
                    text(StatusCode::OK, snapshot.crl_pem.to_string()),
                    "application/x-pem-file",
                ),
                Err(error) => {
                    tracing::error!(%error, "cannot produce the CRL");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the CRL cannot be produced; see the CA log\n".into(),
                    )
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/metrics" => match state.metrics.encode() {
            Ok(body) => with_type(
                text(StatusCode::OK, body),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!(
                "not found; try POST {SIGN_PATH}, GET {BUNDLE_PATH} {CRL_PATH} /healthz /metrics\n"
            ),
        ),
    }
}

async fn sign(
    state: Arc<State>,
    req: Request<Incoming>,
    chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let authorization = match req.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value.to_string()),
        Some(Err(_)) => {
            let refusal = Refusal::new(Code::BadToken, "the Authorization header is not text");
            return refused(&state, &refusal, peer, "token");
        }
    };
    let credential_kind = Credentials {
        authorization: authorization.as_deref(),
        client_chain: chain.as_deref().map(Vec::as_slice),
    }
    .kind();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let refusal = Refusal::new(
                Code::BadRequest,
                format!("cannot read the body (at most {MAX_BODY} bytes): {error}"),
            );
            return refused(&state, &refusal, peer, credential_kind);
        }
    };
    let worker = state.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        worker.signer.sign(
            &body,
            Credentials {
                authorization: authorization.as_deref(),
                client_chain: chain.as_deref().map(Vec::as_slice),
            },
        )
    })
    .await
    .unwrap_or_else(|e| {
        Err(Refusal::new(
            Code::Internal,
            format!("signing task failed: {e}"),
        ))
    });
    match outcome {
        Ok(signed) => {
            state.metrics.record(Ok(()));
            tracing::info!(
                %peer,
                spiffe_id = %signed.response.spiffe_id,
                serial = %signed.response.serial,
                credential = %signed.credential,
                not_after = signed.response.not_after,
                "issued a certificate"
            );
            match serde_json::to_string(&signed.response) {
                Ok(body) => with_type(text(StatusCode::OK, body), "application/json"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        Err(refusal) => refused(&state, &refusal, peer, credential_kind),
    }
}

/// Count, log (code and reason only: never token contents) and answer a refusal.
fn refused(
    state: &State,
    refusal: &Refusal,
    peer: SocketAddr,
    credential: &str,
) -> Response<Full<Bytes>> {
    state.metrics.record(Err(refusal.code));
    if refusal.code == Code::Internal {
        tracing::error!(%peer, credential, code = refusal.code.as_str(), reason = %refusal.reason, "signing request failed");
    } else {
        tracing::warn!(%peer, credential, code = refusal.code.as_str(), reason = %refusal.reason, "refused a signing request");
    }
    let body = ErrorResponse {
        error: refusal.code.as_str().to_string(),
        reason: refusal.reason.clone(),
    };
    let status =
        StatusCode::from_u16(refusal.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    with_type(text(status, json), "application/json")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
