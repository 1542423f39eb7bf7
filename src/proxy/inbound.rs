//! Inbound: terminate mTLS, authorize the peer inside the handshake, connect
//! the local backend, optionally send a PROXY v2 header, then pipe bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;

use super::pipe::pipe;
use super::pooled::Pooled;
use super::proxy_protocol::{encode_v2, TlsPeerInfo};
use super::{verdicts, ConnectionContext, Direction};
use crate::admin::metrics::reason;
use crate::config::{InboundConfig, ProxyProtocol};
use crate::http::headers::{forwarding_values, identity_values};
use crate::http::serve::Peer;
use crate::http::HttpSettings;
use crate::identity::Authorizer;
use crate::tls::linger::LingerLimits;
use crate::tls::{handshake_failure_reason, record_handshake, HandshakeRecord};

/// The settings of one inbound listener that a connection reads once, at accept.
pub struct InboundSettings {
    /// Listener name.
    pub name: Arc<str>,
    /// Where the listener accepts.
    pub listen: SocketAddr,
    /// At most this many connections at once.
    pub max_connections: usize,
    /// `host:port` of the backend.
    pub backend: String,
    /// TLS acceptor with this listener's policy built in.
    pub acceptor: TlsAcceptor,
    /// Limit on the TLS handshake.
    pub handshake_timeout: Duration,
    /// Limit on connecting to the backend.
    pub connect_timeout: Duration,
    /// Idle limit on the established connection.
    pub idle_timeout: Duration,
    /// PROXY header to send, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The authorization built into `acceptor`, kept to re-check live
    /// connections.
    pub authz: Arc<Authorizer>,
    /// Re-check live connections when a reload changes the policy.
    pub reauthorize_on_reload: bool,
    /// How long a refused peer may take to read our alert.
    pub linger: LingerLimits,
    /// For `protocol = "http"`: what each request needs.
    pub http: Option<Arc<HttpSettings>>,
}

impl InboundSettings {
    /// Settings from a validated config, its compiled authorization and a
    /// TLS acceptor built with it.
    pub fn new(config: &InboundConfig, authz: Arc<Authorizer>, acceptor: TlsAcceptor) -> Self {
        InboundSettings {
            authz,
            reauthorize_on_reload: config.reauthorize_on_reload,
            name: config.name.as_str().into(),
            listen: config.listen,
            max_connections: config.max_connections,
            backend: config.backend.clone(),
            acceptor,
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            proxy_protocol: config.proxy_protocol,
            linger: LingerLimits {
                time: config.lingering_time,
                bytes: config.lingering_bytes,
            },
            http: None,
        }
    }
}

/// Serve one accepted inbound connection to the end.
pub async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<InboundSettings>,
    ctx: ConnectionContext,
) {
    let name = &*settings.name;
    let direction = Direction::Inbound.as_str();
    let metrics = &ctx.metrics;
    let _open = metrics.connection_opened(name, direction);
    let started = Instant::now();

    // The handshake and the backend connect are boxed: they are short-lived,
    // and inline they would size this future (held for the connection's
    // whole life) for their state rather than the pipe's.
    let (handshake, record) = Box::pin(record_handshake(timeout(
        settings.handshake_timeout,
        // rustls reads a socket at most a record at a time; through a
        // pooled buffer one recv takes up to four records.
        settings
            .acceptor
            .accept(Pooled::new(stream))
            .into_fallible(),
    )))
    .await;
    metrics
        .handshake_duration
        .with_label_values(&[name, direction])
        .observe(started.elapsed().as_secs_f64());
    verdicts::report(&ctx, name, &record);
    verdicts::remember_peer(&ctx, &settings.name, &record);
    ctx.count_chain_cache(name, Direction::Inbound, &record);
    let tls = match handshake {
        // Boxed: held across every later await, it would otherwise be
        // stored in this future and again in the pipe's.
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err((error, socket))) => {
            let result = handshake_failure_reason(&error);
            handshake_failed(&ctx, name, peer, result, &error.to_string(), &record);
            let linger = settings.linger;
            Box::pin(ctx.close_refused(&error, socket, linger, name, Direction::Inbound)).await;
            return;
        }
        Err(_) => {
            handshake_failed(
                &ctx,
                name,
                peer,
                "timeout",
                "no handshake within handshake_timeout",
                &record,
            );
            return;
        }
    };
    metrics
        .handshakes
        .with_label_values(&[name, direction, "success"])
        .inc();
    let identity = record.identity.clone();
    if let Some(identity) = &identity {
        metrics.observe_peer_expiry(name, identity.not_after);
    }
    let decision = record.verdict.as_ref().map_or("allow", |v| v.label());
    let peer_name = identity
        .as_ref()
        .map(|i| i.display_name())
        .unwrap_or_default();
    if let Some(reason) = record.verdict.as_ref().and_then(|v| v.deny_reason()) {
        // Audit mode: the rules deny this peer, and it is let through.
        tracing::warn!(listener = name, %peer, peer_identity = %peer_name, decision, %reason, "peer would be denied (authz_mode = \"audit\"); admitted");
    }

    if let (Some(http), Some(identity)) = (&settings.http, &identity) {
        Box::pin(serve_http(
            tls,
            peer,
            identity.clone(),
            http.clone(),
            &settings.name,
            &ctx,
        ))
        .await;
        tracing::info!(
            listener = name,
            %peer,
            peer_identity = %peer_name,
            decision,
            duration_ms = started.elapsed().as_millis() as u64,
            "connection closed"
        );
        return;
    }

    let backend = match Box::pin(timeout(
        settings.connect_timeout,
        TcpStream::connect(&settings.backend),
    ))
    .await
    {
        Ok(Ok(backend)) => backend,
        Ok(Err(error)) => {
            Box::pin(backend_failed(
                &ctx,
                name,
                peer,
                &peer_name,
                &settings.backend,
                &error.to_string(),
                tls,
            ))
            .await;
            return;
        }
        Err(_) => {
            Box::pin(backend_failed(
                &ctx,
                name,
                peer,
                &peer_name,
                &settings.backend,
                "connect timed out",
                tls,
            ))
            .await;
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let mut backend = backend;

    if settings.proxy_protocol == Some(ProxyProtocol::V2) {
        let (tcp, conn) = tls.get_ref();
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        });
        let info = TlsPeerInfo {
            tls_version: version,
            common_name: identity.as_ref().and_then(|i| i.cn.as_deref()),
            spiffe_id: identity
                .as_ref()
                .and_then(|i| i.spiffe_id.as_ref())
                .map(|s| s.as_str()),
            sni: conn.server_name(),
        };
        // Asked only here: a getsockname per connection otherwise.
        let destination = tcp.get_ref().local_addr().unwrap_or(peer);
        let written = match encode_v2(peer, destination, &info) {
            Ok(header) => backend.write_all(&header).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = written {
            metrics
                .connection_errors
                .with_label_values(&[name, direction, reason::PROXY_HEADER])
                .inc();
            tracing::warn!(listener = name, %peer, peer_identity = %peer_name, %error, "cannot send PROXY header to backend; closing");
            return;
        }
    }

    // Registered so a reload with a stricter policy can close it.
    let close = ctx.force_close.child_token();
    let _live = identity
        .clone()
        .map(|identity| ctx.live.register(identity, close.clone()));
    let on_bytes = metrics.byte_counter(name);
    // Both sides read through pooled buffers; see docs/benchmarks.md
    // ("Buffer size") for why the TLS side is not read in place.
    let outcome = pipe(
        Pooled::tls(tls),
        Pooled::new(backend),
        settings.idle_timeout,
        close.cancelled(),
        &on_bytes,
    )
    .await;
    tracing::info!(
        listener = name,
        %peer,
        peer_identity = %peer_name,
        decision,
        bytes_up = outcome.upstream_bytes,
        bytes_down = outcome.downstream_bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        close = %outcome.reason,
        "connection closed"
    );
}

