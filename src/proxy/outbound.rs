//! Outbound: accept plaintext from the local service on loopback, dial the
//! upstream, originate mTLS with our certificate, check the upstream is who
//! the config expects, then pipe bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

use super::pipe::pipe;
use super::pooled::Pooled;
use super::{verdicts, ConnectionContext, Direction};
use crate::admin::metrics::reason;
use crate::config::{split_host_port, OutboundConfig};
use crate::tls::linger::LingerLimits;
use crate::tls::{handshake_failure_reason, record_handshake};

/// The settings of one outbound listener that a connection reads once, at accept.
pub struct OutboundSettings {
    /// Listener name.
    pub name: Arc<str>,
    /// Where the listener accepts.
    pub listen: SocketAddr,
    /// At most this many connections at once.
    pub max_connections: usize,
    /// `host:port` of the upstream.
    pub upstream: String,
    /// SNI sent to the upstream.
    pub server_name: ServerName<'static>,
    /// TLS connector with this listener's expectation built in.
    pub connector: TlsConnector,
    /// Limit on the TLS handshake.
    pub handshake_timeout: Duration,
    /// Limit on the TCP connect.
    pub connect_timeout: Duration,
    /// Idle limit on the established connection.
    pub idle_timeout: Duration,
    /// How long a refused upstream may take to read our alert.
    pub linger: LingerLimits,
}

impl OutboundSettings {
    /// Settings from a validated config and a TLS connector.
    pub fn new(config: &OutboundConfig, connector: TlsConnector) -> Result<Self, String> {
        let host = match &config.server_name {
            Some(name) => name.clone(),
            None => split_host_port(&config.upstream)?.0,
        };
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        Ok(OutboundSettings {
            name: config.name.as_str().into(),
            listen: config.listen,
            max_connections: config.max_connections,
            upstream: config.upstream.clone(),
            server_name,
            connector,
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            linger: LingerLimits {
                time: config.lingering_time,
                bytes: config.lingering_bytes,
            },
        })
    }
}

/// Serve one accepted outbound connection to the end.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    settings: Arc<OutboundSettings>,
    ctx: ConnectionContext,
) {
    let name = &*settings.name;
    let direction = Direction::Outbound.as_str();
    let metrics = &ctx.metrics;
    let _open = metrics.connection_opened(name, direction);
    let started = Instant::now();

    // The connect and the handshake are boxed: they are short-lived, and
    // inline they would size this future (held for the connection's whole
    // life) for their state rather than the pipe's.
    let upstream = match Box::pin(timeout(
        settings.connect_timeout,
        TcpStream::connect(&settings.upstream),
    ))
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            upstream_failed(&ctx, name, peer, &settings.upstream, &error.to_string());
            return;
        }
        Err(_) => {
            upstream_failed(&ctx, name, peer, &settings.upstream, "connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);

    let handshake_started = Instant::now();
    let (handshake, record) = Box::pin(record_handshake(timeout(
        settings.handshake_timeout,
        settings
            .connector
            .connect(settings.server_name.clone(), Pooled::new(upstream))
            .into_fallible(),
    )))
    .await;
    metrics
        .handshake_duration
        .with_label_values(&[name, direction])
        .observe(handshake_started.elapsed().as_secs_f64());
    verdicts::report(&ctx, name, &record);
    ctx.count_chain_cache(name, Direction::Outbound, &record);
    let identity = record
        .identity
        .as_ref()
        .map(|i| i.display_name())
        .unwrap_or_default();
    let tls = match handshake {
        // Boxed: held across every later await, it would otherwise be
        // stored in this future and again in the pipe's.
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err((error, socket))) => {
            let result = handshake_failure_reason(&error);
            let denied = record.verdict.as_ref().and_then(|v| v.deny_reason());
            let detail = match (denied, &record.chain_error) {
                (Some(reason), _) => reason.to_string(),
                (_, Some(chain)) => chain.clone(),
                _ => error.to_string(),
            };
            handshake_failed(
                &ctx,
                name,
                peer,
                &settings.upstream,
                result,
                &identity,
                &detail,
            );
            let linger = settings.linger;
            Box::pin(ctx.close_refused(&error, socket, linger, name, Direction::Outbound)).await;
            return;
        }
        Err(_) => {
            handshake_failed(
                &ctx,
                name,
                peer,
                &settings.upstream,
                "timeout",
                &identity,
                "no handshake within handshake_timeout",
            );
            return;
        }
    };
    metrics
        .handshakes
        .with_label_values(&[name, direction, "success"])
        .inc();
    if let Some(upstream_identity) = &record.identity {
        metrics.observe_peer_expiry(name, upstream_identity.not_after);
    }

    let on_bytes = metrics.byte_counter(name);
    // Both sides read through pooled buffers; see docs/benchmarks.md
    // ("Buffer size") for why the TLS side is not read in place.
    let outcome = pipe(
        Pooled::new(client),
        Pooled::tls(tls),
        settings.idle_timeout,
        ctx.force_close.cancelled(),
        &on_bytes,
    )
    .await;
    tracing::info!(
        listener = name,
        %peer,
        upstream = %settings.upstream,
        peer_identity = %identity,
        bytes_up = outcome.upstream_bytes,
        bytes_down = outcome.downstream_bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        close = %outcome.reason,
        "connection closed"
    );
}

fn upstream_failed(
    ctx: &ConnectionContext,
    name: &str,
    peer: SocketAddr,
    upstream: &str,
    error: &str,
) {
    ctx.metrics
        .connection_errors
        .with_label_values(&[name, Direction::Outbound.as_str(), reason::CONNECT_FAILED])
        .inc();
    tracing::warn!(listener = name, %peer, upstream, %error, "upstream unreachable; closing client connection");
}

fn handshake_failed(
    ctx: &ConnectionContext,
    name: &str,
    peer: SocketAddr,
    upstream: &str,
    result: &'static str,
    identity: &str,
    reason_text: &str,
) {
    let direction = Direction::Outbound.as_str();
    ctx.metrics
        .handshakes
        .with_label_values(&[name, direction, result])
        .inc();
    ctx.metrics
        .connection_errors
        .with_label_values(&[name, direction, reason::HANDSHAKE_FAILED])
        .inc();
    tracing::warn!(listener = name, %peer, upstream, peer_identity = %identity, result, reason = %reason_text, "upstream TLS handshake failed; closing client connection");
}
