//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/certs`,
//! `/listeners`, `/peers`, and `POST /reload`.
//!
//! Plain HTTP/1.1 on a loopback address by default. Only GET is served;
//! everything else is 404/405 with a one-line reason.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::UnixTime;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::peers::PeerTable;
use super::Metrics;
use crate::runtime::reload::ReloadRequest;
use crate::runtime::BoundAddresses;
use crate::tls::linger::{close_failed_handshake, LingerGate, LingerLimits};
use crate::tls::IdentityStore;

/// What the admin endpoint reports on.
#[derive(Debug)]
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Metrics,
    /// Our identity, for readiness.
    pub store: Arc<IdentityStore>,
    /// Where every listener is bound; None until all are.
    listeners: ArcSwapOption<BoundAddresses>,
    /// Where `POST /reload` sends its request (None: reload not available).
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// The peers seen, served on `GET /peers`.
    pub peers: Arc<PeerTable>,
}

impl AdminState {
    /// The state before any listener is bound (not ready yet).
    pub fn new(
        metrics: Metrics,
        store: Arc<IdentityStore>,
        reload: Option<mpsc::Sender<ReloadRequest>>,
        peers: Arc<PeerTable>,
    ) -> AdminState {
        AdminState {
            metrics,
            store,
            listeners: ArcSwapOption::empty(),
            reload,
            peers,
        }
    }

    /// Every listener is bound, here; served on `GET /listeners`.
    pub fn set_listeners(&self, bound: BoundAddresses) {
        self.listeners.store(Some(Arc::new(bound)));
    }

    /// Where every listener is bound, once all are.
    pub fn listeners(&self) -> Option<Arc<BoundAddresses>> {
        self.listeners.load_full()
    }

    /// Ready when every listener is bound and our certificate is valid now.
    pub fn readiness(&self) -> Result<(), String> {
        if self.listeners.load().is_none() {
            return Err("listeners are not bound yet".into());
        }
        let material = self.store.current();
        if !material.leaf_is_valid(UnixTime::now()) {
            return Err(format!(
                "own certificate expired at {} (unix time)",
                material.leaf_not_after
            ));
        }
        Ok(())
    }
}

/// Serve admin requests on `listener` until `stop` is cancelled; with
/// `tls`, every client must complete mTLS and pass the admin allow rules.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Over mTLS the client is authenticated and authorized, wherever
            // it is; over plain HTTP only a local client may change anything.
            let trusted = tls.is_some() || peer.ip().is_loopback();
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req, trusted).await) }
            });
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream).into_fallible(),
                    );
                    let (result, record) = crate::tls::record_handshake(handshake).await;
                    match result {
                        Ok(Ok(tls)) => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        }
                        Ok(Err((error, stream))) => {
                            let who = record
                                .identity
                                .map(|i| i.display_name())
                                .unwrap_or_default();
                            tracing::warn!(listener = "admin", %peer, peer_identity = %who, %error, "admin client refused");
                            let gate = LingerGate::default();
                            let limits = LingerLimits::DEFAULT;
                            close_failed_handshake(&error, stream, limits, &gate).await;
                        }
                        Err(_) => {
                            tracing::warn!(listener = "admin", %peer, "admin client refused: no TLS handshake within 10s");
                        }
                    }
                }
            }
        });
    }
}

async fn route(
    state: &AdminState,
    req: &Request<Incoming>,
    trusted: bool,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n".into());
        }
        if !trusted {
            return text(
                StatusCode::FORBIDDEN,
                "POST /reload is accepted only from loopback, or over the admin mTLS listener\n"
                    .into(),
            );
        }
        return reload(state).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is supported\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match state.metrics.encode() {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                response
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/certs" => json(certs_json(state)),
        "/peers" => json(state.peers.to_json().to_string()),
        "/listeners" => match state.listeners() {
            Some(bound) => json(bound.to_json()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "listeners are not bound yet\n".into(),
            ),
        },
        "/readyz" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /certs /listeners /peers, or POST /reload\n"
                .into(),
        ),
    }
}

/// Our chain and trust bundle as JSON: public facts only, never key material.
fn certs_json(state: &AdminState) -> String {
    let material = state.store.current();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let chain = material
        .certified_key
        .cert
        .iter()
        .enumerate()
        .map(|(i, c)| (if i == 0 { "leaf" } else { "intermediate" }, c));
    let bundle = material.trust_bundle.iter().map(|c| ("trust", c));
    let certs: Vec<serde_json::Value> = chain
        .chain(bundle)
        .filter_map(|(role, der)| {
            let s = crate::inspect::summarize_der(der).ok()?;
            Some(serde_json::json!({
                "role": role,
                "subject": s.subject,
                "issuer": s.issuer,
                "spiffe_id": s.spiffe_id,
                "dns_sans": s.dns_sans,
                "serial": s.serial,
                "not_before": s.not_before,
                "not_after": s.not_after,
                "seconds_left": s.not_after - now,
            }))
        })
        .collect();
    let mut body = serde_json::json!({ "certificates": certs }).to_string();
    body.push('\n');
    body
}

/// Ask the runtime to reload and answer with the outcome: 200 and what
/// changed, or 422 and why the running config stayed in force.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(sender) = &state.reload else {
        return text(
            StatusCode::NOT_FOUND,
            "reload is not available: not started from a config file\n".into(),
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = ReloadRequest {
        trigger: "admin",
        reply: Some(reply),
    };
    if sender.send(request).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match answer.await {
        Ok(Ok(summary)) => text(StatusCode::OK, format!("reloaded: {summary}\n")),
        Ok(Err(error)) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload failed; the running config stays in force:\n{error}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

/// 200 with a JSON body.
fn json(body: String) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