fn handshake_failed(
    ctx: &ConnectionContext,
    name: &str,
    peer: SocketAddr,
    result: &'static str,
    error: &str,
    record: &HandshakeRecord,
) {
    let direction = Direction::Inbound.as_str();
    ctx.metrics
        .handshakes
        .with_label_values(&[name, direction, result])
        .inc();
    ctx.metrics
        .connection_errors
        .with_label_values(&[name, direction, reason::HANDSHAKE_FAILED])
        .inc();
    let identity = record
        .identity
        .as_ref()
        .map(|i| i.display_name())
        .unwrap_or_default();
    match record.verdict.as_ref().and_then(|v| v.deny_reason()) {
        Some(reason) => {
            tracing::warn!(listener = name, %peer, peer_identity = %identity, decision = "deny", %reason, "peer denied");
        }
        None => {
            let detail = record.chain_error.as_deref().unwrap_or(error);
            tracing::warn!(listener = name, %peer, result, reason = %detail, "TLS handshake failed");
        }
    }
}

async fn backend_failed(
    ctx: &ConnectionContext,
    name: &str,
    peer: SocketAddr,
    peer_name: &str,
    backend: &str,
    error: &str,
    mut tls: Box<tokio_rustls::server::TlsStream<Pooled<TcpStream>>>,
) {
    ctx.metrics
        .connection_errors
        .with_label_values(&[name, Direction::Inbound.as_str(), reason::CONNECT_FAILED])
        .inc();
    tracing::warn!(listener = name, %peer, peer_identity = %peer_name, backend, %error, "backend unreachable; closing client connection");
    // Close cleanly: the client sees close_notify and EOF, not a reset.
    let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// Serve HTTP on an authorized connection (`protocol = "http"`): the
/// identity headers are computed once, from the chain the peer presented.
async fn serve_http(
    tls: Box<tokio_rustls::server::TlsStream<Pooled<TcpStream>>>,
    peer: SocketAddr,
    identity: Arc<crate::identity::PeerIdentity>,
    http: Arc<HttpSettings>,
    name: &Arc<str>,
    ctx: &ConnectionContext,
) {
    let (_, conn) = tls.get_ref();
    let h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
    let chain: Vec<_> = conn
        .peer_certificates()
        .map(|certs| certs.to_vec())
        .unwrap_or_default();
    let own = http.store.current();
    let mut values = identity_values(&http.headers, &chain, own.certified_key.cert.first());
    values.headers.extend(forwarding_values(peer.ip()));
    // Registered so a reload with a stricter policy can close it.
    let close = ctx.force_close.child_token();
    let _live = ctx.live.register(identity.clone(), close.clone());
    let peer = Peer {
        addr: peer,
        identity,
        values,
    };
    if let Err(error) = crate::http::serve::serve(
        tls,
        h2,
        name.clone(),
        peer,
        http,
        ctx.metrics.clone(),
        close.cancelled_owned(),
    )
    .await
    {
        tracing::debug!(listener = %name, %error, "HTTP connection ended with an error");
    }
}
