//! One HTTP connection, top to bottom: serve HTTP/1.1 or HTTP/2 (by ALPN)
//! with hyper; for each request, pick the route and authorize the peer,
//! strip what the client must not send, add the identity and forwarding
//! headers, forward to the backend and stream the answer back; pass
//! HTTP/1.1 upgrades (WebSocket) through; one access-log line per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::headers::{sanitize_request, sanitize_response, IdentityValues};
use super::{Body, HttpSettings};
use crate::admin::Metrics;
use crate::identity::PeerIdentity;

/// Who is on the other end of one connection, and what to tell the backend.
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its verified identity.
    pub identity: Arc<PeerIdentity>,
    /// The identity headers for its requests.
    pub values: IdentityValues,
}

struct Connection {
    listener: Arc<str>,
    peer: Peer,
    peer_name: Arc<str>,
    settings: Arc<HttpSettings>,
    metrics: Metrics,
}

/// Serve HTTP on `io` until the client closes, the connection fails, or
/// `close` resolves.
pub async fn serve<IO>(
    io: IO,
    h2: bool,
    listener: Arc<str>,
    peer: Peer,
    settings: Arc<HttpSettings>,
    metrics: Metrics,
    close: impl std::future::Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = settings.limits;
    let connection = Arc::new(Connection {
        listener,
        peer_name: peer.identity.display_name().into(),
        peer,
        settings,
        metrics,
    });
    let service = hyper::service::service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(proxy(request, connection).await) }
    });
    let io = TokioIo::new(io);
    tokio::pin!(close);
    if h2 {
        let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(io, service);
        tokio::select! {
            served = serving => served,
            _ = &mut close => Ok(()),
        }
    } else {
        let serving = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::select! {
            served = serving => served,
            _ = &mut close => Ok(()),
        }
    }
}

/// One request, from authorization to the streamed answer.
async fn proxy(mut request: Request<Incoming>, connection: Arc<Connection>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client_version = request.version();
    let settings = &connection.settings;
    let (route, authz) = settings.routes.decide(&method, &path);
    let route = route.clone();
    let verdict = authz.authorize(&connection.peer.identity);
    connection
        .metrics
        .http_authz_decisions
        .with_label_values(&[&connection.listener, &route, verdict.label()])
        .inc();
    let log = Arc::new(AccessLog {
        listener: connection.listener.clone(),
        route: route.clone(),
        peer: connection.peer.addr,
        identity: connection.peer_name.clone(),
        method: method.to_string(),
        path: path.clone(),
        status: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        started,
    });
    if !verdict.admitted() {
        let reason = verdict.deny_reason().unwrap_or_default();
        tracing::warn!(listener = %connection.listener, route = %route, peer = %connection.peer.addr, peer_identity = %connection.peer_name, %method, %path, decision = "deny", %reason, "request denied");
        let drained = client_version != Version::HTTP_11 || drain(request.into_body()).await;
        let mut refused = answer(&connection, &log, StatusCode::FORBIDDEN, "forbidden\n");
        if !drained {
            // Unread body bytes would be read as the next request.
            refused
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        return refused;
    }
    if let Some(reason) = verdict.deny_reason() {
        tracing::warn!(listener = %connection.listener, route = %route, peer_identity = %connection.peer_name, %method, %path, decision = "would_deny", %reason, "request would be denied (authz_mode = \"audit\"); forwarded");
    }

    if !only_chunked(request.headers()) {
        // hyper undoes only the chunked framing and Transfer-Encoding is not
        // forwarded: the backend would take `gzip`-coded bytes for the body.
        tracing::warn!(listener = %connection.listener, peer_identity = %connection.peer_name, %method, %path, "unsupported transfer coding");
        let mut refused = answer(
            &connection,
            &log,
            StatusCode::NOT_IMPLEMENTED,
            "not implemented\n",
        );
        refused
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return refused;
    }
    let upgrade = client_version == Version::HTTP_11 && is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let backend_request = match to_backend(request, &connection, upgrade) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(listener = %connection.listener, peer_identity = %connection.peer_name, %why, "cannot forward the request");
            return answer(&connection, &log, StatusCode::BAD_REQUEST, "bad request\n");
        }
    };
    let sent = tokio::time::timeout(
        settings.limits.backend_timeout,
        settings.client.request(backend_request),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::warn!(listener = %connection.listener, backend = %settings.backend, %error, "backend request failed");
            return answer(&connection, &log, StatusCode::BAD_GATEWAY, "bad gateway\n");
        }
        Err(_) => {
            tracing::warn!(listener = %connection.listener, backend = %settings.backend, "backend did not answer within backend_timeout");
            return answer(
                &connection,
                &log,
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout\n",
            );
        }
    };
    let switching = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    sanitize_response(response.headers_mut(), switching);
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let listener = connection.listener.clone();
        tokio::spawn(async move {
            match tokio::join!(client_upgrade, backend_upgrade) {
                (Ok(client), Ok(backend)) => {
                    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                }
                (client, backend) => {
                    tracing::warn!(%listener, client_ok = client.is_ok(), backend_ok = backend.is_ok(), "upgrade failed");
                }
            }
        });
    }
    *response.version_mut() = client_version;
    finish(&connection, &log, response.map(|body| body.boxed()))
}

/// The request as the backend gets it: origin-form URI on the backend,
/// HTTP/1.1 (or h2c), the client's Host kept, the client's identity and
/// forwarding headers replaced by ours.
fn to_backend(
    request: Request<Incoming>,
    connection: &Connection,
    upgrade: bool,
) -> Result<Request<Body>, String> {
    let settings = &connection.settings;
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(settings.backend_authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("cannot address the backend: {e}"))?;
    sanitize_request(&mut parts.headers, &settings.headers, upgrade);
    if !parts.headers.contains_key(HOST) {
        if let Some(authority) = authority {
            let host =
                HeaderValue::from_str(&authority).map_err(|e| format!("bad :authority: {e}"))?;
            parts.headers.insert(HOST, host);
        }
    }
    // Identity and forwarding headers, computed once per connection.
    for (name, value) in &connection.peer.values.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body.boxed()))
}

/// Read and discard a refused request's body, so the HTTP/1.1 connection
/// can carry the next request; false when it is larger than
/// [`DRAIN_LIMIT`] or slower than [`DRAIN_TIME`] (then the connection is
/// closed after the answer).
async fn drain(body: Incoming) -> bool {
    let limited = http_body_util::Limited::new(body, DRAIN_LIMIT);
    matches!(
        tokio::time::timeout(DRAIN_TIME, limited.collect()).await,
        Ok(Ok(_))
    )
}

/// Most bytes of a refused request's body read to keep its connection.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for a refused request's body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// No Transfer-Encoding, or exactly `chunked` (the one coding hyper decodes;
/// RFC 9112 6.1 answers any other with 501).
fn only_chunked(headers: &hyper::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim);
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case("chunked") && codings.next().is_none(),
    }
}

/// `Connection: upgrade` with an `Upgrade` header (HTTP/1.1 only).
fn is_upgrade(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// A short plain-text answer from the proxy itself (it names no rule).
fn answer(
    connection: &Connection,
    log: &Arc<AccessLog>,
    status: StatusCode,
    text: &'static str,
) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The access-log wrapper hides the body's size from hyper; say it, so
    // the answer is not sent chunked.
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    finish(connection, log, response)
}

/// Count the response and wrap its body so the access-log line is written
/// once the body is done (or dropped), with the bytes that went through.
fn finish(
    connection: &Connection,
    log: &Arc<AccessLog>,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status().as_u16();
    log.status.store(u64::from(status), Ordering::Relaxed);
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let metrics = &connection.metrics;
    metrics
        .http_requests
        .with_label_values(&[&connection.listener, &log.route, class])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[&connection.listener])
        .observe(log.started.elapsed().as_secs_f64());
    let log = log.clone();
    response.map(move |body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                log.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .boxed()
    })
}

/// The fields of one access-log line, written when the last reference
/// (held by the response body) goes away.
struct AccessLog {
    listener: Arc<str>,
    route: Arc<str>,
    peer: SocketAddr,
    identity: Arc<str>,
    method: String,
    path: String,
    status: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        tracing::info!(
            listener = %self.listener,
            route = %self.route,
            peer = %self.peer,
            peer_identity = %self.identity,
            method = %self.method,
            path = %self.path,
            status = self.status.load(Ordering::Relaxed),
            bytes = self.bytes.load(Ordering::Relaxed),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}
